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

import contextlib
import errno
import functools
import hashlib
import io
import logging
import os
import posixpath
import re
import shutil
import stat
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import fsspec

from icas_ray.errors import ConfigError, InputError, StorageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "absolute_uri",
    "FileInfo",
    "Listing",
    "Storage",
    "StorageOptions",
    "DestinationExists",
    "is_remote",
    "is_temp_name",
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


def absolute_uri(uri: str) -> str:
    """Local paths made absolute (``~`` expanded, no trailing separator), for what other
    processes read (Ray workers do not share the caller's working directory); URIs without
    a trailing ``/``."""
    if "://" in uri:
        return uri.rstrip("/")
    return os.path.abspath(os.path.expanduser(uri)).rstrip(os.sep) or os.sep


def _local_path(uri: str) -> str:
    """The absolute path of a local ``uri`` (a path or ``file://``), ``~`` expanded."""
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    return os.path.abspath(os.path.expanduser(path))


def _read_local(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


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


@dataclass(frozen=True)
class Listing:
    """What a listing found: the image files, and every entry that could not be listed or
    read (a directory without permission, a broken symlink, a symlink cycle), with its reason."""

    files: list[FileInfo]
    problems: list[tuple[str, str]]


#: Names of the temporary files :meth:`Storage.write_bytes` (and local copies, on filesystems
#: without unnamed files) write before renaming or linking them into place
#: (``.<name>.<32 hex>.tmp``); a kill can leave them behind, and a resumed run removes its own
#: leftovers (:func:`is_temp_name`).
_TEMP_NAME = re.compile(r"^\..+\.[0-9a-f]{32}\.tmp$")


def is_temp_name(name: str) -> bool:
    """True for the base name of a temporary file icas-ray writes before renaming it."""
    return bool(_TEMP_NAME.match(name))


def _temp_sibling(path: str) -> str:
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")


class DestinationExists(StorageError):
    """A transfer found its destination taken (by a file this transfer did not write)."""


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
            path = _local_path(uri)
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
                raise ConfigError("s3:// needs s3fs: pip install -e '.[cluster]' in the icas-ray checkout") from e
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
        if isinstance(e, PermissionError) and not is_remote(uri):
            return StorageError(f"permission denied to {action} {uri!r}: check the file's "
                                "permissions (or run as a user who may read it)")
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
        """Every file under ``uri`` (recursively), sorted by URI; see :meth:`scan` for the
        entries that could not be listed."""
        return self.scan(uri).files

    def scan(self, uri: str) -> Listing:
        """Every file under ``uri`` (recursively, sorted by URI), and what could not be listed.

        Local folders are walked following symlinks (to files and to folders; a folder reached
        twice, as through a symlink cycle, is listed once and reported). Entries that cannot
        be read (a folder without permission, a broken symlink) are reported with a reason
        instead of being left out silently.
        """
        fs, path = self.fs(uri)
        if not self._call(uri, "list", fs.exists, path):
            if is_remote(uri):
                bucket = path.split("/", 1)[0]
                if not self._call(uri, "list", fs.exists, bucket):
                    raise StorageError(f"bucket {bucket!r} does not exist: check the name in {uri!r}")
            raise InputError(f"{uri!r} does not exist: check the path")
        if _scheme(uri) == "file":
            if not os.path.isdir(path):
                return Listing([FileInfo(uri, os.stat(path).st_size)], [])
            found, problems = _walk_local(path)
            files = [FileInfo(self._uri(uri, p), size) for p, size in found]
            files.sort(key=lambda f: f.uri)
            return Listing(files, [(self._uri(uri, p), why) for p, why in problems])
        if not self._call(uri, "list", fs.isdir, path):
            info = self._call(uri, "list", fs.info, path)
            return Listing([FileInfo(uri, int(info.get("size") or 0))], [])
        found = self._call(uri, "list", fs.find, path, detail=True)
        out = [
            FileInfo(self._uri(uri, p), int(info.get("size") or 0))
            for p, info in found.items()
            if info.get("type", "file") == "file" and not p.endswith("/")
        ]
        out.sort(key=lambda f: f.uri)
        return Listing(out, [])

    def list_images(self, uri: str, *, sniff: bool = False,
                    exclude: tuple[str, ...] = ()) -> list[FileInfo]:
        """Image files under ``uri``, recursively, with sizes (see :meth:`scan_images`; the
        entries that could not be listed are logged)."""
        listing = self.scan_images(uri, sniff=sniff, exclude=exclude)
        for entry, why in listing.problems[:20]:
            logger.warning("not listed: %s (%s)", entry, why)
        return listing.files

    def scan_images(self, uri: str, *, sniff: bool = False,
                    exclude: tuple[str, ...] = ()) -> Listing:
        """Image files under ``uri``, recursively, with sizes, and what could not be listed.

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
        listing = self.scan(uri)
        for f in listing.files:
            if excluded and f.uri.startswith(excluded):
                continue
            name = posixpath.basename(f.uri.replace(os.sep, "/"))
            if name.startswith("."):
                continue
            ext = posixpath.splitext(name)[1].lower()
            if ext in IMAGE_EXTENSIONS:
                images.append(f)
            elif sniff and f.size >= 4:
                try:
                    if sniff_image(self.read_head(f.uri, _SNIFF_BYTES)):
                        images.append(f)
                except (OSError, StorageError) as e:
                    listing.problems.append((f.uri, f"cannot read: {e}"))
        problems = [(u, why) for u, why in listing.problems
                    if not (excluded and u.startswith(excluded))
                    and not posixpath.basename(u.replace(os.sep, "/")).startswith(".")]
        return Listing(images, problems)

    # -- reading and writing ---------------------------------------------------------------
    def read_bytes(self, uri: str) -> bytes:
        if _scheme(uri) == "file":
            # A plain read, no filesystem resolved: fsspec's local open costs a third of
            # decoding a small PNG, and the resolution 6 of the 20 us a read took.
            return bytes(self._call(uri, "read", _read_local, _local_path(uri)))
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
            tmp = _temp_sibling(path)
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

    def read_table(self, uri: str) -> Any:
        """A Parquet file as a ``pyarrow.Table``."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        return pq.read_table(pa.BufferReader(self.read_bytes(uri)))

    def write_table(self, uri: str, table: Any, *, arrow_schema: bool = True) -> None:
        """Write a ``pyarrow.Table`` as Parquet, atomically (see :meth:`write_bytes`).

        ``arrow_schema=False`` leaves Arrow's schema out of the file: readers get Parquet's own
        types, so a dictionary-encoded column reads back as plain values.
        """
        import pyarrow as pa
        import pyarrow.parquet as pq

        buf = pa.BufferOutputStream()
        pq.write_table(table, buf, store_schema=arrow_schema)
        self.write_bytes(uri, buf.getvalue().to_pybytes())

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

    # -- transfers that never replace a file -----------------------------------------------
    def content_hash(self, uri: str) -> str:
        """The MD5 (hex) of a file's content: read for local files; for objects, the ETag
        when it is a plain MD5 (single-part uploads and copies), else read."""
        fs, path = self.fs(uri)
        if is_remote(uri):
            info = self._call(uri, "stat", fs.info, path)
            etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
            if re.fullmatch(r"[0-9a-f]{32}", etag):
                return etag
            return hashlib.md5(self.read_bytes(uri), usedforsecurity=False).hexdigest()
        digest = hashlib.md5(usedforsecurity=False)
        with self._call(uri, "read", open, path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()

    def transfer_new(self, src: str, dst: str, *, move: bool) -> tuple[int, str]:
        """Copy ``src`` to ``dst``, never replacing a file already at ``dst``; returns the
        copy's ``(size, md5)``. With ``move`` a local file on the same disk is hard-linked
        (no data copied); the source is never deleted here: the caller records the transfer
        first, then calls :meth:`delete`.

        Local copies are written unnamed and linked into place (:func:`_create_new`), so
        ``dst`` never holds a partial copy. A symlinked source is copied by content.

        Raises:
            DestinationExists: ``dst`` exists.
            StorageError: the copy's size differs from the source's.
        """
        if _scheme(src) == _scheme(dst) == "file":
            spath, dpath = self.fs(src)[1], self.fs(dst)[1]
            if move and not os.path.islink(spath):
                os.makedirs(os.path.dirname(dpath), exist_ok=True)
                try:
                    os.link(spath, dpath)
                    return os.stat(dpath).st_size, self.content_hash(dst)
                except FileExistsError as e:
                    raise DestinationExists(f"{dst!r} exists already") from e
                except OSError:
                    pass  # another disk, or no hard links there: copy instead
            fd = self._call(src, "read", os.open, spath, os.O_RDONLY | _CLOEXEC)
            try:
                size = os.fstat(fd).st_size
                copied, md5 = _create_new(dpath, dst, lambda: os.read(fd, _CHUNK), fsync=move)
            finally:
                os.close(fd)
            _check_copy(src, dst, size, copied)
            return size, md5
        if self.exists(dst):
            raise DestinationExists(f"{dst!r} exists already")
        if _scheme(src) == _scheme(dst):
            sfs, spath = self.fs(src)
            self._call(src, "copy", sfs.copy, spath, self.fs(dst)[1])
            self._verify(src, dst)
            return self.size(dst), self.content_hash(dst)
        data = self.read_bytes(src)
        md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if _scheme(dst) == "file":
            _create_new(self.fs(dst)[1], dst, functools.partial(io.BytesIO(data).read, _CHUNK),
                        fsync=move)
        else:
            self.write_bytes(dst, data)
        _check_copy(src, dst, len(data), self.size(dst))
        return len(data), md5

    def delete(self, uri: str) -> None:
        fs, path = self.fs(uri)
        self._call(uri, "delete", fs.rm_file, path)

    def delete_tree(self, uri: str) -> None:
        """Delete a folder and everything under it (missing folders are fine)."""
        fs, path = self.fs(uri)
        if self._call(uri, "check", fs.exists, path):
            self._call(uri, "delete", fs.rm, path, recursive=True)


#: Chunk size of local copies.
_CHUNK = 1 << 20
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)  # not on Windows

_PROC_FD: tuple[int, int] | None = None  # (pid, its /proc/self/fd folder open, or -1)
_PROC_FD_LOCK = threading.Lock()


def _proc_fd() -> int | None:
    """This process's ``/proc/self/fd`` opened as a folder (None without ``/proc``); opened
    again after a fork, since the folder it names is the opener's."""
    global _PROC_FD
    pid = os.getpid()
    with _PROC_FD_LOCK:
        if _PROC_FD is None or _PROC_FD[0] != pid:
            try:
                fd = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
            except OSError:
                fd = -1
            _PROC_FD = (pid, fd)
        return _PROC_FD[1] if _PROC_FD[1] >= 0 else None


def _open_unnamed(path: str) -> tuple[int, str | None, int | None]:
    """A new file for writing, in the folder of ``path`` (created if missing), that has no name
    yet: ``(fd, None, proc)`` for an unnamed file (``O_TMPFILE``; ``proc`` is this process's
    ``/proc/self/fd`` folder, to link it from), else ``(fd, temporary sibling, None)`` where the
    filesystem or the platform cannot make one."""
    folder = os.path.dirname(path)
    flag = getattr(os, "O_TMPFILE", 0)
    proc = _proc_fd() if flag else None
    if proc is not None:
        for attempt in (0, 1):
            try:
                return os.open(folder, os.O_WRONLY | _CLOEXEC | flag, 0o666), None, proc
            except FileNotFoundError:
                if attempt:
                    raise
                os.makedirs(folder, exist_ok=True)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                    raise
                break  # this filesystem has no unnamed files
    os.makedirs(folder, exist_ok=True)
    tmp = _temp_sibling(path)
    return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC, 0o666), tmp, None


