"""``tune_onnx``: MetaSchedule tuning with a persistent, resumable database per target.

The database lives in ``OUT/tuning/<target>/`` (or ``work_dir``) as MetaSchedule's JSON
database (``database_workload.json``, ``database_tuning_record.json``), which only ever gets
records appended. ``trials`` is the *total* budget across runs: a second run counts the records
already there and tunes only the remainder, so an interrupted run resumes and nothing is lost.

Measurement: the host target is measured locally (``LocalRunner``); device targets need a
tracker (``rpc_tracker="HOST:PORT"``, ``rpc_key``) and are measured on the device
(``RPCRunner``) from candidates cross-linked here (``LocalBuilder`` with a cross-compiling
export function). The host target can also be measured over RPC.

The tuned module is built with ``relax.get_pipeline("static_shape_tuning", ..., total_trials=0)``
(which applies the database) and exported exactly like :func:`.compile.compile_onnx`.
Tuning uses the XGBoost cost model when ``xgboost`` is installed, else random search.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from adntn_export.tvm_backend.compile import Manifest, Prepared, export, prepare_relax
from adntn_export.tvm_backend.targets import TargetSpec, get_target

DB_FILES = ("database_workload.json", "database_tuning_record.json")


def _export_fn_name(cc: str) -> str:
    return f"adntn.ms_export.{cc}"


def _register_cross_export(cc: str) -> None:
    """Worker initializer: register a MetaSchedule export function that cross-links with ``cc``."""
    import tvm_ffi
    from tvm.support import cc as tvm_cc

    def _export(mod: Any) -> str:
        path = os.path.join(tempfile.mkdtemp(prefix="adntn-ms-"), "candidate.so")
        mod.export_library(path, fcompile=tvm_cc.cross_compiler(cc))
        return path

    tvm_ffi.register_global_func(_export_fn_name(cc), _export, override=True)


class _CrossExportInit:
    """Picklable initializer for builder worker processes."""

    def __init__(self, cc: str) -> None:
        self.cc = cc

    def __call__(self) -> None:
        _register_cross_export(self.cc)


def count_records(db_dir: str | os.PathLike[str]) -> int:
    """Number of tuning records in a database folder; ``RuntimeError`` if it is corrupt."""
    db = Path(db_dir)
    total = 0
    for name in DB_FILES:
        path = db / name
        if not path.exists():
            continue
        for lineno, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                json.loads(line)
            except json.JSONDecodeError as exc:
                raise RuntimeError(
                    f"tuning database {path} is corrupt (line {lineno}: {exc.msg}); "
                    "delete the folder to start over or restore it from a backup"
                ) from None
            if name == "database_tuning_record.json":
                total += 1
    return total


def _open_database(db_dir: Path) -> Any:
    from tvm.s_tir import meta_schedule as ms

    count_records(db_dir)  # clear error before TVM's own (opaque) parser sees it
    try:
        return ms.database.JSONDatabase(
            path_workload=str(db_dir / DB_FILES[0]),
            path_tuning_record=str(db_dir / DB_FILES[1]),
            module_equality="structural",
        )
    except Exception as exc:  # TVM raises its own error types
        raise RuntimeError(f"tuning database in {db_dir} is corrupt or unreadable: {exc}") from exc


def _progress_callback(total: int, say: Any) -> Any:
    """A MetaSchedule measure callback printing ``measured/total`` after each batch."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class _Progress(ms.measure_callback.PyMeasureCallback):
        def __init__(self) -> None:
            self.done = 0

        def apply(self, task_scheduler: Any, task_id: int, measure_candidates: Any,
                  builder_results: Any, runner_results: Any) -> None:
            self.done += len(runner_results)
            ok = [r for r in runner_results if r.error_msg is None]
            best = min((sum(float(t) for t in r.run_secs) / len(r.run_secs) for r in ok
                        if r.run_secs), default=None)
            extra = f", best of batch {best * 1e6:.1f} us" if best is not None else ""
            say(f"task {task_id}: {self.done}/{total} trials measured{extra}")

    return _Progress()


