"""The label server: a Starlette app serving the static page and a JSON API under ``/api/``.

Routes (``{id}`` is an index or a relative name from ``/api/state``, never a path):

=========================================  ======================================================
``GET /``, ``/static/*``                   the page (package data in ``icas_ray/client/static``)
``GET /api/state``                         images, done flags, position, keymap, modes available
``POST /api/open`` ``{"id"}``              remember the position; meta, saved paint, proposal
``GET /api/images/{id}/image``             the image as PNG (decoded pixels, orientation applied)
``GET /api/images/{id}/labels``            its label map as a packed RGB PNG
``POST /api/images/{id}/save``             the painted map -> mask files; marks the image done
``POST /api/images/{id}/grabcut``          rectangle + strokes -> GrabCut segments
``POST /api/images/{id}/sam``              points/boxes -> SAM mask as segments (proxied)
``POST /api/images/{id}/sam/automatic``    SAM automatic masks as segments
``POST /api/images/{id}/templates``        template painting -> paint to apply
``GET /api/sam/info``                      the service's device
``POST /api/quit``                         stop the server
=========================================  ======================================================

Every ``/api/`` request must carry the session token (header ``X-Icas-Token``) when one is
set, every POST the header ``X-Icas-Client`` (a cross-site form cannot send it), and the
``Host`` header must name this server (no DNS rebinding); bodies are capped (413).
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from icas_ray.client._catalog import Catalog, ImageEntry, Refused
from icas_ray.client._codec import decode_paint, masks_from_paint, paint_from_masks
from icas_ray.client._config import LabelConfig, is_loopback
from icas_ray.client._prepare import Prepared, Preparer, find_presegmented
from icas_ray.client._session import Session
from icas_ray.errors import ConfigError, IcasError
from icas_ray.images import DecodeError
from icas_ray.storage import Storage

__all__ = ["LabelState", "create_app"]

logger = logging.getLogger(__name__)

STATIC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
TOKEN_HEADER = "x-icas-token"
CLIENT_HEADER = "x-icas-client"
#: How long opening an image waits for its pending cluster proposal.
PROPOSAL_WAIT_S = 20.0


@dataclass
class _Proposal:
    source: str
    masks: dict[tuple[int, int, int], np.ndarray]
    score: float
    method: str


class LabelState:
    """Everything the routes share: catalog, session, preparer, SAM client, proposals.

    Args:
        config: the session's configuration.
        storage: file access.

    Raises:
        IcasError: a missing folder, no images, bad method or parameters, bad template
            folders, no pre-segmentation where one was named.
    """

    def __init__(self, config: LabelConfig, storage: Storage | None = None) -> None:
        from icas_ray.label.keymap import ACTIONS, DEFAULT_KEYMAP

        self.config = config
        self.storage = storage or Storage()
        self.catalog = Catalog(config.folder, config.output_uri, self.storage)
        self.session = Session(config.output_uri, self.storage,
                               [e.rel for e in self.catalog.entries])
        self.sam = None
        if config.sam_url:
            from icas_ray.serve.client import SamClient

            self.sam = SamClient(config.sam_url, token=config.sam_token, retries=1)
        elif config.method.lower() == "sam":
            raise ConfigError("--method sam needs --sam-url URL of a running `icas serve`")
        preseg = (find_presegmented(config.presegmented, config.method, self.storage)
                  if config.presegmented else _found_presegmented(config, self.storage))
        self.preparer = Preparer(self.catalog, method=config.method, params=dict(config.params),
                                 presegmented=preseg, sam=self.sam,
                                 keep=2 * config.prefetch + 4)
        self.templates = None
        if config.templates is not None:
            from icas_ray.client._tools import load_templates

            self.templates = load_templates(config.templates, self.storage)
        self.keymap = dict(config.keymap or DEFAULT_KEYMAP)
        self.actions = dict(ACTIONS)
        self.sam_info: dict[str, Any] | None = None
        self.proposals: dict[str, _Proposal] = {}
        self._pending: dict[str, Future[None]] = {}
        self._generation: dict[str, int] = {}
        self._lock = threading.Lock()
        self._propose_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="icas-propose")
        self.server: Any = None  # the uvicorn.Server, set by run_server (to stop on quit)
        self.preparer.prefetch(self.session.current - 1, config.prefetch + 1)

    def close(self) -> None:
        self.session.flush()
        self.preparer.close()
        self._propose_pool.shutdown(wait=False, cancel_futures=True)
        if self.sam is not None:
            self.sam.close()

    # -- state -----------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        done = self.session.done
        with self._lock:
            proposed = set(self.proposals) | set(self._pending)
        return {
            "images": [{"id": e.index, "name": e.rel, "done": e.rel in done,
                        "proposal": e.rel in proposed and e.rel not in done}
                       for e in self.catalog.entries],
            "current": self.session.current,
            "keymap": self.keymap,
            "actions": self.actions,
            "start_mode": self.preparer.start_mode,
            "method": self.preparer.method.name,
            "presegmented": self.preparer.layout.method if self.preparer.layout else None,
            "sam": self.sam is not None,
            "templates": len(self.templates) if self.templates else 0,
            "output": self.config.output_uri,
            "propose": self.config.propose,
        }

    def open(self, entry: ImageEntry) -> dict[str, Any]:
        p = self.preparer.get(entry.index)
        self.session.move(entry.index)  # only once it opens: a reload must not land on an error
        self.preparer.prefetch(entry.index, self.config.prefetch)
        meta = {"id": entry.index, "name": entry.rel, "done": entry.rel in self.session.done,
                **self.preparer.describe(p), "paint": None, "proposal": None}
        if entry.rel in self.session.done:
            from icas_ray.label.export import read_masks

            masks = read_masks(self.storage, self.catalog.output_dir(entry), entry.stem)
            masks = {c: m for c, m in masks.items() if m.shape == p.labels.shape}
            if masks:
                meta["paint"] = paint_from_masks(masks, p.labels.shape)
            return meta
        with self._lock:
            pending = self._pending.get(entry.rel)
        if pending is not None:
            try:
                pending.result(timeout=PROPOSAL_WAIT_S)
            except Exception as e:  # noqa: BLE001 - a failed proposal is no proposal
                logger.warning("proposal for %s failed: %s", entry.rel, e)
        with self._lock:
            prop = self.proposals.get(entry.rel)
        if prop is not None and prop.masks:
            meta["proposal"] = {**paint_from_masks(prop.masks, p.labels.shape),
                                "source": prop.source, "score": round(float(prop.score), 3),
                                "method": prop.method}
        return meta

    def save(self, entry: ImageEntry, payload: dict[str, Any]) -> dict[str, Any]:
        from icas_ray.label.export import write_masks

        p = self.preparer.get(entry.index)
        paint, palette = decode_paint(payload, p.labels.shape)  # type: ignore[arg-type]
        masks = masks_from_paint(paint, palette)
        files = write_masks(self.storage, self.catalog.output_dir(entry), entry.stem, masks,
                            indexed=self.config.indexed)
        self.session.mark_done(entry.rel, sorted(masks), files)
        with self._lock:
            self.proposals.pop(entry.rel, None)
        if self.config.propose and masks:
            self._propose_from(entry, p, masks)
        nxt = self.session.first_undone()
        after = next((e.index for e in self.catalog.entries[entry.index + 1:]
                      if e.rel not in self.session.done), nxt)
        return {"files": files, "colors": [list(c) for c in sorted(masks)],
                "next": after if after is not None else entry.index}

    # -- cluster proposals -----------------------------------------------------------------
    def _propose_from(self, source: ImageEntry, prepared: Prepared,
                      masks: dict[tuple[int, int, int], np.ndarray]) -> None:
        """Propose ``masks`` on the not-done images of ``source``'s folder, nearest first."""
        targets = [e for e in self.catalog.siblings(source) if e.rel not in self.session.done]
        targets.sort(key=lambda e: (e.index <= source.index, abs(e.index - source.index)))
        with self._lock:
            gen = self._generation.get(source.group, 0) + 1
            self._generation[source.group] = gen
            for t in targets:
                self._pending[t.rel] = self._propose_pool.submit(
                    self._propose_one, source, prepared.image, masks, t, gen)

    def _propose_one(self, source: ImageEntry, image: np.ndarray,
                     masks: dict[tuple[int, int, int], np.ndarray], target: ImageEntry,
                     gen: int) -> None:
        from icas_ray.label.propagate import propose

        try:
            with self._lock:
                if self._generation.get(source.group) != gen:
                    return  # a newer save of this cluster proposes instead
            t = self.preparer.get(target.index)
            prop = propose(image, masks, t.image, target_labels=t.labels)
            with self._lock:
                if self._generation.get(source.group) == gen and target.rel not in self.session.done:
                    self.proposals[target.rel] = _Proposal(source.rel, dict(prop.masks),
                                                           float(prop.score), str(prop.method))
        finally:
            with self._lock:
                if self._generation.get(source.group) == gen:
                    self._pending.pop(target.rel, None)

    # -- SAM -------------------------------------------------------------------------------
    def sam_id(self, p: Prepared) -> str:
        if self.sam is None or p.sam_id is None:
            raise ConfigError("SAM mode needs --sam-url URL of a running `icas serve`")
        return p.sam_id.result()

    def sam_device(self) -> dict[str, Any]:
        if self.sam is None:
            return {"available": False}
        if self.sam_info is None:
            info = self.sam.info()
            self.sam_info = {"available": True, "device": info.get("device"),
                             "model_type": info.get("model_type")}
        return self.sam_info


