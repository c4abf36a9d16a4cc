"""The SAM Ray Serve application: HTTP API, embedding LRU per replica, prompt batching.

Routing: an image's embedding lives in the memory of the replica that computed it. Every
request about an image carries its id in the ``serve_multiplexed_model_id`` header (the Python
client sets it), and Serve's model multiplexing sends it to a replica that already holds that
"model", here the image's embedding; the multiplexer's LRU is the cache, sized by ``cache_mb``.
A replica that gets an image it does not hold (new replica, eviction) re-reads the registered
bytes from the shared image store, or the embedding store, and embeds again. See docs/serve.md.

Build it with :func:`build_app` (``serve run icas_ray.serve.app:build_app model_type=vit_b
checkpoint=...`` or a config file's ``import_path``).
"""



import asyncio
import functools
import hmac
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve import Application
from starlette.requests import ClientDisconnect

from icas_ray.errors import IcasError
from icas_ray.serve._service import (
    MAX_JSON_BYTES,
    Entry,
    SamService,
    ServiceError,
    check_image_id,
    parse_json_body,
)
from icas_ray.serve.args import SamServeArgs, check_args

__all__ = ["DEPLOYMENT_NAME", "build_app"]

logger = logging.getLogger(__name__)

DEPLOYMENT_NAME = "SamDeployment"
#: Replicas answer at most this many requests at once; more wait in Serve's queue.
_MAX_ONGOING = 32


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _http_boundary(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Turn every failure of a request into a JSON error response; the replica lives on."""

    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await fn(*args, **kwargs)
        except ServiceError as e:
            return _error(e.status, e.message)
        except IcasError as e:
            return _error(422, str(e))
        except Exception as e:  # the HTTP boundary: log it, answer 500, keep serving
            logger.exception("request failed")
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            return _error(500, f"internal error: {type(e).__name__}: {first}")

    return wrapper


def _declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None:
        return None
    if not value.strip().isdigit():
        raise ServiceError(400, f"Content-Length {value[:40]!r} is not a byte count")
    return int(value)


async def _read_body(request: Request, limit: int, what: str, fix: str) -> bytes:
    """The request body, refused with a 413 as soon as it passes ``limit`` bytes.

    A declared Content-Length is checked before reading; a chunked upload (no length) is read
    chunk by chunk and abandoned at the limit, so a client cannot make the replica hold more
    than ``limit`` plus one chunk (Starlette's ``body()`` would read it whole first).
    """
    too_large = ServiceError(413, f"{what} exceeds the limit of {limit} bytes: {fix}")
    declared = _declared_length(request)
    if declared is not None and declared > limit:
        raise ServiceError(413, f"{what} of {declared} bytes exceeds the limit of {limit} "
                                f"bytes: {fix}")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
    except ClientDisconnect as e:  # nobody is left to read the answer; no traceback to log
        raise ServiceError(400, f"the client disconnected during the {what}") from e
    return b"".join(chunks)


async def _json_body(request: Request) -> dict[str, Any]:
    raw = await _read_body(request, MAX_JSON_BYTES, "JSON body",
                           "prompts and parameters are small (256 points take ~4 KB)")
    return parse_json_body(raw)


def _keep_replica_grpc_on_loopback() -> None:
    """Bind the replica's inter-deployment gRPC server to 127.0.0.1 when Ray runs on loopback.

    Ray 2.60 binds it to ``[::]:0`` (every interface) whatever the node address; on an embedded
    loopback Ray nothing needs to reach it from outside, so a laptop's service should not open a
    port to the network. Best effort on Ray's private API: on a real cluster (node address not
    127.0.0.1) or another Ray version it changes nothing. Must run before the replica finishes
    initialising (its ``__init__`` does).
    """
    import ray

    try:
        from ray.serve._private import replica as _replica

        if ray.util.get_node_ip_address() != "127.0.0.1":
            return
        original = _replica.add_port_to_grpc_server
        if getattr(original, "_icas_loopback", False):
            return

        def loopback(server: Any, address: str) -> Any:
            return original(server, address.replace("[::]", "127.0.0.1"))

        loopback._icas_loopback = True  # type: ignore[attr-defined]
        _replica.add_port_to_grpc_server = loopback
    except (ImportError, AttributeError):
        logger.debug("cannot pin the replica gRPC server to loopback on this Ray version")


def _deployment_class(max_cached: int) -> Any:
    """The deployment class; built per app so the LRU size follows ``cache_mb``."""
    api = FastAPI(title="icas SAM service", docs_url=None, redoc_url=None)

    @serve.ingress(api)
    class SamDeployment:
        def __init__(self, args: dict[str, Any]) -> None:
            import torch

            _keep_replica_grpc_on_loopback()
            self.args = SamServeArgs(**args)
            threads = self.args.torch_threads or max(1, int(self.args.num_cpus))
            torch.set_num_threads(threads)
            self.service = SamService(self.args)
            # One model thread: torch calls never interleave, the event loop stays free.
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sam")
            self._pending: dict[str, Any] = {}
            self._known: set[str] = set()

        def reconfigure(self, user_config: dict[str, Any]) -> None:
            self.service.configure(dict(user_config or {}))
            self._predict_batch.set_max_batch_size(int(self.service.settings["max_batch_size"]))
            self._predict_batch.set_batch_wait_timeout_s(
                float(self.service.settings["batch_wait_timeout_s"]))

        async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, functools.partial(fn, *args))

        def _auth(self, request: Request) -> None:
            token = self.args.token
            if not token:
                return
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                raise ServiceError(401, "missing or wrong bearer token: send "
                                        "'Authorization: Bearer <token>'")

        @serve.multiplexed(max_num_models_per_replica=max_cached)
        async def _load_entry(self, image_id: str) -> Entry:
            image = self._pending.pop(image_id, None)
            return await self._run(self.service.load_entry, image_id, image)  # type: ignore[no-any-return]

        async def _entry(self, image_id: str, image: Any = None) -> Entry:
            check_image_id(image_id)
            if image is None and image_id not in self._known:
                if not await self._run(self.service.is_known, image_id):
                    raise ServiceError(404, f"unknown image id {image_id}: register the image "
                                            "with POST /images first")
            if image is not None:
                self._pending[image_id] = image
            try:
                entry: Entry = await self._load_entry(image_id)
            finally:
                self._pending.pop(image_id, None)
            self._known.add(image_id)
            return entry

        # -- endpoints ------------------------------------------------------------------
        @api.get("/health")
        async def health(self) -> dict[str, Any]:
            return {"status": "ok"}

        @api.get("/info")
        @_http_boundary
        async def info(self, request: Request) -> Any:
            self._auth(request)
            out = self.service.info()
            out["cache_entries_max"] = max_cached
            out["replica"] = serve.get_replica_context().replica_id.unique_id
            return out

        @api.post("/images")
        @_http_boundary
        async def register(self, request: Request) -> Any:
            self._auth(request)
            ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype == "application/json":
                body = await _json_body(request)
                uri = body.get("uri")
                if not isinstance(uri, str) or not uri:
                    raise ServiceError(422, 'JSON registration needs {"uri": "s3://... or path"}; '
                                            "or POST the image bytes as application/octet-stream")
                data = await self._run(self.service.read_uri, uri)
            else:
                data = await _read_body(request, self.service.max_upload_bytes, "upload",
                                        "downscale the image, or the operator raises "
                                        "max_upload_mb")
                if not data:
                    raise ServiceError(400, "empty body: POST the image bytes, or JSON {\"uri\": ...}")
            image_id, image = await self._run(self.service.check_upload, data)
            await self._run(self.service.save_image, image_id, data)
            entry = await self._entry(image_id, image)
            h, w = entry.embedding.original_size
            return {"id": image_id, "width": w, "height": h, "embedding": entry.take_source()}

        @api.post("/images/{image_id}/predict")
        @_http_boundary
        async def predict(self, image_id: str, request: Request) -> Any:
            self._auth(request)
            body = await _json_body(request)
            entry = await self._entry(image_id)
            result = await self._predict_batch((image_id, entry, body, entry.take_source()))
            if isinstance(result, ServiceError):
                raise result
            return result

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)
        async def _predict_batch(self, jobs: list[tuple[str, Entry, dict[str, Any], str]]) -> list[Any]:
            return await self._run(self._predict_many, jobs)  # type: ignore[no-any-return]

        def _predict_many(self, jobs: list[tuple[str, Entry, dict[str, Any], str]]) -> list[Any]:
            out: list[Any] = []
            for image_id, entry, body, source in jobs:
                try:
                    out.append(self.service.predict(image_id, entry, body, source))
                except ServiceError as e:
                    out.append(e)
                except IcasError as e:
                    out.append(ServiceError(422, str(e)))
            return out

        @api.post("/images/{image_id}/automatic")
        @_http_boundary
        async def automatic(self, image_id: str, request: Request) -> Any:
            self._auth(request)
            body = await _json_body(request)
            params, formats = self.service.automatic_params(body)
            entry = await self._entry(image_id)
            image = None
            if params.crop_n_layers > 0:  # crops are encoded from the image itself
                image = await self._run(self.service.load_image, image_id)
            return await self._run(self.service.automatic, image_id, entry, params, formats,
                                   entry.take_source(), image)

    return SamDeployment


def build_app(args: SamServeArgs) -> Application:
    """The SAM application for ``serve.run`` / ``serve run`` / a Serve config file.

    Example:
        ``serve run icas_ray.serve.app:build_app model_type=vit_b checkpoint=/models/sam_vit_b.pth``

    Raises:
        ModelLoadError: the checkpoint does not exist.
        ConfigError: an allowed root is missing; the embedding store is missing or of another
            model type (see :func:`~icas_ray.serve.args.check_args`).
    """
    if isinstance(args, dict):  # `serve run` passes a dict when called without the type hint
        args = SamServeArgs(**args)
    check_args(args)
    from icas_ray.sam import SAM_SPECS

    per_entry = SAM_SPECS[args.model_type].embedding_bytes
    max_cached = max(1, int(args.cache_mb * 2**20) // per_entry)
    options: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "ray_actor_options": {"num_cpus": args.num_cpus, "num_gpus": args.num_gpus},
        "user_config": args.user_config(),
        "max_ongoing_requests": _MAX_ONGOING,
        "health_check_period_s": 10,
    }
    if args.min_replicas is not None or args.max_replicas is not None:
        lo = args.min_replicas if args.min_replicas is not None else 1
        options["autoscaling_config"] = {
            "min_replicas": lo,
            "max_replicas": args.max_replicas if args.max_replicas is not None else max(lo, 1),
            "target_ongoing_requests": 4,
        }
    else:
        options["num_replicas"] = args.num_replicas or 1
    deployment = serve.deployment(_deployment_class(max_cached)).options(**options)
    return deployment.bind(args.model_dump())
