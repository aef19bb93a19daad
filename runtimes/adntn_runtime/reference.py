"""Numpy execution of a plan's schedules: the reference every backend is checked against.

It needs numpy alone, so it also serves as the last-resort executor on a device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import numpy as np

from adntn_runtime.activations import apply_activation
from adntn_runtime.modes import Mode, parse_mode
from adntn_runtime.plan import ADNTNPlan
from adntn_runtime.schedule import Contract, Schedule, Step

__all__ = ["apply", "fused_constants", "generate_weight", "low_rank_factors", "run_schedule"]

#: A two-operand einsum: ``numpy.einsum`` or a BLAS-backed one (``opt_einsum.contract``).
Einsum = Callable[[str, np.ndarray, np.ndarray], np.ndarray]


def _run_steps(steps: Iterable[Step], env: dict[str, np.ndarray], einsum: Einsum) -> None:
    for step in steps:
        if isinstance(step, Contract):
            a, b = (env[name] for name in step.inputs)
            env[step.output] = einsum(step.equation, a, b)
        else:
            env[step.output] = apply_activation(step.activation, env[step.input])


def run_schedule(
    schedule: Schedule,
    values: Mapping[str, np.ndarray],
) -> np.ndarray:
    """Execute ``schedule`` step by step with ``numpy.einsum`` on the given inputs."""
    env = dict(values)
    missing = [name for name in schedule.inputs if name not in env]
    if missing:
        raise ValueError(f"schedule inputs missing: {missing}; expected {list(schedule.inputs)}")
    _run_steps(schedule.steps, env, np.einsum)
    return env[schedule.output]


def fused_constants(
    plan: ADNTNPlan,
    cores: Mapping[str, np.ndarray],
    batch: int = 1,
    *,
    einsum: Einsum = np.einsum,
) -> dict[str, np.ndarray]:
    """The fused mode's ``x``-independent values (:attr:`Schedule.cached_values`), computed
    once from the cores: what a fused layer keeps between calls."""
    _check_cores(plan, cores)
    sch = plan.schedule(Mode.FUSED, batch=batch)
    env = dict(cores)
    _run_steps(sch.constant_steps, env, einsum)
    return {name: env[name] for name in sch.cached_values}


def low_rank_factors(
    plan: ADNTNPlan,
    cores: Mapping[str, np.ndarray],
    *,
    known: Mapping[str, np.ndarray] | None = None,
    einsum: Einsum = np.einsum,
) -> tuple[np.ndarray, np.ndarray]:
    """A split plan's weight as ``(left, right)`` with ``W = left @ right``: ``left`` of
    shape ``(out_features, rank)``, ``right`` ``(rank, in_features)`` (see
    :meth:`ADNTNPlan.low_rank`).

    ``known``: values already computed (e.g. :func:`fused_constants`); those that name a
    value of the form's steps (the root's children) are used instead of recomputed, the
    others are ignored.
    """
    _check_cores(plan, cores)
    form = plan.low_rank()
    made = {s.output for s in form.steps}
    env = dict(cores)
    env.update({k: v for k, v in (known or {}).items() if k in made})
    _run_steps((s for s in form.steps if s.output not in env), env, einsum)
    left = env[form.left].transpose(form.left_perm()).reshape(plan.rows_padded, form.rank)
    right = env[form.right].transpose(form.right_perm()).reshape(form.rank, plan.cols_padded)
    return left[: plan.out_features], right[:, : plan.in_features]


def _check_cores(plan: ADNTNPlan, cores: Mapping[str, np.ndarray]) -> None:
    for name, spec in plan.cores.items():
        if name not in cores:
            raise ValueError(f"core {name!r} missing; the plan has {list(plan.cores)}")
        if tuple(cores[name].shape) != spec.shape:
            raise ValueError(
                f"core {name!r} has shape {tuple(cores[name].shape)}, the plan needs {spec.shape}"
            )


def generate_weight(
    plan: ADNTNPlan,
    cores: Mapping[str, np.ndarray],
    *,
    mode: str = "materialize",
    tile_rows: int | None = None,
) -> np.ndarray:
    """The ``(out_features, in_features)`` weight, contracted whole or tile by tile."""
    _check_cores(plan, cores)
    m, n = plan.out_features, plan.in_features
    if mode == "materialize":
        w = run_schedule(plan.schedule("materialize"), cores)
        return w.reshape(plan.rows_padded, plan.cols_padded)[:m, :n]
    if mode == "regenerate":
        sch = plan.schedule("regenerate", tile_rows=tile_rows)
        out = np.empty((m, n), dtype=next(iter(cores.values())).dtype)
        for tile in sch.tiles:
            sliced = dict(cores)
            for leaf, start, stop in tile.slices:
                sliced[leaf] = cores[leaf][start:stop]
            w = run_schedule(sch, sliced).reshape(tile.row_stop - tile.row_start, -1)
            stop = min(tile.row_stop, m)
            out[tile.row_start : stop] = w[: stop - tile.row_start, :n]
        return out
    raise ValueError(f"generate_weight supports 'materialize' and 'regenerate', got {mode!r}")


def apply(
    plan: ADNTNPlan,
    cores: Mapping[str, np.ndarray],
    x: np.ndarray,
    *,
    mode: Mode | str = Mode.FUSED,
) -> np.ndarray:
    """``y = x @ W.T`` for ``x`` of shape ``(batch, in_features)`` in any mode."""
    if x.ndim != 2 or x.shape[1] != plan.in_features:
        raise ValueError(f"x must have shape (batch, {plan.in_features}), got {tuple(x.shape)}")
    mode = parse_mode(mode, Mode)
    if mode is not Mode.FUSED:
        return x @ generate_weight(plan, cores, mode=mode).T
    _check_cores(plan, cores)
    b = x.shape[0]
    xp = np.zeros((b, plan.cols_padded), dtype=x.dtype)
    xp[:, : plan.in_features] = x
    sch = plan.schedule("fused", batch=b)
    y = run_schedule(sch, {**cores, "x": xp.reshape(b, *plan.col_factors)})
    return y.reshape(b, plan.rows_padded)[:, : plan.out_features]
