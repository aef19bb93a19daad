"""The run-mode policy: pick fused / materialize / regenerate per ADNTN layer.

Everything here is a pure function of its inputs (a plan's
:class:`~adntn_runtime.plan.CostEstimate`, :class:`DeviceRates`, optional measured
latencies), so it is unit-testable with synthetic cost models; :mod:`adntn_runtime.session`
feeds it real calibration data.

Memory accounting (bytes, float32, per layer; the cores, a few KB, are counted for the modes
that keep them):

* ``materialize`` holds the dense weight: ``M * N * 4`` (the cores are dropped after the
  weight is contracted at load);
* ``regenerate`` holds one row tile of the weight plus that tile's generator intermediates
  and the cores (``plan.cost("regenerate").peak_elements``);
* ``fused`` holds the cached root factors and the per-call intermediates at the batch size
  (``plan.cost("fused").peak_elements``) plus the cores.

Latency model (milliseconds per call; :class:`DeviceRates` are measured on the device):

* ``materialize``: ``max(gemm flops / gemm rate, weight bytes / bandwidth)`` + one node;
* ``fused``: contraction flops / einsum rate + elements written * ns per element + one
  node overhead per step; a convolution of a split plan runs fused as two convolutions
  (a rank-``r`` kernel, then a 1x1 one: :mod:`adntn_runtime.layer_lowering`), i.e. two GEMMs
  of ``r * (in + out)`` multiply-adds per output pixel, predicted at the GEMM rate;
* ``regenerate``: the generator's steps in every tile (flops, elements written, node
  overheads) + the tile GEMMs + the input read once per tile (at the bandwidth).

A convolution's latency is predicted with one GEMM row per output pixel
(:func:`layer_candidates`' ``rows``).

Rule (:func:`choose_modes`): minimise the total latency of the ADNTN layers subject to the
memory budget (their total bytes); with a latency target met by several assignments, take
the one with the least memory among those meeting it. Measured latencies, when given,
replace predictions. With no assignment within the budget, :class:`BudgetError` names the
smallest budget that fits.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from adntn_runtime.modes import Mode, parse_mode
from adntn_runtime.plan import ADNTNPlan
from adntn_runtime.schedule import Contract

__all__ = [
    "DEFAULT_RATES",
    "BudgetError",
    "Candidate",
    "DeviceRates",
    "LayerChoice",
    "MemoryFitError",
    "available_memory_bytes",
    "check_layers_fit",
    "check_memory",
    "choose_modes",
    "fitting",
    "layer_candidates",
    "layer_memory_bytes",
    "predict_latency_ms",
]

MB = 1024 * 1024
_EXACT_SEARCH_LIMIT = 200_000
_ALWAYS_FITS = 64 * MB


class MemoryFitError(ValueError):
    """What was asked cannot fit in this machine's memory; ``needed_mb`` says how much."""

    def __init__(self, message: str, needed_mb: float) -> None:
        super().__init__(message)
        self.needed_mb = needed_mb


class BudgetError(ValueError):
    """No assignment of modes fits the memory budget; ``min_budget_mb`` would."""

    def __init__(self, message: str, min_budget_mb: float) -> None:
        super().__init__(message)
        self.min_budget_mb = min_budget_mb


@dataclass(frozen=True)
class DeviceRates:
    """Measured throughput constants of one device / ORT version / thread count.

    Attributes:
        gemm_gflops: dense GEMM rate when compute-bound (GFLOP/s).
        bandwidth_gbps: rate of streaming a weight bigger than the caches (GB/s).
        einsum_gflops: rate of the small two-operand contractions of the generator (GFLOP/s).
        einsum_ns_per_element: cost of each element an einsum step writes (layout work).
        node_overhead_us: fixed cost of one graph node.
    """

    gemm_gflops: float = 20.0
    bandwidth_gbps: float = 10.0
    einsum_gflops: float = 2.0
    einsum_ns_per_element: float = 2.0
    node_overhead_us: float = 5.0

    def to_dict(self) -> dict[str, float]:
        """JSON-ready fields."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DeviceRates:
        """Inverse of :meth:`to_dict` (unknown keys ignored)."""
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: float(v) for k, v in data.items() if k in names})


#: Conservative defaults used when calibration is off.
DEFAULT_RATES = DeviceRates()


@dataclass(frozen=True)
class Candidate:
    """One mode of one layer: predicted (and maybe measured) latency, and its memory."""

    mode: str
    predicted_ms: float
    memory_bytes: int
    measured_ms: float | None = None
    note: str = ""

    @property
    def latency_ms(self) -> float:
        """The measured latency when there is one, else the prediction."""
        return self.predicted_ms if self.measured_ms is None else self.measured_ms


@dataclass
class LayerChoice:
    """The mode picked for one layer, the alternatives, and why."""

    layer: str
    mode: str
    candidate: Candidate
    alternatives: list[Candidate] = field(default_factory=list)
    reason: str = ""


def layer_memory_bytes(
    plan: ADNTNPlan, mode: Mode | str, batch: int = 1, *, tile_rows: int | None = None
) -> int:
    """Resident bytes a layer needs at run time in ``mode`` (see the module docstring)."""
    mode = parse_mode(mode, Mode)
    if mode == "materialize":
        return plan.out_features * plan.in_features * 4
    cost = plan.cost(mode, batch, tile_rows=tile_rows)
    return (cost.peak_elements + plan.num_parameters) * 4


def available_memory_bytes() -> int:
    """Memory this machine can give now: ``MemAvailable`` of ``/proc/meminfo`` (Linux), else
    the physical memory (``os.sysconf``), else unlimited."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (OSError, ValueError, AttributeError):
        return 2**62


