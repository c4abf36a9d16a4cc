"""Storage on local paths, file:// URIs and s3:// through the loopback S3 server."""

from __future__ import annotations

import os
import shutil

import pytest

from icas_ray.errors import InputError, StorageError
from icas_ray.storage import Storage, StorageOptions, parse_storage_options, sniff_image

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


def _populate(st: Storage, root: str) -> None:
    st.write_bytes(st.join(root, "a.png"), PNG)
    st.write_bytes(st.join(root, "sub", "b.JPG"), b"\xff\xd8\xff" + b"1" * 10)
    st.write_bytes(st.join(root, "sub", "deeper", "c.webp"), b"RIFF\x00\x00\x00\x00WEBP")
    st.write_bytes(st.join(root, "notes.txt"), b"hello")
    st.write_bytes(st.join(root, "sub", "noext"), PNG)
    st.write_bytes(st.join(root, ".hidden.png"), PNG)


@pytest.fixture(params=["local", "file", "s3"])
def root(request, tmp_path):  # type: ignore[no-untyped-def]
    if request.param == "local":
        return Storage(), str(tmp_path / "root")
    if request.param == "file":
        return Storage(), "file://" + str(tmp_path / "root")
    server = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    return server.storage(), f"s3://{bucket}/root"


def test_list_images_recursive_filters_non_images(root):  # type: ignore[no-untyped-def]
    st, base = root
    _populate(st, base)
    names = sorted(os.path.relpath(f.uri, base) for f in st.list_images(base))
    assert names == ["a.png", "sub/b.JPG", "sub/deeper/c.webp"]
    sizes = {os.path.basename(f.uri): f.size for f in st.list_images(base)}
    assert sizes["a.png"] == len(PNG)
    # Content sniffing finds the PNG without an extension, but not the text file.
    sniffed = sorted(os.path.relpath(f.uri, base) for f in st.list_images(base, sniff=True))
    assert sniffed == ["a.png", "sub/b.JPG", "sub/deeper/c.webp", "sub/noext"]


def test_read_write_copy_move_delete(root):  # type: ignore[no-untyped-def]
    st, base = root
    src = st.join(base, "x", "one.png")
    st.write_bytes(src, PNG)
    assert st.read_bytes(src) == PNG and st.exists(src) and st.size(src) == len(PNG)
    st.write_bytes(src, PNG + b"more")  # atomic replace
    assert st.read_bytes(src) == PNG + b"more"
    dst = st.join(base, "y", "copy.png")
    st.copy(src, dst)
    assert st.read_bytes(dst) == st.read_bytes(src)
    moved = st.join(base, "z", "moved.png")
    st.move(src, moved)
    assert not st.exists(src) and st.read_bytes(moved) == PNG + b"more"
    st.delete(moved)
    assert not st.exists(moved)


def test_atomic_write_leaves_no_temporary_files(tmp_path):  # type: ignore[no-untyped-def]
    st = Storage()
    for i in range(5):
        st.write_bytes(str(tmp_path / "f.bin"), bytes([i]) * 100)
    assert os.listdir(tmp_path) == ["f.bin"]


def test_move_keeps_source_when_copy_fails(tmp_path, monkeypatch):  # type: ignore[no-untyped-def]
    """The source disappears only after the copy is verified."""
    st = Storage()
    src = str(tmp_path / "src.png")
    st.write_bytes(src, PNG)
    monkeypatch.setattr(os, "rename", lambda a, b: (_ for _ in ()).throw(OSError("cross-device")))

    def short_copy(a: str, b: str) -> None:  # a copy that comes out one byte short
        with open(a, "rb") as f, open(b, "wb") as g:
            g.write(f.read()[:-1])

    monkeypatch.setattr(shutil, "copyfile", short_copy)
    with pytest.raises(StorageError, match="incomplete"):
        st.move(src, str(tmp_path / "dst.png"))
    assert st.read_bytes(src) == PNG