def _runner_and_builder(
    spec: TargetSpec, rpc_tracker: str | None, rpc_key: str | None
) -> tuple[Any, Any]:
    from tvm.s_tir import meta_schedule as ms

    from adntn_export.tvm_backend.rpc import check_tracker, parse_address

    if rpc_tracker is None:
        if spec.is_cross or spec.kind != "cpu":
            raise ValueError(
                f"target {spec.name!r} must be measured on the device: pass rpc_tracker="
                "'HOST:PORT' and rpc_key (see `adntn serve-device`)"
            )
        return ms.runner.LocalRunner(), ms.builder.LocalBuilder(max_workers=1, timeout_sec=120)
    if not rpc_key:
        raise ValueError("rpc_tracker needs rpc_key (the key the device server registered)")
    check_tracker(rpc_tracker, rpc_key)  # fails within seconds when unreachable
    host, port = parse_address(rpc_tracker)
    runner = ms.runner.RPCRunner(
        rpc_config=ms.runner.RPCConfig(
            tracker_host=host, tracker_port=port, tracker_key=rpc_key, session_timeout_sec=120
        ),
        max_workers=1,
    )
    cc = spec.require_cross_compiler()
    if cc is None:
        return runner, ms.builder.LocalBuilder(max_workers=1)
    name = spec.cross_compiler or cc
    builder = ms.builder.LocalBuilder(
        max_workers=1, f_export=_export_fn_name(name), initializer=_CrossExportInit(name)
    )
    return runner, builder


def tune_onnx(
    onnx_path: str | os.PathLike[str],
    target: str | TargetSpec,
    out_dir: str | os.PathLike[str],
    *,
    trials: int,
    work_dir: str | os.PathLike[str] | None = None,
    rpc_tracker: str | None = None,
    rpc_key: str | None = None,
    input_shapes: dict[str, list[int]] | None = None,
    progress: bool = True,
) -> Manifest:
    """Tune an ONNX model for ``target`` with MetaSchedule and export the tuned module.

    ``trials`` is the total number of measured candidates wanted in the database; records from
    earlier runs count towards it. Returns the manifest (``manifest.tuned`` has the details).
    """
    import tvm
    from tvm import relax
    from tvm.s_tir import meta_schedule as ms

    if trials < 0:
        raise ValueError(f"trials must be >= 0, got {trials}")
    spec = get_target(target)
    spec.require_cross_compiler()
    db_dir = Path(work_dir) if work_dir else Path(out_dir) / "tuning" / spec.name
    db_dir.mkdir(parents=True, exist_ok=True)
    before = count_records(db_dir)
    remaining = max(0, trials - before)
    runner = builder = None
    if remaining:
        runner, builder = _runner_and_builder(spec, rpc_tracker, rpc_key)
    prepared = prepare_relax(onnx_path, mode="fold", input_shapes=input_shapes)
    tvm_target = spec.tvm_target()
    say = (lambda msg: print(f"[tune] {msg}", file=sys.stderr)) if progress else (lambda m: None)
    say(f"{spec.name}: database {db_dir} has {before} records; tuning {remaining} more "
        f"(total {trials})")
    if remaining:
        with tvm_target:
            lowered = tvm.transform.Sequential([
                relax.transform.DecomposeOpsForInference(),
                relax.transform.CanonicalizeBindings(),
                relax.get_pipeline("zero"),
            ])(prepared.mod)
        try:
            import xgboost  # noqa: F401

            cost_model = "xgb"
        except ImportError:
            cost_model = "random"
        ms.relax_integration.tune_relax(
            lowered,
            params={},
            target=tvm_target,
            work_dir=str(db_dir),
            max_trials_global=remaining,
            num_trials_per_iter=min(64, max(1, remaining)),
            builder=builder,
            runner=runner,
            database=_open_database(db_dir),
            cost_model=cost_model,
            measure_callbacks=[
                *ms.measure_callback.MeasureCallback.create("default"),
                _progress_callback(remaining, say),
            ],
        )
    after = count_records(db_dir)
    say(f"{spec.name}: database now has {after} records; building the tuned module")
    apply_db = relax.get_pipeline(
        "static_shape_tuning", target=tvm_target, work_dir=str(db_dir), total_trials=0
    )
    with tvm_target:
        tuned_mod = apply_db(prepared.mod)
        executable = tvm.compile(tuned_mod, target=tvm_target,
                                 relax_pipeline=relax.get_default_pipeline(tvm_target))
    tuned = {"database": str(db_dir), "records_before": before, "records_after": after,
             "trials_requested": trials, "rpc_tracker": rpc_tracker, "rpc_key": rpc_key}
    return export(executable, Prepared(prepared.mod, prepared.inputs, "fold", prepared.notes),
                  spec, out_dir, tuned=tuned)
