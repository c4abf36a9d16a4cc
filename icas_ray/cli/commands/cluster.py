"""``icas cluster INPUT``: group images into folders of similar images."""

from __future__ import annotations

from typing import Any

import click

from icas_ray.cli._options import (
    SizeType, parse_key_values, ray_options, resources_from, storage_options,
)
from icas_ray.storage import Storage

# The method names come from the registry: importing it is cheap (numpy, OpenCV, PIL).
from icas_ray.features import method_names


@click.command()
@click.argument("input_uri", metavar="INPUT")
@click.option("--output", "-o", default=None, metavar="URI",
              help="Result folder (default: <INPUT>_clustered next to the input).")
@click.option("--method", "-m", type=click.Choice(method_names(), case_sensitive=False),
              default=None, help="Feature and similarity method [default: imagehash].")
@click.option("--param", "params", multiple=True, metavar="NAME=VALUE",
              help="Method parameter, e.g. hash_size=16 (repeatable; see README).")
@click.option("--threshold", "-t", type=float, default=None,
              help="Link pairs with similarity > T (default: suggested from a sample).")
@click.option("--batch-size", type=click.IntRange(min=2), default=None,
              help="Images per batch [default: 1000].")
@click.option("--size", type=SizeType(), default=None, help="Resize every image to WxH first.")
@click.option("--scale", type=float, default=None, help="Resize every image by a factor first.")
@click.option("--option", type=click.Choice(["all", "dontmerge", "merge"]), default=None,
              help="all: batches then merge [default]; dontmerge: batch folders only; "
                   "merge: merge the batches of an earlier dontmerge run.")
@click.option("--transfer", type=click.Choice(["copy", "move"]), default=None,
              help="Copy [default] or move images into the result folders.")
@click.option("--overwrite", is_flag=True, default=None, help="Replace an existing finished result.")
@click.option("--time-limit", "time_limit_s", type=float, default=None, metavar="S",
              help="Stop comparing pairs in a batch (and in the merge) after S seconds.")
@click.option("--strategy", type=click.Choice(["exhaustive", "connected", "pruned"]), default=None,
              help="exhaustive: all pairs, every edge [default for hashes and TM]; connected: the "
                   "same clusters, skipping pairs already joined [default for SSIM, ORB]; pruned: "
                   "the original's lossy shortcut.")
@click.option("--merge-mode", type=click.Choice(["full", "original"]), default=None,
              help="full: outliers and several members per cluster join the merge [default]; "
                   "original: first member per cluster only.")
@click.option("--merge-reps", type=click.IntRange(min=1), default=None,
              help="Most representatives per batch cluster in the merge.")
@click.option("--sniff", is_flag=True, default=None,
              help="Also list files without an image extension whose content is an image.")
@click.option("--feature-compute", type=click.Choice(["tasks", "actors"]), default=None,
              help="Run feature extraction in Ray tasks [default] or in a Ray Data actor pool "
                   "started for the job (the default for --method embedding).")
@click.option("--threshold-sample", type=click.IntRange(min=10), default=None,
              help="Images sampled to suggest a threshold [default: 1000; 300 for SSIM/ORB].")
@click.option("--cluster-model", default=None, metavar="MODEL",
              help="Cluster embeddings with a scikit-learn model chosen over a grid: kmeans, "
                   "hierarchy, DBSCAN, gaussian, HDBSCAN (needs --method embedding).")
@click.option("--grid", "grid", multiple=True, metavar="NAME=V1,V2,...",
              help="A parameter grid of --cluster-model, e.g. n_clusters=5,10,20 (repeatable).")
@click.option("--checkpoint", default=None, metavar="URI",
              help="--method embedding: an autoencoder checkpoint of `icas train` (local or s3://); "
                   "without it and without --backbone, an autoencoder is trained first.")
@click.option("--backbone", default=None, metavar="NAME",
              help="--method embedding: a torchvision model by name (resnet18, mobilenet_v3_small, "
                   "efficientnet_b0, vit_b_16, ...) with --weights.")
