"""``icas serve``: Segment Anything on Ray Serve, and ``icas serve embed`` for its embeddings."""

from __future__ import annotations

import time
from typing import Any

import click

from icas_ray.cli._options import ray_options, resources_from, storage_options
from icas_ray.storage import Storage

_MODEL_TYPES = ["vit_b", "vit_l", "vit_h", "tiny"]  # icas_ray.sam.SAM_SPECS, without importing it


def _storage_dict(storage: Storage) -> dict[str, Any]:
    o = storage.options
    out: dict[str, Any] = dict(o.extra)
    if o.endpoint_url:
        out["endpoint_url"] = o.endpoint_url
    if o.profile:
        out["profile"] = o.profile
    if o.anon:
        out["anon"] = True
    return out


@click.group(invoke_without_command=True)
@click.option("--checkpoint", metavar="URI", default=None,
              help="SAM checkpoint (.pth): local path or s3:// URI.")
@click.option("--model-type", type=click.Choice(_MODEL_TYPES), default=None,
              help="Architecture of the checkpoint.  [default: vit_b]")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to listen on; 0.0.0.0 exposes the service (use --token).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--replicas", type=click.IntRange(min=1), default=None,
              help="Fixed number of replicas.  [default: 1]")
@click.option("--min-replicas", type=click.IntRange(min=0), default=None,
              help="Autoscaling lower bound (with --max-replicas).")
@click.option("--max-replicas", type=click.IntRange(min=1), default=None,
              help="Autoscaling upper bound.")
@click.option("--gpu", is_flag=True,
              help="One GPU per replica (on a cluster this asks the autoscaler for GPU nodes); "
                   "without it replicas run on CPUs, even where a GPU is present.")
@click.option("--replica-cpus", type=click.FloatRange(min=0.01), default=None,
              help="CPUs per replica.  [default: 1]")
@click.option("--token", envvar="ICAS_SERVE_TOKEN", default=None,
              help="Require 'Authorization: Bearer TOKEN' (env ICAS_SERVE_TOKEN).")
@click.option("--embeddings", "embedding_store", metavar="URI", default=None,
              help="Store of pre-computed embeddings (from `icas serve embed`).")
@click.option("--image-store", metavar="URI", default=None,
              help="Where registered images are kept for re-embedding (shared by replicas; "
                   "use s3:// on a multi-node cluster).  [default: a temp folder]")
@click.option("--cache-mb", type=click.FloatRange(min=0.001), default=None,
              help="Embedding cache per replica in MiB.  [default: 1024]")
@click.option("--allow-uri", "allow_uri", metavar="ROOT", multiple=True,
              help="Let clients register images by URI (POST /images {\"uri\": ...}) under "
                   "this folder or s3:// prefix; repeatable.  [default: off, uploads only]")
@storage_options
@ray_options
@click.pass_context
def command(ctx: click.Context, checkpoint: str | None, model_type: str | None, host: str,
            port: int, replicas: int | None, min_replicas: int | None, max_replicas: int | None,
            gpu: bool, replica_cpus: float | None, token: str | None,
            embedding_store: str | None, image_store: str | None, cache_mb: float | None,
            allow_uri: tuple[str, ...], storage: Storage, address: str | None,
            num_cpus: int | None) -> None:
    """Serve Segment Anything over HTTP until Ctrl-C.

    \b
    Examples:
      icas serve --checkpoint ./sam_vit_b_01ec64.pth --model-type vit_b
      icas serve --checkpoint ./sam_vit_b_01ec64.pth --allow-uri ./photos \\
          --allow-uri s3://bucket/photos
      icas serve --checkpoint s3://models/sam_vit_h_4b8939.pth --model-type vit_h --gpu \\
          --min-replicas 1 --max-replicas 4 --address auto --token "$TOKEN"
      icas serve embed ./photos --checkpoint ./sam_vit_b_01ec64.pth --model-type vit_b \\
          --output ./photos-embeddings
    """
    if ctx.invoked_subcommand is not None:
        return
    if replicas is not None and (min_replicas is not None or max_replicas is not None):
        raise click.UsageError("give --replicas or --min-replicas/--max-replicas, not both")
    if checkpoint is None:
        raise click.UsageError("--checkpoint is required: a SAM .pth file (local path or s3://)")
    from icas_ray.serve.args import SamServeArgs, check_args

    given: dict[str, Any] = {
        "checkpoint": checkpoint, "model_type": model_type, "num_replicas": replicas,
        "min_replicas": min_replicas, "max_replicas": max_replicas,
        # The device is explicit: a replica without --gpu reserves no GPU, and one that uses
        # a node's GPU anyway (Ray leaves them visible) would compete for it unaccounted.
        "num_gpus": 1.0 if gpu else None, "device": "cuda" if gpu else "cpu",
        "num_cpus": replica_cpus, "token": token,
        "embedding_store": embedding_store, "image_store": image_store, "cache_mb": cache_mb,
        "storage_options": _storage_dict(storage) or None,
        "allowed_uri_prefixes": list(allow_uri) or None,
    }
    try:
        args = SamServeArgs(**{k: v for k, v in given.items() if v is not None})
    except ValueError as e:
        raise click.UsageError(str(e).splitlines()[-1]) from e
    check_args(args)  # a missing checkpoint or root fails here, not after Ray has started
    run_server(args, host=host, port=port, resources=resources_from(address, num_cpus))


