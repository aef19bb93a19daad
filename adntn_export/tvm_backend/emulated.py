"""An emulated aarch64 TVM RPC server (qemu-user), for testing the ARM deploy path on x86.

``runtimes/tvm_runner/build_arm64_python.sh`` builds, under ``<cache>/arm64-python/``:

* ``rootfs/`` - a Debian bookworm arm64 minbase tree with ``python3.11`` (``debootstrap
  --foreign``; the .debs are only unpacked, nothing runs in a chroot, binfmt_misc not needed);
* ``site-packages/`` - the aarch64 cp311 wheels of the host's ``apache-tvm`` /
  ``apache-tvm-ffi`` versions (without ``libtvm_compiler.so``) and the server's dependencies.

:func:`start_emulated_server` then runs::

    TVM_USE_RUNTIME_LIB=1 PYTHONPATH=<site-packages> qemu-aarch64-static -L <rootfs> \\
        <rootfs>/usr/bin/python3.11 -m tvm.exec.rpc_server --host 127.0.0.1 --port P \\
        --tracker 127.0.0.1:T --key KEY

(with ``sys.executable`` pointed at a host wrapper script, see :meth:`Arm64Python.wrapper`)

which registers at a host tracker exactly like a Raspberry Pi would; ``load_rpc`` uploads an
``rpi4``/``rpi5`` ``model.so`` to it and runs it. Timings are emulation timings, not a Pi's:
every server says so (``adntn.device_info``, see :meth:`Arm64Python.hooks`) and ``adntn bench``
labels its figures emulated. :class:`EmulatedFarm` (``adntn serve-device --emulate``) runs a
tracker and several servers; each server leads its own process group, so stopping it stops
its session workers too (:func:`stop_process_group`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from adntn_export.tvm_backend.device_runtime import cache_dir

#: Build script for the emulated interpreter (see the module docstring).
BUILD_SCRIPT = (
    Path(__file__).resolve().parents[2] / "runtimes" / "tvm_runner" / ("build_arm64_python.sh")
)
QEMU = "qemu-aarch64-static"
_SITECUSTOMIZE = """\
# Written by adntn_export.tvm_backend.emulated: this Python runs under qemu-user.
import json as _json
import os as _os

if _os.environ.get("ADNTN_EMULATED"):
    try:
        import tvm_ffi as _ffi

        _INFO = _json.dumps(
            {"emulated": True, "board": _os.environ["ADNTN_EMULATED"],
             "cpu": _os.environ.get("QEMU_CPU"), "emulator": "qemu-user"}
        )
        _ffi.register_global_func("adntn.device_info", lambda: _INFO, override=True)
    except Exception:  # no TVM in this site: nothing to register
        pass
