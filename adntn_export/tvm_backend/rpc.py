"""TVM RPC helpers: tracker/server address checks, local tracker+server for tests, and the
``serve-device`` recipe.

On a real board (Raspberry Pi, Jetson) with the aarch64 ``apache-tvm`` wheel installed::

    python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY

(``HOST:PORT`` is the tracker started on the workstation with
``python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190``; ``KEY`` names the device kind,
e.g. ``rpi4``). ``adntn serve-device`` prints this recipe, or runs a tracker and/or server here.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import Any

DEFAULT_TRACKER_PORT = 9190


def parse_address(addr: str, *, what: str = "address") -> tuple[str, int]:
    """``"HOST:PORT"`` -> ``(host, port)``; ``ValueError`` on a malformed value."""
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad {what} {addr!r}: expected HOST:PORT, e.g. 127.0.0.1:9190")
    return host, int(port)


def check_reachable(host: str, port: int, *, timeout: float = 3.0, what: str = "tracker") -> None:
    """Raise ``RuntimeError`` quickly if nothing accepts TCP connections at ``host:port``.

    TVM's own client retries refused connections for up to a minute; this fails fast.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise RuntimeError(
            f"RPC {what} at {host}:{port} is unreachable ({exc.strerror or exc}); start it "
            f"with `python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port {port}` or "
            "`adntn serve-device --tracker-only`"
        ) from None


def check_tracker(tracker: str, key: str, *, timeout: float = 3.0) -> dict[str, Any]:
    """Check that the tracker answers and has a server registered under ``key``.

    Returns the tracker summary. Raises ``RuntimeError`` with the recipe otherwise.
    """
    from tvm import rpc

    host, port = parse_address(tracker, what="tracker address")
    check_reachable(host, port, timeout=timeout)
    summary = rpc.connect_tracker(host, port).summary()
    keys = sorted(summary.get("queue_info", {}))
    if key not in keys:
        raise RuntimeError(
            f"no RPC server registered under key {key!r} at tracker {tracker} "
            f"(keys: {keys or 'none'}); on the device run: "
            f"python -m tvm.exec.rpc_server --tracker {tracker} --key {key}"
        )
    return summary


def connect(
    *,
    tracker: str | None = None,
    key: str | None = None,
    server: str | None = None,
    timeout: float = 10.0,
) -> Any:
    """Open an RPC session via a tracker (``tracker`` + ``key``) or directly (``server``)."""
    from tvm import rpc

    if server is not None:
        host, port = parse_address(server, what="server address")
        check_reachable(host, port, what="server")
        return rpc.connect(host, port, session_timeout=0)
    if tracker is None or not key:
        raise ValueError("give either server='HOST:PORT' or tracker='HOST:PORT' and key")
    check_tracker(tracker, key, timeout=min(timeout, 3.0))
    host, port = parse_address(tracker)
    return rpc.connect_tracker(host, port).request(key, priority=1, session_timeout=0, max_retry=2)


@dataclass
class LocalRPC:
    """A tracker and a server (registered under ``key``) running on 127.0.0.1."""

    tracker: Any
    server: Any
    key: str

    @property
    def tracker_address(self) -> str:
        """``"127.0.0.1:PORT"`` of the tracker."""
        return f"127.0.0.1:{self.tracker.port}"

    def close(self) -> None:
        """Stop the server, then the tracker."""
        self.server.terminate()
        self.tracker.terminate()

    def __enter__(self) -> LocalRPC:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_local_tracker(port: int = DEFAULT_TRACKER_PORT, port_end: int = 9299) -> Any:
    """Start a ``tvm.rpc.tracker.Tracker`` on 127.0.0.1 (a subprocess); ``.port`` is its port."""
    from tvm.rpc.tracker import Tracker

    return Tracker(host="127.0.0.1", port=port, port_end=port_end, silent=True)


def start_local_server(tracker_port: int, key: str, port: int = 9300, port_end: int = 9399) -> Any:
    """Start a ``tvm.rpc.server.Server`` on 127.0.0.1 registered at a local tracker."""
    from tvm.rpc.server import Server

    return Server(
        host="127.0.0.1",
        port=port,
        port_end=port_end,
        key=key,
        tracker_addr=("127.0.0.1", tracker_port),
        silent=True,
    )


def start_local_rpc(key: str = "adntn-local", *, wait: float = 10.0) -> LocalRPC:
    """Start a tracker and a host (x86) server registered under ``key``; waits until ready."""
    import time

    deadline = time.time() + wait
    tracker = start_local_tracker()
    while True:  # the tracker subprocess reports its port before it accepts connections
        try:
            check_reachable("127.0.0.1", tracker.port, timeout=1.0)
            break
        except RuntimeError:
            if time.time() > deadline:
                tracker.terminate()
                raise
            time.sleep(0.1)
    server = start_local_server(tracker.port, key)
    local = LocalRPC(tracker, server, key)
    while True:
        try:
            check_tracker(local.tracker_address, key)
            return local
        except RuntimeError:
            if time.time() > deadline:
                local.close()
                raise
            time.sleep(0.2)


def serve_device_recipe(tracker: str, key: str) -> str:
    """The commands to run a device server for ``key`` registered at ``tracker``."""
    return "\n".join(
        [
            "# on the workstation (once):",
            f"python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port {tracker.rpartition(':')[2]}",
            "# on the device (Raspberry Pi / Jetson), with the aarch64 TVM wheels installed:",
            "pip install apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1",
            f"python -m tvm.exec.rpc_server --tracker {tracker} --key {key}",
            "# check from the workstation:",
            f"python -m tvm.exec.query_rpc_tracker --host {tracker.rpartition(':')[0]} "
            f"--port {tracker.rpartition(':')[2]}",
        ]
    )
