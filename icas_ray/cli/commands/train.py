"""``icas train INPUT``: train the deep pipeline's autoencoder on Ray Train."""

from __future__ import annotations

from typing import Any

import click

from icas_ray.cli._options import parse_key_values, ray_options, resources_from, storage_options
from icas_ray.storage import Storage

# Both registries import torch only when a model or loss is built: cheap for --help.
from icas_ray.train.losses import loss_names
from icas_ray.train.models import REGISTRY as _MODELS

_MODEL_HELP = ", ".join(f"{s.name} ({s.sizes})" for s in sorted(_MODELS.values(),
                                                                 key=lambda s: s.name))


@click.command()
@click.argument("input_uri", metavar="INPUT")
@click.option("--storage", "storage_uri", required=True, metavar="URI",
              help="Folder (local or s3://) for best.pt and last.pt; a rerun with the same "
                   "folder resumes.")
@click.option("--model", default=None, metavar="NAME",
              help=f"Autoencoder: {_MODEL_HELP}, or package.module:Class [default: conv_small].")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Model parameter, e.g. channels=16,32,64 or embed_dim=64 (repeatable).")
@click.option("--loss", type=click.Choice(loss_names()), default=None,
              help="Reconstruction loss [default: mse].")
@click.option("--loss-param", "loss_params", multiple=True, metavar="NAME=VALUE",
              help="Loss parameter, e.g. layers=18 for perceptual (repeatable).")
@click.option("--perceptual-weights", default=None, metavar="URI",
              help="VGG19 weights (state_dict file, local or s3://) for --loss perceptual.")
@click.option("--perceptual-random-init", is_flag=True, default=None,
              help="--loss perceptual with a randomly initialised VGG19 (no weights file).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Epochs in total [default: 20].")
@click.option("--lr", type=float, default=None, help="Adam learning rate [default: 0.001].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per step and worker [default: 32].")
@click.option("--image-size", type=click.IntRange(min=1), default=None, metavar="S",
              help="Input side in px; images are resized to SxS [default: 64 for conv_small, "
                   "256 for conv_large].")
@click.option("--patience", type=click.IntRange(min=1), default=None,
              help="Stop after this many epochs without a lower loss [default: 10].")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Ray Train workers (data-parallel) [default: 1].")
@click.option("--cpus-per-worker", type=float, default=None,
              help="CPUs (and torch threads) per worker [default: 1].")
@click.option("--gpu", is_flag=True, default=None,
              help="Each worker asks for a GPU (an autoscaling cluster adds GPU nodes).")
@ray_options
@storage_options
def command(input_uri: str, params: tuple[str, ...], loss_params: tuple[str, ...],
            address: str | None, num_cpus: int | None, storage: Storage, **options: Any) -> None:
    """Train an autoencoder on the images under INPUT (folder or s3:// URI).

    Prints the URI of the best checkpoint, for `icas cluster --method embedding --checkpoint`.
    Nothing is downloaded: --loss perceptual needs --perceptual-weights or
    --perceptual-random-init.

    \b
    Examples:
      icas train ./digits --storage ./digits_model --epochs 10
      icas train s3://bucket/images --storage s3://bucket/models/ae --model conv_large \\
          --loss perceptual --perceptual-weights s3://bucket/weights/vgg19.pth --gpu --workers 4
    """
    from icas_ray.cli._options import progress_reporter
    from icas_ray.params import build
    from icas_ray.train.trainer import TrainConfig, train

    values = {k: v for k, v in options.items() if v is not None}
    values["model_params"] = parse_key_values(params, example="embed_dim=64")
    values["loss_params"] = parse_key_values(loss_params, option="--loss-param",
                                             example="layers=18")
    config = build(TrainConfig, values)
    resources = resources_from(address, num_cpus)
    r = train(input_uri, config, storage=storage, resources=resources,
              progress=progress_reporter())
    if r.epochs_run:
        done = f"epochs {r.start_epoch}-{r.epochs}" if r.epochs_run > 1 else f"epoch {r.epochs}"
        how = f"{done} of {config.epochs}" + (" (resumed)" if r.resumed else "")
    else:
        how = f"nothing left to train ({r.epochs} epochs done)"
    click.echo(f"trained {config.model} at {config.size} px with {config.loss} loss: {how}"
               f"{', stopped early' if r.stopped_early else ''}; best loss {r.best_loss:.5f} at "
               f"epoch {r.best_epoch}; {r.images} images, {r.unreadable} unreadable "
               f"({r.elapsed_s:.1f}s)")
    click.echo(f"checkpoint: {r.checkpoint}")
