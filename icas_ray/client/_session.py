"""The labelling session on disk: which images are done and where the labeller was.

``<output>/.icas_label/session.json`` is rewritten atomically (``Storage.write_bytes``) on
every save and every move, so a crash, a closed tab or a restart of ``icas label`` resumes at
the same image with the same done set, losing at most the image being painted.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from icas_ray.storage import Storage

__all__ = ["SESSION_FILE", "Session"]

logger = logging.getLogger(__name__)

SESSION_FILE = ".icas_label/session.json"
_VERSION = 1


class Session:
    """Done images (by relative name, with the colours saved) and the current position.

    Args:
        output: the session's output root.
        storage: file access.
        names: the relative names of the session's images, in order.
    """

    def __init__(self, output: str, storage: Storage, names: list[str]) -> None:
        self.storage = storage
        self.uri = storage.join(output, *SESSION_FILE.split("/"))
        self.names = names
        self._lock = threading.Lock()
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="icas-session")
        self.done: dict[str, dict[str, Any]] = {}
        self.current = 0
        self._load()

    def _load(self) -> None:
        if not self.storage.exists(self.uri):
            return
        try:
            state = json.loads(self.storage.read_text(self.uri))
        except (ValueError, UnicodeDecodeError) as e:
            # Written atomically, so this is someone else's file: keep it, start afresh.
            logger.warning("ignoring unreadable session %s (%s)", self.uri, e)
            return
        if not isinstance(state, dict) or state.get("version") != _VERSION:
            logger.warning("ignoring session %s of another version", self.uri)
            return
        known = set(self.names)
        self.done = {k: v for k, v in (state.get("done") or {}).items() if k in known}
        cur = state.get("current")
        if isinstance(cur, str) and cur in known:
            self.current = self.names.index(cur)

    def _write(self) -> None:
        state = {"version": _VERSION, "current": self.names[self.current],
                 "done": self.done, "updated": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self.storage.write_bytes(self.uri, json.dumps(state, indent=1).encode("utf-8"))

    def move(self, index: int) -> None:
        """Remember ``index`` as the current image.

        Written in the background: a move must not wait for an fsync (opening the next image
        is on the labeller's critical path), and losing the position of a crash's last second
        loses no paint. Saves (:meth:`mark_done`) write before they return.
        """
        with self._lock:
            if index == self.current:
                return
            self.current = index
        self._writer.submit(self._write_now)

    def _write_now(self) -> None:
        with self._lock:
            self._write()

    def flush(self) -> None:
        """Wait for background writes (on shutdown)."""
        self._writer.submit(lambda: None).result()

    def mark_done(self, rel: str, colors: list[tuple[int, int, int]], files: list[str]) -> None:
        with self._lock:
            self.done[rel] = {"colors": [list(c) for c in colors], "files": files,
                              "saved": time.strftime("%Y-%m-%dT%H:%M:%S")}
            self._write()

    def colors_of(self, rel: str) -> list[tuple[int, int, int]]:
        return [tuple(c) for c in self.done.get(rel, {}).get("colors", [])]  # type: ignore[misc]

    def first_undone(self) -> int | None:
        for i, name in enumerate(self.names):
            if name not in self.done:
                return i
        return None