def check_memory(nbytes: int, what: str, *, available: int | None = None) -> None:
    """Raise :class:`MemoryFitError` when ``what`` needs more than the available memory.

    Called before an allocation whose size comes from a file or an argument (a forced
    materialize, a large batch), so that it fails at once with the number of MB needed
    instead of a raw allocator error later.
    """
    if available is None and nbytes <= _ALWAYS_FITS:
        return  # not worth reading /proc/meminfo on every call
    free = available_memory_bytes() if available is None else available
    if nbytes > free:
        raise MemoryFitError(
            f"{what} needs {nbytes / MB:,.0f} MB, but this machine has {free / MB:,.0f} MB "
            "available; valid: a choice that fits (a smaller batch, or the fused or regenerate "
            "mode instead of materialize)",
            nbytes / MB,
        )


def fitting(candidates: Sequence[Candidate], *, available: int | None = None) -> list[Candidate]:
    """The candidates whose memory fits in this machine (all of them when none does, so that
    the caller's error names them): a mode that cannot be allocated is never measured or
    chosen, whatever its predicted latency."""
    free = available_memory_bytes() if available is None else available
    return [c for c in candidates if c.memory_bytes <= free] or list(candidates)


def check_layers_fit(
    plans: Mapping[str, ADNTNPlan],
    forced: Mapping[str, str],
    batch: int,
    *,
    tile_rows: int | None = None,
    available: int | None = None,
) -> None:
    """Fail before any work when the ADNTN layers cannot fit in memory at ``batch``: each
    layer counted in its forced mode, or in its smallest mode when the policy may choose.

    Raises:
        MemoryFitError: naming the layers, their modes and the MB they need together.
    """
    total, parts = 0, []
    for name, plan in plans.items():
        if name in forced:
            modes = [forced[name]]
        else:
            modes = [m for m in Mode if m is not Mode.FUSED or plan.top_is_linear]
        io = batch * (plan.in_features + plan.out_features) * 4  # not in materialize's count
        sizes = {
            m: layer_memory_bytes(plan, m, batch, tile_rows=tile_rows)
            + (io if m == "materialize" else 0)
            for m in modes
        }
        mode = min(sizes, key=sizes.__getitem__)
        total += sizes[mode]
        parts.append(
            f"{name or 'layer'} {plan.out_features}x{plan.in_features} in {mode}"
            f"{' (forced)' if name in forced else ''}: {sizes[mode] / MB:,.0f} MB"
        )
    check_memory(total, f"loading at batch {batch} ({', '.join(parts)})", available=available)


def _written_elements(plan: ADNTNPlan, mode: str, batch: int, tile_rows: int | None) -> int:
    sch = plan.schedule(mode, batch=batch, tile_rows=tile_rows)
    dims_list = [t.dims(sch.dims, sch.row_legs) for t in sch.tiles] if sch.tiles else [sch.dims]
    total = 0
    for dims in dims_list:
        for step in sch.steps:
            if mode == "fused" and not (isinstance(step, Contract) and step.uses_input):
                continue  # the x-independent part is cached at load
            if isinstance(step, Contract):
                total += step.out_size(dims, batch)
    return total


