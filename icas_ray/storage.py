"""Every file operation of icas-ray, on local paths, ``file://`` and ``s3://`` URIs alike.

A :class:`Storage` holds only its :class:`StorageOptions`, so it pickles cheaply into Ray
workers; each process opens its own fsspec filesystem on first use. S3 credentials and the
endpoint come from the usual AWS environment variables (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``) unless options override them.

Example:
    >>> st = Storage()
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> st.write_bytes(st.join(d, "a.png"), b"x")
    >>> [f.size for f in st.list_files(d)]
    [1]
"""

from __future__ import annotations

import logging
import os
import posixpath
import shutil
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import fsspec

from icas_ray.errors import ConfigError, InputError, StorageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "FileInfo",
    "Storage",
    "StorageOptions",
    "is_remote",
    "map_io",
    "parse_storage_options",
    "sniff_image",
]

T = TypeVar("T")
R = TypeVar("R")

logger = logging.getLogger(__name__)

#: File extensions listed as images without reading them (lower case, with the dot).
IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".jpe", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".pbm", ".pgm",
     ".ppm", ".pnm", ".jp2", ".ico"}
)

# Magic numbers of the formats Pillow/OpenCV decode; enough bytes to tell them apart.
_MAGIC: tuple[tuple[bytes, int], ...] = (
    (b"\x89PNG\r\n\x1a\n", 0),
    (b"\xff\xd8\xff", 0),
    (b"GIF87a", 0),
    (b"GIF89a", 0),
    (b"BM", 0),
    (b"II*\x00", 0),
    (b"MM\x00*", 0),
    (b"WEBP", 8),
    (b"\x00\x00\x00\x0cjP  ", 0),
)
_SNIFF_BYTES = 16

_SUPPORTED_SCHEMES = ("file", "s3", "memory")


def sniff_image(head: bytes) -> bool:
    """True if ``head`` (the first bytes of a file) starts like an image format we decode."""
    return any(head[off:off + len(magic)] == magic for magic, off in _MAGIC)


def is_remote(uri: str) -> bool:
    """True for URIs of an object store (``s3://``), False for local paths and ``file://``."""
    return _scheme(uri) not in ("file", "local")


def map_io(fn: Callable[[T], R], items: Sequence[T], *, remote: bool, threads: int = 16) -> list[R]:
    """``fn`` over ``items``, results in order: in threads when the files are ``remote`` (each
    call waits on a request), else one after another (a local call is a few system calls,
    where threads only contend for the GIL)."""
    if not remote or len(items) < 2:
        return [fn(item) for item in items]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(threads, len(items))) as pool:
        return list(pool.map(fn, items))


def _scheme(uri: str) -> str:
    if "://" not in uri:
        return "file"
    return uri.split("://", 1)[0].lower()


@dataclass(frozen=True)
class StorageOptions:
    """Options for remote filesystems, passed to fsspec.

    Args:
        endpoint_url: S3-compatible endpoint (MinIO, a local test server); None = AWS default
            or ``AWS_ENDPOINT_URL``.
        profile: AWS profile name from ``~/.aws``; None = the default chain.
        anon: access public buckets without credentials.
        extra: further keyword arguments for the fsspec filesystem (``key``, ``secret``, ...).
    """

    endpoint_url: str | None = None
    profile: str | None = None
    anon: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    def s3_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = dict(self.extra)
        endpoint = self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
            "AWS_ENDPOINT_URL"
        )
        if endpoint:
            kwargs["endpoint_url"] = endpoint
        if self.profile:
            kwargs["profile"] = self.profile
        if self.anon:
            kwargs["anon"] = True
        return kwargs


def parse_storage_options(pairs: tuple[str, ...] | list[str]) -> StorageOptions:
    """Build :class:`StorageOptions` from ``key=value`` strings (the CLI's ``--storage-option``).

    Known keys: ``endpoint_url``, ``profile``, ``anon`` (true/false); any other key goes to the
    fsspec filesystem as a string (``key``, ``secret``, ``token``, ...).
    """
    known: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--storage-option {pair!r} is not key=value, e.g. endpoint_url=http://127.0.0.1:9000")
        key, value = pair.split("=", 1)
        key = key.strip()
        if key in ("endpoint_url", "endpoint", "endpoint-url"):
            known["endpoint_url"] = value
        elif key == "profile":
            known["profile"] = value
        elif key == "anon":
            known["anon"] = value.strip().lower() in ("1", "true", "yes")
        else:
            extra[key] = value
    return StorageOptions(extra=extra, **known)


@dataclass(frozen=True)
class FileInfo:
    """A listed file: its full URI (same scheme as the listed root) and its size in bytes."""

    uri: str
    size: int