def _found_presegmented(config: LabelConfig, storage: Storage) -> tuple[str, str] | None:
    """``icas segment`` results in the output folder itself (its default output is the same
    ``<folder>_segmented``): used without --presegmented, the configured method first."""
    from icas_ray.segment import method_names

    out = config.output_uri
    for name in [config.method, *(m for m in method_names() if m != config.method)]:
        if storage.exists(storage.join(out, name, "params.json")):
            logger.info("segments from %s", storage.join(out, name))
            return out, name
    return None


# -- middleware --------------------------------------------------------------------------------
class _Guard:
    """Pure ASGI middleware: token, Host and client-header checks; request bodies capped."""

    def __init__(self, app: ASGIApp, *, token: str | None, max_body: int, host: str) -> None:
        self.app = app
        self.token = token
        self.max_body = max_body
        self.any_host = not is_loopback(host)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        error = self._check(scope, headers)
        if error is not None:
            await JSONResponse({"error": error[1]}, status_code=error[0])(scope, receive, send)
            return
        seen = 0

        async def capped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:  # a chunked body without Content-Length
                    raise _TooLarge(f"request body over the limit of {self.max_body} bytes")
            return message

        await self.app(scope, capped, send)

    def _check(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str] | None:
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            return 413, f"request body of {length} bytes is over the limit of {self.max_body}"
        host = headers.get("host", "").rsplit(":", 1)[0].strip("[]").lower()
        if not self.any_host and host and not is_loopback(host):
            return 403, f"Host {host!r} is not this server: open the URL icas label printed"
        path = scope.get("path", "")
        if not path.startswith("/api/"):
            return None
        if self.token is not None:
            given = headers.get(TOKEN_HEADER)
            if given is None:
                from urllib.parse import parse_qs

                given = (parse_qs(scope.get("query_string", b"").decode()).get("token") or [""])[0]
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return 401, "missing or wrong token: open the URL icas label printed"
        if scope.get("method") == "POST" and CLIENT_HEADER not in headers:
            return 403, f"POST requests need the {CLIENT_HEADER} header (the page sends it)"
        return None


