"""The import rules of ARCHITECTURE.md, read from the source (every import, lazy ones too)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "runtimes" / "adntn_runtime"

CORE = {"modes", "activations", "factorize", "schedule", "plan", "reference"}
ONNX = {"layer_spec", "onnx_format", "onnx_builder", "layer_lowering", "substitution"}
ONNX_FACADE = {"onnx_lowering"}
RUNTIME_LAYER = {"policy", "calibration", "heap", "session", "files", "bench", "__init__"}


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names), at module level or inside functions."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


def _top(name: str) -> str:
    return name.split(".")[0]


def _runtime_siblings(names: set[str]) -> set[str]:
    return {n.split(".")[1] for n in names if n.startswith("adntn_runtime.")} & (
        CORE | ONNX | ONNX_FACADE | RUNTIME_LAYER
    )


MODULES = sorted(RUNTIME.glob("*.py"))
#: Every file of the device package, subpackages (``adntn_runtime.tvm``) included.
ALL_FILES = sorted(RUNTIME.rglob("*.py"))


def test_every_runtime_module_has_a_layer():
    names = {p.stem for p in MODULES}
    assert names == CORE | ONNX | ONNX_FACADE | RUNTIME_LAYER, (
        "a module was added or removed: give it a layer here and in ARCHITECTURE.md"
    )


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: str(p.relative_to(RUNTIME)))
def test_nothing_under_runtimes_imports_torch_or_the_host_toolchain(path):
    bad = {n for n in _imports(path) if _top(n) in {"torch", "adntn_export"}}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("path", [p for p in MODULES if p.stem in CORE], ids=lambda p: p.stem)
def test_core_needs_numpy_alone(path):
    names = _imports(path)
    heavy = {n for n in names if _top(n) in {"onnx", "onnxruntime", "tvm", "torch"}}
    assert not heavy, f"{path.stem} (core) imports {sorted(heavy)}"
    outside = _runtime_siblings(names) - CORE
    assert not outside, f"{path.stem} (core) imports {sorted(outside)} from outside the core"


@pytest.mark.parametrize("path", [p for p in MODULES if p.stem in ONNX], ids=lambda p: p.stem)
def test_onnx_lowering_does_not_reach_the_runtime(path):
    names = _imports(path)
    assert not {n for n in names if _top(n) in {"tvm", "torch", "adntn_export"}}
    upward = _runtime_siblings(names) & (RUNTIME_LAYER | ONNX_FACADE)
    assert not upward, f"{path.stem} (ONNX) imports {sorted(upward)}"


def test_the_rules_can_fail(tmp_path):
    """The parser sees a lazy import inside a function."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import torch.nn\n    from adntn_runtime import session\n")
    names = _imports(bad)
    assert "torch.nn" in names and "session" in _runtime_siblings(names)
