"""How tuning trials are measured on a device, and what they measured.

* :func:`host_filled_arguments` - MetaSchedule ``f_alloc_argument`` for :class:`RPCRunner`:
  every trial input is made and filled on the host (numpy) and uploaded. MetaSchedule's default
  calls ``tvm.contrib.random.random_fill_for_measure`` *on the device*, which TVM's runtime-only
  wheels (what a Raspberry Pi runs) do not have: every trial then fails.
* :class:`TrialStats` - valid/total trials, best latency and the first device error per task,
  gathered by :func:`stats_callback` (a MetaSchedule measure callback).
* :func:`database_measurements` - valid/total records in a MetaSchedule JSON database (a
  failed trial is stored with a run time of 1e10 s).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Run times at or above this (seconds) are MetaSchedule's marker of a failed trial.
FAILED_RUN_SECS = 1e9
TUNING_RECORDS = "database_tuning_record.json"


def _host_array(dtype: str, shape: list[int], rng: np.random.Generator) -> np.ndarray:
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return rng.uniform(-1.0, 1.0, size=shape).astype(dt)
    if dt.kind in "iu":
        return rng.integers(0, 2, size=shape).astype(dt)  # safe as indices too
    if dt.kind == "b":
        return rng.integers(0, 2, size=shape).astype(dt)
    raise ValueError(f"cannot make a trial input of dtype {dtype!r}; valid: float, int, bool")


def host_filled_arguments(
    session: Any, device: Any, args_info: Any, alloc_repeat: int
) -> list[list[Any]]:
    """``f_alloc_argument`` for MetaSchedule's ``RPCRunner``: fill on the host, upload.

    ``args_info`` is MetaSchedule's JSON list: ``["TENSOR", dtype, shape]`` per argument.
    """
    import tvm

    rng = np.random.default_rng(0)
    repeated: list[list[Any]] = []
    for _ in range(alloc_repeat):
        args = []
        for info in args_info:
            kind, dtype, shape = info[0], str(info[1]), [int(d) for d in info[2]]
            if kind != "TENSOR":
                raise ValueError(f"trial argument of kind {kind!r}; only TENSOR is supported")
            args.append(tvm.runtime.tensor(_host_array(dtype, shape, rng), device=device))
        repeated.append(args)
    return repeated


def short_error(msg: str, limit: int = 400) -> str:
    """The informative line of a (multi-line, traceback-like) MetaSchedule error."""
    lines = [ln.strip() for ln in str(msg).splitlines() if ln.strip()]
    if not lines:
        return "(empty error message)"
    for ln in reversed(lines):
        if "Error" in ln or "error" in ln or "Unable" in ln:
            return ln[:limit]
    return lines[-1][:limit]


@dataclass
class TaskStats:
    """Trials of one tuning task in this run."""

    name: str
    total: int = 0
    valid: int = 0
    best_s: float | None = None
    first_error: str | None = None


@dataclass
class TrialStats:
    """Trials of a tuning run, per task (filled by :func:`stats_callback`)."""

    tasks: dict[int, TaskStats] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Trials measured (valid or not)."""
        return sum(t.total for t in self.tasks.values())

    @property
    def valid(self) -> int:
        """Trials with a measured run time."""
        return sum(t.valid for t in self.tasks.values())

    @property
    def first_error(self) -> str | None:
        """The first device/build error seen, if any."""
        return next((t.first_error for t in self.tasks.values() if t.first_error), None)

    def record(
        self, task_id: int, name: str, results: list[tuple[float | None, str | None]]
    ) -> None:
        """Add a batch of ``(mean seconds or None, error or None)`` for one task."""
        task = self.tasks.setdefault(task_id, TaskStats(name))
        for secs, err in results:
            task.total += 1
            if err is None and secs is not None and secs < FAILED_RUN_SECS:
                task.valid += 1
                task.best_s = secs if task.best_s is None else min(task.best_s, secs)
            elif task.first_error is None:
                task.first_error = short_error(err or "no run time measured")

    def table(self) -> str:
        """Per-task summary: valid/total trials and best latency."""
        rows = [f"{'task':<40} {'valid/total':>11} {'best us':>10}"]
        for t in self.tasks.values():
            best = f"{t.best_s * 1e6:.1f}" if t.best_s is not None else "N/A"
            rows.append(f"{t.name[:40]:<40} {f'{t.valid}/{t.total}':>11} {best:>10}")
        rows.append(f"{'all tasks':<40} {f'{self.valid}/{self.total}':>11}")
        return "\n".join(rows)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready per-task figures (for the manifest's ``tuned`` entry)."""
        return {
            "valid_trials": self.valid,
            "total_trials": self.total,
            "tasks": [
                {
                    "name": t.name,
                    "valid": t.valid,
                    "total": t.total,
                    "best_us": None if t.best_s is None else round(t.best_s * 1e6, 3),
                    "first_error": t.first_error,
                }
                for t in self.tasks.values()
            ],
        }


def _task_name(task_scheduler: Any, task_id: int) -> str:
    try:
        return str(task_scheduler.tasks_[task_id].ctx.task_name)
    except (AttributeError, IndexError, TypeError):
        return f"task {task_id}"


def stats_callback(stats: TrialStats, say: Callable[[str], None], budget: int) -> Any:
    """A MetaSchedule measure callback filling ``stats`` and printing progress per batch."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir import meta_schedule as ms

    @derived_object
    class _Stats(ms.measure_callback.PyMeasureCallback):
        def apply(
            self,
            task_scheduler: Any,
            task_id: int,
            measure_candidates: Any,
            builder_results: Any,
            runner_results: Any,
        ) -> None:
            batch = []
            for b, r in zip(builder_results, runner_results, strict=False):
                if b.error_msg is not None:
                    batch.append((None, f"build failed: {b.error_msg}"))
                elif r.error_msg is not None or not r.run_secs:
                    batch.append((None, r.error_msg or "no run time measured"))
                else:
                    secs = [float(t) for t in r.run_secs]
                    batch.append((sum(secs) / len(secs), None))
            stats.record(task_id, _task_name(task_scheduler, task_id), batch)
            task = stats.tasks[task_id]
            best = f", best {task.best_s * 1e6:.1f} us" if task.best_s is not None else ""
            say(
                f"{task.name}: {stats.total} trials (budget {budget}), {stats.valid} valid "
                f"(task {task.valid}/{task.total}{best})"
            )

    return _Stats()


def database_measurements(db_dir: str | os.PathLike[str]) -> tuple[int, int]:
    """``(valid, total)`` tuning records in a MetaSchedule JSON database folder."""
    path = Path(db_dir) / TUNING_RECORDS
    if not path.exists():
        return 0, 0
    valid = total = 0
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        total += 1
        try:
            secs = json.loads(line)[1][1]
        except (json.JSONDecodeError, IndexError, TypeError):
            continue
        if secs and all(float(s) < FAILED_RUN_SECS for s in secs):
            valid += 1
    return valid, total