"""
#: Boards ``adntn serve-device --emulate`` knows: the CPU model qemu emulates for each.
EMULATED_CPUS = {"rpi4": "cortex-a72", "rpi5": "cortex-a76"}


@dataclass(frozen=True)
class Arm64Python:
    """Paths of the emulated aarch64 Python."""

    root: Path
    rootfs: Path
    site: Path
    qemu: str

    def command(self, *args: str) -> list[str]:
        """Command line running ``python3.11 *args`` under qemu-user."""
        return [self.qemu, "-L", str(self.rootfs), str(self.rootfs / "usr/bin/python3.11"), *args]

    def wrapper(self) -> Path:
        """A host shell script running the emulated python (what ``sys.executable`` must be).

        TVM's RPC server runs each session in a ``PopenWorker``, i.e. it executes
        ``sys.executable``; under qemu-user without binfmt_misc an aarch64 binary cannot be
        exec'd directly, but a script with a host shebang can (the host kernel reads the
        shebang; the path lies outside the rootfs, so qemu's ``-L`` does not redirect it).
        """
        path = self.root / "python3.11-qemu"
        text = "#!/bin/sh\nexec " + " ".join(f"'{a}'" for a in self.command()) + ' "$@"\n'
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            path.chmod(0o755)
        return path

    def hooks(self) -> Path:
        """A folder with a ``sitecustomize.py`` that makes an emulated server say so.

        Every Python the server starts (its session workers too) registers the TVM global
        function ``adntn.device_info`` returning ``{"emulated": true, "board": ..., "cpu": ...}``
        (read by :func:`adntn_runtime.tvm.rpc.device_info`), so figures measured on it are
        labelled emulated wherever they are reported.
        """
        folder = self.root / "hooks"
        folder.mkdir(exist_ok=True)
        path = folder / "sitecustomize.py"
        if not path.exists() or path.read_text() != _SITECUSTOMIZE:
            path.write_text(_SITECUSTOMIZE)
        return folder

    def server_command(self, *server_args: str) -> list[str]:
        """``python -m tvm.exec.rpc_server *server_args`` with ``sys.executable`` patched."""
        code = (
            f"import runpy, sys; sys.executable = {str(self.wrapper())!r}; "
            f"sys.argv = ['rpc_server'] + {list(server_args)!r}; "
            "runpy.run_module('tvm.exec.rpc_server', run_name='__main__')"
        )
        return self.command("-c", code)

    def env(self, cpu: str | None = None, site: Path | str | None = None) -> dict[str, str]:
        """Environment for that command (runtime-only TVM, the aarch64 site-packages).

        ``cpu`` is the CPU model qemu emulates (``QEMU_CPU``, e.g. ``cortex-a72``); ``site``
        replaces the TVM site-packages (e.g. :attr:`runtime_site`, the torch-free runtime).
        """
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        env.pop("QEMU_CPU", None)
        env.update(
            TVM_USE_RUNTIME_LIB="1",
            PYTHONPATH=os.pathsep.join([str(self.hooks()), str(site or self.site)]),
            PYTHONNOUSERSITE="1",
            PYTHONDONTWRITEBYTECODE="1",
        )
        if cpu:
            env["QEMU_CPU"] = cpu
        return env

    @property
    def runtime_site(self) -> Path:
        """``pip install ./runtimes`` for aarch64: adntn_runtime + numpy/onnx/onnxruntime."""
        return self.root / "runtime-site"


def arm64_python_dir() -> Path:
    """``<cache>/arm64-python`` (may not exist)."""
    return cache_dir() / "arm64-python"


def find_arm64_python() -> tuple[Arm64Python | None, str]:
    """``(python, "")`` when the emulated interpreter is ready, else ``(None, reason)``."""
    qemu = shutil.which(QEMU)
    if qemu is None:
        return None, f"{QEMU} not installed (Debian package qemu-user-static)"
    root = arm64_python_dir()
    if not (root / "READY").exists():
        return None, (
            f"no emulated aarch64 Python under {root}: build it with "
            f"{BUILD_SCRIPT} (needs debootstrap and network access, a few minutes)"
        )
    py = Arm64Python(root, root / "rootfs", root / "site-packages", qemu)
    if not (py.rootfs / "usr/bin/python3.11").exists() or not (py.site / "tvm").is_dir():
        return None, f"{root} is incomplete: rerun {BUILD_SCRIPT}"
    return py, ""


def ensure_arm64_python(progress: Callable[[str], None] | None = None) -> Arm64Python:
    """The emulated aarch64 Python, built on first use with :data:`BUILD_SCRIPT` (cached).

    ``progress`` gets the build's output line by line (about a minute and ~400 MB of
    Debian and PyPI downloads, once). Raises ``RuntimeError`` with the reason and the end of
    the build log when it cannot be built.
    """
    py, reason = find_arm64_python()
    if py is not None:
        return py
    if shutil.which(QEMU) is None:
        raise RuntimeError(reason)
    say = progress or (lambda line: None)
    say(f"building the emulated aarch64 Python under {arm64_python_dir()} (once, ~1 min)")
    env = {**os.environ, "ADNTN_CACHE_DIR": str(cache_dir()), "PYTHON": sys.executable}
    tail: list[str] = []
    with subprocess.Popen(
        ["bash", str(BUILD_SCRIPT), str(cache_dir())],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-20:]
            say(line.rstrip())
    py, reason = find_arm64_python()
    if proc.returncode != 0 or py is None:
        raise RuntimeError(
            f"building the emulated aarch64 Python failed (exit {proc.returncode}; {reason}):\n"
            + "\n".join(tail)
        )
    return py


def _process_group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_process_group(proc: subprocess.Popen, *, grace: float = 10.0) -> None:
    """Stop ``proc`` and every process in its group (it must lead its own session).

    TVM's server runs each session in a ``PopenWorker`` child: terminating only the server
    would leave that child (a qemu process) running, re-parented to init.
    """
    pgid = proc.pid
    if _process_group_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
        deadline = time.time() + grace
        while _process_group_alive(pgid) and time.time() < deadline:
            if proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=0.2)
            else:
                time.sleep(0.1)
        if _process_group_alive(pgid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)


class EmulatedServer:
    """A ``tvm.exec.rpc_server`` process group under qemu-aarch64 (``terminate()`` stops all)."""

    def __init__(self, proc: subprocess.Popen, port: int, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.log = log

    def terminate(self) -> None:
        """Stop the server and its session workers (the process group this object started)."""
        stop_process_group(self.proc)


def spawn_emulated_server(
    tracker: str,
    key: str,
    *,
    port: int = 9400,
    port_end: int = 9499,
    log: str | os.PathLike[str] | None = None,
    cpu: str | None = None,
) -> EmulatedServer:
    """Start the emulated server process (its own process group) without waiting for it."""
    py, reason = find_arm64_python()
    if py is None:
        raise RuntimeError(reason)
    log_path = Path(log) if log else arm64_python_dir() / f"rpc_server-{os.getpid()}-{port}.log"
    args = py.server_command(
        "--host", "127.0.0.1", "--port", str(port), "--port-end", str(port_end),
        "--tracker", tracker, "--key", key,
    )  # fmt: skip
    with log_path.open("w") as fh:
        proc = subprocess.Popen(
            args,
            env={**py.env(cpu or EMULATED_CPUS.get(key)), "ADNTN_EMULATED": key},
            stdout=fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    return EmulatedServer(proc, port, log_path)


def wait_registered(
    servers: list[EmulatedServer], tracker: str, want: dict[str, int], wait: float = 300.0
) -> None:
    """Wait until the tracker lists ``want[key]`` servers under each key.

    Raises ``RuntimeError`` with a server's log when one exits or ``wait`` s pass (the
    caller stops the servers).
    """
    from adntn_export.tvm_backend.rpc import servers_under, tracker_summary

    deadline = time.time() + wait
    while True:
        for server in servers:
            if server.proc.poll() is not None:
                raise RuntimeError(
                    f"emulated rpc_server exited ({server.proc.returncode}):\n"
                    f"{server.log.read_text()[-3000:]}"
                )
        try:
            summary = tracker_summary(tracker, timeout=5.0)
            if all(servers_under(summary, k) >= n for k, n in want.items()):
                return
        except RuntimeError:
            pass
        if time.time() > deadline:
            raise RuntimeError(
                f"emulated rpc_server did not register within {wait:.0f} s:\n"
                f"{servers[-1].log.read_text()[-3000:]}"
            )
        time.sleep(1.0)


def start_emulated_server(
    tracker_port: int,
    key: str,
    *,
    port: int = 9400,
    port_end: int = 9499,
    wait: float = 300.0,
    log: str | os.PathLike[str] | None = None,
    tracker_host: str = "127.0.0.1",
    cpu: str | None = None,
) -> EmulatedServer:
    """Start the emulated aarch64 RPC server registered under ``key`` at the tracker.

    Waits (up to ``wait`` s: ``import tvm`` under emulation takes a while) until the tracker
    lists one more server under ``key``. ``cpu``: the CPU model qemu emulates (default: the
    board's in :data:`EMULATED_CPUS` when ``key`` names one, else qemu's default). The server
    leads its own process group (see :func:`stop_process_group`). Raises ``RuntimeError`` with
    the reason (and the server's log) otherwise.
    """
    from adntn_export.tvm_backend.rpc import servers_under, tracker_summary

    tracker = f"{tracker_host}:{tracker_port}"
    before = servers_under(tracker_summary(tracker), key)
    server = spawn_emulated_server(tracker, key, port=port, port_end=port_end, log=log, cpu=cpu)
    try:
        wait_registered([server], tracker, {key: before + 1}, wait)
    except BaseException:
        server.terminate()
        raise
    return server


#: The ports each server of an :class:`EmulatedFarm` may listen on (disjoint ranges).
PORTS_PER_SERVER = 20


class EmulatedFarm:
    """A TVM tracker (started here unless given) and emulated servers under board keys.

    Without ``tracker``, a tracker is started on 127.0.0.1 at the first free port in
    ``tracker_port .. tracker_port_end`` (default: the next 100).

    ``EmulatedFarm({"rpi4": 2, "rpi5": 1})`` starts three servers; ``close()`` stops every
    process it started (servers' process groups, then its tracker). Server ``i`` listens on
    the first free port of its own range, ``server_port + i * PORTS_PER_SERVER`` onwards:
    servers started together with one shared range can bind the same port (TVM's server sets
    ``SO_REUSEADDR`` and only ``listen()`` fails, with "Address already in use").
    """

    def __init__(
        self,
        boards: dict[str, int],
        *,
        tracker: str | None = None,
        tracker_port: int = 9190,
        tracker_port_end: int | None = None,
        server_port: int = 9400,
        log_dir: str | os.PathLike[str] | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        from adntn_export.tvm_backend import rpc

        say = progress or (lambda line: None)
        unknown = sorted(set(boards) - set(EMULATED_CPUS))
        if unknown:
            raise ValueError(f"unknown boards {unknown}; valid boards: {sorted(EMULATED_CPUS)}")
        ensure_arm64_python(say)
        self.servers: list[EmulatedServer] = []
        self._tracker = None
        if tracker is None:
            self._tracker = rpc.start_local_tracker(
                port=tracker_port, port_end=tracker_port_end or tracker_port + 100
            )
            tracker = f"127.0.0.1:{self._tracker.port}"
            _wait_reachable(tracker)
            say(f"tracker on {tracker}")
        self.tracker = tracker
        rpc.parse_address(tracker, what="tracker address (--tracker)")
        logs = Path(log_dir) if log_dir else arm64_python_dir()
        try:
            summary = rpc.tracker_summary(tracker)
            want = {k: rpc.servers_under(summary, k) + n for k, n in boards.items()}
            for key, count in boards.items():
                for i in range(count):
                    log = logs / f"rpc_server-{key}-{i}-{os.getpid()}.log"
                    port = server_port + len(self.servers) * PORTS_PER_SERVER
                    self.servers.append(
                        spawn_emulated_server(
                            tracker, key, port=port, port_end=port + PORTS_PER_SERVER, log=log
                        )
                    )
            say(
                f"starting {len(self.servers)} emulated server(s) under qemu ("
                + ", ".join(f"{n} x {k}" for k, n in boards.items())
                + "); importing TVM under emulation takes about a minute"
            )
            wait_registered(self.servers, tracker, want)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop every server (process groups) and the tracker this farm started."""
        for server in self.servers:
            server.terminate()
        self.servers = []
        if self._tracker is not None:
            self._tracker.terminate()
            self._tracker = None

    def __enter__(self) -> EmulatedFarm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _wait_reachable(tracker: str, wait: float = 10.0) -> None:
    from adntn_export.tvm_backend.rpc import check_reachable, parse_address

    host, port = parse_address(tracker)
    deadline = time.time() + wait
    while True:
        try:
            check_reachable(host, port, timeout=1.0)
            return
        except RuntimeError:
            if time.time() > deadline:
                raise
            time.sleep(0.1)