class _TooLarge(IcasError):
    """A body past the cap, found while reading it (the route answers 413)."""

    status = 413


# -- routes ------------------------------------------------------------------------------------
def _error(e: Exception) -> JSONResponse:
    if isinstance(e, (Refused, _TooLarge)):
        status = e.status
    elif hasattr(e, "status"):
        status = 502  # the SAM service refused or was unreachable: not this server's answer
    else:
        status = 422
    return JSONResponse({"error": str(e)}, status_code=status)


def _entry(request: Request) -> ImageEntry:
    state: LabelState = request.app.state.label
    return state.catalog.resolve(request.path_params["image_id"])


async def _json(request: Request) -> dict[str, Any]:
    import json

    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError as e:
        raise ConfigError(f"request body is not JSON: {e}") from e
    if not isinstance(body, dict):
        raise ConfigError("request body must be a JSON object")
    return body


def _guarded(fn: Any) -> Any:
    async def endpoint(request: Request) -> Response:
        try:
            return await fn(request)
        except (IcasError, DecodeError) as e:
            return _error(e)

    endpoint.__name__ = fn.__name__
    return endpoint


@_guarded
async def index(request: Request) -> Response:
    return FileResponse(os.path.join(STATIC, "index.html"),
                        headers={"Cache-Control": "no-store"})


@_guarded
async def api_state(request: Request) -> Response:
    return JSONResponse(request.app.state.label.state())


