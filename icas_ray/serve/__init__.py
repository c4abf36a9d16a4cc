"""Segment Anything on Ray Serve: the app, its client, and pre-computed embeddings.

- :func:`build_app` / :class:`SamServeArgs` (``icas_ray.serve.app``, ``icas_ray.serve.args``):
  the Serve application and its typed arguments.
- :class:`SamClient` (``icas_ray.serve.client``): HTTP client implementing ``SamBackend``.
- :func:`embed_folder` (``icas_ray.serve.embed``): the Ray Data job behind ``icas serve embed``.
- :class:`EmbeddingStore` (``icas_ray.serve.store``): embeddings keyed by image content hash.

Names load lazily: importing this package imports neither Ray Serve nor torch.
"""

from __future__ import annotations

from icas_ray._lazy import lazy_getattr

__all__ = ["EmbeddingStore", "SamClient", "SamServeArgs", "SamServiceError", "build_app",
           "embed_folder", "EmbedConfig"]

_WHERE = {
    "build_app": "icas_ray.serve.app",
    "SamServeArgs": "icas_ray.serve.args",
    "SamClient": "icas_ray.serve.client",
    "SamServiceError": "icas_ray.serve.client",
    "embed_folder": "icas_ray.serve.embed",
    "EmbedConfig": "icas_ray.serve.embed",
    "EmbeddingStore": "icas_ray.serve.store",
}


__getattr__ = lazy_getattr(__name__, _WHERE)
