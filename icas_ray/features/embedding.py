"""embedding: cosine similarity of L2-normalised deep features, in [-1, 1].

The features come from one of two networks:

- ``checkpoint=URI``: an autoencoder trained by ``icas train`` (its ``embed``), on images
  resized to the checkpoint's input size S x S and scaled to [0, 1];
- ``backbone=NAME``: a torchvision classification network with its classifier removed (the
  pooled features before it: 512 for resnet18/34, 2048 for resnet50, 576 / 960 for
  mobilenet_v3_small / large, 1280 for efficientnet_b0, 768 for vit_b_16), on 224 x 224 images
  with ImageNet normalisation. Its ``weights`` (a ``state_dict`` file or URI) are never
  downloaded: they come from the user, or ``weights=random`` asks for random initialisation
  (tests).

Features are the rows of a ``(N, D) float32`` matrix of unit length, so a pair's similarity is
their dot product: one matrix product per block of pairs (a network output of all zeros, e.g.
a blank image through random weights, stays zero: similarity 0 to everything). The network is built once per process
(a Ray worker or actor keeps it for the whole job) and torch is imported only then:
``import icas_ray.features`` stays light.

Example:
    >>> import numpy as np
    >>> from icas_ray.features import get_method
    >>> m = get_method("embedding", {"backbone": "resnet18", "weights": "random"})
    >>> f = m.extract([np.zeros((224, 224, 3), np.uint8)] * 2)
    >>> f["embedding"].shape, round(float(m.pairwise(f, f)[0, 1]), 4)
    ((2, 512), 1.0)
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from icas_ray.errors import ConfigError, ModelLoadError
from icas_ray.features._base import FeatureMethod, Features, positive_int, register
from icas_ray.images import ReadConfig, resize
from icas_ray.storage import Storage

__all__ = ["BACKBONES", "EmbeddingMethod", "EmbeddingParams", "clear_cache", "cosine_matrix",
           "cosine_matrix_torch"]

logger = logging.getLogger(__name__)

#: The ImageNet statistics torchvision's pretrained weights expect.
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_BACKBONE_SIZE = 224

# Which attribute holds the classifier, per family (name prefix), and which of its items to
# replace by Identity (None: the whole head). ConvNeXt keeps its LayerNorm + Flatten: they
# belong to the pooled features. VGG, AlexNet, SqueezeNet (no pooled layer before a hidden
# MLP / conv classifier), GoogLeNet and Inception (auxiliary heads), MaxViT and vit_h_14
# (518 px weights) are left out.
_HEADS: dict[str, tuple[str, int | None]] = {
    "resnet": ("fc", None), "resnext": ("fc", None), "wide_resnet": ("fc", None),
    "regnet": ("fc", None), "shufflenet": ("fc", None),
    "mobilenet": ("classifier", None), "efficientnet": ("classifier", None),
    "densenet": ("classifier", None), "mnasnet": ("classifier", None),
    "convnext": ("classifier", 2), "vit": ("heads", None), "swin": ("head", None),
}
#: The backbones accepted (torchvision 0.29 builders); vision transformers need 224 x 224.
BACKBONES: tuple[str, ...] = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
    "regnet_x_400mf", "regnet_x_800mf", "regnet_x_1_6gf", "regnet_x_3_2gf", "regnet_x_8gf",
    "regnet_x_16gf", "regnet_x_32gf", "regnet_y_400mf", "regnet_y_800mf", "regnet_y_1_6gf",
    "regnet_y_3_2gf", "regnet_y_8gf", "regnet_y_16gf", "regnet_y_32gf", "regnet_y_128gf",
    "shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0",
    "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
    "efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3", "efficientnet_b4",
    "efficientnet_b5", "efficientnet_b6", "efficientnet_b7",
    "efficientnet_v2_s", "efficientnet_v2_m", "efficientnet_v2_l",
    "densenet121", "densenet161", "densenet169", "densenet201",
    "mnasnet0_5", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3",
    "convnext_tiny", "convnext_small", "convnext_base", "convnext_large",
    "vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32",
    "swin_t", "swin_s", "swin_b", "swin_v2_t", "swin_v2_s", "swin_v2_b",
)
_FIXED_SIZE = ("vit_",)  # position embeddings fix the input size
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
RANDOM = "random"


def _weights_hint(backbone: str) -> str:
    return (f"pass --param weights=FILE_OR_URI (a state_dict saved on a machine with internet by "
            f"torch.save(torchvision.models.{backbone}(weights='DEFAULT').state_dict(), "
            f"'{backbone}.pth')), or --param weights=random for random weights; nothing is "
            "downloaded at run time")


@dataclass(frozen=True)
class EmbeddingParams:
    """Args:
        checkpoint: URI (local or ``s3://``) of an autoencoder checkpoint from ``icas train``.
        backbone: a torchvision network by name (see :data:`BACKBONES`), instead of a checkpoint.
        weights: the backbone's ``state_dict`` (file or URI), or ``"random"``.
        batch_size: images per forward pass (>= 1).
        device: ``"auto"`` (cuda when available, else cpu), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
    """

    checkpoint: str | None = None
    backbone: str | None = None
    weights: str | None = None
    batch_size: int = 32
    device: str = "auto"

    def __post_init__(self) -> None:
        if (self.checkpoint is None) == (self.backbone is None):
            raise ConfigError("method embedding needs exactly one of --param checkpoint=URI (an "
                              "`icas train` checkpoint) or --param backbone=NAME (e.g. resnet18)")
        if self.backbone is not None:
            if self.backbone not in BACKBONES:
                raise ConfigError(f"unknown backbone {self.backbone!r}: must be one of "
                                  f"{', '.join(BACKBONES)}")
            if not self.weights:
                raise ConfigError(f"backbone {self.backbone} needs weights: "
                                  f"{_weights_hint(self.backbone)}")
        elif self.weights is not None:
            raise ConfigError("--param weights applies to a backbone only: a checkpoint holds "
                              "its own weights")
        positive_int("embedding", "batch_size", self.batch_size)
        if not _DEVICE.match(self.device):
            raise ConfigError(f"parameter device={self.device!r} of method embedding is invalid: "
                              "expected auto, cpu, cuda or cuda:N")


def cosine_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of every pair of unit rows: ``(Na, D), (Nb, D) -> (Na, Nb) float32``
    in [-1, 1]."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    out = np.asarray(a, np.float32) @ np.asarray(b, np.float32).T
    return np.clip(out, -1.0, 1.0, out=out)


def cosine_matrix_torch(a: np.ndarray, b: np.ndarray, device: str = "cpu") -> np.ndarray:
    """:func:`cosine_matrix` with a torch matrix product on ``device``."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), np.float32)
    import torch

    with torch.inference_mode():
        ta = torch.as_tensor(np.asarray(a, np.float32), device=device)
        tb = torch.as_tensor(np.asarray(b, np.float32), device=device)
        out: np.ndarray = (ta @ tb.T).clamp_(-1.0, 1.0).cpu().numpy()
    return out


# -- the network, once per process ------------------------------------------------------------
_LOCK = threading.Lock()
_NETS: dict[tuple[str, ...], Any] = {}
_META: dict[tuple[str, str], dict[str, Any]] = {}


def _version(uri: str | None) -> str:
    """A local file's size and mtime, so that a checkpoint rewritten in place (a resumed
    ``icas train``) is loaded again; remote URIs are cached by name for the process."""
    if not uri or "://" in uri and not uri.startswith("file://"):
        return ""
    try:
        st = os.stat(uri.removeprefix("file://"))
    except OSError:
        return ""
    return f"{st.st_size}:{st.st_mtime_ns}"


def clear_cache() -> None:
    """Forget the networks and checkpoint metadata this process has loaded."""
    with _LOCK:
        _NETS.clear()
        _META.clear()
_THREADS_SET = False


def _set_threads() -> None:
    """Use the CPUs this process may run on, or what Ray gave the worker (``OMP_NUM_THREADS``,
    which torch reads itself): never more threads than cores, which oversubscribes when
    several actors share a node."""
    global _THREADS_SET
    if _THREADS_SET:
        return
    import torch

    if not os.environ.get("OMP_NUM_THREADS"):
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cpus = os.cpu_count() or 1
        torch.set_num_threads(max(1, min(torch.get_num_threads(), cpus)))
    _THREADS_SET = True


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _checkpoint_meta(uri: str, storage: Storage) -> dict[str, Any]:
    """The checkpoint's metadata (cached per process): its input size decides the read."""
    key = (uri, _version(uri))
    with _LOCK:
        if key not in _META:
            from icas_ray.train.checkpoint import read_checkpoint

            blob = read_checkpoint(uri, storage=storage)
            _META[key] = {k: v for k, v in blob.items()
                          if k not in ("state_dict", "optimizer", "scheduler")}
        return _META[key]


def _read_state_dict(uri: str, backbone: str, storage: Storage) -> dict[str, Any]:
    from icas_ray.train.checkpoint import read_state_dict

    return read_state_dict(uri, storage=storage, what="backbone weights",
                           hint=_weights_hint(backbone))


def _headless(backbone: str) -> Any:
    """The torchvision network ``backbone`` (random weights) with its classifier replaced by
    Identity: it maps ``(N, 3, H, W)`` to ``(N, D)`` pooled features."""
    import torchvision
    from torch import nn

    net = torchvision.models.get_model(backbone, weights=None)
    family = next(p for p in sorted(_HEADS, key=len, reverse=True) if backbone.startswith(p))
    attr, index = _HEADS[family]
    if index is None:
        setattr(net, attr, nn.Identity())
    else:
        getattr(net, attr)[index] = nn.Identity()
    return net


def _backbone(backbone: str, weights: str, storage: Storage) -> Any:
    net = _headless(backbone)
    if weights == RANDOM:
        logger.warning("embedding: backbone %s with random weights (asked for)", backbone)
        return net
    state = _read_state_dict(weights, backbone, storage)
    wanted = net.state_dict()
    # The classifier's keys (fc.weight ...) are extra here: a whole-model file fits.
    missing = [k for k in wanted if k not in state]
    if missing:
        raise ModelLoadError(f"backbone weights {weights!r} do not fit {backbone}: missing "
                             f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    try:
        net.load_state_dict({k: state[k] for k in wanted})
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip()
        raise ModelLoadError(f"backbone weights {weights!r} do not fit {backbone} ({first[:160]})") from e
    return net


def _network(params: EmbeddingParams, storage: Storage) -> tuple[Any, str]:
    """The network in eval mode on its device, built on first use in this process."""
    device = _resolve_device(params.device)
    key = (params.checkpoint or "", _version(params.checkpoint), params.backbone or "",
           params.weights or "", _version(params.weights), device)
    with _LOCK:
        if key not in _NETS:
            _set_threads()
            if params.checkpoint is not None:
                from icas_ray.train.checkpoint import load_model

                model, _ = load_model(params.checkpoint, storage=storage, device=device)
                _NETS[key] = model.eval()
            else:
                assert params.backbone is not None and params.weights is not None  # __post_init__
                _NETS[key] = _backbone(params.backbone, params.weights, storage).to(device).eval()
            logger.info("embedding: %s loaded on %s", params.checkpoint or params.backbone, device)
        return _NETS[key], device


@register("embedding")
class EmbeddingMethod(FeatureMethod):
    """Cosine similarity of deep features (autoencoder checkpoint or torchvision backbone)."""

    Params = EmbeddingParams
    default_read = ReadConfig(size=(_BACKBONE_SIZE, _BACKBONE_SIZE))
    cheap = True
    threshold_range = (-1.0, 1.0)
    default_strategy = "exhaustive"
    has_torch = True
    vector_features = True  # --cluster-model can cluster them
    loads_model = True  # an actor pool by default: the network is loaded once per actor

    def __init__(self, params: EmbeddingParams, read: ReadConfig | None = None, *,
                 storage: Storage | None = None) -> None:
        #: Storage the checkpoint and weights are read with (the job's S3 options); default
        #: ``Storage()``. A checkpoint's metadata is read here already: it sets the read size.
        self.storage = storage or Storage()
        if params.checkpoint is not None:
            side = int(_checkpoint_meta(params.checkpoint, self.storage)["image_size"])
            self._input: tuple[int, int] | None = (side, side)
            self._scale: tuple[tuple[float, ...], tuple[float, ...]] | None = None
            read = read if read is not None else ReadConfig(size=(side, side))
        else:
            assert params.backbone is not None  # __post_init__
            fixed = params.backbone.startswith(_FIXED_SIZE)
            self._input = (_BACKBONE_SIZE, _BACKBONE_SIZE) if fixed else None
            self._scale = (_IMAGENET_MEAN, _IMAGENET_STD)
        super().__init__(params, read)
        if self._input is None:
            # Convolutional backbones pool any size: the job's --size if it gives one.
            self._input = self.read.size or (_BACKBONE_SIZE, _BACKBONE_SIZE)

    @property
    def input_size(self) -> tuple[int, int]:
        """``(width, height)`` the network gets: every image is resized to it."""
        assert self._input is not None  # set in __init__
        return self._input

    def extract(self, images: Sequence[np.ndarray]) -> Features:
        """``{"embedding": (N, D) float32}`` unit rows of ``(H, W, 3) uint8`` RGB images."""
        if not len(images):
            return {"embedding": np.zeros((0, 0), np.float32)}
        import torch
        import torch.nn.functional as F

        net, device = _network(self.params, self.storage)
        w, h = self.input_size
        bs = self.params.batch_size
        parts = []
        with torch.inference_mode():
            for s in range(0, len(images), bs):
                chunk = [img if img.shape[:2] == (h, w) else resize(img, (w, h))
                         for img in images[s:s + bs]]
                x = torch.from_numpy(np.stack(chunk)).to(device).permute(0, 3, 1, 2).float() / 255.0
                if self._scale is not None:
                    mean = torch.tensor(self._scale[0], device=device).view(1, 3, 1, 1)
                    std = torch.tensor(self._scale[1], device=device).view(1, 3, 1, 1)
                    x = (x - mean) / std
                y = net.embed(x) if self.params.checkpoint is not None else net(x)
                # float64 with a tiny eps: randomly initialised networks (EfficientNet) give
                # features of ~1e-13, which float32 and the default eps would not scale to 1.
                y = F.normalize(y.reshape(len(chunk), -1).cpu().double(), dim=1, eps=1e-300)
                parts.append(y.float().numpy())
        return {"embedding": np.concatenate(parts).astype(np.float32, copy=False)}

    def pairwise(self, a: Features, b: Features) -> np.ndarray:
        return cosine_matrix(a["embedding"], b["embedding"])

    def pairwise_torch(self, a: Features, b: Features, device: str) -> np.ndarray:
        return cosine_matrix_torch(a["embedding"], b["embedding"], device)
