"""TVM RPC helpers: local tracker+server (tests, ``serve-device``) and the device recipe.

The client half (address checks, tracker calls under timeouts, sessions) lives in the
torch-free runtime, :mod:`adntn_runtime.tvm.rpc`, and is re-exported here.

On a real board (Raspberry Pi, Jetson) with the aarch64 ``apache-tvm`` wheel installed::

    python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY

(``HOST:PORT`` is the tracker started on the workstation with
``python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190``; ``KEY`` names the device kind,
e.g. ``rpi4``). ``adntn serve-device`` prints this recipe, or runs a tracker and/or server here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adntn_runtime.tvm.rpc import (
    DEFAULT_TRACKER_PORT,
    check_reachable,
    check_tracker,
    connect,
    parse_address,
    servers_under,
    socket_timeout,
    tracker_session,
    tracker_summary,
)

__all__ = [
    "DEFAULT_TRACKER_PORT",
    "LocalRPC",
    "check_reachable",
    "check_tracker",
    "connect",
    "parse_address",
    "serve_device_recipe",
    "servers_under",
    "socket_timeout",
    "start_local_rpc",
    "start_local_server",
    "start_local_tracker",
    "tracker_session",
    "tracker_summary",
]


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


def start_local_rpc(key: str = "adntn-local", *, wait: float = 90.0) -> LocalRPC:
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
            "pip install apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1 tornado psutil "
            "cloudpickle",
            f"python -m tvm.exec.rpc_server --tracker {tracker} --key {key}",
            "# check from the workstation:",
            f"python -m tvm.exec.query_rpc_tracker --host {tracker.rpartition(':')[0]} "
            f"--port {tracker.rpartition(':')[2]}",
            "# no board yet? an emulated one (qemu-user; timings are emulation):",
            f"adntn serve-device --emulate {key if key in ('rpi4', 'rpi5') else 'rpi4'} "
            f"--tracker {tracker}",
        ]
    )
