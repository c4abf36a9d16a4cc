"""Stored label maps: lossless compact encoding, small previews, and where they live.

A pre-segmented image ``<input>/<rel>`` gets, under ``<output>/<method>/``:

* ``<rel>.labels.png``: the label map as a 16-bit grey PNG when every label is below 65536
  (lossless, and compact because segments are flat), else ``<rel>.labels.npz`` (int32,
  zlib-compressed numpy archive);
* ``<rel>.preview.jpg``: the image with segment boundaries, at most 256 pixels a side;

and the folder holds ``params.json`` (method and parameters), ``manifest.jsonl`` (one row per
input of the last run) and ``summary.json``. The default ``<output>`` is ``<input>_segmented``,
the folder where the seed (and ``icas label``) also write the exported masks.
"""

from __future__ import annotations

import io
import posixpath
from dataclasses import dataclass

import cv2
import numpy as np

from icas_ray.images import resize
from icas_ray.paths import join_inside, safe_relpath
from icas_ray.segment.render import overlay_boundaries
from icas_ray.storage import Storage

__all__ = [
    "LABELS_NPZ",
    "LABELS_PNG",
    "PREVIEW",
    "PresegLayout",
    "decode_labels",
    "default_output",
    "encode_labels",
    "encode_preview",
    "read_labels",
]

LABELS_PNG = ".labels.png"
LABELS_NPZ = ".labels.npz"
PREVIEW = ".preview.jpg"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def encode_labels(labels: np.ndarray) -> tuple[bytes, str]:
    """Lossless bytes of a label map and the file suffix to store them under.

    Returns:
        ``(data, LABELS_PNG)`` for a 16-bit PNG when ``max < 65536``, else
        ``(data, LABELS_NPZ)`` for a compressed int32 numpy archive.

    Example:
        >>> lab = np.arange(12, dtype=np.int32).reshape(3, 4)
        >>> data, suffix = encode_labels(lab)
        >>> suffix, bool((decode_labels(data) == lab).all())
        ('.labels.png', True)
    """
    lab = np.asarray(labels)
    if lab.size and int(lab.max()) >= 2**16 or (lab.size and int(lab.min()) < 0):
        buf = io.BytesIO()
        np.savez_compressed(buf, labels=lab.astype(np.int32))
        return buf.getvalue(), LABELS_NPZ
    ok, png = cv2.imencode(".png", lab.astype(np.uint16), [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:  # pragma: no cover - OpenCV encodes any 2-D uint16 array
        raise RuntimeError("PNG encoding failed")
    return png.tobytes(), LABELS_PNG


def decode_labels(data: bytes) -> np.ndarray:
    """A label map from :func:`encode_labels` bytes: ``(H, W) int32``."""
    if data[:8] == _PNG_MAGIC:
        arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        if arr is None or arr.ndim != 2:
            raise ValueError("not a single-channel label PNG")
        return arr.astype(np.int32)
    with np.load(io.BytesIO(data), allow_pickle=False) as z:
        return np.asarray(z["labels"], dtype=np.int32)


def encode_preview(image: np.ndarray, labels: np.ndarray, max_side: int = 256) -> bytes:
    """JPEG bytes of the image with its segment boundaries, at most ``max_side`` a side."""
    pic = overlay_boundaries(image, labels)
    h, w = pic.shape[:2]
    if max(h, w) > max_side:
        f = max_side / max(h, w)
        pic = resize(pic, (max(1, round(w * f)), max(1, round(h * f))))
    bgr = cv2.cvtColor(pic, cv2.COLOR_RGB2BGR)
    ok, jpg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:  # pragma: no cover
        raise RuntimeError("JPEG encoding failed")
    return jpg.tobytes()


def default_output(input_uri: str) -> str:
    """``<input>_segmented`` next to the input folder (the seed's rule)."""
    return input_uri.rstrip("/\\") + "_segmented"


def relative_path(root: str, uri: str) -> str:
    """``uri``'s path below ``root`` as :func:`icas_ray.paths.safe_relpath` makes it: ``/``
    separated, no ``..`` (``%2E%2E`` instead), never empty; a URI outside ``root`` (or the
    root itself, a single image) keeps its file name only."""
    r = root.rstrip("/\\").replace("\\", "/")
    u = uri.replace("\\", "/")
    if r.startswith("file://") != u.startswith("file://"):
        r, u = r.removeprefix("file://"), u.removeprefix("file://")
    if u.startswith(r + "/") and u != r:
        rel = u[len(r) + 1:]
    else:
        rel = posixpath.basename(u.rstrip("/")) or u
    return safe_relpath(rel)


@dataclass(frozen=True)
class PresegLayout:
    """Where the pre-segmentation of one method is stored.

    Args:
        input: the input folder (or single image) URI.
        output: the output root URI (``<input>_segmented`` by default).
        method: canonical method name.
    """

    input: str
    output: str
    method: str

    @property
    def folder(self) -> str:
        return join_inside(self.output.rstrip("/") or self.output, self.method)

    def relative(self, uri: str) -> str:
        """The image's sanitised path relative to the input (``sub/a.jpg``; ``..`` parts of a
        hostile name become ``%2E%2E``, backslashes separate): the key of a stored result."""
        return relative_path(self.input, uri)

    def labels_uri(self, uri: str, suffix: str = LABELS_PNG) -> str:
        """Where the label map of image ``uri`` is stored (checked to lie inside ``folder``).

        Raises:
            StorageError: the path would lead outside the output (a symlink in it).
        """
        return join_inside(self.folder, self.relative(uri) + suffix)

    def preview_uri(self, uri: str) -> str:
        """Where the preview of image ``uri`` is stored; as :meth:`labels_uri`."""
        return join_inside(self.folder, self.relative(uri) + PREVIEW)

    @property
    def params_uri(self) -> str:
        return join_inside(self.folder, "params.json")

    @property
    def manifest_uri(self) -> str:
        return join_inside(self.folder, "manifest.jsonl")

    @property
    def summary_uri(self) -> str:
        return join_inside(self.folder, "summary.json")

    def done(self, storage: Storage) -> set[str]:
        """Relative paths of images whose label map is stored (labels are written last)."""
        if not storage.exists(self.folder):
            return set()
        found = set()
        for f in storage.list_files(self.folder):
            rel = relative_path(self.folder, f.uri)
            for suffix in (LABELS_PNG, LABELS_NPZ):
                if rel.endswith(suffix):
                    found.add(rel[: -len(suffix)])
        return found


def read_labels(storage: Storage, layout: PresegLayout, image_uri: str) -> np.ndarray | None:
    """The stored label map of an image, or None if it was not pre-segmented."""
    for suffix in (LABELS_PNG, LABELS_NPZ):
        uri = layout.labels_uri(image_uri, suffix)
        if storage.exists(uri):
            return decode_labels(storage.read_bytes(uri))
    return None
