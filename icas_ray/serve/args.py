"""The typed arguments of the SAM Serve application (``build_app``'s pydantic model).

The same fields come from ``icas serve`` options, from ``serve run
icas_ray.serve.app:build_app key=value ...`` and from the ``args:`` of a Serve config file.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["SamServeArgs", "TUNABLES"]

#: Settings a running app changes through ``user_config`` (``reconfigure``), without restart.
TUNABLES = ("max_image_pixels", "max_upload_mb", "max_batch_size", "batch_wait_timeout_s",
            "automatic_defaults")


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
        allowed_uri_prefixes: URIs that ``POST /images {"uri": ...}`` may read; None = any
            the server can reach (restrict this when the service is exposed).
        num_replicas / min_replicas / max_replicas: fixed replicas, or autoscaling bounds.
        num_cpus / num_gpus: per replica (``--gpu`` sets num_gpus=1).
        device: torch device; None = cuda when the replica sees a GPU.
        torch_threads: intra-op threads per replica (None = the replica's CPUs, at least 1).
        cache_mb: memory for cached embeddings per replica (least recently used evicted).
        token: bearer token every request except ``/health`` must carry; None = no auth.
        max_image_pixels, max_upload_mb, max_batch_size, batch_wait_timeout_s,
            automatic_defaults: tunables, also changeable through ``user_config``.
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
    batch_wait_timeout_s: float = Field(default=0.005, ge=0)
    automatic_defaults: dict[str, Any] = Field(default_factory=dict)
    name: str = "icas-sam"

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
