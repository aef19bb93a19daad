"""Process bookkeeping for the tests that start servers: a free port, the processes a run
started, which of them are still alive, and ending them (``psutil``; importers skip without)."""

from __future__ import annotations

import socket

import psutil


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pids: list[int]) -> set[int]:
    """Every process below ``pids`` (those already gone are skipped)."""
    found = set()
    for pid in pids:
        try:
            found |= {c.pid for c in psutil.Process(pid).children(recursive=True)}
        except psutil.NoSuchProcess:
            pass
    return found


def alive(pids: set[int]) -> list[str]:
    """``"pid: command line"`` of each of ``pids`` still running (zombies count as gone)."""
    out = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE:
                out.append(f"{pid}: {' '.join(p.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return out


def terminate(pids: set[int]) -> None:
    """SIGTERM each of ``pids``, lowest first; SIGKILL what is left after 15 s."""
    procs = []
    for pid in sorted(pids):
        try:
            p = psutil.Process(pid)
            p.terminate()
            procs.append(p)
        except psutil.NoSuchProcess:
            pass
    _, left = psutil.wait_procs(procs, timeout=15)
    for p in left:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
