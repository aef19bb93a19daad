"""The torch weight generator: an ADNTN plan's cores as parameters, its schedules run with torch.

:class:`WeightGenerator` executes the plan's two-operand steps with ``torch.einsum``
(the same steps the ONNX and TVM lowerings emit), in each of the three modes:

* :meth:`WeightGenerator.weight`: the whole ``(out, in)`` weight (materialize);
* :meth:`WeightGenerator.weight_tiles`: the weight a block of rows at a time (regenerate);
* :meth:`WeightGenerator.fused_matmul`: ``x @ W.T`` with ``x`` contracted into the
  network, the weight never formed (fused); for a split plan,
  :meth:`WeightGenerator.low_rank_factors` gives the weight as a rank-``r`` product instead
  (what a split convolution's fused mode runs as two convolutions).

Results computed without autograd are cached and invalidated whenever a core
changes (in-place optimiser updates, ``load_state_dict``, ``.to()``).

Under ``torch.autocast`` the weight (and the fused mode's x-independent factors) is still
generated in the cores' own precision: the generator is tiny, and low-precision rounding
compounded level by level through the nonlinearities would change the weight itself. Only
the product with the input (``x @ W.T``, the convolution, the fused contraction of ``x``)
runs in the autocast precision, as it would for a dense layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TypeVar

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from adntn_runtime.modes import Mode, parse_mode
from adntn_runtime.plan import ADNTNPlan
from adntn_runtime.policy import check_memory
from adntn_runtime.schedule import Activate, Contract, Schedule, Step, Tile

__all__ = [
    "ACTIVATION_FUNCTIONS",
    "EXACT_SCALE_ENTRIES",
    "SCALE_SAMPLE_GRIDS",
    "Product",
    "WeightGenerator",
    "linear_product",
    "run_schedule",
]

#: Weights with at most this many entries are formed whole (tile by tile) to measure the
#: initialisation scale; larger ones are sampled (:meth:`WeightGenerator.scale_to`).
EXACT_SCALE_ENTRIES = 2**22
#: Sub-grids (each at most 4 x 4 entries) sampled to measure the scale of a larger weight.
SCALE_SAMPLE_GRIDS = 512

T = TypeVar("T")

#: How a layer applies a block of weight rows ``w`` (``(rows, in)``) to its input ``x``.
Product = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def linear_product(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``x @ w.T``: a linear layer's product (output features last)."""
    return x @ w.T


ACTIVATION_FUNCTIONS = {
    "identity": lambda t: t,
    "tanh": torch.tanh,
    "relu": torch.relu,
    "gelu": torch.nn.functional.gelu,
    "sin": torch.sin,
}


def _execute(steps: Iterable[Step], env: dict[str, torch.Tensor]) -> None:
    """Run steps in order, adding each output to ``env``; outputs already there are kept
    (cached constants of the fused mode)."""
    for step in steps:
        if step.output in env:
            continue
        if isinstance(step, Contract):
            a, b = (env[name] for name in step.inputs)
            env[step.output] = torch.einsum(step.equation, a, b)
        else:
            env[step.output] = ACTIVATION_FUNCTIONS[step.activation](env[step.input])