@_guarded
async def api_open(request: Request) -> Response:
    state: LabelState = request.app.state.label
    body = await _json(request)
    entry = state.catalog.resolve(body.get("id", ""))
    return JSONResponse(await run_in_threadpool(state.open, entry))


@_guarded
async def api_image(request: Request) -> Response:
    state: LabelState = request.app.state.label
    entry = _entry(request)
    state.catalog.check(entry)
    p = await run_in_threadpool(state.preparer.get, entry.index)
    return Response(p.image_png, media_type="image/png", headers={"Cache-Control": "no-store"})


@_guarded
async def api_labels(request: Request) -> Response:
    state: LabelState = request.app.state.label
    entry = _entry(request)
    state.catalog.check(entry)
    p = await run_in_threadpool(state.preparer.get, entry.index)
    return Response(p.labels_png, media_type="image/png", headers={"Cache-Control": "no-store"})


@_guarded
async def api_save(request: Request) -> Response:
    state: LabelState = request.app.state.label
    entry = _entry(request)
    body = await _json(request)
    return JSONResponse(await run_in_threadpool(state.save, entry, body))


@_guarded
async def api_grabcut(request: Request) -> Response:
    from icas_ray.client._tools import grabcut

    state: LabelState = request.app.state.label
    entry = _entry(request)
    body = await _json(request)

    def run() -> dict[str, Any]:
        return grabcut(state.preparer.get(entry.index).image, body)

    return JSONResponse(await run_in_threadpool(run))


@_guarded
async def api_sam(request: Request) -> Response:
    from icas_ray.client._tools import sam_predict

    state: LabelState = request.app.state.label
    entry = _entry(request)
    body = await _json(request)

    def run() -> dict[str, Any]:
        p = state.preparer.get(entry.index)
        out = sam_predict(state.sam, state.sam_id(p), body)
        return {**out, **state.sam_device()}

    return JSONResponse(await run_in_threadpool(run))


@_guarded
async def api_sam_automatic(request: Request) -> Response:
    from icas_ray.client._tools import sam_automatic

    state: LabelState = request.app.state.label
    entry = _entry(request)
    body = await _json(request)

    def run() -> dict[str, Any]:
        p = state.preparer.get(entry.index)
        out = sam_automatic(state.sam, state.sam_id(p), body)
        return {**out, **state.sam_device()}

    return JSONResponse(await run_in_threadpool(run))


@_guarded
async def api_sam_info(request: Request) -> Response:
    state: LabelState = request.app.state.label
    return JSONResponse(await run_in_threadpool(state.sam_device))


@_guarded
async def api_templates(request: Request) -> Response:
    from icas_ray.client._tools import paint_templates

    state: LabelState = request.app.state.label
    entry = _entry(request)
    body = await _json(request)
    if not state.templates:
        raise ConfigError("template painting needs --templates DIR and --segments DIR")
    threshold = body.get("threshold")

    def run() -> dict[str, Any]:
        p = state.preparer.get(entry.index)
        return paint_templates(p.image, p.labels, state.templates or [],
                               None if threshold is None else float(threshold))

    return JSONResponse(await run_in_threadpool(run))


@_guarded
async def api_quit(request: Request) -> Response:
    state: LabelState = request.app.state.label
    if state.server is not None:
        # Answer first, then stop: uvicorn finishes the response before exiting.
        threading.Timer(0.2, lambda: setattr(state.server, "should_exit", True)).start()
    return JSONResponse({"stopped": state.server is not None, "at": time.time()})


def create_app(state: LabelState) -> ASGIApp:
    """The ASGI app of a labelling session (wrap ``state`` built from a :class:`LabelConfig`)."""
    image = "/api/images/{image_id:path}"
    routes = [
        Route("/", index),
        Route("/api/state", api_state),
        Route("/api/open", api_open, methods=["POST"]),
        Route("/api/sam/info", api_sam_info),
        Route("/api/quit", api_quit, methods=["POST"]),
        Route(image + "/image", api_image),
        Route(image + "/labels", api_labels),
        Route(image + "/save", api_save, methods=["POST"]),
        Route(image + "/grabcut", api_grabcut, methods=["POST"]),
        Route(image + "/sam/automatic", api_sam_automatic, methods=["POST"]),
        Route(image + "/sam", api_sam, methods=["POST"]),
        Route(image + "/templates", api_templates, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC)),
    ]
    app = Starlette(routes=routes)
    app.state.label = state
    return _Guard(app, token=state.config.token, max_body=state.config.max_body,
                  host=state.config.host)
