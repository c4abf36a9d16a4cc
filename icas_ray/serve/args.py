"""The typed arguments of the SAM Serve application (``build_app``'s pydantic model).

The same fields come from ``icas serve`` options, from ``serve run
icas_ray.serve.app:build_app key=value ...`` and from the ``args:`` of a Serve config file.
"""

from __future__ import annotations

import os
import tempfile
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

if TYPE_CHECKING:
    from icas_ray.storage import Storage

__all__ = ["TUNABLES", "SamServeArgs", "check_args"]

#: Settings a running app changes through ``user_config`` (``reconfigure``), without restart.
TUNABLES = ("max_image_pixels", "max_upload_mb", "max_batch_size", "batch_wait_timeout_s",
            "max_points", "max_boxes", "automatic_defaults")


class SamServeArgs(BaseModel):
    """Arguments of the SAM application.

    Attributes:
        checkpoint: local path or ``s3://`` URI of a segment_anything checkpoint; None serves
            random weights (tests, benchmarks only).
        model_type: ``vit_b``, ``vit_l``, ``vit_h`` (or ``tiny`` for tests).
        seed: seed of random weights when no checkpoint is given.
        storage_options: ``endpoint_url``, ``profile``, ``anon`` and fsspec options for s3://.
        embedding_store: URI of pre-computed embeddings (``icas serve embed``); images found
            there never run the encoder.
        image_store: where registered image bytes are kept so that any replica can re-embed an
            image after eviction; default a folder in the system temp dir (one node). Use an
            ``s3://`` prefix or a shared file system on a multi-node cluster.
        allowed_uri_prefixes: roots under which ``POST /images {"uri": ...}`` may read
            (``--allow-uri ROOT``): local folders (stored resolved, symlinks followed) or
            ``s3://bucket/prefix`` (stored normalised). None or empty = registration by URI is
            off; clients then upload the bytes.
        num_replicas / min_replicas / max_replicas: fixed replicas, or autoscaling bounds.
        num_cpus / num_gpus: per replica (``--gpu`` sets num_gpus=1).
        device: torch device; None = cuda when the replica sees a GPU.
        torch_threads: intra-op threads per replica (None = the replica's CPUs, at least 1).
        cache_mb: memory for cached embeddings per replica (least recently used evicted).
        token: bearer token every request except ``/health`` must carry; None = no auth.
        max_image_pixels, max_upload_mb, max_batch_size, batch_wait_timeout_s, max_points,
            max_boxes, automatic_defaults: tunables, also changeable through ``user_config``.
            ``max_points`` / ``max_boxes`` cap the prompts of one request (the mask decoder's
            memory grows with points times image tokens, and with boxes times image pixels).
    """

    model_config = ConfigDict(extra="forbid")

    checkpoint: str | None = None
    model_type: str = "vit_b"
    seed: int | None = 0
    storage_options: dict[str, Any] = Field(default_factory=dict)
    embedding_store: str | None = None
    image_store: str = Field(
        default_factory=lambda: os.path.join(tempfile.gettempdir(), "icas-serve-images"))
    allowed_uri_prefixes: list[str] | None = None
    num_replicas: int | None = Field(default=None, ge=1)
    min_replicas: int | None = Field(default=None, ge=0)
    max_replicas: int | None = Field(default=None, ge=1)
    num_cpus: float = Field(default=1.0, gt=0)
    num_gpus: float = Field(default=0.0, ge=0)
    device: str | None = None
    torch_threads: int | None = Field(default=None, ge=1)
    cache_mb: float = Field(default=1024, gt=0)
    token: str | None = None
    max_image_pixels: int = Field(default=50_000_000, ge=1)
    max_upload_mb: float = Field(default=64.0, gt=0)
    max_batch_size: int = Field(default=8, ge=1)
    max_points: int = Field(default=256, ge=1, le=4096)
    max_boxes: int = Field(default=16, ge=1, le=256)
    batch_wait_timeout_s: float = Field(default=0.005, ge=0)
    automatic_defaults: dict[str, Any] = Field(default_factory=dict)
    name: str = "icas-sam"

    @field_validator("allowed_uri_prefixes")
    @classmethod
    def _roots(cls, value: list[str] | None) -> list[str] | None:
        """Roots in the form :func:`icas_ray.paths.is_inside` compares: local ones resolved
        (``realpath``), ``s3://`` ones with ``.``/``..``/``//`` collapsed."""
        if value is None:
            return None
        from icas_ray.paths import normalise_uri

        out = []
        for root in value:
            scheme = root.split("://", 1)[0].lower() if "://" in root else "file"
            if scheme not in ("file", "s3") or not root.strip():
                raise ValueError(f"allowed URI root {root!r} must be a local folder or "
                                 "s3://bucket/prefix")
            norm = normalise_uri(root).rstrip("/") if scheme == "s3" else normalise_uri(root)
            if scheme == "s3" and not norm[len("s3://"):]:
                raise ValueError(f"allowed URI root {root!r} names no bucket: "
                                 "use s3://bucket/prefix")
            out.append(norm)
        return out

    @model_validator(mode="after")
    def _check(self) -> SamServeArgs:
        from icas_ray.sam import SAM_SPECS

        if self.model_type not in SAM_SPECS:
            raise ValueError(f"model_type {self.model_type!r} must be one of "
                             f"{', '.join(sorted(SAM_SPECS))}")
        if self.num_replicas is not None and (self.min_replicas is not None
                                              or self.max_replicas is not None):
            raise ValueError("give num_replicas or min_replicas/max_replicas, not both")
        if (self.min_replicas is not None and self.max_replicas is not None
                and self.min_replicas > self.max_replicas):
            raise ValueError(f"min_replicas {self.min_replicas} > max_replicas {self.max_replicas}")
        return self

    def user_config(self) -> dict[str, Any]:
        """The tunables, as the deployment's initial ``user_config``."""
        return {k: getattr(self, k) for k in TUNABLES}

    def make_storage(self) -> Storage:
        """The :class:`~icas_ray.storage.Storage` of ``storage_options`` (endpoint, profile,
        anon, and any other fsspec option)."""
        from icas_ray.storage import Storage, StorageOptions

        options = self.storage_options
        known = {k: options[k] for k in ("endpoint_url", "profile", "anon") if k in options}
        extra = {k: v for k, v in options.items() if k not in known}
        return Storage(StorageOptions(extra=extra, **known))


