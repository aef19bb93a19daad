"""``tune_onnx``: MetaSchedule tuning with a persistent, resumable database per target.

The database lives in ``OUT/tuning/<target>/`` (or ``work_dir``) as MetaSchedule's JSON
database (``database_workload.json``, ``database_tuning_record.json``), which only ever gets
records appended. ``trials`` is the *total* budget across runs: a second run counts the records
already there and tunes only the remainder, so an interrupted run resumes and nothing is lost.

Measurement: the host target is measured locally (``LocalRunner``); device targets need a
tracker (``rpc_tracker="HOST:PORT"``, ``rpc_key``) and are measured on the device
(``RPCRunner``) from candidates cross-linked here (``LocalBuilder`` with a cross-compiling
export function). The host target can also be measured over RPC. Trial inputs are made on the
host and uploaded (:func:`.measure.host_filled_arguments`: a device's runtime-only TVM has no
``tvm.contrib.random``); with several servers under the key (a farm) the runner measures on
as many at once. Each run prints valid/total trials and the best latency per task; a run in
which fewer than half the trials were measured raises, naming the first device error, and no
tuned module is ever built from a database without a valid measurement.

Each run visits every task before any gets a second visit, with an equal share of the run's
budget per visit (at most 64): MetaSchedule's fixed 64 per visit left any task past the first
``trials / 64`` as plain loops. Tasks still without a measured schedule after the run are
named on stderr and in ``manifest.tuned["untuned_tasks"]`` (with their share of the FLOPs).

The tuned module is built with ``relax.get_pipeline("static_shape_tuning", ..., total_trials=0)``
(which applies the database) and exported exactly like :func:`.compile.compile_onnx`.
Tuning uses the XGBoost cost model (``xgboost-cpu``, in the ``tvm`` extra), else random
search.

Build speed (why candidate builds used to take 30-60 s each): MetaSchedule's ``LocalBuilder``
starts a fresh worker process for every batch and its ``default_build`` runs
``import tvm.s_tir.tensor_intrin``, which parses every tensor intrinsic TVM ships (CUDA 31 s,
ROCm 11 s, Hexagon 3 s, ARM 2 s, x86 1 s on this 2-core machine: ~50 s); ``TuneContext`` does the
same import once in the tuning process. For CPU targets :func:`light_tensor_intrinsics` imports
only the CPU tables (x86 + ARM, ~3 s) by registering empty stand-ins for the GPU/DSP modules
first, and candidates for this machine are compiled in-process (:class:`_InProcessBuilder`,
~20 ms + a link each, no worker start-up); cross targets keep ``LocalBuilder`` with the light
import in its worker initializer (~7 s per batch, the worker's ``import tvm``).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

from adntn_export.tvm_backend.compile import Manifest, Prepared, export, prepare_relax
from adntn_export.tvm_backend.measure import TrialStats, database_measurements, stats_callback
from adntn_export.tvm_backend.targets import TargetSpec, get_target
from adntn_runtime.tvm.run import use_target_threads

DB_FILES = ("database_workload.json", "database_tuning_record.json")


#: Tensor-intrinsic modules of ``tvm.s_tir.tensor_intrin`` that CPU tuning never uses.
_GPU_DSP_INTRINSICS = ("cuda", "rocm", "hexagon", "riscv_cpu")


def light_tensor_intrinsics() -> None:
    """Import ``tvm.s_tir.tensor_intrin`` with only the CPU (x86, ARM) intrinsic tables.

    Registers empty modules for the CUDA/ROCm/Hexagon/RISC-V tables before the package's
    ``__init__`` imports them (~50 s of TVMScript parsing saved per process). Only for CPU
    targets; a no-op once the package is imported (then whatever was imported stays).
    """
    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return
    for sub in _GPU_DSP_INTRINSICS:
        name = f"tvm.s_tir.tensor_intrin.{sub}"
        sys.modules.setdefault(name, types.ModuleType(name))
    import tvm.s_tir.tensor_intrin  # noqa: F401


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
        light_tensor_intrinsics()
        _register_cross_export(self.cc)


class _LightInit:
    """Picklable initializer: light tensor-intrinsic import in a builder worker."""

    def __call__(self) -> None:
        light_tensor_intrinsics()


def _in_process_builder() -> Any:
    """A MetaSchedule builder compiling candidates in this process (native CPU targets)."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class _InProcessBuilder(ms.builder.PyBuilder):
        """Same steps as ``LocalBuilder``'s default build/export, without worker processes."""

        def build(self, build_inputs: list[Any]) -> list[Any]:
            import tvm
            from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

            results = []
            for inp in build_inputs:
                try:
                    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(inp.mod)
                    rt_mod = tvm.compile(mod, target=inp.target)
                    path = os.path.join(tempfile.mkdtemp(prefix="adntn-ms-"), "candidate.so")
                    rt_mod.export_library(path)
                    results.append(ms.builder.BuilderResult(path, None))
                except Exception as exc:  # a bad candidate must not end the tuning run
                    results.append(ms.builder.BuilderResult(None, f"in-process build: {exc}"))
            return results

    return _InProcessBuilder()


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