def test_cross_filesystem_move(tmp_path, s3_server, s3_bucket):  # type: ignore[no-untyped-def]
    st = s3_server.storage()
    src = str(tmp_path / "local.png")
    st.write_bytes(src, PNG)
    dst = f"s3://{s3_bucket}/moved/local.png"
    st.move(src, dst)
    assert not os.path.exists(src) and st.read_bytes(dst) == PNG
    back = str(tmp_path / "back.png")
    st.copy(dst, back)
    assert open(back, "rb").read() == PNG


def test_missing_local_path_is_one_line_error(tmp_path):  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match=r"does not exist: check the path") as e:
        Storage().list_images(str(tmp_path / "nope"))
    assert "\n" not in str(e.value)


def test_missing_bucket_is_one_line_error(s3_server):  # type: ignore[no-untyped-def]
    with pytest.raises(StorageError, match=r"bucket 'no-such-bucket-x' does not exist") as e:
        s3_server.storage().list_images("s3://no-such-bucket-x/images")
    assert "\n" not in str(e.value)


def test_missing_s3_prefix_is_one_line_error(s3_server, s3_bucket):  # type: ignore[no-untyped-def]
    with pytest.raises(InputError, match="does not exist"):
        s3_server.storage().list_images(f"s3://{s3_bucket}/nothing-here")


def test_bad_credentials_are_one_line_error(s3_server, s3_bucket, monkeypatch):  # type: ignore[no-untyped-def]
    # The moto server runs in this process; make it check signatures like real S3 does.
    import moto.settings

    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    st = s3_server.storage(key="WRONGKEY", secret="wrong")
    with pytest.raises(StorageError, match="access denied .* check the AWS credentials") as e:
        st.list_images(f"s3://{s3_bucket}/x")
    assert "\n" not in str(e.value)


def test_unsupported_scheme():  # type: ignore[no-untyped-def]
    from icas_ray.errors import ConfigError

    with pytest.raises(ConfigError, match="unsupported URI scheme 'gs'"):
        Storage().list_images("gs://bucket/x")


def test_parse_storage_options():  # type: ignore[no-untyped-def]
    opts = parse_storage_options(["endpoint_url=http://127.0.0.1:9", "anon=true", "key=K"])
    assert opts == StorageOptions(endpoint_url="http://127.0.0.1:9", anon=True, extra={"key": "K"})
    assert opts.s3_kwargs()["endpoint_url"] == "http://127.0.0.1:9"
    from icas_ray.errors import ConfigError

    with pytest.raises(ConfigError, match="not key=value"):
        parse_storage_options(["oops"])


def test_sniff_image():  # type: ignore[no-untyped-def]
    assert sniff_image(PNG) and sniff_image(b"\xff\xd8\xff\xe0") and not sniff_image(b"hello")


def test_storage_pickles_without_filesystems(tmp_path):  # type: ignore[no-untyped-def]
    import pickle

    st = Storage(StorageOptions(endpoint_url="http://127.0.0.1:1"))
    st.exists(str(tmp_path))
    clone = pickle.loads(pickle.dumps(st))
    assert clone.options == st.options and clone._fs_cache == {}


@pytest.mark.parametrize("mode", ["copy", "move"])
def test_transfers_never_take_a_file_they_did_not_write(tmp_path, mode):  # type: ignore[no-untyped-def]
    """A copy is written under a temporary name and linked into place, so a destination never
    holds a partial copy; a destination this run did not write (other content) is left alone
    with its source, and a rerun skips what the run's records say it wrote."""
    from icas_ray.pipeline.journal import transfer_group

    st = Storage()
    records_dir = str(tmp_path / "records")
    src, dst = str(tmp_path / "src.png"), str(tmp_path / "out" / "dst.png")
    st.write_bytes(src, PNG * 10)
    os.makedirs(os.path.dirname(dst))
    with open(dst, "wb") as f:
        f.write(b"\0" * len(PNG * 10))  # a foreign file of the same size
    out = transfer_group([(src, dst)], mode, st, existing={dst: len(PNG * 10)}, records={},
                         record_dir=records_dir)
    assert out[0][1].startswith("error: ") and "not written by this run" in out[0][1]
    assert st.read_bytes(src) == PNG * 10 and st.read_bytes(dst) == b"\0" * len(PNG * 10)
    os.remove(dst)
    assert transfer_group([(src, dst)], mode, st, existing={}, records={},
                          record_dir=records_dir) == [(dst, "done")]
    assert st.read_bytes(dst) == PNG * 10 and st.exists(src) == (mode == "copy")
    assert not [n for n in os.listdir(tmp_path / "out") if n != "dst.png"]  # no temp file left
    import json

    records = {r["dst"]: r for name in os.listdir(records_dir)
               for r in json.load(open(os.path.join(records_dir, name)))}
    assert records[dst]["size"] == len(PNG * 10) and len(records[dst]["md5"]) == 32


