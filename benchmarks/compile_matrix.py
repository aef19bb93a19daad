"""Every zoo model x export mode x TVM target: does it compile, and does it match torch?

The corpus is the test suite's (``tests/conftest.py``): each zoo model with every
``nn.Linear`` compressed (TTN, bond dimension 4, seeded, unfitted), and the same model with
its convolutions compressed too (``+whole``: split layout, 3 sites). Each is exported in
every export mode (static batch 1) and compiled with ``adntn_export.tvm_backend`` for every
target. What each row checks, beyond "it compiled":

* ``host``: the module runs and its logits match torch (max error relative to the largest
  logit <= 1e-4, same argmax);
* ``rpi4``/``rpi5``: cross-compiled for aarch64 and, for the models in ``--qemu-models``,
  run by the C++ runner under qemu-user and compared the same way (emulated: no timing);
* ``jetson-orin-nano``/``jetson-orin-agx``: the CUDA source has kernels (an sm_87 fatbin
  too where ``nvcc`` exists);
* ``mali``/``adreno``: the OpenCL source has kernels (running them on PoCL is
  ``tests/test_tvm_zoo.py``'s job, for the small model).

Rows are cached in ``results/compile_matrix.json`` as they finish (a later run skips them;
``--retry-failed`` reruns the failed ones), each with its wall time, command and machine;
the table in ``benchmarks/README.md`` is rewritten after each row. Exit status 1 when a
row failed. Usage (the whole matrix takes hours on 2 cores; run it in parts)::

    PYTHONPATH=.:runtimes:models:tests python benchmarks/compile_matrix.py \\
        --models mlp,small_cnn,alexnet32,vgg16_32 --targets host,rpi4
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from _results import cache_row  # noqa: E402
from dense_models import log, machine  # noqa: E402

START, END = "<!-- compile-matrix:start -->", "<!-- compile-matrix:end -->"
RTOL = 1e-4
CPU_TARGETS = ("host", "rpi4", "rpi5")


def relative_error(got: np.ndarray, ref: np.ndarray) -> tuple[float, bool]:
    """Max error relative to the largest logit, and whether the argmax agrees."""
    got = got.reshape(ref.shape)
    err = float(np.abs(got - ref).max() / np.abs(ref).max())
    return err, bool(np.array_equal(got.argmax(-1), ref.argmax(-1)))


def check_artefact(out: Path, target: str, case, qemu: bool) -> dict:
    """What the compiled OUTDIR shows for ``target`` (see the module docstring)."""
    from adntn_export.tvm_backend import run as tr

    manifest = tr.Manifest.load(out)
    row: dict = {"layer_modes": sorted({v["mode"] for v in manifest.layers.values()})}
    if target == "host" or (target in CPU_TARGETS and qemu):
        if target == "host":
            got = tr.load(out).run({"input": case.x})[0]
        else:
            got = tr.run_with_runner(out, [case.x])[0][0]
        err, same = relative_error(np.asarray(got), case.logits)
        row.update(ran="host" if target == "host" else "qemu", max_rel_error=err, argmax=same)
        row["ok"] = err <= RTOL and same
        if not row["ok"]:
            row["error"] = f"logits differ from torch: max rel. error {err:.3g}, argmax {same}"
    elif target in CPU_TARGETS:
        row.update(ran="no (compiled only)", ok=(out / "model.so").exists() or bool(manifest.files))
    else:
        kernels = out / "kernels"
        src = next(iter(sorted(kernels.glob("model.c*"))), None) if kernels.is_dir() else None
        text = src.read_text() if src else ""
        count = text.count("__global__") + text.count("__kernel")
        row.update(ran="no (source checked)", kernels=count, source=src.name if src else None)
        row["ok"] = count > 0
        if not row["ok"]:
            row["error"] = f"no kernels in {kernels}"
    return row


def run_row(name: str, mode: str, target: str, onnx_path: Path, args) -> dict:
    """Compile ``onnx_path`` for ``target`` in a scratch OUTDIR and check the artefact."""
    from conftest import zoo_case

    from adntn_export.tvm_backend.compile import compile_onnx

    t0 = time.perf_counter()
    row: dict = {"model": name, "mode": mode, "target": target}
    out = Path(tempfile.mkdtemp(prefix="adntn-matrix-"))
    try:
        compile_onnx(onnx_path, target, out)
        row["compile_seconds"] = time.perf_counter() - t0
        qemu = name.removesuffix("+whole") in args.qemu_models
        row.update(check_artefact(out, target, zoo_case(name), qemu))
    except Exception as exc:  # a failed row is recorded, not fatal: the matrix goes on
        row.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:2000])
        log("".join(traceback.format_exception(exc))[-1500:])
    finally:
        shutil.rmtree(out, ignore_errors=True)
    row["seconds"] = time.perf_counter() - t0
    return row


def markdown(data: dict) -> str:
    """One line per (model, mode): a cell per target (ok / failed / not run)."""
    rows = data["rows"]
    targets = [t for t in data["targets"] if any(r["target"] == t for r in rows.values())]
    models = sorted({(r["model"], r["mode"]) for r in rows.values()})
    lines = [
        START,
        "",
        "Each cell: `ok` (compiled; `host`/`qemu`: logits within 1e-4 of torch, same argmax, "
        "max error shown; GPU targets: kernels in the source), `FAILED`, or blank (not run "
        "yet). `cc`: compiled for aarch64, not run.",
        "",
        "| model | export mode | " + " | ".join(targets) + " |",
        "|---|---|" + "---|" * len(targets),
    ]
    for name, mode in models:
        cells = []
        for t in targets:
            r = rows.get(f"{name}|{mode}|{t}")
            if r is None:
                cells.append("")
            elif not r["ok"]:
                cells.append("FAILED")
            elif "max_rel_error" in r:
                cells.append(f"ok {r['max_rel_error']:.0e}")
            else:
                cells.append("ok cc" if r.get("ran", "").startswith("no (compiled") else "ok")
        lines.append(f"| {name} | {mode} | " + " | ".join(cells) + " |")
    ok = sum(r["ok"] for r in rows.values())
    lines += ["", f"{ok} of {len(rows)} rows ok.", "", END]
    return "\n".join(lines)


def export_case(name: str, mode: str, root: Path) -> Path:
    """The corpus model ``name`` exported in ``mode`` (static batch 1), once per run."""
    import torch
    from conftest import zoo_case

    from adntn_export.onnx_export import export_onnx

    path = root / f"{name}-{mode}.onnx"
    if not path.exists():
        case = zoo_case(name)
        export_onnx(case.model, torch.from_numpy(case.x), path, mode=mode, dynamic_batch=False)
    return path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from conftest import CANONICAL_ZOO, EXPORT_MODES, MEDIUM_ZOO, SMALL_ZOO, WHOLE

    from adntn_export.tvm_backend.targets import target_names

    zoo = (*SMALL_ZOO, *MEDIUM_ZOO, *CANONICAL_ZOO)
    every = (*zoo, *(z + WHOLE for z in zoo if z != "mlp"))  # mlp has no convolution
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default=",".join(every), help=f"of: {', '.join(every)}")
    p.add_argument("--modes", default=",".join(EXPORT_MODES))
    p.add_argument("--targets", default=",".join(target_names()))
    p.add_argument(
        "--qemu-models",
        default=",".join((*SMALL_ZOO, *MEDIUM_ZOO)),
        help="models run under qemu on rpi4/rpi5 (others: compiled only)",
    )
    p.add_argument("--retry-failed", action="store_true", help="rerun the cached failed rows")
    p.add_argument("--threads", type=int, default=1, help="torch/TVM threads")
    p.add_argument("--out", type=Path, default=HERE / "results" / "compile_matrix.json")
    p.add_argument("--readme", type=Path, default=HERE / "README.md")
    args = p.parse_args(argv)
    for flag, value, valid in (
        ("--models", args.models, every),
        ("--modes", args.modes, EXPORT_MODES),
        ("--targets", args.targets, target_names()),
        ("--qemu-models", args.qemu_models, zoo),
    ):
        items = [x for x in value.split(",") if x]
        bad = [x for x in items if x not in valid]
        if bad:
            p.error(f"unknown {flag} value(s) {bad}; valid: {', '.join(valid)}")
        setattr(args, flag[2:].replace("-", "_"), items)
    return args


def main(argv: list[str] | None = None) -> int:
    import os

    args = parse_args(argv)
    os.environ.setdefault("TVM_NUM_THREADS", str(args.threads))
    import torch

    from adntn_export.tvm_backend.targets import target_names

    torch.set_num_threads(args.threads)
    data: dict = {"targets": list(target_names()), "rows": {}}
    if args.out.exists():
        data = {**json.loads(args.out.read_text()), "targets": list(target_names())}
    command = "PYTHONPATH=.:runtimes:models:tests python " + " ".join(
        [sys.argv[0], *(argv if argv is not None else sys.argv[1:])]
    )
    failed = 0
    with tempfile.TemporaryDirectory(prefix="adntn-matrix-onnx-") as tmp:
        for name in args.models:
            for mode in args.modes:
                for target in args.targets:
                    key = f"{name}|{mode}|{target}"
                    old = data["rows"].get(key)
                    if old is not None and (old["ok"] or not args.retry_failed):
                        failed += not old["ok"]
                        continue
                    try:
                        path = export_case(name, mode, Path(tmp))
                    except Exception as exc:
                        row = {"model": name, "mode": mode, "target": target, "ok": False}
                        row["error"] = f"export failed: {type(exc).__name__}: {exc}"[:2000]
                    else:
                        row = run_row(name, mode, target, path, args)
                    failed += not row["ok"]
                    status = "ok" if row["ok"] else f"FAILED: {row.get('error', '')[:300]}"
                    cache_row(
                        data,
                        key,
                        row,
                        command=command,
                        machine=machine(args.threads),
                        out=args.out,
                        readme=args.readme,
                        markdown=markdown,
                        markers=(START, END),
                        log=log,
                        note=f" ({status}, {row['seconds']:.0f} s)",
                    )
    print(markdown(data).split("\n", 2)[2].rsplit("\n", 2)[0])
    if failed:
        log(f"{failed} row(s) FAILED (see 'error' in {args.out})")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
