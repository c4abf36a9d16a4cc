"""The images of a labelling session and the only way the server reaches a file.

The page names an image by its index in the listing or by its relative name from the listing,
never by a path: :meth:`Catalog.resolve` maps that id to a URI under the folder, and
:meth:`Catalog.read_image_bytes` checks again, when reading, that the file (symlinks resolved)
still lies inside the folder, so a file swapped for a link after the listing is refused too.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from icas_ray.errors import InputError, StorageError
from icas_ray.paths import is_inside, join_inside
from icas_ray.segment import relative_path
from icas_ray.storage import Storage

__all__ = ["Catalog", "ImageEntry", "Refused"]


class Refused(StorageError):
    """An id that names no image of the session, or a file that leads outside its root."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class ImageEntry:
    """One image: its index, its path relative to the folder (``/``-separated) and URI."""

    index: int
    rel: str
    uri: str

    @property
    def stem(self) -> str:
        base = posixpath.basename(self.rel)
        return base.rsplit(".", 1)[0] if "." in base.lstrip(".") else base

    @property
    def group(self) -> str:
        """The folder the image lies in, relative to the session's folder ('' = top)."""
        return posixpath.dirname(self.rel)


class Catalog:
    """The sorted image listing of ``folder`` (the output folder excluded).

    Args:
        folder: local path or ``s3://`` prefix.
        output: the session's output root (never listed as input).
        storage: file access.

    Raises:
        InputError: the folder does not exist or holds no images.
    """

    def __init__(self, folder: str, output: str, storage: Storage) -> None:
        self.folder = folder
        self.output = output
        self.storage = storage
        if not storage.exists(folder):
            raise InputError(f"{folder!r} does not exist: give a folder of images")
        files = storage.list_images(folder, exclude=(output,))
        self.entries = [ImageEntry(i, relative_path(folder, f.uri), f.uri) for i, f in enumerate(files)]
        if not self.entries:
            raise InputError(f"{folder!r} holds no images (png, jpg, ...): nothing to label")
        self._by_rel = {e.rel: e for e in self.entries}

    def __len__(self) -> int:
        return len(self.entries)

    def resolve(self, image_id: str | int) -> ImageEntry:
        """The entry an id from the page names: an index or a relative name of the listing.

        Raises:
            Refused: 404 for anything else (``../../etc/passwd`` included).
        """
        key = str(image_id)
        if key.isdigit() and int(key) < len(self.entries):
            return self.entries[int(key)]
        entry = self._by_rel.get(key)
        if entry is None:
            raise Refused(404, f"no image {key[:200]!r} in this session: ids are indexes or "
                               "names from /api/state")
        return entry

    def by_rel(self, rel: str) -> ImageEntry | None:
        return self._by_rel.get(rel)

    def check(self, entry: ImageEntry) -> None:
        """Refuse an image that (symlinks resolved) no longer lies inside the folder.

        Checked on every read and before serving a prepared copy, so a file swapped for a
        link after the listing is never served.

        Raises:
            Refused: 403.
        """
        if not is_inside(self.folder, entry.uri):
            raise Refused(403, f"{entry.rel!r} leads outside {self.folder!r} (a symlink?): "
                               "refusing to serve it")

    def read_image_bytes(self, entry: ImageEntry) -> bytes:
        """The file's bytes, after :meth:`check`."""
        self.check(entry)
        return self.storage.read_bytes(entry.uri)

    def output_dir(self, entry: ImageEntry) -> str:
        """Where the masks of ``entry`` go: the output root, mirroring the folder's tree."""
        if not entry.group:
            return self.output
        return join_inside(self.output, entry.group)

    def siblings(self, entry: ImageEntry) -> list[ImageEntry]:
        """The other images of ``entry``'s folder (one cluster of an ``icas cluster`` result)."""
        return [e for e in self.entries if e.group == entry.group and e.index != entry.index]
