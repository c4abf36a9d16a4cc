"""``icas datasets make KIND OUT``: generated data sets with ground truth."""

from __future__ import annotations

import click

from icas_ray.cli._options import storage_options
from icas_ray.storage import Storage


@click.group()
def command() -> None:
    """Generate image data sets with ground truth (truth.csv) for demos, tests and benchmarks."""


@command.command("make")
@click.argument("kind", type=click.Choice(["digits", "near-duplicates"]))
@click.argument("out")
@click.option("--count", type=click.IntRange(min=1), default=100, show_default=True,
              help="Number of images.")
@click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")
@click.option("--broken", is_flag=True,
              help="Add a zero-byte PNG, a truncated JPEG and a text file named .png.")
@click.option("--colour-jitter", "--color-jitter", "colour_jitter", is_flag=True,
              help="digits: random background and ink colours.")
@click.option("--classes", type=click.IntRange(min=1), default=None,
              help="near-duplicates: number of source photos (default: all 19).")
@storage_options
def make(kind: str, out: str, count: int, seed: int, broken: bool, colour_jitter: bool,
         classes: int | None, storage: Storage) -> None:
    """Write a KIND data set (digits or near-duplicates) to OUT (folder or s3:// URI).

    \b
    Examples:
      icas datasets make digits ./digits --count 1000 --seed 0
      icas datasets make near-duplicates s3://bucket/nd --count 200 --broken
    """
    from icas_ray.datasets import make_dataset

    info = make_dataset(kind, out, count=count, seed=seed, broken=broken,
                        colour_jitter=colour_jitter, classes=classes, storage=storage)
    click.echo(f"wrote {info.count} images in {info.classes} classes"
               f"{f' and {info.broken} broken files' if info.broken else ''} to {info.uri} "
               f"(ground truth: truth.csv)")
