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
first. Candidates are built by :func:`_pooled_builder`: one pool of worker processes for the
whole run (the light import in each worker's initializer, ~5 s once, not per batch), ~0.1-1 s a
candidate, each with a :data:`BUILD_TIMEOUT_S` limit. Builds used to run in the tuning process
itself (no start-up at all) until canonical AlexNet runs stalled on the 11x11 ``conv1`` task:
one sat 15+ min after "Sending 40 sample(s) to builder", another was in LLVM codegen of one
candidate for 3+ min when stopped (``py-spy dump``, 2026-12-07), while the task's other
candidates build in 0.1-1 s. A worker can be killed; the tuning process cannot.
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


class _LightInit:
    """Picklable initializer: light tensor-intrinsic import in a builder worker."""

    def __call__(self) -> None:
        light_tensor_intrinsics()


#: A candidate whose build (TIR lowering + LLVM + link) takes longer is dropped as failed. Normal
#: candidates build in 0.1-1 s; built in the tuning process, a candidate of AlexNet's 11x11
#: convolution sat minutes in LLVM codegen and stalled the whole run (see the module docstring).
BUILD_TIMEOUT_S = 60.0

#: Builder workers are restarted after this many candidates (MetaSchedule restarts its pool every
#: batch because of a memory leak in long-lived workers; this bounds it at a start-up per 256).
BUILD_WORKER_USES = 256


def _build_candidate(mod: Any, target: Any, cross_cc: str | None) -> str:
    """Build one MetaSchedule candidate and export it to a shared library (in a builder worker).

    The same steps as MetaSchedule's ``default_build``/``default_export``, linked with the
    cross compiler ``cross_cc`` (``None``: for this machine).
    """
    import tvm
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock
    from tvm.support import cc as tvm_cc

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    rt_mod = tvm.compile(mod, target=target)
    path = os.path.join(tempfile.mkdtemp(prefix="adntn-ms-"), "candidate.so")
    if cross_cc is None:
        rt_mod.export_library(path)
    else:
        rt_mod.export_library(path, fcompile=tvm_cc.cross_compiler(cross_cc))
    return path


def _pooled_builder(
    cross_cc: str | None = None,
    max_workers: int | None = None,
    timeout_sec: float = BUILD_TIMEOUT_S,
    build: Any = _build_candidate,
) -> Any:
    """A MetaSchedule builder over one pool of worker processes kept for the whole tuning run.

    Each candidate is built in a worker with a ``timeout_sec`` limit: a candidate stuck in
    codegen is killed and recorded as a failed build (its worker is replaced), where a build in
    the tuning process could stall the run for good. Unlike ``LocalBuilder``, which starts a
    fresh pool (a ``import tvm`` + intrinsic import, ~7 s) for every batch, workers are reused
    for :data:`BUILD_WORKER_USES` candidates; each imports the CPU tensor intrinsics once
    (:class:`_LightInit`). ``cross_cc`` links candidates for a device (``None``: this machine).
    Call the builder's ``shutdown()`` when the run ends. ``build(mod, target, cross_cc) -> path``
    is :func:`_build_candidate` (tests pass a stand-in; it is pickled to the workers).
    """
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms
    from tvm.support.popen_pool import PopenPoolExecutor, StatusKind

    workers = max_workers or max(1, os.cpu_count() or 1)

    @derived_object
    class _PooledBuilder(ms.builder.PyBuilder):
        """``LocalBuilder``'s build and export, in workers that outlive a batch."""

        def __init__(self) -> None:
            super().__init__()
            self._pool: Any = None

        def build(self, build_inputs: list[Any]) -> list[Any]:
            if self._pool is None:
                self._pool = PopenPoolExecutor(
                    max_workers=workers,
                    timeout=timeout_sec,
                    initializer=_LightInit(),
                    maximum_process_uses=BUILD_WORKER_USES,
                )
            results = []
            outcomes = self._pool.map_with_error_catching(
                lambda job: build(job[0], job[1], cross_cc),
                [(inp.mod, inp.target) for inp in build_inputs],
            )
            for outcome in outcomes:
                if outcome.status == StatusKind.COMPLETE:
                    results.append(ms.builder.BuilderResult(outcome.value, None))
                elif outcome.status == StatusKind.TIMEOUT:
                    results.append(
                        ms.builder.BuilderResult(
                            None, f"build killed after {timeout_sec:g} s (BUILD_TIMEOUT_S)"
                        )
                    )
                else:
                    results.append(ms.builder.BuilderResult(None, f"build: {outcome.value}"))
            return results

        def shutdown(self) -> None:
            if self._pool is not None:
                self._pool.shutdown()
                self._pool = None

    return _PooledBuilder()


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
        return ms.runner.LocalRunner(), _pooled_builder()
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
        return runner, _pooled_builder()
    builder = _pooled_builder(
        spec.cross_compiler or cc, max_workers=max(1, min(servers, os.cpu_count() or 1))
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
        try:
            _tune_tasks(
                lowered, tasks, tvm_target, db_dir, remaining, runner, builder,
                max_trials_per_task, op_names, stats, say,
            )  # fmt: skip
        finally:
            builder.shutdown()  # the builder's worker processes
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
