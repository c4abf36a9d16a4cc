"""Running the label server: port checks, the URL, uvicorn, the browser.

:func:`start_server` runs it in a background thread (tests, the benchmark); :func:`serve`
runs it in the foreground until the page's ``q`` or Ctrl+C (``icas label``).
"""

from __future__ import annotations

import errno
import logging
import secrets
import socket
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

from icas_ray.client._config import LabelConfig, is_loopback
from icas_ray.errors import ConfigError
from icas_ray.storage import Storage

__all__ = ["DEFAULT_PORT", "RunningServer", "check_port", "prepare_config", "serve",
           "start_server"]

logger = logging.getLogger(__name__)

#: Tried first when no --port is given; any free port when it is taken.
DEFAULT_PORT = 8750


def check_port(host: str, port: int) -> int:
    """``port`` if it can be bound on ``host`` (0 = a free one, returned).

    Raises:
        ConfigError: the port is in use or cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} on {host} is in use: pick another with --port, "
                                  "or stop the program using it") from e
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}") from e
        return int(s.getsockname()[1])


def prepare_config(config: LabelConfig, *, port_given: bool = True) -> LabelConfig:
    """The config with a token when the host is not loopback and a bindable port.

    Without ``port_given`` the default port is tried first, then any free port.
    """
    if not is_loopback(config.host) and not config.token:
        config = replace(config, token=secrets.token_urlsafe(18))
    if port_given:
        return replace(config, port=check_port(config.host, config.port))
    try:
        return replace(config, port=check_port(config.host, DEFAULT_PORT))
    except ConfigError:
        return replace(config, port=check_port(config.host, 0))


def url_of(config: LabelConfig) -> str:
    host = config.host if ":" not in config.host else f"[{config.host}]"
    if host in ("0.0.0.0", "[::]"):
        host = socket.gethostname()
    url = f"http://{host}:{config.port}/"
    return url + (f"?token={config.token}" if config.token else "")


@dataclass
class RunningServer:
    """A server started by :func:`start_server`: its URL, state and thread."""

    url: str
    state: Any
    server: Any
    thread: threading.Thread

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.state.close()


def _uvicorn(config: LabelConfig, state: Any) -> Any:
    import uvicorn

    from icas_ray.client.app import create_app

    server = uvicorn.Server(uvicorn.Config(
        create_app(state), host=config.host, port=config.port, log_level="warning",
        access_log=False, lifespan="off", timeout_graceful_shutdown=2))
    state.server = server
    return server


def start_server(config: LabelConfig, storage: Storage | None = None,
                 ready_timeout: float = 30.0) -> RunningServer:
    """Start a label server in a daemon thread and wait until it accepts connections.

    Args:
        config: the session; ``port=0`` picks a free port.
        storage: file access.
    """
    from icas_ray.client.app import LabelState

    config = prepare_config(config)
    state = LabelState(config, storage)
    server = _uvicorn(config, state)
    thread = threading.Thread(target=server.run, name="icas-label-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + ready_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"label server on {config.host}:{config.port} did not start")
        time.sleep(0.02)
    return RunningServer(url_of(config), state, server, thread)


def serve(config: LabelConfig, *, storage: Storage | None = None, open_browser: bool = True,
          port_given: bool = True, echo: Any = print) -> None:
    """Run ``icas label`` in the foreground: print the URL, open the browser, serve until
    the page quits or Ctrl+C.

    Raises:
        IcasError: any problem a user can fix, before the server starts.
    """
    from icas_ray.client.app import LabelState

    config = prepare_config(config, port_given=port_given)
    state = LabelState(config, storage)
    try:
        server = _uvicorn(config, state)
        url = url_of(config)

        def announce() -> None:  # once the socket listens: a printed URL always answers
            while not server.started and not server.should_exit:
                time.sleep(0.02)
            if not server.started:
                return
            echo(url)
            if open_browser:
                import webbrowser

                webbrowser.open(url)

        threading.Thread(target=announce, name="icas-label-announce", daemon=True).start()
        server.run()
    finally:
        state.close()
