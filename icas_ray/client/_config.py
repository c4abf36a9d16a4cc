"""The configuration of one ``icas label`` session: a frozen dataclass checked up front."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from icas_ray.errors import ConfigError

__all__ = ["DEFAULT_METHOD", "LabelConfig", "TemplateDirs", "is_loopback"]

#: Fast and close to object boundaries at the default sizes; the seed's users picked it most.
DEFAULT_METHOD = "superpixel"
#: Request bodies above this are refused with 413: a 4000x4000 painted map is ~32 MiB raw,
#: and far less once gzip-compressed by the page.
DEFAULT_MAX_BODY = 64 * 2**20


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class TemplateDirs:
    """The four folders of template painting (the seed's ``t`` key).

    Args:
        templates: patterns searched in the image.
        segments: the paint placed over each match (same file names as ``templates``).
        attentions: optional, where each template is compared (derived when missing).
        masks: optional, which segment pixels paint (derived when missing).
    """

    templates: str
    segments: str
    attentions: str | None = None
    masks: str | None = None


@dataclass(frozen=True)
class LabelConfig:
    """Everything ``icas label`` was asked to do.

    Args:
        folder: images to label (local path or ``s3://``), possibly one cluster folder.
        output: where masks and the session go; None = ``<folder>_segmented``.
        method: segmentation method for images without pre-segmentation (registry name).
        params: that method's parameters (strings from ``-p`` are converted by the registry).
        presegmented: ``icas segment`` results (its output root or one method folder).
        sam_url: base URL of ``icas serve``; None = no SAM mode.
        sam_token: bearer token of the SAM service.
        templates: template painting folders; None = the ``t`` key is off.
        host: interface to bind; anything but loopback requires ``token``.
        port: TCP port; 0 = any free port.
        token: required on every API request when set.
        indexed: also write one indexed PNG per image.
        keymap: action -> ``KeyboardEvent.key`` values (the page's key bindings).
        prefetch: how many images ahead (and one behind) are prepared in the background.
        propose: after a save, propose its masks on the other images of its folder.
        max_body: request bodies above this many bytes are refused (413).
    """

    folder: str
    output: str | None = None
    method: str = DEFAULT_METHOD
    params: Mapping[str, Any] = field(default_factory=dict)
    presegmented: str | None = None
    sam_url: str | None = None
    sam_token: str | None = None
    templates: TemplateDirs | None = None
    host: str = "127.0.0.1"
    port: int = 0
    token: str | None = None
    indexed: bool = False
    keymap: Mapping[str, list[str]] | None = None
    prefetch: int = 2
    propose: bool = True
    max_body: int = DEFAULT_MAX_BODY

    def __post_init__(self) -> None:
        if not is_loopback(self.host) and not self.token:
            raise ConfigError(f"--host {self.host} is reachable from other machines: a token is "
                              "required (icas label generates one; pass token= in code)")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port {self.port} is out of range: expected 0..65535")
        if self.prefetch < 0:
            raise ConfigError(f"prefetch={self.prefetch} must be >= 0")
        if self.max_body < 1024:
            raise ConfigError(f"max_body={self.max_body} is too small: expected >= 1024 bytes")

    @property
    def output_uri(self) -> str:
        from icas_ray.segment.store import default_output

        return self.output or default_output(self.folder)