def predict_latency_ms(
    plan: ADNTNPlan,
    mode: Mode | str,
    batch: int,
    rates: DeviceRates,
    *,
    tile_rows: int | None = None,
    conv: bool = False,
) -> float:
    """Predicted milliseconds of one call of the layer in ``mode`` (see the module docstring).

    ``batch``: the rows the weight multiplies (a convolution's output pixels); ``conv``: the
    layer is a convolution (its fused form differs for a split plan).
    """
    mode = parse_mode(mode, Mode)
    over = rates.node_overhead_us * 1e-3
    m, n = plan.out_features, plan.in_features
    if mode == "materialize":
        gemm = 2.0 * batch * m * n / (rates.gemm_gflops * 1e6)
        stream = 4.0 * m * n / (rates.bandwidth_gbps * 1e6)
        return max(gemm, stream) + over
    if mode == "fused" and conv and plan.layout == "split" and plan.top_is_linear:
        rank = plan.low_rank().rank
        gemm = 2.0 * batch * rank * (n + m) / (rates.gemm_gflops * 1e6)
        written = batch * (rank + m)
        return gemm + written * rates.einsum_ns_per_element * 1e-6 + 3 * over
    cost = plan.cost(mode, batch, tile_rows=tile_rows)
    written = _written_elements(plan, mode, batch, tile_rows)
    sch = plan.schedule(mode, batch=batch, tile_rows=tile_rows)
    if mode == "fused":
        steps = sum(1 for s in sch.steps if isinstance(s, Contract) and s.uses_input)
        return (
            cost.flops / (rates.einsum_gflops * 1e6)
            + written * rates.einsum_ns_per_element * 1e-6
            + (steps + 3) * over
        )
    tiles = max(1, len(sch.tiles))
    rows = plan.rows_padded
    gemm_flops = 2.0 * batch * rows * plan.cols_padded
    gen_flops = cost.flops - gemm_flops
    # every tile's GEMM reads the whole input again: negligible for a linear layer at a small
    # batch, the bulk for a convolution (one input row per output pixel)
    streamed = 4.0 * tiles * batch * plan.cols_padded / (rates.bandwidth_gbps * 1e6)
    return (
        max(gen_flops, 0.0) / (rates.einsum_gflops * 1e6)
        + gemm_flops / (rates.gemm_gflops * 1e6)
        + written * rates.einsum_ns_per_element * 1e-6
        + streamed
        + tiles * (len(sch.steps) + 3) * over
    )


def layer_candidates(
    plan: ADNTNPlan,
    batch: int,
    rates: DeviceRates,
    *,
    tile_rows: int | None = None,
    measured_ms: Mapping[str, float] | None = None,
    modes: Sequence[Mode | str] = tuple(Mode),
    rows: int | None = None,
    conv: bool = False,
) -> list[Candidate]:
    """Every mode ``plan`` can run in, with predicted latency, memory and measured latency.

    ``fused`` is left out (with no error) when the plan's top step is nonlinear. ``rows``:
    the rows the weight multiplies per call where that is not ``batch``, i.e. a convolution's
    ``batch * out_h * out_w`` (one row per output pixel) or a linear layer's ``batch * T`` on
    ``(batch, T, in)``: the latency is predicted at ``rows``; the memory is counted at
    ``batch`` (a convolution's activations are not counted as the layer's). ``conv``: the
    layer is a convolution (see :func:`predict_latency_ms`).
    """
    measured = dict(measured_ms or {})
    out = []
    for mode in (parse_mode(m, Mode) for m in modes):
        if mode is Mode.FUSED and not plan.top_is_linear:
            continue
        out.append(
            Candidate(
                mode,
                predict_latency_ms(
                    plan, mode, rows or batch, rates, tile_rows=tile_rows, conv=conv
                ),
                layer_memory_bytes(plan, mode, batch, tile_rows=tile_rows),
                measured.get(mode),
            )
        )
    return out


def _fmt_mb(n: float) -> str:
    mb = n / MB
    return f"{mb:.3g} MB" if mb >= 0.01 else f"{n / 1024:.3g} KB"


def _fmt_c(c: Candidate) -> str:
    kind = "measured" if c.measured_ms is not None else "predicted"
    return f"{c.mode} {c.latency_ms:.3g} ms ({kind}), {_fmt_mb(c.memory_bytes)}"