def _runner_and_builder(
    spec: TargetSpec, rpc_tracker: str | None, rpc_key: str | None
) -> tuple[Any, Any]:
    from tvm.s_tir import meta_schedule as ms

    from adntn_export.tvm_backend.measure import host_filled_arguments
    from adntn_export.tvm_backend.rpc import check_tracker, parse_address, servers_under

    if rpc_tracker is None:
        if spec.is_cross or spec.kind != "cpu":
            raise ValueError(
                f"target {spec.name!r} must be measured on the device: pass rpc_tracker="
                "'HOST:PORT' and rpc_key (see `adntn serve-device`)"
            )
        # the runner's workers inherit the thread count the module will run with (TVM's
        # default halves the CPUs on x86: candidates parallelised for num-cores would be
        # measured on half of them)
        use_target_threads(spec.target_dict())
        return ms.runner.LocalRunner(), _in_process_builder()
    if not rpc_key:
        raise ValueError("rpc_tracker needs rpc_key (the key the device server registered)")
    summary = check_tracker(rpc_tracker, rpc_key)  # fails within seconds when unreachable
    host, port = parse_address(rpc_tracker)
    # Inputs made on the host and uploaded (measure.host_filled_arguments): the device's
    # runtime-only TVM has no tvm.contrib.random. One worker per server under the key, so a
    # farm measures candidates in parallel (the tracker hands each session to a free server).
    servers = max(1, servers_under(summary, rpc_key))
    runner = ms.runner.RPCRunner(
        rpc_config=ms.runner.RPCConfig(
            tracker_host=host, tracker_port=port, tracker_key=rpc_key, session_timeout_sec=120
        ),
        evaluator_config=ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=20),
        f_alloc_argument=host_filled_arguments,
        max_workers=servers,
    )
    cc = spec.require_cross_compiler()
    if cc is None:
        return runner, _in_process_builder()
    name = spec.cross_compiler or cc
    builder = ms.builder.LocalBuilder(
        max_workers=max(1, min(servers, os.cpu_count() or 1)),
        timeout_sec=120,
        f_export=_export_fn_name(name),
        initializer=_CrossExportInit(name),
    )
    return runner, builder


#: A run in which fewer than this fraction of trials produced a measurement fails.
MIN_VALID_FRACTION = 0.5


def _check_measured(stats: TrialStats, db_dir: Path, target: str) -> tuple[int, int]:
    """Refuse a run whose trials mostly failed, and a database with nothing measured."""
    if stats.total and stats.valid < MIN_VALID_FRACTION * stats.total:
        raise RuntimeError(
            f"tuning for {target}: only {stats.valid} of {stats.total} trials produced a "
            f"measurement (need at least half); first device error: {stats.first_error}. "
            "No tuned module was built."
        )
    valid, total = database_measurements(db_dir)
    if valid == 0:
        raise RuntimeError(
            f"tuning database {db_dir} has no valid measurement ({total} records, all failed); "
            "no tuned module was built. Fix the device (see the errors above) and rerun, or "
            "delete the folder to start over"
        )
    return valid, total