def _create_new(path: str, uri: str, read: Callable[[], bytes], *, fsync: bool) -> tuple[int, str]:
    """Write the chunks ``read()`` returns (until ``b""``) to a new local file ``path``, never
    replacing a file there; returns ``(bytes written, MD5)``.

    The file gets its name only once complete: it is written unnamed and linked into place,
    so a kill leaves nothing behind (on filesystems without unnamed files, a temporary sibling
    is linked and removed instead). With ``fsync`` it is on disk before it is named.

    Raises:
        DestinationExists: a file ``uri`` (``path``) exists.
    """
    fd, tmp, proc = _open_unnamed(path)
    digest = hashlib.md5(usedforsecurity=False)
    written = 0
    try:
        while chunk := read():
            digest.update(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
            written += len(chunk)
        if fsync:  # the source is deleted after this copy: it must be on disk
            os.fsync(fd)
        try:
            if tmp is None:
                os.link(str(fd), path, src_dir_fd=proc, follow_symlinks=True)
            else:
                os.link(tmp, path)
        except FileExistsError as e:
            raise DestinationExists(f"{uri!r} exists already") from e
    finally:
        os.close(fd)
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    return written, digest.hexdigest()


def _reason(e: OSError) -> str:
    if isinstance(e, PermissionError):
        return "permission denied"
    return e.strerror or str(e)


def _walk_local(root: str) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
    """``([(path, size)], [(path, reason)])`` of the regular files under ``root``, following
    symlinks; each folder (by device and inode) is entered once, so cycles end."""
    files: list[tuple[str, int]] = []
    problems: list[tuple[str, str]] = []
    seen: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            st = os.stat(folder)
        except OSError as e:
            problems.append((folder, f"cannot list folder: {_reason(e)}"))
            continue
        if (st.st_dev, st.st_ino) in seen:
            problems.append((folder, "skipped: a symlink to a folder already listed (cycle or "
                                     "second link)"))
            continue
        seen.add((st.st_dev, st.st_ino))
        try:
            with os.scandir(folder) as it:
                entries = list(it)
        except OSError as e:
            problems.append((folder, f"cannot list folder: {_reason(e)}"))
            continue
        for entry in entries:
            try:
                target = entry.stat(follow_symlinks=True)
            except OSError as e:
                kind = "broken symlink" if entry.is_symlink() else "cannot stat"
                problems.append((entry.path, f"{kind}: {_reason(e)}"))
                continue
            if stat.S_ISDIR(target.st_mode):
                stack.append(entry.path)
            elif stat.S_ISREG(target.st_mode):
                files.append((entry.path, target.st_size))
            elif not entry.name.startswith("."):
                problems.append((entry.path, "not a regular file (a FIFO, socket or device)"))
    return files, problems


def _check_copy(src: str, dst: str, size: int, copied: int) -> None:
    if size != copied:
        raise StorageError(f"copy of {src!r} to {dst!r} is incomplete ({copied} of {size} bytes)")
