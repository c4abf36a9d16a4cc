"""``icas label``: the local labelling page, and ``icas label export`` (COCO).

``icas label FOLDER ...`` runs the ``open`` subcommand (the group's default), so both
``icas label ./photos`` and ``icas label export ./photos --format coco`` work. Nothing here
imports Ray or torch: the command runs on the base install plus the ``label`` extra.
"""

from __future__ import annotations

import json
from typing import Any

import click

from icas_ray.cli._options import parse_key_values, storage_options
from icas_ray.storage import Storage


class _DefaultGroup(click.Group):
    """A group whose first argument, when it is not a subcommand, goes to ``open``."""

    default = "open"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default, *args]
        return super().parse_args(ctx, args)


def _method_choices() -> list[str]:
    from icas_ray.segment import get_method, method_names

    names = method_names()
    return sorted({*names, *(a for n in names for a in get_method(n).aliases)})


@click.group(cls=_DefaultGroup)
def command() -> None:
    """Label images in the browser: paint masks fast; export them as COCO.

    \b
    Examples:
      icas label ./photos
      icas label ./photos --method felzenszwalb -p segment_scale=200
      icas label ./photos --presegmented ./photos_segmented
      icas label ./clusters/results/cluster_3 --sam-url http://gpu-node:8000 --sam-token T
      icas label export ./photos --format coco --labels classes.json
    """


@command.command("open")
@click.argument("folder", metavar="FOLDER")
@click.option("-m", "--method", default=None, metavar="M",
              help="Segmentation method for images without pre-segmentation "
                   "(see `icas segment methods`; grabcut and sam open in their mode).  "
                   "[default: superpixel]")
@click.option("-p", "--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Method parameter, repeatable, e.g. -p region_size=30.")
@click.option("--sam-url", metavar="URL", default=None,
              help="`icas serve` for the SAM modes, e.g. http://127.0.0.1:8000.")
@click.option("--sam-token", envvar="ICAS_SERVE_TOKEN", default=None,
              help="Bearer token of the SAM service (env ICAS_SERVE_TOKEN).")
@click.option("--presegmented", metavar="DIR", default=None,
              help="`icas segment` results to take the segments from (its output or one "
                   "method folder in it).")
@click.option("--templates", metavar="DIR", default=None,
              help="Template painting (t): patterns to find in the image.")
@click.option("--attentions", metavar="DIR", default=None,
              help="Template painting: where each template is compared (derived if missing).")
@click.option("--segments", metavar="DIR", default=None,
              help="Template painting: the paint of each template (same file names).")
@click.option("--masks", metavar="DIR", default=None,
              help="Template painting: which segment pixels paint (derived if missing).")
@click.option("-o", "--output", metavar="DIR", default=None,
              help="Where masks and the session go.  [default: FOLDER_segmented]")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Port to listen on.  [default: 8750, or a free one if taken]")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on; anything but loopback needs the printed token.")
@click.option("--no-browser", is_flag=True, help="Do not open a browser; just print the URL.")
@click.option("--keymap", "keymap_file", metavar="FILE", default=None,
              help="Rebind keys from a JSON/TOML/YAML file of action -> key(s).")
@click.option("--indexed", is_flag=True, help="Also write one indexed PNG per image.")
@click.option("--no-proposals", is_flag=True,
              help="Do not propose a saved image's masks on the other images of its folder.")
@storage_options
def open_cmd(folder: str, method: str | None, params: tuple[str, ...], sam_url: str | None,
             sam_token: str | None, presegmented: str | None, templates: str | None,
             attentions: str | None, segments: str | None, masks: str | None,
             output: str | None, port: int | None, host: str, no_browser: bool,
             keymap_file: str | None, indexed: bool, no_proposals: bool,
             storage: Storage) -> None:
    """Open the labelling page on FOLDER (a folder, an s3:// prefix or one cluster folder).

    Left click fills a segment with the colour, right click unfills, a double click toggles
    continuous filling/unfilling, middle clicks cut. Space saves the masks as
    FOLDER_segmented/<stem>_mask_(R:r,G:g,B:b).png and opens the next image; the session
    (done images, position) resumes after a reload or a restart. The URL goes to stdout.
    """
    from icas_ray.client._config import DEFAULT_METHOD, LabelConfig, TemplateDirs
    from icas_ray.client.server import serve
    from icas_ray.errors import ConfigError, InputError
    from icas_ray.segment import get_method

    if not storage.exists(folder) or not storage.isdir(folder):
        raise InputError(f"FOLDER {folder!r} does not exist or is not a folder: give a folder "
                         "of images (or an s3:// prefix)")
    if method is not None and method.lower() not in _method_choices():
        get_method(method)  # raises the registry's one-line error listing the methods
    m = get_method(method or DEFAULT_METHOD)
    if m.needs_backend and sam_url is None:
        raise ConfigError("--method sam needs --sam-url URL of a running `icas serve`")
    if (templates is None) != (segments is None):
        raise click.UsageError("template painting needs both --templates DIR and --segments DIR")
    if templates is None and (attentions or masks):
        raise click.UsageError("--attentions and --masks need --templates DIR --segments DIR")
    keymap: Any = None
    if keymap_file is not None:
        from icas_ray.label.keymap import load_keymap

        keymap = load_keymap(keymap_file, storage)
    config = LabelConfig(
        folder=folder, output=output, method=m.name,
        params=parse_key_values(params, example="region_size=30"),
        presegmented=presegmented, sam_url=sam_url, sam_token=sam_token,
        templates=(TemplateDirs(templates, segments, attentions, masks)  # type: ignore[arg-type]
                   if templates else None),
        host=host, port=port or 0, indexed=indexed, keymap=keymap, propose=not no_proposals)
    serve(config, storage=storage, open_browser=not no_browser, port_given=port is not None,
          echo=lambda url: click.echo(url))


@command.command("export")
@click.argument("folder", metavar="FOLDER")
@click.option("--format", "fmt", type=click.Choice(["coco"]), default="coco", show_default=True,
              help="Export format.")
@click.option("--labels", "labels_file", metavar="FILE", default=None,
              help="Colour -> class name file (JSON/TOML/YAML/CSV); default: one class per colour.")
@click.option("--masks-dir", metavar="DIR", default=None,
              help="Where the masks are.  [default: FOLDER_segmented]")
@click.option("-o", "--output", metavar="FILE", default=None,
              help="The COCO JSON to write.  [default: MASKS_DIR/coco.json]")
@storage_options
def export_cmd(folder: str, fmt: str, labels_file: str | None, masks_dir: str | None,
               output: str | None, storage: Storage) -> None:
    """Write the masks painted for FOLDER as a COCO instances file (RLE masks).

    Prints a JSON summary (images, annotations, categories, the file written) to stdout.
    """
    from icas_ray.label.export import export_coco, load_labels_file
    from icas_ray.segment.store import default_output

    masks_dir = masks_dir or default_output(folder)
    output = output or storage.join(masks_dir, "coco.json")
    labels = load_labels_file(labels_file, storage) if labels_file else None
    coco = export_coco(folder, masks_dir, output, labels=labels, storage=storage)
    summary = {"output": output, "format": fmt,
               "images": len(coco.get("images", [])),
               "annotations": len(coco.get("annotations", [])),
               "categories": [c.get("name") for c in coco.get("categories", [])]}
    click.echo(json.dumps(summary, indent=2))
