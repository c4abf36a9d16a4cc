"""``icas segment``: pre-segment a folder with Ray, preview every method, list the methods.

``icas segment INPUT --method M`` runs the ``run`` subcommand (the group's default), so both
``icas segment ./photos --method superpixel`` and ``icas segment preview photo.jpg`` work.
"""

from __future__ import annotations

import json
import os
from typing import Any

import click

from icas_ray.cli._options import parse_key_values, ray_options, resources_from, storage_options
from icas_ray.segment import get_method, method_names
from icas_ray.storage import Storage

_NAMES = method_names()
_CHOICES = sorted({*_NAMES, *(a for n in _NAMES for a in get_method(n).aliases)})


class _DefaultGroup(click.Group):
    """A group whose first argument, when it is not a subcommand, goes to ``run``."""

    default = "run"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default, *args]
        return super().parse_args(ctx, args)


def _backend(sam_url: str | None, sam_token: str | None) -> Any:
    if sam_url is None:
        return None
    from icas_ray.serve.client import SamClient

    return SamClient(sam_url, token=sam_token)


_MODEL_TYPES = ["vit_b", "vit_l", "vit_h", "tiny"]  # icas_ray.sam.SAM_SPECS, without importing it

_sam_url = click.option("--sam-url", metavar="URL", default=None,
                        help="URL of `icas serve` for the sam method, e.g. http://127.0.0.1:8000.")
_sam_token = click.option("--sam-token", envvar="ICAS_SERVE_TOKEN", default=None,
                          help="Bearer token of the SAM service (env ICAS_SERVE_TOKEN).")


@click.group(cls=_DefaultGroup)
def command() -> None:
    """Segment images for labelling: pre-segment a folder, preview the methods.

    \b
    Examples:
      icas segment ./photos --method superpixel -p region_size=30
      icas segment s3://bucket/photos --method felzenszwalb --output s3://bucket/segments
      icas segment s3://bucket/photos --method sam --sam-checkpoint s3://models/sam_vit_b.pth \
          --gpu --address auto
      icas segment preview ./photos/cat.jpg --output methods.png
      icas segment methods
    """


@command.command("run")
@click.argument("input_uri", metavar="INPUT")
@click.option("-m", "--method", type=click.Choice(_CHOICES, case_sensitive=False), required=True,
              help="Segmentation method (see `icas segment methods`).")
@click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE",
              help="Method parameter, repeatable, e.g. -p region_size=30 -p ruler=20.")
@click.option("-o", "--output", default=None, metavar="URI",
              help="Output root.  [default: INPUT_segmented next to INPUT]")
@click.option("--overwrite", is_flag=True,
              help="Segment again images that are done (also needed to change parameters).")
@click.option("--max-side", type=click.IntRange(min=16), default=None,
              help="Shrink images to this longest side first (labels then have that size).")
@click.option("--actors", type=click.IntRange(min=1), default=None,
              help="Segmentation actors.  [default: one per CPU; with --sam-checkpoint one "
                   "per GPU (--gpu) or per 4 CPUs]")
@_sam_url
@_sam_token
@click.option("--sam-checkpoint", metavar="URI", default=None,
              help="Run SAM in the job's actors from this checkpoint (.pth, local or s3://) "
                   "instead of --sam-url.")
@click.option("--sam-model-type", type=click.Choice(_MODEL_TYPES), default=None,
              help="Architecture of --sam-checkpoint.  [default: vit_b]")
@click.option("--gpu", is_flag=True, default=False,
              help="Give each actor that runs SAM (--sam-checkpoint) a GPU; on a cluster this "
                   "asks the autoscaler for GPU nodes. The other methods run on CPUs only.")
