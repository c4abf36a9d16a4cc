"""``icas threshold INPUT --method M``: the similarity curve of a sample and a suggestion."""

from __future__ import annotations

import shlex

import click

from icas_ray.cli._options import (
    SizeType, parse_key_values, ray_options, resources_from, storage_options,
)
from icas_ray.features import method_names
from icas_ray.storage import Storage


@click.command()
@click.argument("input_uri", metavar="INPUT")
@click.option("--method", "-m", type=click.Choice(method_names(), case_sensitive=False),
              default="imagehash", show_default=True)
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE", help="Method parameter.")
@click.option("--sample", type=click.IntRange(min=10), default=None,
              help="Images sampled, spread over the size-sorted listing [default: 1000; 300 for SSIM/ORB].")
@click.option("--size", type=SizeType(), default=None, help="Resize every image to WxH first.")
@click.option("--html", "html_out", default=None, metavar="URI",
              help="Where to write the interactive plot [default: <INPUT>_threshold.html].")
@click.option("--sniff", is_flag=True, help="Also list files without an image extension.")
@ray_options
@storage_options
def command(input_uri: str, method: str, params: tuple[str, ...], sample: int | None,
            size: tuple[int, int] | None, html_out: str | None, sniff: bool, address: str | None,
            num_cpus: int | None, storage: Storage) -> None:
    """Suggest a threshold for INPUT and write an interactive plot of the similarity curve.

    Hover over the plot to see how many pairs and images a threshold links; click to get the
    `icas cluster` command line with that threshold. The suggestion is printed on stdout.

    \b
    Examples:
      icas threshold ./photos --method imagehash
      icas threshold s3://bucket/images --method SSIM --sample 300 --html ./ssim.html
    """
    from icas_ray.pipeline.config import ClusterConfig
    from icas_ray.runtime import init_ray
    from icas_ray.pipeline.sample import sample_similarities
    from icas_ray.threshold import (
        RULE, render_threshold_html, suggest_threshold, threshold_curve,
    )

    config = ClusterConfig(method=method, method_params=parse_key_values(params), size=size, sniff=sniff,
                           threshold_sample=sample or 1000)
    files = storage.list_images(input_uri, sniff=sniff)
    if len(files) < 2:
        from icas_ray.errors import InputError

        raise InputError(f"found {len(files)} image(s) under {input_uri!r}: a threshold needs at least 2")
    init_ray(resources_from(address, num_cpus), lean=True)
    sims = sample_similarities(files, config, storage=storage, sample=sample)
    suggestion = suggest_threshold(sims.matrix, config.feature_method())
    curve = threshold_curve(sims.values, sims.nearest, len(files))
    cmd = ["icas", "cluster", input_uri, "--method", config.method, "--threshold", "{T}"]
    for p in params:
        cmd += ["--param", p]
    if size:
        cmd += ["--size", f"{size[0]}x{size[1]}"]
    page = render_threshold_html(
        curve=curve, suggested=suggestion, method=config.method, title=input_uri,
        n=sims.n_images, total=len(files), pairs=len(sims.values),
        command=" ".join(shlex.quote(c) if c != "{T}" else c for c in cmd), rule=RULE)
    out = html_out or input_uri.rstrip("/") + "_threshold.html"
    storage.write_text(out, page)
    click.echo(f"suggested threshold for {config.method}: {suggestion:.4f} "
               f"({RULE}; {sims.n_images} sampled images of {len(files)})")
    click.echo(f"plot: {out}")
