"""TVM RPC client: tracker checks and device sessions, every network call under a timeout.

A device (Raspberry Pi, Jetson, or the emulated Pi of ``adntn serve-device --emulate``) runs
``python -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY`` and registers at TVM's tracker
(``python -m tvm.exec.rpc_tracker``); clients ask the tracker for a session under ``KEY``.
Several servers under one key form a farm: the tracker hands each request to a free one.

TVM's Python tracker client has no timeouts (a port that accepts but never answers blocks
``connect_tracker(...).summary()`` forever): every tracker socket here is created under
:func:`socket_timeout`, and sessions carry a server-side ``session_timeout``.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import Any

DEFAULT_TRACKER_PORT = 9190
#: Seconds a tracker has to answer one request (summary, handshake).
TRACKER_TIMEOUT = 10.0
#: Seconds to wait for a free device under a key (all busy: another client holds them).
REQUEST_TIMEOUT = 300.0
#: Seconds a device session may last before the server ends it.
SESSION_TIMEOUT = 600.0
START_TRACKER_HINT = (
    "start one with `adntn serve-device --run-tracker` or "
    "`python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port {port}`"
)


def parse_address(addr: str, *, what: str = "address") -> tuple[str, int]:
    """``"HOST:PORT"`` -> ``(host, port)``; ``ValueError`` on a malformed value."""
    host, sep, port = str(addr).rpartition(":")
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
        hint = START_TRACKER_HINT.format(port=port) if what == "tracker" else "is it running?"
        raise RuntimeError(
            f"RPC {what} at {host}:{port} is unreachable ({exc.strerror or exc}); {hint}"
        ) from None


@contextlib.contextmanager
def socket_timeout(seconds: float) -> Iterator[None]:
    """Sockets created inside get ``seconds`` as their timeout (TVM's client sets none)."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(old)


def tracker_session(tracker: str, *, timeout: float = TRACKER_TIMEOUT) -> Any:
    """A ``TrackerSession`` whose socket times out after ``timeout`` s per call."""
    from tvm import rpc

    host, port = parse_address(tracker, what="tracker address")
    check_reachable(host, port, timeout=min(timeout, 3.0))
    try:
        with socket_timeout(timeout):
            return rpc.connect_tracker(host, port)
    except (OSError, RuntimeError) as exc:
        raise RuntimeError(
            f"RPC tracker at {tracker} accepts connections but did not answer within "
            f"{timeout:.0f} s ({exc}); is it a TVM tracker? {START_TRACKER_HINT.format(port=port)}"
        ) from None


def tracker_summary(tracker: str, *, timeout: float = TRACKER_TIMEOUT) -> dict[str, Any]:
    """The tracker's summary (``queue_info``, ``server_info``), under ``timeout``."""
    sess = tracker_session(tracker, timeout=timeout)
    try:
        return sess.summary()
    except OSError as exc:
        raise RuntimeError(
            f"RPC tracker at {tracker} did not answer a summary request within {timeout:.0f} s "
            f"({exc})"
        ) from None
    finally:
        sess.close()


def servers_under(summary: dict[str, Any], key: str) -> int:
    """Number of servers registered under ``key`` in a tracker summary."""
    return sum(
        1 for s in summary.get("server_info", []) if str(s.get("key", "")).split(":")[-1] == key
    )


def check_tracker(tracker: str, key: str, *, timeout: float = 3.0) -> dict[str, Any]:
    """Check that the tracker answers and has a server registered under ``key``.

    Returns the tracker summary. Raises ``RuntimeError`` with the recipe otherwise.
    """
    summary = tracker_summary(tracker, timeout=max(timeout, 1.0))
    keys = sorted(summary.get("queue_info", {}))
    if key not in keys:
        raise RuntimeError(
            f"no RPC server registered under key {key!r} at tracker {tracker} "
            f"(keys: {keys or 'none'}); on the device run: "
            f"python -m tvm.exec.rpc_server --tracker {tracker} --key {key} "
            "(or `adntn serve-device --emulate rpi4` for an emulated Pi)"
        )
    return summary


def connect(
    *,
    tracker: str | None = None,
    key: str | None = None,
    server: str | None = None,
    timeout: float = 10.0,
    request_timeout: float = REQUEST_TIMEOUT,
    session_timeout: float = SESSION_TIMEOUT,
) -> Any:
    """Open an RPC session via a tracker (``tracker`` + ``key``) or directly (``server``).

    ``timeout`` bounds each tracker call, ``request_timeout`` the wait for a free device,
    ``session_timeout`` the session's life on the server (the server ends it after that).
    """
    from tvm import rpc

    if server is not None:
        host, port = parse_address(server, what="server address")
        check_reachable(host, port, what="server")
        return rpc.connect(host, port, session_timeout=session_timeout)
    if tracker is None or not key:
        raise ValueError("give either server='HOST:PORT' or tracker='HOST:PORT' and key")
    check_tracker(tracker, key, timeout=min(timeout, 3.0))
    sess = tracker_session(tracker, timeout=request_timeout)
    try:
        return sess.request(key, priority=1, session_timeout=session_timeout, max_retry=1)
    except RuntimeError as exc:
        raise RuntimeError(
            f"no device under key {key!r} at tracker {tracker} became free within "
            f"{request_timeout:.0f} s ({exc})"
        ) from None
    finally:
        sess.close()


def device_info(session: Any) -> dict[str, Any]:
    """What a device server says about itself (``adntn.device_info``), ``{}`` if nothing.

    An emulated Pi (``adntn serve-device --emulate``) answers ``{"emulated": true, ...}``; a
    real board's plain ``tvm.exec.rpc_server`` has no such function.
    """
    import json

    try:
        text = session.get_function("adntn.device_info")()
        info = json.loads(str(text))
    except Exception:  # noqa: BLE001 - a missing remote function is the normal case
        return {}
    return info if isinstance(info, dict) else {}