@pytest.mark.parametrize("unnamed", [True, False], ids=["O_TMPFILE", "temp-sibling"])
def test_local_copy_is_named_only_when_complete(tmp_path, monkeypatch, unnamed):  # type: ignore[no-untyped-def]
    """A local copy is written unnamed (O_TMPFILE) and linked into place, or, on a filesystem
    without unnamed files, under a temporary sibling: either way the destination appears
    whole or not at all, a file there is never replaced, and nothing else is left behind."""
    import hashlib

    from icas_ray import storage as storage_mod
    from icas_ray.storage import DestinationExists

    if not unnamed:
        monkeypatch.delattr(os, "O_TMPFILE", raising=False)
    probe = str(tmp_path / "probe")
    fd, tmp, _ = storage_mod._open_unnamed(probe)
    os.close(fd)
    if tmp is not None:
        os.unlink(tmp)
    if unnamed and tmp is not None:
        pytest.skip("this filesystem has no O_TMPFILE")
    assert (tmp is None) == unnamed and os.listdir(tmp_path) == []

    st = Storage()
    data = os.urandom(3 * (1 << 20) + 17)  # several chunks
    src, dst = str(tmp_path / "src.bin"), str(tmp_path / "new" / "deeper" / "dst.bin")
    with open(src, "wb") as f:
        f.write(data)
    assert st.transfer_new(src, dst, move=False) == (len(data), hashlib.md5(data).hexdigest())
    assert st.read_bytes(dst) == data and os.listdir(os.path.dirname(dst)) == ["dst.bin"]
    with open(src, "ab") as f:
        f.write(b"changed")
    with pytest.raises(DestinationExists):
        st.transfer_new(src, dst, move=False)
    assert st.read_bytes(dst) == data and os.listdir(os.path.dirname(dst)) == ["dst.bin"]

    # A copy cut short (its source fails after the first chunk) leaves no file at all.
    chunks = iter([b"x" * 100])

    def failing_read() -> bytes:
        chunk = next(chunks, None)
        if chunk is None:
            raise OSError(5, "Input/output error")
        return chunk

    cut = str(tmp_path / "cut" / "f.bin")
    with pytest.raises(OSError, match="Input/output"):
        storage_mod._create_new(cut, cut, failing_read, fsync=False)
    assert os.listdir(tmp_path / "cut") == []


def test_local_copy_in_a_forked_process(tmp_path):  # type: ignore[no-untyped-def]
    """A forked worker links its own unnamed file, not its parent's descriptor of that number."""
    import multiprocessing

    st = Storage()
    src = str(tmp_path / "src.png")
    st.write_bytes(src, PNG * 3)
    st.transfer_new(src, str(tmp_path / "parent.png"), move=False)  # the parent opened /proc/self/fd
    holder = open(src, "rb")  # noqa: SIM115 - keeps parent descriptors busy across the fork
    try:
        proc = multiprocessing.get_context("fork").Process(
            target=st.transfer_new, args=(src, str(tmp_path / "child.png")), kwargs={"move": False})
        proc.start()
        proc.join(30)
    finally:
        holder.close()
    assert proc.exitcode == 0
    assert st.read_bytes(str(tmp_path / "child.png")) == PNG * 3
