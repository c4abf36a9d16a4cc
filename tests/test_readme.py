"""The README's command examples use commands and options that exist (checked against --help)."""

from __future__ import annotations

import os
import re
import shlex

from click.testing import CliRunner

from icas_ray.cli import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme_commands() -> list[list[str]]:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.split("#", 1)[0].strip()
            for part in re.split(r"&&|;", line):
                part = part.strip()
                if part.startswith("icas "):
                    commands.append(shlex.split(part.replace('"$TOKEN"', "T")))
    return commands


def _command_path(args: list[str]) -> tuple[list[str], list[str]]:
    """Split ``icas a b ARG --opt`` into the subcommand path and the options used."""
    group = cli
    path: list[str] = []
    ctx = group.make_context("icas", ["--help"], resilient_parsing=True)
    for word in args[1:]:
        if word.startswith("-"):
            break
        sub = group.get_command(ctx, word) if hasattr(group, "get_command") else None
        if sub is None:
            default = getattr(group, "default", None)  # `icas segment INPUT` = `icas segment run INPUT`
            if default:
                path.append(default)
            break
        path.append(word)
        group = sub
    options = [a.split("=")[0] for a in args if a.startswith("--")]
    return path, options


def test_readme_lists_commands():  # type: ignore[no-untyped-def]
    paths = {tuple(_command_path(c)[0][:1]) for c in _readme_commands()}
    for name in ("cluster", "threshold", "datasets", "segment", "serve", "label", "train"):
        assert (name,) in paths, f"README has no example of icas {name}"


def test_readme_options_exist():  # type: ignore[no-untyped-def]
    runner = CliRunner()
    for args in _readme_commands():
        path, options = _command_path(args)
        result = runner.invoke(cli, [*path, "--help"])
        assert result.exit_code == 0, (args, result.output)
        for opt in options:
            assert opt in result.output, f"README uses {opt} with `icas {' '.join(path)}`, which has no such option"