def run_server(args: Any, *, host: str, port: int, resources: Any) -> None:
    """Start Ray (embedded or joined), Serve's HTTP proxy on ``host:port``, then the app."""
    from icas_ray.runtime import init_ray

    init_ray(resources)
    from ray import serve

    from icas_ray.serve.app import build_app

    app = build_app(args)  # validates checkpoint and stores before any replica starts
    serve.start(http_options={"host": host, "port": port})
    serve.run(app, name=args.name, route_prefix="/")
    auth = " (bearer token required)" if args.token else ""
    click.echo(f"SAM {args.model_type} serving at http://{host}:{port}/{auth}; Ctrl-C to stop",
               err=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        click.echo("stopping", err=True)
    finally:
        serve.shutdown()


@command.command("embed")
@click.argument("input_uri", metavar="INPUT")
@click.option("--checkpoint", metavar="URI", required=True,
              help="SAM checkpoint (.pth): local path or s3:// URI.")
@click.option("--model-type", type=click.Choice(_MODEL_TYPES), required=True)
@click.option("--output", metavar="URI", required=True, help="Embedding store (folder or s3://).")
@click.option("--actors", type=click.IntRange(min=1), default=None,
              help="Actor pool size.  [default: one per GPU with --gpu, else one per 2 CPUs]")
@click.option("--batch-size", type=click.IntRange(min=1), default=None,
              help="Images per actor call.  [default: 4]")
@click.option("--gpu", is_flag=True, default=False,
              help="One GPU per actor (on a cluster this asks the autoscaler for GPU nodes); "
                   "without it the encoder runs on CPUs, even where a GPU is present.")
@storage_options
@ray_options
def embed(input_uri: str, checkpoint: str, model_type: str, output: str, actors: int | None,
          batch_size: int | None, gpu: bool, storage: Storage, address: str | None,
          num_cpus: int | None) -> None:
    """Pre-compute SAM embeddings of every image under INPUT into the store at --output.

    Reruns skip images already stored; `icas serve --embeddings URI` answers those images
    without running the encoder.

    \b
    Examples:
      icas serve embed ./photos --checkpoint ./sam_vit_b_01ec64.pth --model-type vit_b \\
          --output ./photos-embeddings
      icas serve embed s3://bucket/photos --checkpoint s3://models/sam_vit_h_4b8939.pth \\
          --model-type vit_h --output s3://bucket/emb --gpu --address auto
    """
    from icas_ray.serve.embed import EmbedConfig, embed_folder

    config = EmbedConfig(**{k: v for k, v in {
        "model_type": model_type, "checkpoint": checkpoint, "output": output,
        "actors": actors, "batch_size": batch_size, "gpu": gpu}.items() if v is not None})
    s = embed_folder(input_uri, config, storage=storage,
                     resources=resources_from(address, num_cpus))
    for uri, reason in s.failed:
        click.echo(f"failed: {uri}: {reason}", err=True)
    click.echo(f"{s.total} images: {s.embedded} embedded, {s.skipped} already stored, "
               f"{len(s.failed)} failed in {s.seconds:.1f}s -> {s.store} ({s.model_id})")