@click.option("--weights", default=None, metavar="URI",
              help="--backbone's weights (a state_dict file or s3:// URI); 'random' for tests.")
@click.option("--train-option", "train_options", multiple=True, metavar="KEY=VALUE",
              help="Options of the training that runs first without --checkpoint, as `icas train` "
                   "names them: storage=URI (required), epochs=20, loss=mse, model=conv_small, ...")
@click.option("--gpu", is_flag=True, default=None,
              help="Run the GPU stages (SSIM/TM kernels, the merge, embeddings) on GPUs; on a "
                   "cluster this asks the autoscaler for GPU nodes.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="TOML/JSON/YAML file with these options; command-line options win.")
@ray_options
@storage_options
def command(input_uri: str, config_file: str | None, params: tuple[str, ...], address: str | None,
            num_cpus: int | None, storage: Storage, grid: tuple[str, ...],
            train_options: tuple[str, ...], **options: Any) -> None:
    """Cluster the images under INPUT (folder or s3:// URI) into folders of similar images.

    \b
    Examples:
      icas cluster ./photos
      icas cluster ./digits --method imagehash --threshold 0.84 --batch-size 250
      icas cluster s3://bucket/images --output s3://bucket/clustered --method SSIM
      icas cluster ./photos --option dontmerge && icas cluster ./photos --option merge
      icas cluster ./photos --method embedding --checkpoint ./models/best.pt --cluster-model kmeans
    """
    from icas_ray.cli._options import progress_reporter
    from icas_ray.pipeline.classic import cluster
    from icas_ray.params import build
    from icas_ray.pipeline.config import ClusterConfig, load_config_file

    values: dict[str, Any] = load_config_file(config_file) if config_file else {}
    output = options.pop("output")
    output = output if output is not None else values.pop("output", None)
    values.update({k: v for k, v in options.items() if v is not None})
    method_params = dict(values.pop("method_params", values.pop("params", {})) or {})
    method_params.update(parse_key_values(params))
    for key in ("checkpoint", "backbone", "weights"):
        value = values.pop(key, None)
        if value is not None:
            method_params[key] = value
    grid = {k: [v.strip() for v in text.split(",") if v.strip()]
            for k, text in parse_key_values(grid, option="--grid", example="n_clusters=5,10").items()}
    if grid:
        values["cluster_grid"] = {**dict(values.get("cluster_grid") or {}), **grid}
    resources = resources_from(address, num_cpus)
    if str(values.get("method", "")).lower() == "embedding":
        from icas_ray.pipeline.deep import ensure_model

        method_params = ensure_model(input_uri, method_params,
                                     parse_key_values(train_options, option="--train-option",
                                                      example="storage=./models"),
                                     storage=storage, resources=resources,
                                     progress=progress_reporter())
    if "size" in values and isinstance(values["size"], str):
        values["size"] = SizeType().convert(values["size"], None, None)
    config = build(ClusterConfig, {"method_params": method_params, **values},
                   source=f"config file {config_file}" if config_file else None)
    summary = cluster(input_uri, output, config, storage=storage, resources=resources,
                      progress=progress_reporter())
    c = summary["counts"]
    click.echo(
        f"{c['images']} images: {c['clusters']} clusters with {c['clustered_images']} images, "
        f"{c['outliers']} outliers, {c['unreadable']} unreadable "
        f"({_how(summary)}; "
        f"{summary['comparisons']['batch_comparisons'] + summary['comparisons']['merge_comparisons']} "
        f"comparisons of {summary['comparisons']['all_pairs']} pairs; "
        f"{summary['timings']['total_s']:.1f}s)")
    click.echo(f"results: {summary['output']}")
    click.echo(f"report:  {summary['report']}")


def _how(summary: dict[str, Any]) -> str:
    if summary.get("threshold") is None:
        return str(summary.get("threshold_source"))
    return f"threshold {summary['threshold']:.4f} {summary['threshold_source']}"
