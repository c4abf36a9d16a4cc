"""Segment Anything in this process: model registry, checkpoint loading, a cached predictor.

Public surface:

- :func:`build_sam` / :data:`SAM_SPECS`: ``vit_b``, ``vit_l``, ``vit_h`` and a ``tiny`` test
  size, all composed by one parameterised builder from segment_anything's classes; checkpoints
  from a local path or ``s3://``.
- :class:`LocalSam`: the plain-class SAM backend (:class:`~icas_ray.sam_protocol.SamBackend`)
  with an LRU of image embeddings; :class:`SamEmbedding` is what the encoder produces.

Importing this package does not import torch or segment_anything; building a model does.
"""

from __future__ import annotations

from icas_ray.sam._build import (
    SAM_SPECS,
    LoadedSam,
    SamSpec,
    build_sam,
    load_state_dict,
    pick_device,
    save_checkpoint,
    spec_for,
)
from icas_ray.sam._embedding import EmbeddingCache, SamEmbedding, array_id, content_id
from icas_ray.sam._local import (
    DEFAULT_CACHE_BYTES,
    AutomaticParams,
    LocalSam,
    SamPrediction,
    labels_from_masks,
    validate_prompts,
)

__all__ = [
    "DEFAULT_CACHE_BYTES",
    "SAM_SPECS",
    "AutomaticParams",
    "EmbeddingCache",
    "LoadedSam",
    "LocalSam",
    "SamEmbedding",
    "SamPrediction",
    "SamSpec",
    "array_id",
    "build_sam",
    "content_id",
    "labels_from_masks",
    "load_state_dict",
    "pick_device",
    "save_checkpoint",
    "spec_for",
    "validate_prompts",
]
