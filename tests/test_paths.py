"""Sanitised relative paths and containment checks (icas_ray.paths)."""

import os

import pytest

from icas_ray.errors import StorageError
from icas_ray.paths import is_inside, join_inside, join_names_inside, safe_relpath


@pytest.mark.parametrize("rel, expected", [
    ("a.png", "a.png"),
    ("sub/a.png", "sub/a.png"),
    ("x\\..\\..\\..\\ESCAPED.png", "x/%2E%2E/%2E%2E/%2E%2E/ESCAPED.png"),
    ("../../etc/passwd", "%2E%2E/%2E%2E/etc/passwd"),
    ("/abs//./a.png", "abs/a.png"),
    ("C:\\photos\\a.png", "photos/a.png"),
], ids=["plain", "sub", "backslash-climb", "dotdot", "absolute", "drive"])
def test_safe_relpath(rel, expected):
    assert safe_relpath(rel) == expected


@pytest.mark.parametrize("rel", ["", "/", ".", "./"])
def test_safe_relpath_refuses_empty(rel):
    with pytest.raises(StorageError, match="names no file"):
        safe_relpath(rel)


def test_join_inside_never_leaves_the_root(tmp_path):
    root = str(tmp_path / "out")
    p = join_inside(root, "x\\..\\..\\..\\ESCAPED.png")
    assert p.startswith(root + os.sep) and is_inside(root, p)
    assert join_inside("s3://b/out", "../../k.png") == "s3://b/out/%2E%2E/%2E%2E/k.png"


def test_symlink_out_of_the_root_is_refused(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", root / "link")
    assert not is_inside(str(root), str(root / "link" / "a.png"))
    with pytest.raises(StorageError, match="outside"):
        join_inside(str(root), "link/a.png")


def test_is_inside_s3_keys():
    assert is_inside("s3://b/data", "s3://b/data/x/../y.png")
    assert not is_inside("s3://b/data", "s3://b/data/../secret.png")
    assert not is_inside("s3://b/data", "s3://b/database/y.png")
    assert not is_inside("/data", "s3://data/y.png")


def test_join_names_inside_is_join_inside_for_many_names(tmp_path):
    root = str(tmp_path / "out")
    os.makedirs(root)
    names = ["a.png", "b c.png", "..", "x\\..\\..\\ESCAPED.png", "sub/y.png", "C:a.png", "%2E%2E"]
    assert join_names_inside(root, names) == [join_inside(root, n) for n in names]
    assert all(p.startswith(root + os.sep) for p in join_names_inside(root, names))
    for uri_root in ("s3://bucket/out", "s3://bucket/out/"):
        assert join_names_inside(uri_root, names) == [join_inside(uri_root, n) for n in names]
    for nothing in (".", "C:", ""):
        with pytest.raises(StorageError, match="names no file"):
            join_names_inside(root, ["a.png", nothing])


def test_join_names_inside_refuses_a_symlinked_name_that_leads_out(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere" / "a.png", root / "a.png")
    os.symlink(root / "inside.png", root / "b.png")  # a link that stays inside is fine
    assert join_names_inside(str(root), ["b.png"]) == [str(root / "b.png")]
    with pytest.raises(StorageError, match="outside"):
        join_names_inside(str(root), ["ok.png", "a.png"])
