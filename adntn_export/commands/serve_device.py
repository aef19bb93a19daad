"""``adntn serve-device``: print the device-server recipe, or run a tracker/server here."""

from __future__ import annotations

import argparse
import time


def _handler(args: argparse.Namespace) -> int:
    from adntn_export.tvm_backend import rpc

    if not (args.run_tracker or args.run_server):
        print(rpc.serve_device_recipe(args.tracker, args.key))
        return 0
    procs = []
    host, port = rpc.parse_address(args.tracker, what="tracker address")
    if args.run_tracker:
        tracker = rpc.start_local_tracker(port=port, port_end=port + 1)
        procs.append(tracker)
        port = tracker.port
        print(f"tracker on 127.0.0.1:{port}")
    if args.run_server:
        rpc.check_reachable(host, port)
        procs.append(rpc.start_local_server(port, args.key))
        print(f"server registered at {host}:{port} as {args.key!r}")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        for p in reversed(procs):
            p.terminate()
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``serve-device`` verb."""
    p = subparsers.add_parser(
        "serve-device",
        help="TVM RPC for tuning/benchmarking on a device: print the recipe or run it here",
        description="Without flags, print the commands for a Raspberry Pi / Jetson: "
        "`python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY`.",
    )
    p.add_argument("--tracker", default="127.0.0.1:9190", metavar="HOST:PORT")
    p.add_argument("--key", default="rpi4", help="device key (e.g. rpi4, rpi5, jetson)")
    p.add_argument("--run-tracker", action="store_true", help="run a tracker on 127.0.0.1 here")
    p.add_argument(
        "--run-server",
        action="store_true",
        help="run a (host-CPU) RPC server here, registered at --tracker",
    )
    p.set_defaults(handler=_handler)
