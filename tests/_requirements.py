"""What some tests need beyond the PyPI install: Debian packages and caches built from them.

The README's test command (``pip install -c constraints.txt -e ".[all,dev]" && python -m
pytest``) must pass on a machine without any of these: every test that needs one says so here,
and skips, naming the Debian package, where it is missing. One mechanism for all of them::

    from _requirements import require

    @pytest.mark.needs("aarch64-g++")   # a marker; conftest.py skips when it is missing
    def test_x(): ...

    def test_y():
        require("opencl-device")        # decided when the test runs (the check is slower)

Each requirement is a name -> a check that returns ``None`` when present, else the reason.
Checks are cheap, cached, and never install or download anything.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable

import pytest

__all__ = ["REQUIREMENTS", "missing", "needs", "require"]


def _tool(tool: str, package: str) -> Callable[[], str | None]:
    def check() -> str | None:
        if shutil.which(tool) is None:
            return f"{tool} not on PATH (Debian package {package})"
        return None

    return check


def _fashion_mnist() -> str | None:
    from adntn_models.datasets import DEFAULT_ROOT, idx_file_names

    present = all(
        any((DEFAULT_ROOT / n).is_file() for n in idx_file_names(split, kind))
        for split in ("train", "test")
        for kind in ("images", "labels")
    )
    if present:
        return None
    return f"full Fashion-MNIST not in {DEFAULT_ROOT} (Debian package dataset-fashion-mnist)"


def _opencl_device() -> str | None:
    try:
        import pyopencl as cl
    except ImportError:
        return "pyopencl not installed"
    try:
        platforms = cl.get_platforms()
    except cl.Error:
        platforms = []
    if not any(p.get_devices() for p in platforms):
        return "no OpenCL platform/device (Debian package pocl-opencl-icd)"
    return None


def _arm64_python() -> str | None:
    from adntn_export.tvm_backend import emulated

    py, reason = emulated.find_arm64_python()  # names qemu-user-static and debootstrap
    return None if py is not None else reason


#: Requirement name -> check (``None``: present; else why the test cannot run).
REQUIREMENTS: dict[str, Callable[[], str | None]] = {
    "aarch64-g++": _tool("aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu"),
    "qemu-aarch64": _tool("qemu-aarch64-static", "qemu-user-static"),
    "opencl-device": _opencl_device,
    "fashion-mnist": _fashion_mnist,
    "arm64-python": _arm64_python,
}


@functools.cache
def _reason(name: str) -> str | None:
    if name not in REQUIREMENTS:
        raise KeyError(f"unknown test requirement {name!r}; known: {', '.join(REQUIREMENTS)}")
    return REQUIREMENTS[name]()


def missing(*names: str) -> str | None:
    """The reasons the named requirements are not met, joined; ``None`` when all are."""
    reasons = [r for r in map(_reason, names) if r is not None]
    return "; ".join(reasons) if reasons else None


def needs(*names: str) -> pytest.MarkDecorator:
    """``pytest.mark.needs(*names)``: conftest.py skips, with the reason, unless every named
    requirement is met (an unknown name is an error when the test runs)."""
    return pytest.mark.needs(*names)


def require(*names: str) -> None:
    """Inside a test: skip it, with the reason, unless every named requirement is met."""
    reason = missing(*names)
    if reason is not None:
        pytest.skip(reason)
