"""The labelling client behind ``icas label``: a local web server and a browser page.

The page paints segmentation masks with the original tool's interaction model (left click
fills a segment, right click unfills, double clicks toggle continuous modes, middle clicks
cut; keys q n p space z r d t f), plus GrabCut and SAM modes and whole-cluster proposals.
Painting runs in the browser; the server (Starlette on uvicorn, 127.0.0.1 by default) sends
images and label maps, runs GrabCut, templates and SAM prompts, and writes the masks.

Needs only the base install and the ``label`` extra: no Ray, no torch.

Example:
    >>> from icas_ray.client import LabelConfig, start_server   # doctest: +SKIP
    >>> running = start_server(LabelConfig("photos", port=0))    # doctest: +SKIP
    >>> running.url                                               # doctest: +SKIP
    'http://127.0.0.1:41234/'
"""

from __future__ import annotations

from icas_ray._lazy import lazy_getattr

__all__ = ["LabelConfig", "LabelState", "RunningServer", "TemplateDirs", "create_app", "serve",
           "start_server"]

_WHERE = {
    "LabelConfig": "icas_ray.client._config",
    "TemplateDirs": "icas_ray.client._config",
    "LabelState": "icas_ray.client.app",
    "create_app": "icas_ray.client.app",
    "RunningServer": "icas_ray.client.server",
    "serve": "icas_ray.client.server",
    "start_server": "icas_ray.client.server",
}

__getattr__ = lazy_getattr(__name__, _WHERE)
