"""Option decorators and helpers shared by the ``icas`` subcommands."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from icas_ray.errors import IcasError

F = TypeVar("F", bound=Callable[..., Any])


def setup_logging(*, verbose: int = 0, quiet: bool = False) -> None:
    """Configure logging for the CLI: messages to stderr, library loggers at INFO."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
    root = logging.getLogger("icas_ray")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    if verbose < 1:
        # Ray and its libraries are chatty at INFO; keep their warnings. Ray Data configures
        # its logger when imported (later, lazily), from this variable.
        import os

        os.environ.setdefault("RAY_DATA_LOG_LEVEL", "WARNING")
        for name in ("ray", "ray.data", "ray.serve", "ray.train", "ray.tune"):
            logging.getLogger(name).setLevel(logging.WARNING)


def storage_options(f: F) -> F:
    """``--storage-option key=value`` (repeatable) -> ``storage`` keyword (a Storage)."""

    def build(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> Any:
        from icas_ray.storage import Storage, parse_storage_options

        try:
            return Storage(parse_storage_options(value))
        except IcasError as e:
            raise click.BadParameter(str(e)) from e

    return click.option(
        "--storage-option", "storage", multiple=True, callback=build, metavar="KEY=VALUE",
        help="S3 option: endpoint_url=URL, profile=NAME, anon=true, key=..., secret=... "
             "(repeatable; defaults come from the AWS_* environment variables).",
    )(f)


def ray_options(f: F) -> F:
    """``--address`` and ``--num-cpus`` -> ``resources`` keyword (a ResourceConfig)."""
    f = click.option("--num-cpus", type=click.IntRange(min=1), default=None,
                     help="CPUs of the embedded local Ray (default: all).")(f)
    f = click.option("--address", default=None, metavar="ADDR",
                     help="Ray cluster to join: 'auto' (the cluster this machine is part of) or "
                          "HOST:6379 (default: start a new embedded local Ray on 127.0.0.1). "
                          "From a laptop, submit with `ray job submit` instead.")(f)
    return f


def resources_from(address: str | None, num_cpus: int | None) -> Any:
    from icas_ray.runtime import ResourceConfig

    return ResourceConfig(address=address, num_cpus=num_cpus)


class SizeType(click.ParamType):
    """``WxH`` -> ``(W, H)``."""

    name = "WxH"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        try:
            w, h = (int(v) for v in str(value).lower().split("x"))
            if w < 1 or h < 1:
                raise ValueError
            return (w, h)
        except ValueError:
            self.fail(f"{value!r} is not WxH with positive integers, e.g. 64x64", param, ctx)


def progress_reporter() -> Any:
    """The CLI's progress: log lines on stderr."""
    from icas_ray.progress import LogProgress

    return LogProgress()


def parse_key_values(pairs: tuple[str, ...], *, option: str = "--param",
                     example: str = "hash_size=16") -> dict[str, str]:
    """``("a=1", "b=x")`` -> ``{"a": "1", "b": "x"}`` (method parameters given on the CLI)."""
    out: dict[str, str] = {}
    for pair in pairs:
        if "=" not in pair:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE, e.g. {example}", param_hint=option)
        key, value = pair.split("=", 1)
        out[key.strip()] = value.strip()
    return out
