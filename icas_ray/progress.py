"""Progress reporting: library code calls a :class:`Progress`; the CLI decides how to show it.

Library functions take ``progress: Progress | None``; None means silent. The CLI passes a
:class:`LogProgress`, which logs one line per phase change and at most one line every few
seconds while counting.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

__all__ = ["Progress", "LogProgress", "NullProgress"]

logger = logging.getLogger("icas_ray.progress")


class Progress(Protocol):
    """Receives progress of long work, phase by phase."""

    def start(self, phase: str, total: int | None = None) -> None: ...

    def advance(self, phase: str, done: int, total: int | None = None, note: str = "") -> None: ...

    def finish(self, phase: str, message: str) -> None: ...


class NullProgress:
    """Reports nothing."""

    def start(self, phase: str, total: int | None = None) -> None:
        pass

    def advance(self, phase: str, done: int, total: int | None = None, note: str = "") -> None:
        pass

    def finish(self, phase: str, message: str) -> None:
        pass


class LogProgress:
    """Logs progress to the ``icas_ray.progress`` logger, rate-limited per phase."""

    def __init__(self, every_s: float = 2.0) -> None:
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._t0: dict[str, float] = {}

    def start(self, phase: str, total: int | None = None) -> None:
        self._t0[phase] = self._last[phase] = time.monotonic()
        logger.info("%-9s| started%s", phase, f" ({total} items)" if total is not None else "")

    def advance(self, phase: str, done: int, total: int | None = None, note: str = "") -> None:
        now = time.monotonic()
        if total is not None and done >= total or now - self._last.get(phase, 0.0) >= self.every_s:
            self._last[phase] = now
            elapsed = now - self._t0.get(phase, now)
            rate = f", {done / elapsed:.0f}/s" if elapsed > 0.5 and done else ""
            of = f"/{total}" if total is not None else ""
            logger.info("%-9s| %d%s%s%s", phase, done, of, rate, f" {note}" if note else "")

    def finish(self, phase: str, message: str) -> None:
        elapsed = time.monotonic() - self._t0.get(phase, time.monotonic())
        logger.info("%-9s| %s (%.1fs)", phase, message, elapsed)