@storage_options
@ray_options
def run(input_uri: str, method: str, params: tuple[str, ...], output: str | None, overwrite: bool,
        max_side: int | None, actors: int | None, sam_url: str | None, sam_token: str | None,
        sam_checkpoint: str | None, sam_model_type: str | None, gpu: bool,
        storage: Storage, address: str | None, num_cpus: int | None) -> None:
    """Pre-segment every image under INPUT (a folder or s3:// prefix) with Ray.

    Each image gets a lossless label map (16-bit PNG, or .npz past 65535 segments) and a
    small preview under OUTPUT/METHOD/, mirroring INPUT's tree. Images already done are
    skipped; unreadable images are listed in OUTPUT/METHOD/summary.json, not fatal.
    The summary is printed as JSON on stdout.
    """
    from icas_ray.images import ReadConfig
    from icas_ray.pipeline.segment_job import PresegmentConfig, SamModel, presegment
    from icas_ray.progress import LogProgress

    m = get_method(method)
    values: dict[str, Any] = parse_key_values(params, example="region_size=30")
    if sam_model_type is not None and sam_checkpoint is None:
        raise click.UsageError("--sam-model-type is the architecture of --sam-checkpoint: give both")
    if m.needs_backend and sam_url is None and sam_checkpoint is None:
        raise click.UsageError("--method sam needs --sam-url URL of a running `icas serve`, or "
                               "--sam-checkpoint URI to run SAM in the job")
    if m.needs_backend and sam_url is not None:
        values["backend"] = _backend(sam_url, sam_token)
    m.make_params(values)  # fail on bad parameters before starting Ray
    sam = None if sam_checkpoint is None else SamModel(sam_checkpoint, sam_model_type or "vit_b")
    config = PresegmentConfig(input=input_uri, method=m.name, params=values, output=output,
                              overwrite=overwrite, read=ReadConfig(max_side=max_side),
                              actors=actors, sam=sam, gpu=gpu)
    summary = presegment(config, storage=storage, resources=resources_from(address, num_cpus),
                         progress=LogProgress())
    click.echo(json.dumps(summary.to_dict(), indent=2))


@command.command("preview")
@click.argument("image_uri", metavar="IMAGE")
@click.option("-o", "--output", default=None, metavar="PNG",
              help="Where to write the picture.  [default: IMAGE_STEM_segment_preview.png here]")
@click.option("-m", "--method", "methods", multiple=True,
              type=click.Choice(_CHOICES, case_sensitive=False),
              help="Only these methods (repeatable).  [default: all; sam with --sam-url]")
@click.option("-p", "--param", "params", multiple=True, metavar="METHOD.KEY=VALUE",
              help="Method parameter, repeatable, e.g. -p superpixel.region_size=20.")
@click.option("--max-side", type=click.IntRange(min=16), default=384, show_default=True,
              help="Shrink the image to this longest side before segmenting.")
@click.option("--panel", type=click.IntRange(min=64), default=256, show_default=True,
              help="Panel size in the picture.")
@_sam_url
@_sam_token
@storage_options
def preview(image_uri: str, output: str | None, methods: tuple[str, ...], params: tuple[str, ...],
            max_side: int, panel: int, sam_url: str | None, sam_token: str | None,
            storage: Storage) -> None:
    """Write one PNG showing every method's segments of IMAGE side by side."""
    import cv2

    from icas_ray.errors import InputError
    from icas_ray.images import DecodeError, decode
    from icas_ray.segment import preview_methods

    per_method: dict[str, dict[str, str]] = {}
    for key, value in parse_key_values(params, example="region_size=30").items():
        if "." not in key:
            raise click.BadParameter(f"{key!r} names no method: use METHOD.KEY=VALUE, "
                                     "e.g. superpixel.region_size=20", param_hint="--param")
        name, k = key.split(".", 1)
        per_method.setdefault(get_method(name).name, {})[k] = value
    try:
        image = decode(storage.read_bytes(image_uri))
    except DecodeError as e:
        raise InputError(f"{image_uri} cannot be decoded ({e}): check the file or give "
                         "another image") from e
    sheet = preview_methods(image, max_side=max_side, side=panel, methods=list(methods) or None,
                            params=per_method, backend=_backend(sam_url, sam_token))
    if output is None:
        stem = os.path.splitext(os.path.basename(image_uri.rstrip("/")))[0]
        output = f"{stem}_segment_preview.png"
    ok, png = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover
        raise click.ClickException("PNG encoding failed")
    storage.write_bytes(output, png.tobytes())
    click.echo(output)


@command.command("methods")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def methods_cmd(as_json: bool) -> None:
    """List the methods with their parameters and defaults."""
    rows = []
    for name in method_names():
        m = get_method(name)
        defaults = {k: v for k, v in m.defaults().items() if k != "backend"}
        least = m.minimum()
        rows.append({"method": name, "aliases": list(m.aliases), "summary": m.summary,
                     "params": defaults,
                     "min_size": {"side": least.side, "pixels": least.pixels}})
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=list))
        return
    for r in rows:
        alias = f" (alias {', '.join(r['aliases'])})" if r["aliases"] else ""
        click.echo(f"{r['method']}{alias}: {r['summary']}")
        needs = []
        if r["min_size"]["side"] > 1:
            needs.append(f"both sides >= {r['min_size']['side']} px")
        if r["min_size"]["pixels"] > 1:
            needs.append(f">= {r['min_size']['pixels']} pixels")
        if needs:
            click.echo(f"    (images need {' and '.join(needs)} with these defaults)")
        for k, v in r["params"].items():
            click.echo(f"    {k} = {v!r}")
