"""``adntn serve-device``: print the device-server recipe, or run a tracker/servers here.

``--emulate rpi4|rpi5`` serves an emulated Raspberry Pi: an aarch64 Python with TVM's runtime
under qemu-user (built on first use, cached), registered at ``--tracker`` (a tracker is
started here when none is given). Figures measured on it are emulation timings, labelled so.
"""

from __future__ import annotations

import argparse
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

DEFAULT_TRACKER = "127.0.0.1:9190"


@contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM ends the serve loop like Ctrl-C does (so every child is stopped)."""

    def _raise(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _serve_forever() -> None:
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


def _emulate(args: argparse.Namespace) -> int:
    from adntn_export.tvm_backend.emulated import EMULATED_CPUS, EmulatedFarm

    if args.key not in (None, args.emulate):
        raise ValueError(
            f"--key {args.key!r} with --emulate {args.emulate}: an emulated board registers "
            f"under its own name ({args.emulate!r}); drop --key"
        )
    if args.servers < 1:
        raise ValueError(f"--servers must be >= 1, got {args.servers}")
    from adntn_export.tvm_backend import rpc

    tracker, port, port_end = args.tracker, 9190, None
    if tracker is not None:
        host, port = rpc.parse_address(tracker, what="tracker address (--tracker)")
        try:
            rpc.check_reachable(host, port, timeout=2.0)
        except RuntimeError:
            if host not in ("127.0.0.1", "localhost"):
                raise
            tracker, port_end = None, port + 1  # nothing there: start it, at that very port
    with _stop_on_sigterm():
        farm = EmulatedFarm(
            {args.emulate: args.servers},
            tracker=tracker,
            tracker_port=port,
            tracker_port_end=port_end,
            progress=lambda line: print(f"[serve-device] {line}", flush=True),
        )
        try:
            print(
                f"ready: {args.servers} EMULATED {args.emulate} server(s) (qemu-user, "
                f"{EMULATED_CPUS[args.emulate]}) under key {args.emulate!r} at tracker "
                f"{farm.tracker}; timings measured on them are emulation, not device speed. "
                "Ctrl-C stops them.",
                flush=True,
            )
            _serve_forever()
        finally:
            farm.close()
            print("[serve-device] stopped every server and tracker it started", flush=True)
    return 0


def _handler(args: argparse.Namespace) -> int:
    from adntn_export.tvm_backend import rpc

    if args.emulate:
        return _emulate(args)
    tracker_addr = args.tracker or DEFAULT_TRACKER
    key = args.key or "rpi4"
    if not (args.run_tracker or args.run_server):
        print(rpc.serve_device_recipe(tracker_addr, key))
        return 0
    procs = []
    host, port = rpc.parse_address(tracker_addr, what="tracker address (--tracker)")
    with _stop_on_sigterm():
        try:
            if args.run_tracker:
                tracker = rpc.start_local_tracker(port=port, port_end=port + 1)
                procs.append(tracker)
                port = tracker.port
                print(f"tracker on 127.0.0.1:{port}", flush=True)
            if args.run_server:
                rpc.check_reachable(host, port)
                procs.append(rpc.start_local_server(port, key))
                print(f"server registered at {host}:{port} as {key!r}", flush=True)
            _serve_forever()
        finally:
            for p in reversed(procs):
                p.terminate()
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``serve-device`` verb."""
    from adntn_export.tvm_backend.emulated import EMULATED_CPUS

    p = subparsers.add_parser(
        "serve-device",
        help="TVM RPC for tuning/benchmarking on a device: print the recipe, run it here, "
        "or serve an emulated Raspberry Pi",
        description="Without flags, print the commands for a Raspberry Pi / Jetson: "
        "`python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY`. "
        "--emulate rpi4|rpi5 serves an emulated Pi (qemu-user) for users without a board.",
    )
    p.add_argument(
        "--tracker",
        default=None,
        metavar="HOST:PORT",
        help=f"tracker address (default {DEFAULT_TRACKER}); with --emulate: register there, "
        "or start a tracker there when nothing listens on that local port",
    )
    p.add_argument("--key", default=None, help="device key (e.g. rpi4, rpi5, jetson)")
    p.add_argument("--run-tracker", action="store_true", help="run a tracker on 127.0.0.1 here")
    p.add_argument(
        "--run-server",
        action="store_true",
        help="run a (host-CPU) RPC server here, registered at --tracker",
    )
    p.add_argument(
        "--emulate",
        choices=sorted(EMULATED_CPUS),
        help="serve an emulated board (aarch64 under qemu-user; built on first use, cached)",
    )
    p.add_argument(
        "--servers",
        type=int,
        default=1,
        help="with --emulate: how many emulated servers under the key (a farm; default 1)",
    )
    p.set_defaults(handler=_handler)