class Storage:
    """File operations on URIs through fsspec; picklable (the filesystems are per process)."""

    def __init__(self, options: StorageOptions | None = None) -> None:
        self.options = options or StorageOptions()
        self._fs_cache: dict[str, fsspec.AbstractFileSystem] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"options": self.options}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["options"])  # type: ignore[misc]

    # -- filesystem resolution -------------------------------------------------------------
    def fs(self, uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
        """The filesystem serving ``uri`` and the path within it."""
        scheme = _scheme(uri)
        if scheme not in _SUPPORTED_SCHEMES:
            raise ConfigError(
                f"unsupported URI scheme {scheme!r} in {uri!r}: use a local path, file:// or s3://"
            )
        with self._lock:
            fs = self._fs_cache.get(scheme)
            if fs is None:
                fs = self._open_fs(scheme)
                self._fs_cache[scheme] = fs
        if scheme == "file":
            path = uri[len("file://"):] if uri.startswith("file://") else uri
            path = os.path.abspath(os.path.expanduser(path))
        else:
            path = uri.split("://", 1)[1]
            if scheme == "s3" and not path.strip("/"):
                raise ConfigError(f"{uri!r} names no bucket: use s3://BUCKET/PREFIX")
        return fs, path

    def _open_fs(self, scheme: str) -> fsspec.AbstractFileSystem:
        if scheme == "s3":
            try:
                import s3fs  # noqa: F401
            except ImportError as e:
                raise ConfigError("s3:// needs s3fs: pip install 'icas-ray[cluster]'") from e
            # Listings must reflect writes made by other processes (Ray workers) at once.
            return fsspec.filesystem("s3", use_listings_cache=False, skip_instance_cache=True,
                                     **self.options.s3_kwargs())
        return fsspec.filesystem(scheme)

    def _uri(self, uri_like: str, path: str) -> str:
        """Rebuild a URI with the scheme of ``uri_like`` for a path returned by fsspec."""
        scheme = _scheme(uri_like)
        if scheme == "file":
            return "file://" + path if uri_like.startswith("file://") else path
        return f"{scheme}://{path.lstrip('/')}"

    # -- errors ----------------------------------------------------------------------------
    def _translate(self, e: Exception, uri: str, action: str) -> Exception:
        """Turn backend exceptions a user can fix into one-line :class:`IcasError` messages."""
        text = str(e)
        if isinstance(e, FileNotFoundError):
            if is_remote(uri) and ("NoSuchBucket" in text or "bucket" in text.lower()):
                bucket = uri.split("://", 1)[1].split("/", 1)[0]
                return StorageError(f"bucket {bucket!r} does not exist: check the name in {uri!r}")
            return InputError(f"{uri!r} does not exist: check the path")
        if isinstance(e, PermissionError) or "AccessDenied" in text or "InvalidAccessKeyId" in text \
                or "SignatureDoesNotMatch" in text or "Forbidden" in text:
            return StorageError(
                f"access denied to {uri!r} while trying to {action}: check the AWS credentials "
                "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE or --storage-option)"
            )
        if "NoSuchBucket" in text:
            bucket = uri.split("://", 1)[1].split("/", 1)[0]
            return StorageError(f"bucket {bucket!r} does not exist: check the name in {uri!r}")
        if "Could not connect" in text or "EndpointConnectionError" in type(e).__name__ \
                or "Connect" in type(e).__name__:
            return StorageError(
                f"cannot reach the storage endpoint for {uri!r}: check endpoint_url / AWS_ENDPOINT_URL ({text})"
            )
        return e

    def _call(self, uri: str, action: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as e:  # botocore's errors are not OSErrors; unknown ones re-raise as is
            translated = self._translate(e, uri, action)
            if translated is e:
                raise
            raise translated from e

    # -- queries ---------------------------------------------------------------------------
    def exists(self, uri: str) -> bool:
        fs, path = self.fs(uri)
        return bool(self._call(uri, "check", fs.exists, path))

    def isdir(self, uri: str) -> bool:
        fs, path = self.fs(uri)
        return bool(self._call(uri, "check", fs.isdir, path))

    def size(self, uri: str) -> int:
        fs, path = self.fs(uri)
        return int(self._call(uri, "stat", fs.size, path))

    def join(self, base: str, *parts: str) -> str:
        """Join path parts with ``/`` (or the OS separator for local paths)."""
        if _scheme(base) == "file" and not base.startswith("file://"):
            return os.path.join(base, *parts)
        return posixpath.join(base, *parts)

    def list_files(self, uri: str) -> list[FileInfo]:
        """Every file under ``uri`` (recursively), sorted by URI."""
        fs, path = self.fs(uri)
        if not self._call(uri, "list", fs.exists, path):
            if is_remote(uri):
                bucket = path.split("/", 1)[0]
                if not self._call(uri, "list", fs.exists, bucket):
                    raise StorageError(f"bucket {bucket!r} does not exist: check the name in {uri!r}")
            raise InputError(f"{uri!r} does not exist: check the path")
        if not self._call(uri, "list", fs.isdir, path):
            info = self._call(uri, "list", fs.info, path)
            return [FileInfo(uri, int(info.get("size") or 0))]
        found = self._call(uri, "list", fs.find, path, detail=True)
        out = [
            FileInfo(self._uri(uri, p), int(info.get("size") or 0))
            for p, info in found.items()
            if info.get("type", "file") == "file" and not p.endswith("/")
        ]
        out.sort(key=lambda f: f.uri)
        return out

    def list_images(self, uri: str, *, sniff: bool = False,
                    exclude: tuple[str, ...] = ()) -> list[FileInfo]:
        """Image files under ``uri``, recursively, with sizes.

        Args:
            uri: a folder (or one file) as local path, ``file://`` or ``s3://`` URI.
            sniff: also include files without an image extension whose first bytes are an
                image (one small read per such file).
            exclude: URIs of folders whose content is skipped (e.g. an output folder).

        Files with an image extension are listed without reading them (a corrupt one is
        reported later, when decoding). Hidden files (name starting with ``.``) are skipped.
        """
        images: list[FileInfo] = []
        excluded = tuple(e.rstrip("/") + "/" for e in exclude)
        for f in self.list_files(uri):
            if excluded and f.uri.startswith(excluded):
                continue
            name = posixpath.basename(f.uri.replace(os.sep, "/"))
            if name.startswith("."):
                continue
            ext = posixpath.splitext(name)[1].lower()
            if ext in IMAGE_EXTENSIONS:
                images.append(f)
            elif sniff and f.size >= 4 and sniff_image(self.read_head(f.uri, _SNIFF_BYTES)):
                images.append(f)
        return images

    # -- reading and writing ---------------------------------------------------------------
    def read_bytes(self, uri: str) -> bytes:
        fs, path = self.fs(uri)
        return bytes(self._call(uri, "read", fs.cat_file, path))

    def read_head(self, uri: str, n: int) -> bytes:
        fs, path = self.fs(uri)
        return bytes(self._call(uri, "read", fs.cat_file, path, start=0, end=n))

    def write_bytes(self, uri: str, data: bytes) -> None:
        """Write ``data`` to ``uri`` atomically: readers see the old file or the whole new one.

        Local files are written to a temporary sibling and renamed; an object-store PUT is
        atomic by itself.
        """
        fs, path = self.fs(uri)
        if _scheme(uri) == "file":
            parent = os.path.dirname(path)
            os.makedirs(parent, exist_ok=True)
            tmp = os.path.join(parent, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            return
        self._call(uri, "write", fs.pipe_file, path, data)

    def write_text(self, uri: str, text: str) -> None:
        self.write_bytes(uri, text.encode("utf-8"))

    def read_text(self, uri: str) -> str:
        return self.read_bytes(uri).decode("utf-8")

    def makedirs(self, uri: str) -> None:
        """Create a folder (a no-op on object stores, which have no folders)."""
        fs, path = self.fs(uri)
        if _scheme(uri) == "file":
            os.makedirs(path, exist_ok=True)

    def copy(self, src: str, dst: str, *, verify: bool = True) -> None:
        """Copy one file, possibly across filesystems; with ``verify`` check the copy's size.

        Raises:
            StorageError: the copy's size differs from the source's.
        """
        if _scheme(src) == _scheme(dst) == "file":
            self._copy_local(src, dst, verify)
            return
        sfs, spath = self.fs(src)
        dfs, dpath = self.fs(dst)
        if _scheme(src) == _scheme(dst):
            self._call(src, "copy", sfs.copy, spath, dpath)
        else:
            self.write_bytes(dst, self.read_bytes(src))
        if verify:
            self._verify(src, dst)

    def _copy_local(self, src: str, dst: str, verify: bool) -> None:
        """Local copy with plain os calls (fsspec's per-file overhead skipped), straight under
        its final name: a copy cut short is shorter than its source, and a resumed run
        compares sizes before it skips a file (:func:`icas_ray.output.transfer_one`). A
        temporary name and a rename would cost each file a directory update more."""
        spath, dpath = self.fs(src)[1], self.fs(dst)[1]
        os.makedirs(os.path.dirname(dpath), exist_ok=True)
        self._call(src, "copy", shutil.copyfile, spath, dpath)
        if verify:
            _check_copy(src, dst, os.stat(spath).st_size, os.stat(dpath).st_size)

    def _verify(self, src: str, dst: str) -> None:
        _check_copy(src, dst, self.size(src), self.size(dst))

    def move(self, src: str, dst: str) -> None:
        """Move one file; the source is deleted only after the copy is verified.

        A local rename within one filesystem is atomic and used when possible.
        """
        if _scheme(src) == "file" and _scheme(dst) == "file":
            _, spath = self.fs(src)
            _, dpath = self.fs(dst)
            os.makedirs(os.path.dirname(dpath), exist_ok=True)
            try:
                os.rename(spath, dpath)
                return
            except OSError:
                pass  # another device: copy, verify, delete
        self.copy(src, dst, verify=True)
        self.delete(src)

    def delete(self, uri: str) -> None:
        fs, path = self.fs(uri)
        self._call(uri, "delete", fs.rm_file, path)

    def delete_tree(self, uri: str) -> None:
        """Delete a folder and everything under it (missing folders are fine)."""
        fs, path = self.fs(uri)
        if self._call(uri, "check", fs.exists, path):
            self._call(uri, "delete", fs.rm, path, recursive=True)


def _check_copy(src: str, dst: str, size: int, copied: int) -> None:
    if size != copied:
        raise StorageError(f"copy of {src!r} to {dst!r} is incomplete ({copied} of {size} bytes)")