def run_schedule(schedule: Schedule, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Execute a schedule with ``torch.einsum``, one two-operand step at a time."""
    env = dict(values)
    _execute(schedule.steps, env)
    return env[schedule.output]


def _generation_precision(cores: Mapping[str, torch.Tensor]) -> torch.autocast:
    """A context that turns autocast off, so the weight is generated in the cores' dtype."""
    device = next(iter(cores.values())).device.type
    return torch.autocast(device_type=device, enabled=False)


class WeightGenerator(nn.Module):
    """Holds a plan's cores as parameters and generates the weight they define.

    Args:
        plan: the framework-free plan.
        init_std: standard deviation the generated weight is scaled to at
            initialisation (``None``: PyTorch's default for a layer of this fan-in,
            ``1/sqrt(3 * in_features)``).
        dtype, device: of the cores.
    """

    def __init__(
        self,
        plan: ADNTNPlan,
        *,
        init_std: float | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        self.plan = plan
        factory = {"dtype": dtype, "device": device}
        self.cores = nn.ParameterDict(
            {
                name: nn.Parameter(torch.empty(spec.shape, **factory))
                for name, spec in plan.cores.items()
            }
        )
        self._cache: dict[str, tuple[tuple, object]] = {}
        self.reset_parameters(init_std)

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def reset_parameters(self, init_std: float | None = None) -> None:
        """Random cores with unit-variance levels, then the root rescaled to ``init_std``.

        Cores on the ``meta`` device (a layer built to check sizes only) hold no values and
        are left alone."""
        if any(p.is_meta for p in self.cores.values()):
            return
        if init_std is None:
            init_std = 1.0 / math.sqrt(3.0 * self.plan.in_features)
        for name, spec in self.plan.cores.items():
            p = self.cores[name]
            if spec.role == "leaf":
                nn.init.normal_(p, 0.0, 1.0)
            elif spec.role == "disentangler":
                a = spec.shape[0]
                nn.init.normal_(p, 0.0, 0.1 / math.sqrt(a))
                p[:, :, 0] += torch.eye(a, dtype=p.dtype, device=p.device)
            elif spec.role == "node":
                nn.init.normal_(p, 0.0, 1.0 / math.sqrt(math.prod(spec.shape[:-1])))
            else:
                nn.init.normal_(p, 0.0, 1.0 / math.sqrt(math.prod(spec.shape)))
        self.scale_to(init_std)

    @torch.no_grad()
    def scale_to(self, std: float) -> None:
        """Rescale the root core so the generated weight's entries have this standard deviation.

        The current scale is the root mean square of the (pre-activation) weight: measured on
        the whole weight when it has at most :data:`EXACT_SCALE_ENTRIES` entries, else on a
        fixed, bounded sample of entries (:data:`SCALE_SAMPLE_GRIDS` small sub-grids), so the
        cost never grows with the weight. Exact for a linear top step (the weight is linear in
        the root core); with a ``final_activation`` it is applied to the pre-activation, which
        is close for small weights. Cores on the ``meta`` device are left as they are.
        """
        if any(p.is_meta for p in self.cores.values()):
            return
        if self.plan.dense_parameters <= EXACT_SCALE_ENTRIES:
            sch = self._pre_activation(self.plan.schedule("regenerate"))
            sq = sum(float(w.double().pow(2).sum()) for _, _, w in self._run_tiles(sch))
            current = math.sqrt(sq / self.plan.dense_parameters)
        else:
            current = self._sampled_rms()
        if current > 0:
            self.cores["root"].mul_(std / current)
        self._cache.clear()

    @staticmethod
    def _pre_activation(sch: Schedule) -> Schedule:
        """``sch`` stopped before the final activation (unchanged for a linear top step)."""
        if not isinstance(sch.steps[-1], Activate):
            return sch
        steps = sch.steps[:-1]
        return Schedule(
            sch.mode, steps, sch.inputs, steps[-1].output, sch.output_legs, sch.dims, sch.tiles,
            sch.row_legs,
        )  # fmt: skip

    def _sampled_rms(self) -> float:
        """Root mean square of the pre-activation weight over a fixed sample of sub-grids.

        Each sub-grid fixes a random row digit and column digit at every site (two
        consecutive values at the first sites, so a grid holds at most 4 x 4 entries), slices
        the leaves accordingly and runs the materialize steps on them; the grids run together
        under ``torch.vmap``. The positions come from a private generator with a fixed seed,
        so the global RNG streams are untouched.
        """
        plan = self.plan
        sch = self._pre_activation(plan.schedule("materialize"))
        cores = dict(self.cores.items())
        rng = np.random.default_rng(0)
        slices: dict[str, list[torch.Tensor]] = {f"leaf{k}": [] for k in range(plan.num_sites)}
        for _ in range(SCALE_SAMPLE_GRIDS):
            span_i = span_j = 1
            for k in range(plan.num_sites):
                m, n = plan.row_factors[k], plan.col_factors[k]
                ri, rj = min(m, max(1, 4 // span_i)), min(n, max(1, 4 // span_j))
                i0 = int(rng.integers(0, m - ri + 1))
                j0 = int(rng.integers(0, n - rj + 1))
                span_i, span_j = span_i * ri, span_j * rj
                slices[f"leaf{k}"].append(cores[f"leaf{k}"][i0 : i0 + ri, j0 : j0 + rj])
        leaves = {name: torch.stack(parts) for name, parts in slices.items()}
        fixed = {k: v for k, v in cores.items() if k not in leaves}

        def one(grid: dict[str, torch.Tensor]) -> torch.Tensor:
            return run_schedule(sch, {**fixed, **grid})

        with _generation_precision(cores):
            w = torch.vmap(one)(leaves)
        return math.sqrt(float(w.double().pow(2).mean()))

    # ------------------------------------------------------------------ caching
    def _key(self) -> tuple:
        return tuple(
            (id(p), p._version, p.data_ptr(), p.dtype, p.device) for p in self.cores.values()
        )

    def _cacheable(self) -> bool:
        return not (torch.is_grad_enabled() and any(p.requires_grad for p in self.cores.values()))

    def _cached(self, kind: str, compute: Callable[[], T]) -> T:
        if not self._cacheable():
            return compute()
        key = self._key()
        hit = self._cache.get(kind)
        if hit is not None and hit[0] == key:
            return hit[1]
        value = compute()
        self._cache[kind] = (key, value)
        return value

    def clear_cache(self) -> None:
        """Drop cached weights and fused factors (they are rebuilt on the next call)."""
        self._cache.clear()

    # ------------------------------------------------------------------ modes
    def weight(self) -> torch.Tensor:
        """The full ``(out_features, in_features)`` weight (cached when autograd is off)."""
        return self._cached("weight", self._weight)

    def _weight(self) -> torch.Tensor:
        plan = self.plan
        itemsize = next(iter(self.cores.values())).element_size()
        check_memory(
            plan.rows_padded * plan.cols_padded * itemsize,
            f"the {plan.out_features}x{plan.in_features} weight (mode 'materialize')",
        )
        cores = dict(self.cores.items())
        with _generation_precision(cores):
            w = run_schedule(plan.schedule("materialize"), cores)
        return w.reshape(plan.rows_padded, plan.cols_padded)[
            : plan.out_features, : plan.in_features
        ]

    def weight_tiles(self, tile_rows: int | None = None) -> Iterator[tuple[int, int, torch.Tensor]]:
        """Yield ``(row_start, row_stop, rows)`` blocks of the weight, never the whole of it."""
        sch = self.plan.schedule("regenerate", tile_rows=tile_rows)
        yield from self._run_tiles(sch)

    def _run_tiles(self, sch: Schedule) -> Iterator[tuple[int, int, torch.Tensor]]:
        cores = dict(self.cores.items())
        for tile in sch.tiles:
            w = _tile_weight(self.plan, sch, tile, cores)
            yield tile.row_start, tile.row_start + w.shape[0], w

    def fused_constants(self, batch: int) -> dict[str, torch.Tensor]:
        """The x-independent values of the fused schedule (the root's children), cached."""
        sch = self.plan.schedule("fused", batch=batch)

        def compute() -> dict[str, torch.Tensor]:
            env: dict[str, torch.Tensor] = dict(self.cores.items())
            with _generation_precision(self.cores):
                _execute(sch.constant_steps, env)
            return {k: env[k] for k in sch.cached_values}

        return self._cached(f"fused:{batch}", compute)

    def low_rank_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """A split plan's weight as ``(left, right)``, ``W = left @ right`` (``left``:
        ``(out_features, rank)``, ``right``: ``(rank, in_features)``; see
        :meth:`ADNTNPlan.low_rank`), cached when autograd is off."""
        plan = self.plan
        form = plan.low_rank()

        def compute() -> tuple[torch.Tensor, torch.Tensor]:
            env: dict[str, torch.Tensor] = dict(self.cores.items())
            with _generation_precision(self.cores):
                _execute(form.steps, env)
            left = env[form.left].permute(form.left_perm()).reshape(plan.rows_padded, form.rank)
            right = env[form.right].permute(form.right_perm())
            right = right.reshape(form.rank, plan.cols_padded)
            return left[: plan.out_features], right[:, : plan.in_features]

        return self._cached("low_rank", compute)

    def fused_matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T`` for ``x`` of shape ``(batch, in_features)``; ``x`` is contracted into the
        network and the weight is never formed."""
        plan = self.plan
        if not plan.top_is_linear:
            raise ValueError(
                f"mode 'fused' needs a linear top step, but final_activation="
                f"{plan.final_activation!r}; use 'materialize' or 'regenerate'"
            )
        b = x.shape[0]
        pad = plan.cols_padded - plan.in_features
        if pad:
            x = torch.nn.functional.pad(x, (0, pad))
        sch = plan.schedule("fused", batch=b)
        values = {**dict(self.cores.items()), **self.fused_constants(b)}
        values["x"] = x.reshape(b, *plan.col_factors)
        y = run_schedule(sch, values)
        return y.reshape(b, plan.rows_padded)[:, : plan.out_features]

    def apply(
        self,
        x: torch.Tensor,
        mode: Mode | str,
        *,
        product: Product = linear_product,
        fused: Callable[[torch.Tensor], torch.Tensor] | None = None,
        tile_rows: int | None = None,
        dim: int = -1,
    ) -> torch.Tensor:
        """``product(x, W)`` in ``mode``: the one mode dispatch of the torch layers.

        Args:
            x: the layer's input.
            mode: ``materialize`` (``product`` with the whole cached weight), ``regenerate``
                (``product`` with one row tile at a time, concatenated along ``dim``) or
                ``fused`` (``fused(x)``; default :meth:`fused_matmul`).
            product: applies a block of weight rows to ``x`` (default ``x @ w.T``).
            tile_rows: rows per regenerate tile (default: the plan's).
            dim: the output dimension that holds the weight's rows.
        """
        mode = parse_mode(mode, Mode)
        if mode is Mode.MATERIALIZE:
            return product(x, self.weight())
        if mode is Mode.REGENERATE:
            return regenerate_apply(self, x, product, tile_rows, dim)
        return (fused or self.fused_matmul)(x)

    def matmul(
        self, x: torch.Tensor, mode: Mode | str, *, tile_rows: int | None = None
    ) -> torch.Tensor:
        """``x @ W.T`` for 2-D ``x`` in ``mode`` (materialize, regenerate or fused)."""
        return self.apply(x, mode, tile_rows=tile_rows)

    def extra_repr(self) -> str:
        p = self.plan
        return (
            f"{p.network}, weight {p.out_features}x{p.in_features}, bond_dims={list(p.bond_dims)}, "
            f"stored={p.num_parameters}"
        )


def _tile_weight(
    plan: ADNTNPlan, sch: Schedule, tile: Tile, cores: Mapping[str, torch.Tensor]
) -> torch.Tensor:
    """The rows of one tile, cropped to the real ``(out, in)`` extent."""
    values = dict(cores)
    for leaf, start, stop in tile.slices:
        values[leaf] = cores[leaf][start:stop]
    with _generation_precision(cores):
        w = run_schedule(sch, values).reshape(tile.row_stop - tile.row_start, plan.cols_padded)
    stop = min(tile.row_stop, plan.out_features)
    return w[: stop - tile.row_start, : plan.in_features]


def _tile_product(
    x: torch.Tensor,
    cores: dict[str, torch.Tensor],
    plan: ADNTNPlan,
    sch: Schedule,
    n: int,
    product: Product,
) -> torch.Tensor:
    return product(x, _tile_weight(plan, sch, sch.tiles[n], cores))


def regenerate_apply(
    gen: WeightGenerator,
    x: torch.Tensor,
    product: Product = linear_product,
    tile_rows: int | None = None,
    dim: int = -1,
) -> torch.Tensor:
    """``product(x, W)`` built one row tile at a time (concatenated along ``dim``); with autograd
    on, each tile is recomputed in the backward pass (activation checkpointing), so training
    never holds the weight either."""
    sch = gen.plan.schedule("regenerate", tile_rows=tile_rows)
    cores = dict(gen.cores.items())
    grad = torch.is_grad_enabled() and (
        x.requires_grad or any(p.requires_grad for p in cores.values())
    )
    outs = []
    for n in range(len(sch.tiles)):
        args = (x, cores, gen.plan, sch, n, product)
        if grad:
            outs.append(checkpoint(_tile_product, *args, use_reentrant=False))
        else:
            outs.append(_tile_product(*args))
    return torch.cat(outs, dim=dim)