def _tune_tasks(
    lowered: Any,
    tasks: list[Any],
    tvm_target: Any,
    db_dir: Path,
    remaining: int,
    runner: Any,
    builder: Any,
    max_trials_per_task: int | None,
    op_names: list[str] | None,
    stats: TrialStats,
    say: Any,
) -> None:
    """Run MetaSchedule over ``lowered``'s ``tasks`` (``remaining`` trials) into ``db_dir``."""
    from tvm.s_tir import meta_schedule as ms

    # MetaSchedule visits the tasks in turn, num_trials_per_iter each: with 64 per visit a
    # budget under 64 x tasks never reaches the last tasks (they stay plain loops). The visit
    # is sized so that every task gets its share of this run's budget first.
    if op_names:
        tasks = [t for t in tasks if any(n in t.task_name for n in op_names)]
    per_visit = min(64, max(1, remaining // max(1, len(tasks))), max_trials_per_task or 64)
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
        max_trials_per_task=max_trials_per_task,
        op_names=op_names,
        num_trials_per_iter=per_visit,
        builder=builder,
        runner=runner,
        database=_open_database(db_dir),
        cost_model=cost_model,
        measure_callbacks=[
            *ms.measure_callback.MeasureCallback.create("default"),
            stats_callback(stats, say, remaining),
        ],
    )


def _tuning_module(prepared: Prepared, tvm_target: Any) -> Any:
    """The Relax module whose TIR functions are MetaSchedule's tasks."""
    import tvm
    from tvm import relax

    with tvm_target:
        return tvm.transform.Sequential(
            [
                relax.transform.DecomposeOpsForInference(),
                relax.transform.CanonicalizeBindings(),
                relax.get_pipeline("zero"),
            ]
        )(prepared.mod)


def tuning_tasks(prepared: Prepared, tvm_target: Any) -> tuple[Any, list[Any]]:
    """The lowered module MetaSchedule tunes and its tasks."""
    from tvm.s_tir import meta_schedule as ms

    lowered = _tuning_module(prepared, tvm_target)
    return lowered, list(ms.relax_integration.extract_tasks(lowered, tvm_target))


def untuned_tasks(tasks: list[Any], db_dir: Path) -> dict[str, Any]:
    """The ``tasks`` with no valid record in the database at ``db_dir``: the tuned build gives
    them no schedule, so they run as TVM's plain loops (no threads, no vectors).

    Returns ``{"tasks": N, "untuned": [{"name", "flops"}, ...], "untuned_flop_share": f}``
    (``flops`` as TVM estimates them; the share is of all tasks' FLOPs, weighted by how often
    each task runs).
    """
    from tvm.s_tir.analysis import estimate_tir_flops

    db = _open_database(db_dir)
    total = 0.0
    missing = []
    for task in tasks:
        mod = task.dispatched[0]
        flops = float(estimate_tir_flops(mod)) * int(task.weight)
        total += flops
        # has_workload first: commit_workload would add an unknown workload to the files
        if not db.has_workload(mod) or not db.get_top_k(db.commit_workload(mod), 1):
            missing.append({"name": task.task_name, "flops": int(flops)})
    share = sum(t["flops"] for t in missing) / total if total else 0.0
    return {"tasks": len(tasks), "untuned": missing, "untuned_flop_share": round(share, 4)}


def _build_with_database(prepared: Prepared, tvm_target: Any, db_dir: Path) -> Any:
    """The executable built with the best schedule the database holds for every task."""
    import tvm
    from tvm import relax

    apply_db = relax.get_pipeline(
        "static_shape_tuning", target=tvm_target, work_dir=str(db_dir), total_trials=0
    )
    with tvm_target:
        tuned_mod = apply_db(prepared.mod)
        return tvm.compile(
            tuned_mod, target=tvm_target, relax_pipeline=relax.get_default_pipeline(tvm_target)
        )


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
    max_trials_per_task: int | None = None,
    op_names: list[str] | None = None,
) -> Manifest:
    """Tune an ONNX model for ``target`` with MetaSchedule and export the tuned module.

    ``trials`` is the total number of measured candidates wanted in the database; records from
    earlier runs count towards it. ``max_trials_per_task`` caps each task (default: the
    ``trials`` left, as MetaSchedule does); ``op_names`` tunes only the tasks whose name
    contains one of them (e.g. ``["matmul"]``). Returns the manifest (``manifest.tuned`` has
    the details: valid/total trials per task, ``tuning_seconds``).

    Raises ``RuntimeError`` (naming the first device error) when fewer than half of this run's
    trials produced a measurement, or when the database holds no valid measurement: a tuned
    module is never built from failures.
    """
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 0:
        raise ValueError(f"trials (--trials) must be an int >= 0, got {trials!r}")
    spec = get_target(target)
    db_dir = Path(work_dir) if work_dir else Path(out_dir) / "tuning" / spec.name
    db_dir.mkdir(parents=True, exist_ok=True)
    before = count_records(db_dir)
    remaining = max(0, trials - before)
    runner = builder = None
    if spec.kind == "cpu":
        light_tensor_intrinsics()
    if remaining:  # the device and tracker first: they need no cross-compiler to check
        runner, builder = _runner_and_builder(spec, rpc_tracker, rpc_key)
    spec.require_cross_compiler()  # before the (slow) import and tuning
    prepared = prepare_relax(onnx_path, input_shapes=input_shapes)
    tvm_target = spec.tvm_target()
    say = (lambda msg: print(f"[tune] {msg}", file=sys.stderr)) if progress else (lambda m: None)
    say(
        f"{spec.name}: database {db_dir} has {before} records; tuning {remaining} more "
        f"(total {trials})"
    )
    stats = TrialStats()
    lowered, tasks = tuning_tasks(prepared, tvm_target)
    t0 = time.perf_counter()
    if remaining:
        _tune_tasks(
            lowered, tasks, tvm_target, db_dir, remaining, runner, builder,
            max_trials_per_task, op_names, stats, say,
        )  # fmt: skip
    tuning_s = time.perf_counter() - t0
    if stats.tasks:
        say(f"{spec.name}: trials of this run\n{stats.table()}")
    valid, after = _check_measured(stats, db_dir, spec.name)
    say(f"{spec.name}: database has {valid}/{after} valid records; building the tuned module")
    coverage = untuned_tasks(tasks, db_dir)
    if coverage["untuned"]:
        names = ", ".join(t["name"] for t in coverage["untuned"])
        say(
            f"{spec.name}: WARNING: {len(coverage['untuned'])} of {coverage['tasks']} tasks "
            f"({coverage['untuned_flop_share']:.0%} of the model's FLOPs) have no tuned "
            f"schedule and run as plain loops: {names}. Every task needs trials of its own: "
            "raise --trials (or --max-trials-per-task lower) and rerun; the database is kept"
        )
    executable = _build_with_database(prepared, tvm_target, db_dir)
    tuned = {
        "database": str(db_dir),
        "records_before": before,
        "records_after": after,
        "valid_records": valid,
        "trials_requested": trials,
        "max_trials_per_task": max_trials_per_task,
        "op_names": op_names,
        "tuning_seconds": round(tuning_s, 2),
        "rpc_tracker": rpc_tracker,
        "rpc_key": rpc_key,
        "this_run": stats.to_json(),
        "tasks": coverage["tasks"],
        "untuned_tasks": coverage["untuned"],
        "untuned_flop_share": coverage["untuned_flop_share"],
    }
    return export(
        executable,
        prepared,
        spec,
        out_dir,
        tuned=tuned,
    )
