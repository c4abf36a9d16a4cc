"""The Serve config example and the CLI surface, without starting Serve."""

from __future__ import annotations

import os

import pytest
import yaml
from click.testing import CliRunner

EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "icas_ray", "serve",
                       "serve_config.example.yaml")


def test_example_config_is_a_valid_serve_config() -> None:
    from ray.serve.schema import ServeDeploySchema

    from icas_ray.serve.args import SamServeArgs

    with open(EXAMPLE) as f:
        config = yaml.safe_load(f)
    ServeDeploySchema(**config)
    app = config["applications"][0]
    assert app["import_path"] == "icas_ray.serve.app:build_app"
    args = SamServeArgs(**app["args"])
    assert config["http_options"]["host"] == "127.0.0.1" and args.model_type == "vit_b"


@pytest.mark.parametrize("kwargs, match", [
    ({"model_type": "vit_x"}, "must be one of"),
    ({"num_replicas": 2, "max_replicas": 3}, "not both"),
    ({"min_replicas": 3, "max_replicas": 2}, "min_replicas 3 > max_replicas 2"),
    ({"bogus": 1}, "Extra inputs"),
])
def test_args_validation(kwargs: dict, match: str) -> None:
    from pydantic import ValidationError

    from icas_ray.serve.args import SamServeArgs

    with pytest.raises(ValidationError, match=match):
        SamServeArgs(**kwargs)


def test_cli_serve_usage_errors() -> None:
    from icas_ray.cli import cli

    r = CliRunner().invoke(cli, ["serve", "--model-type", "vit_b"])
    assert r.exit_code == 2 and "--checkpoint is required" in r.output
    r = CliRunner().invoke(cli, ["serve", "--checkpoint", "x.pth", "--replicas", "2",
                                 "--max-replicas", "3"])
    assert r.exit_code == 2 and "not both" in r.output
    r = CliRunner().invoke(cli, ["serve", "embed", "--help"])
    assert r.exit_code == 0 and "--output" in r.output


def test_missing_checkpoint_fails_before_deploying(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from icas_ray.errors import ModelLoadError
    from icas_ray.serve.app import build_app
    from icas_ray.serve.args import SamServeArgs

    with pytest.raises(ModelLoadError, match="does not exist"):
        build_app(SamServeArgs(checkpoint=str(tmp_path / "nope.pth"), model_type="tiny"))


def test_import_is_light() -> None:
    import subprocess
    import sys

    code = ("import sys, icas_ray, icas_ray.serve, icas_ray.sam, icas_ray.cli.commands.serve; "
            "bad=[m for m in ('torch','segment_anything','ray.serve') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


@pytest.mark.parametrize("extra, match", [
    ([], "checkpoint '{tmp}/nope.pth' does not exist"),
    (["--allow-uri", "{tmp}/no-such-root"], "--allow-uri '{tmp}/no-such-root' does not exist"),
], ids=["missing-checkpoint", "missing-allow-uri-root"])
def test_cli_serve_checks_arguments_before_starting_ray(tmp_path, extra, match) -> None:  # type: ignore[no-untyped-def]
    """`icas serve` with a missing checkpoint (or root) exits 1 with one line before Ray is
    even imported (it used to start Ray first and fail 15 s later)."""
    import subprocess
    import sys

    ckpt = str(tmp_path / ("nope.pth" if not extra else "tiny.pth"))
    if extra:
        open(ckpt, "wb").close()
    argv = ["serve", "--checkpoint", ckpt, "--model-type", "tiny", "--port", "1",
            *[a.format(tmp=tmp_path) for a in extra]]
    code = ("import sys\nfrom icas_ray.cli import main\n"
            f"try:\n    main({argv!r})\n"
            "except SystemExit as e:\n"
            "    print('ray imported' if 'ray' in sys.modules else 'ray not imported')\n"
            "    sys.exit(e.code)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stdout.strip() == "ray not imported", r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and match.format(tmp=tmp_path) in lines[0], r.stderr


def test_cli_allow_uri_is_repeatable(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from icas_ray.cli.commands.serve import command

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    ctx = command.make_context("serve", ["--checkpoint", "x.pth", "--allow-uri", str(a),
                                         "--allow-uri", str(b), "--allow-uri", "s3://bk/p/"])
    assert ctx.params["allow_uri"] == (str(a), str(b), "s3://bk/p/")