def choose_modes(
    candidates: Mapping[str, Sequence[Candidate]],
    *,
    memory_budget_mb: float | None = None,
    latency_target_ms: float | None = None,
) -> dict[str, LayerChoice]:
    """Pick one candidate per layer.

    Args:
        candidates: layer name -> its candidates (from :func:`layer_candidates`).
        memory_budget_mb: total megabytes (MiB) the layers may hold; ``None``: unlimited.
        latency_target_ms: total milliseconds of the layers that is good enough; ``None``:
            as fast as possible.

    Returns:
        layer -> :class:`LayerChoice`, with a reason in words.

    Raises:
        BudgetError: no assignment fits ``memory_budget_mb`` (names the smallest that does).
        ValueError: a layer without candidates, or a negative budget / target.
    """
    if memory_budget_mb is not None and (
        not isinstance(memory_budget_mb, int | float) or not memory_budget_mb >= 0
    ):
        raise ValueError(
            f"memory_budget_mb must be a number >= 0 or None, got {memory_budget_mb!r}"
        )
    if latency_target_ms is not None and (
        not isinstance(latency_target_ms, int | float) or not latency_target_ms > 0
    ):
        raise ValueError(
            f"latency_target_ms must be a number > 0 or None, got {latency_target_ms!r}"
        )
    names = list(candidates)
    for name in names:
        if not candidates[name]:
            raise ValueError(f"layer {name!r} has no candidate modes")
    if not names:
        return {}
    budget = math.inf if memory_budget_mb is None else memory_budget_mb * MB
    _check_fits(candidates, budget, memory_budget_mb)
    options = [sorted(candidates[n], key=lambda c: (c.latency_ms, c.memory_bytes)) for n in names]
    best = _search(options, budget, latency_target_ms)
    total_ms = sum(c.latency_ms for c in best)
    total_b = sum(c.memory_bytes for c in best)
    out = {}
    for name, chosen, opts in zip(names, best, options, strict=True):
        others = [c for c in opts if c.mode != chosen.mode]
        if latency_target_ms is None:
            head = "lowest predicted latency" if chosen.measured_ms is None else "lowest latency"
            head += " within the budget" if memory_budget_mb is not None else ""
        elif total_ms <= latency_target_ms:
            head = (
                f"least memory among choices meeting the {latency_target_ms:g} ms target "
                f"(ADNTN layers total {total_ms:.3g} ms, {_fmt_mb(total_b)})"
            )
        else:
            head = (
                f"the {latency_target_ms:g} ms target cannot be met (best total "
                f"{total_ms:.3g} ms): lowest latency"
                + (" within the budget" if memory_budget_mb is not None else "")
            )
        budget_txt = "" if memory_budget_mb is None else f"; budget {memory_budget_mb:g} MB"
        reason = f"{_fmt_c(chosen)}: {head}{budget_txt}" + _why_not(chosen, others, budget)
        out[name] = LayerChoice(name, chosen.mode, chosen, others, reason)
    return out


def _check_fits(
    candidates: Mapping[str, Sequence[Candidate]], budget: float, memory_budget_mb: float | None
) -> None:
    """:class:`BudgetError` naming the smallest budget that fits, when ``budget`` does not."""
    smallest = sum(min(c.memory_bytes for c in cands) for cands in candidates.values())
    if smallest <= budget:
        return
    need = {n: min(cands, key=lambda c: c.memory_bytes) for n, cands in candidates.items()}
    detail = ", ".join(
        f"{n or 'layer'}: {c.mode} {_fmt_mb(c.memory_bytes)}" for n, c in need.items()
    )
    min_mb = math.ceil(smallest / MB * 100) / 100
    raise BudgetError(
        f"no choice of modes fits memory_budget_mb={memory_budget_mb}: the smallest "
        f"budget that fits is {min_mb:.2f} MB ({detail})",
        min_mb,
    )


def _why_not(chosen: Candidate, others: Sequence[Candidate], budget: float) -> str:
    """Why each alternative lost, as ``"; not ..."`` (empty when there is none)."""
    why: list[str] = []
    for c in others:
        if c.memory_bytes > budget:
            why.append(f"{_fmt_c(c)}: over the budget")
        elif c.latency_ms < chosen.latency_ms:
            why.append(f"{_fmt_c(c)}: faster but more memory")
        else:
            why.append(f"{_fmt_c(c)}: slower")
    return "; not " + "; ".join(why) if why else ""


def _search(options: list[list[Candidate]], budget: float, target: float | None) -> list[Candidate]:
    """Minimise latency within budget; with a target met, minimise memory among those meeting it."""
    count = math.prod(len(o) for o in options)
    if count <= _EXACT_SEARCH_LIMIT:
        feasible = []
        for combo in itertools.product(*options):
            mem = sum(c.memory_bytes for c in combo)
            if mem <= budget:
                feasible.append((sum(c.latency_ms for c in combo), mem, combo))
        fastest = min(feasible, key=lambda t: (t[0], t[1]))
        if target is not None:
            meeting = [t for t in feasible if t[0] <= target]
            if meeting:
                return list(min(meeting, key=lambda t: (t[1], t[0]))[2])
        return list(fastest[2])
    # Greedy for many layers: start from the least memory, buy latency per byte.
    pick = [min(o, key=lambda c: (c.memory_bytes, c.latency_ms)) for o in options]
    while True:
        lat = sum(c.latency_ms for c in pick)
        if target is not None and lat <= target:
            return pick
        mem = sum(c.memory_bytes for c in pick)
        best_gain, best = 0.0, None
        for i, o in enumerate(options):
            for c in o:
                d_mem = c.memory_bytes - pick[i].memory_bytes
                d_lat = pick[i].latency_ms - c.latency_ms
                if d_lat <= 0 or mem + d_mem > budget:
                    continue
                gain = d_lat / max(d_mem, 1)
                if gain > best_gain:
                    best_gain, best = gain, (i, c)
        if best is None:
            return pick
        pick[best[0]] = best[1]