def check_args(args: SamServeArgs) -> None:
    """What can be checked before Ray starts: the checkpoint exists, the embedding store holds
    this model type, every local ``--allow-uri`` root is a folder. Creates a local image store.

    Called by ``icas serve`` before it starts Ray, and by :func:`~icas_ray.serve.app.build_app`
    before it deploys.

    Raises:
        ModelLoadError: the checkpoint does not exist.
        ConfigError: an allowed root is missing or not a folder; the embedding store has no
            manifest or holds another model type.
    """
    from icas_ray.errors import ConfigError, ModelLoadError
    from icas_ray.serve.store import EmbeddingStore

    for root in args.allowed_uri_prefixes or ():
        if "://" not in root and not os.path.isdir(root):
            what = "is not a folder" if os.path.exists(root) else "does not exist"
            raise ConfigError(f"--allow-uri {root!r} {what}: name a folder the service may "
                              "read images from (or an s3:// prefix)")
    storage = args.make_storage()
    if args.checkpoint is not None and not storage.exists(args.checkpoint):
        raise ModelLoadError(f"checkpoint {args.checkpoint!r} does not exist: give the path or "
                             "s3:// URI of a segment_anything .pth file")
    if args.embedding_store:
        manifest = EmbeddingStore(args.embedding_store, storage).manifest()
        if manifest is None:
            raise ConfigError(f"embedding store {args.embedding_store!r} has no manifest.json: "
                              "create it with `icas serve embed`")
        if manifest.get("model_type") != args.model_type:
            raise ConfigError(f"embedding store {args.embedding_store!r} holds "
                              f"{manifest.get('model_type')} embeddings, not {args.model_type}")
    if "://" not in args.image_store:
        os.makedirs(args.image_store, exist_ok=True)
