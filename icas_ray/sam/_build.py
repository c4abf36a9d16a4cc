"""Building Segment Anything models: a registry of sizes over one parameterised builder.

Every model, the production ``vit_b``/``vit_l``/``vit_h`` and the ``tiny`` one tests use, is
composed by :func:`_build_sam` from segment_anything's own classes, so tests exercise the same
code path as production. Checkpoints are read through :class:`~icas_ray.storage.Storage` (a
local path or ``s3://``) and loaded with ``map_location="cpu", weights_only=True`` before the
model moves to its device: a checkpoint saved on a GPU machine loads on a CPU-only one.
"""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import zipfile
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from icas_ray.errors import ConfigError, IcasError, ModelLoadError
from icas_ray.storage import Storage

if TYPE_CHECKING:
    import torch
    from segment_anything.modeling import Sam

__all__ = ["SAM_SPECS", "LoadedSam", "SamSpec", "build_sam", "load_state_dict", "pick_device"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamSpec:
    """The sizes of one SAM architecture (the arguments of segment_anything's ``_build_sam``).

    Args:
        encoder_embed_dim, encoder_depth, encoder_num_heads, encoder_global_attn_indexes: the
            ViT image encoder.
        img_size: side of the (square) encoder input; images are resized to it (long side).
        patch_size: ViT patch size; the embedding is ``img_size / patch_size`` on a side.
        window_size: windowed-attention size of the encoder's non-global blocks.
        prompt_embed_dim: channels of the image embedding and of the prompt tokens.
        decoder_mlp_dim, decoder_num_heads, decoder_depth: the mask decoder's transformer.
        iou_head_hidden_dim: width of the mask-quality head.
        mask_in_chans: channels of the prompt encoder's mask input.
    """

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    img_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    decoder_depth: int = 2
    iou_head_hidden_dim: int = 256
    mask_in_chans: int = 16

    @property
    def embedding_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` of the image embedding (``(256, 64, 64)`` for the real models)."""
        side = self.img_size // self.patch_size
        return (self.prompt_embed_dim, side, side)

    @property
    def embedding_bytes(self) -> int:
        """Bytes of one float32 embedding in memory."""
        c, h, w = self.embedding_shape
        return 4 * c * h * w


#: Model types and their sizes; ``tiny`` (random weights, 256 px) is for tests and benchmarks.
SAM_SPECS: dict[str, SamSpec] = {
    "vit_b": SamSpec(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamSpec(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamSpec(1280, 32, 16, (7, 15, 23, 31)),
    "tiny": SamSpec(64, 2, 2, (1,), img_size=256, window_size=4, prompt_embed_dim=32,
                    decoder_mlp_dim=64, decoder_num_heads=2, iou_head_hidden_dim=32),
}


def spec_for(model_type: str) -> SamSpec:
    """The :class:`SamSpec` of ``model_type``; an unknown name raises listing the valid ones."""
    try:
        return SAM_SPECS[model_type]
    except KeyError:
        raise ConfigError(
            f"unknown SAM model type {model_type!r}: must be one of {', '.join(sorted(SAM_SPECS))}"
        ) from None


def pick_device(device: str | None = None) -> str:
    """``device`` if given, else ``"cuda"`` when a GPU is visible, else ``"cpu"``."""
    import torch

    if device:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but no CUDA GPU is visible: use cpu")
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _import_sam() -> Any:
    try:
        import segment_anything.modeling as modeling
    except ImportError as e:
        raise ConfigError("segment_anything is not installed: pip install -e '.[serve]' in the icas-ray checkout") from e
    return modeling


def _build_sam(spec: SamSpec) -> Sam:
    """Compose a SAM with random weights from ``spec`` (segment_anything's own classes)."""
    import torch

    m = _import_sam()
    side = spec.img_size // spec.patch_size
    sam = m.Sam(
        image_encoder=m.ImageEncoderViT(
            depth=spec.encoder_depth,
            embed_dim=spec.encoder_embed_dim,
            img_size=spec.img_size,
            mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=spec.encoder_num_heads,
            patch_size=spec.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=spec.encoder_global_attn_indexes,
            window_size=spec.window_size,
            out_chans=spec.prompt_embed_dim,
        ),
        prompt_encoder=m.PromptEncoder(
            embed_dim=spec.prompt_embed_dim,
            image_embedding_size=(side, side),
            input_image_size=(spec.img_size, spec.img_size),
            mask_in_chans=spec.mask_in_chans,
        ),
        mask_decoder=m.MaskDecoder(
            num_multimask_outputs=3,
            transformer=m.TwoWayTransformer(
                depth=spec.decoder_depth,
                embedding_dim=spec.prompt_embed_dim,
                mlp_dim=spec.decoder_mlp_dim,
                num_heads=spec.decoder_num_heads,
            ),
            transformer_dim=spec.prompt_embed_dim,
            iou_head_depth=3,
            iou_head_hidden_dim=spec.iou_head_hidden_dim,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )
    sam.eval()
    return sam


def load_state_dict(uri: str, storage: Storage | None = None) -> tuple[dict[str, Any], str]:
    """Read a checkpoint from a local path or ``s3://`` URI.

    Returns:
        ``(state_dict, sha256 hex digest of the file)``; tensors are on the CPU.

    Raises:
        ModelLoadError: the file is missing, unreadable, or not a PyTorch state dict.
    """
    import torch

    storage = storage or Storage()
    try:
        if not storage.exists(uri):
            raise ModelLoadError(
                f"checkpoint {uri!r} does not exist: give the path or s3:// URI of a SAM .pth file "
                "(e.g. sam_vit_b_01ec64.pth from github.com/facebookresearch/segment-anything)"
            )
        data = storage.read_bytes(uri)
    except ModelLoadError:
        raise
    except (IcasError, OSError) as e:
        raise ModelLoadError(f"cannot read checkpoint {uri!r}: {e}") from e
    digest = hashlib.sha256(data).hexdigest()
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, zipfile.BadZipFile) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(
            f"checkpoint {uri!r} is not a PyTorch state dict that loads with weights_only=True "
            f"({first})"
        ) from e
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]  # training checkpoints wrap the weights
    if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
        raise ModelLoadError(f"checkpoint {uri!r} holds a {type(state).__name__}, not a state dict")
    return state, digest


def _guess_type(state: dict[str, Any]) -> str | None:
    """The registered model type whose encoder width matches the checkpoint, if any."""
    w = state.get("image_encoder.patch_embed.proj.weight")
    depth = len({k.split(".")[2] for k in state if k.startswith("image_encoder.blocks.")})
    if w is None:
        return None
    for name, spec in SAM_SPECS.items():
        if int(w.shape[0]) == spec.encoder_embed_dim and depth == spec.encoder_depth:
            return name
    return None


def _load_into(sam: Sam, state: dict[str, Any], *, uri: str, model_type: str) -> None:
    own = sam.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or mismatched:
        guess = _guess_type(state)
        hint = (f"it looks like a {guess} checkpoint: use --model-type {guess}"
                if guess and guess != model_type else
                "check that it is a segment_anything SAM checkpoint of that type")
        detail = []
        if mismatched:
            k = mismatched[0]
            detail.append(f"{len(mismatched)} shape mismatches, e.g. {k}: checkpoint "
                          f"{tuple(state[k].shape)} vs model {tuple(own[k].shape)}")
        if missing:
            detail.append(f"{len(missing)} missing keys, e.g. {missing[0]}")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[0]}")
        raise ModelLoadError(
            f"checkpoint {uri!r} does not fit model type {model_type!r} ({'; '.join(detail)}): {hint}"
        )
    sam.load_state_dict(state)


@dataclass
class LoadedSam:
    """A built model and where it came from.

    Attributes:
        model: the ``segment_anything.modeling.Sam``, in eval mode on ``device``.
        model_type: registry name (``vit_b``, ..., ``tiny``).
        model_id: identity of the weights, ``"<type>-<first 16 hex of the checkpoint sha256>"``
            or ``"<type>-random"``; stored with pre-computed embeddings.
        checkpoint: the checkpoint URI, or None for random weights.
        device: torch device string.
    """

    model: Sam
    model_type: str
    model_id: str
    checkpoint: str | None
    device: str

    @property
    def spec(self) -> SamSpec:
        return SAM_SPECS[self.model_type]


def build_sam(model_type: str, checkpoint: str | None = None, *, storage: Storage | None = None,
              device: str | None = None, seed: int | None = None) -> LoadedSam:
    """Build a SAM of a registered type, with weights from ``checkpoint`` or random ones.

    Args:
        model_type: ``vit_b``, ``vit_l``, ``vit_h`` or ``tiny`` (see :data:`SAM_SPECS`).
        checkpoint: a local path or ``s3://`` URI of a segment_anything ``.pth``; None keeps the
            random initialisation (tests, benchmarks).
        storage: how to reach ``checkpoint`` (S3 endpoint and credentials).
        device: ``cpu``, ``cuda``, ``cuda:N``; None picks cuda when available.
        seed: seed for the random initialisation (reproducible random models).

    Raises:
        ConfigError: unknown model type, or cuda requested without a GPU.
        ModelLoadError: the checkpoint is missing, unreadable or of another model type.

    Example:
        >>> loaded = build_sam("tiny", seed=0, device="cpu")
        >>> loaded.model_id, loaded.model.image_encoder.img_size
        ('tiny-random', 256)
    """
    import torch

    spec = spec_for(model_type)
    device = pick_device(device)
    state, digest = (load_state_dict(checkpoint, storage) if checkpoint is not None
                     else (None, None))
    if seed is not None:
        torch.manual_seed(seed)
    sam = _build_sam(spec)
    if state is not None:
        _load_into(sam, state, uri=str(checkpoint), model_type=model_type)
    sam.to(device)
    model_id = f"{model_type}-{digest[:16]}" if digest else f"{model_type}-random"
    logger.info("built SAM %s (%s) on %s", model_type, model_id, device)
    return LoadedSam(model=sam, model_type=model_type, model_id=model_id, checkpoint=checkpoint,
                     device=device)


def save_checkpoint(model: torch.nn.Module, uri: str, storage: Storage | None = None) -> None:
    """Write ``model.state_dict()`` to ``uri`` (local or ``s3://``) in torch's format."""
    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    (storage or Storage()).write_bytes(uri, buf.getvalue())
