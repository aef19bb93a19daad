"""Accuracy-vs-ratio frontier of AlexNet-32's classifier: TTN, aTTN, MERA and the linear tree.

fc6 (2304 -> 4096) and fc7 (4096 -> 4096) of a trained dense AlexNet-32 (``dense_models.py``)
are compressed together at target ratios 10^2 .. 10^6 of their stored numbers (weights and
generated biases; fc8 and the trunk stay dense). A target is one ratio for both layers
(``1e4``) or one per layer (``1e5/1.5e5``: fc6 at 100,000x, fc7 at 150,000x, the issue's
per-layer targets). For each target and topology each layer gets the plan with the most
stored numbers within its budget, among binary trees with a uniform bond (4 .. 12 sites:
more exceed the 26 einsum labels; the ``*_split`` topologies use the split site layout,
2 .. 8 sites) and trees of arity 2 .. 4 with a bond per level (1 .. 4), which reach about
150,000x; targets no plan reaches (3e5 and above: the smallest plan, 12 sites of arity 4 with
bond 1, stores 53 numbers, its generated bias 35 more) are recorded as infeasible.
Each point is then fitted (``init='svd'``) and fine-tuned exactly as a row of
``compression_table.py`` (1 epoch, distillation, same LRs) and its test accuracy measured.
Points are cached in ``results/frontier.json`` as they finish (a later run skips them; two
runs, e.g. one per core with different ``--topologies``, merge their points under a lock);
``--plot`` draws ``frontier.png`` from the JSON (accuracy vs ratio, one line per topology) and
the table of ``benchmarks/README.md`` (the run does both at its end). A point whose accuracy is
chance (``compression_table.CHANCE_BELOW``) stays cached but is flagged ``learned_nothing``
and the run exits 1; ``--core-lr`` reruns points at another core LR (their own keys, ending
``/lr<LR>``: the wide 1e2 plans need 3e-3 where the protocol's 3e-2 wrecks them). Usage::

    PYTHONPATH=.:runtimes:models python benchmarks/frontier.py --threads 1
    PYTHONPATH=.:runtimes:models python benchmarks/frontier.py --plot
"""

from __future__ import annotations

import argparse
import copy
import functools
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from adntn_export import compression_report
from adntn_export.compress import compress
from adntn_export.layers import ADNTNLinear
from adntn_runtime.plan import ADNTNPlan

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compression_table as table  # noqa: E402
from _results import save_entry, write_readme  # noqa: E402
from dense_models import (  # noqa: E402
    SlowBF16Error,
    accuracy,
    add_allow_slow_bf16,
    check_bf16_speed,
    load_split,
    log,
    machine,
    refuse,
    trained_dense,
)

HERE = Path(__file__).resolve().parent
TOPOLOGIES = {  # name -> (network, activation, site layout)
    "ttn": ("ttn", "tanh", "paired"),
    "attn": ("attn", "tanh", "paired"),
    "mera": ("mera", "tanh", "paired"),
    "linear_ttn": ("ttn", "identity", "paired"),
    "ttn_split": ("ttn", "tanh", "split"),
    "linear_ttn_split": ("ttn", "identity", "split"),
}
#: Site counts tried per layout (paired: fewer than 4 sites make huge leaves).
SITES = {"paired": (4, 6, 8, 10, 12), "split": (2, 3, 4, 6, 8)}
#: Arities and per-level bonds tried where no uniform-bond binary tree fits the budget.
ARITIES = (2, 3, 4)
LEVEL_BONDS = (1, 2, 3, 4)
LAYERS = {"fc6": (4096, 2304), "fc7": (4096, 4096)}
TARGETS = ("1e2", "1e3", "1e4", "3e4", "1e5", "1e5/1.5e5", "3e5", "1e6")
START, END = "<!-- frontier:start -->", "<!-- frontier:end -->"


@functools.cache
def _bias_stored(out_features: int) -> int:
    """Stored numbers of the bond-1 bias generator an ADNTN layer builds for this width."""
    layer = ADNTNLinear(8, out_features, bond_dim=1, bias="generated", bias_bond_dim=1)
    assert layer.bias_generator is not None
    return sum(p.numel() for p in layer.bias_generator.parameters())


def layer_stored(
    network: str,
    shape: tuple[int, int],
    sites: int,
    bond: int | tuple[int, ...],
    layout: str = "paired",
    arity: int = 2,
) -> int:
    """Stored numbers of one layer: weight cores plus a bond-1 bias generator."""
    plan = ADNTNPlan(
        *shape, network=network, num_sites=sites, bond_dim=bond, layout=layout, arity=arity
    )
    return plan.num_parameters + _bias_stored(shape[0])


def _uniform(network: str, shape: tuple[int, int], budget: float, layout: str) -> tuple | None:
    """The binary-tree, uniform-bond plan with the most stored numbers within ``budget``."""
    best = None
    for sites in SITES[layout]:
        for bond in range(1, 257):
            try:
                n = layer_stored(network, shape, sites, bond, layout)
            except ValueError:
                break
            if n > budget:
                break
            if best is None or n > best[0]:
                best = (n, sites, bond, 2)
    return best


def _per_level(network: str, shape: tuple[int, int], budget: float, layout: str) -> tuple | None:
    """Trees of arity 2..4 with a bond per level (1..4; bond 1 at a level makes the weight an
    elementwise function of a Kronecker product of its subtrees there): the plan with the most
    stored numbers within ``budget``."""
    best = None
    for sites in SITES[layout]:
        for arity in ARITIES:
            try:
                height = ADNTNPlan(
                    *shape,
                    network=network,
                    num_sites=sites,
                    bond_dim=1,
                    layout=layout,
                    arity=arity,
                ).height
            except ValueError:
                continue
            for bonds in itertools.product(LEVEL_BONDS, repeat=max(height, 1)):
                try:
                    n = layer_stored(network, shape, sites, bonds, layout, arity)
                except ValueError:
                    continue
                if n <= budget and (best is None or n > best[0]):
                    best = (n, sites, list(bonds), arity)
    return best


def parse_target(text: str) -> dict[str, float]:
    """``"1e4"``: fc6 and fc7 both at 10,000x; ``"1e5/1.5e5"``: fc6 at 1e5, fc7 at 1.5e5."""
    parts = text.split("/")
    try:
        values = [float(v) for v in parts]
    except ValueError:
        values = []
    if len(values) not in (1, len(LAYERS)) or any(not v >= 1 for v in values):
        raise ValueError(
            f"--targets: bad target {text!r}; valid: a ratio >= 1 (both layers, e.g. 1e4) or "
            f"one per layer ({'/'.join(LAYERS)}, e.g. 1e5/1.5e5)"
        )
    return dict(zip(LAYERS, values * len(LAYERS) if len(values) == 1 else values, strict=True))


def plan_for(network: str, target: float | dict[str, float], layout: str = "paired") -> dict | None:
    """Per layer the plan with the most stored numbers within its budget (dense numbers /
    the layer's target ratio; one ratio: the same for both layers), among binary trees with
    a uniform bond (1..256) and trees of arity 2..4 with a bond per level (1..4). None when
    no plan fits a layer."""
    targets = target if isinstance(target, dict) else dict.fromkeys(LAYERS, float(target))
    out = {}
    for name, shape in LAYERS.items():
        budget = (shape[0] * shape[1] + shape[0]) / targets[name]
        found = [
            c
            for c in (
                _uniform(network, shape, budget, layout),
                _per_level(network, shape, budget, layout),
            )
            if c is not None
        ]
        if not found:
            return None
        best = max(found, key=lambda c: c[0])
        out[name] = {
            "num_sites": best[1],
            "bond_dim": best[2],
            "arity": best[3],
            "stored": best[0],
            "ratio": (shape[0] * shape[1] + shape[0]) / best[0],
            "layout": layout,
        }
    return out


def parse_key(key: str) -> tuple[str, str, int, float | None]:
    """``(topology, target, seed, core LR or None)`` of a point's key
    (``ttn@1e4/s1``, ``attn@1e2/s1/lr0.003``)."""
    topo, rest = key.split("@", 1)
    parts = rest.split("/")
    lr = float(parts.pop()[2:]) if parts[-1].startswith("lr") else None
    seed = int(parts.pop()[1:])
    return topo, "/".join(parts), seed, lr


def _column(topo: str, lr: float | None) -> str:
    return topo if lr is None else f"{topo} (core LR {lr:g})"


def _topology_rank(topo: str) -> int:
    """Where ``topo`` sorts in tables and plots: the order of ``TOPOLOGIES``, unknown last."""
    order = list(TOPOLOGIES)
    return order.index(topo) if topo in order else len(order)


def _learned_nothing(point: dict) -> bool:
    return point.get("learned_nothing", point["acc"] < table.CHANCE_BELOW)


def markdown(data: dict) -> str:
    """The frontier table (between the README markers): one row per target, one column per
    topology (and core LR, where a point had its own), each cell the fine-tuned test accuracy
    (mean over seeds) and the ratio reached; ``chance``: a point that learned nothing."""
    keys = {k: parse_key(k) for k in data["points"]}
    columns = sorted(
        {(t, lr) for t, _, _, lr in keys.values()},
        key=lambda c: (_topology_rank(c[0]), c[1] or 0.0),
    )
    seeds = sorted({seed for _, _, seed, _ in keys.values()})
    dense = data.get("dense_acc")
    lines = [
        START,
        "",
        f"AlexNet-32 fc6+fc7 (seed(s) {', '.join(map(str, seeds))}); dense, fine-tuned like "
        f"the points: {dense:.4f}."
        if dense is not None
        else "AlexNet-32 fc6+fc7.",
        "Each cell: test accuracy after fitting and 1 epoch of fine-tuning, and the fc6+fc7 "
        "ratio (every stored number counted); `infeasible`: no plan of that topology within "
        "the budget of some layer; `chance`: the point learned nothing (accuracy below "
        f"{table.CHANCE_BELOW}).",
        "",
        "| target | " + " | ".join(_column(*c) for c in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for target in TARGETS:
        cells = []
        for topo, lr in columns:
            found = [
                data["points"][k]
                for k, (t, tg, _, klr) in keys.items()
                if (t, tg, klr) == (topo, target, lr)
            ]
            done = [p for p in found if "acc" in p]
            if done:
                acc = sum(p["acc"] for p in done) / len(done)
                cell = f"{acc:.4f} ({done[0]['ratio']:,.0f}x)"
                cells.append(f"chance: {cell}" if any(map(_learned_nothing, done)) else cell)
            else:
                cells.append("infeasible" if found else "")
        if any(cells):
            lines.append(f"| {target} | " + " | ".join(cells) + " |")
    lines += ["", END]
    return "\n".join(lines)


def plot(data: dict, path: Path) -> Any:
    """Draw the frontier into ``path`` (PNG) and return the matplotlib figure: one colour per
    topology, solid at the protocol's core LR, dashed open squares at another; points that
    learned nothing as gray crosses on the lower edge (the y-axis spans the learned points).
    The figure is closed after saving (pyplot keeps no reference); its axes stay readable."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    # one colour per topology: its points at the protocol's core LR joined by a solid line,
    # those at another core LR (own keys) by a dashed one, open squares, on to the solid line
    groups: dict[tuple[str, float | None], list] = {}
    failed = []
    for key, p in data["points"].items():
        if "acc" not in p:
            continue
        if _learned_nothing(p):
            failed.append(p["ratio"])
            continue
        topo, _, _, lr = parse_key(key)
        groups.setdefault((topo, lr), []).append((p["ratio"], p["acc"]))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for (topo, lr), pts in sorted(
        groups.items(), key=lambda g: (_topology_rank(g[0][0]), g[0][1] or 0.0)
    ):
        colour = colours[_topology_rank(topo) % len(colours)]
        pts = sorted(pts)
        if lr is None:
            ax.plot(*zip(*pts, strict=True), marker="o", color=colour, label=topo)
            continue
        after = [q for q in sorted(groups.get((topo, None), [])) if q[0] > pts[-1][0]]
        ax.plot(*zip(*(pts + after[:1]), strict=True), linestyle="--", color=colour)
        ax.plot(
            *zip(*pts, strict=True),
            "s",
            mfc="none",
            color=colour,
            label=_column(topo, lr),
        )
    learned = [a for pts in groups.values() for _, a in pts]
    if learned:
        bottom = min([*learned, data.get("dense_acc", 1.0)]) - 0.01
        ax.set_ylim(bottom, max([*learned, data.get("dense_acc", 0.0)]) + 0.005)
        if failed:  # chance (~0.10) is far below: marked on the axis
            ax.plot(
                failed,
                [bottom] * len(failed),
                "x",
                color="gray",
                clip_on=False,
                label="learned nothing (chance; off the axis)",
            )
    if "dense_acc" in data:
        ax.axhline(data["dense_acc"], color="gray", linestyle="--", label="dense (fine-tuned)")
    ax.set_xscale("log")
    ax.set_xlabel("fc6+fc7 stored-number ratio")
    ax.set_ylabel("test accuracy")
    ax.set_title("AlexNet-32 / Fashion-MNIST: accuracy vs ratio")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)  # saved; the caller may still read it, pyplot no longer holds it
    return fig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--topologies", default=",".join(TOPOLOGIES))
    p.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help="ratios, comma-separated; fc6/fc7 for one per layer (e.g. 1e5/1.5e5)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--core-lr",
        type=float,
        default=None,
        help="fine-tuning LR of the ADNTN cores (default: the compression table's --core-lr); "
        "a point at another LR is its own point (key suffix /lr<LR>)",
    )
    p.add_argument("--threads", type=int, default=1)
    add_allow_slow_bf16(p)
    p.add_argument("--out", type=Path, default=HERE / "results" / "frontier.json")
    p.add_argument("--png", type=Path, default=HERE / "frontier.png")
    p.add_argument("--readme", type=Path, default=HERE / "README.md")
    p.add_argument(
        "--plot", action="store_true", help="only draw --png and the README table from --out"
    )
    args = p.parse_args(argv)
    if args.core_lr is not None and not (0 < args.core_lr < 1):
        p.error(f"--core-lr must be in (0, 1), got {args.core_lr!r}")
    data: dict = {"points": {}}
    if args.out.exists():
        data = json.loads(args.out.read_text())
    if args.plot:
        plot(data, args.png)
        write_readme(args.readme, markdown(data), START, END)
        return 0
    torch.set_num_threads(args.threads)
    targs = table.parse_args(["--seeds", str(args.seed)])
    data["protocol"] = table.protocol_text(targs)
    command = "PYTHONPATH=.:runtimes:models python " + " ".join(
        [sys.argv[0], *(argv if argv is not None else sys.argv[1:])]
    )
    # the line the plot draws: this seed's fine-tuned dense row of the compression table
    table_rows = HERE / "results" / "compression.json"
    if table_rows.exists():
        dense_row = json.loads(table_rows.read_text())["rows"].get(f"alexnet32/dense/s{args.seed}")
        if dense_row is not None:
            data["dense_acc"] = dense_row["acc"]
            data["dense_acc_source"] = f"compression.json alexnet32/dense/s{args.seed}"
    train_data, test_data = load_split("train"), load_split("test")
    try:  # its points fine-tune under the table's --amp (bf16) too
        check_bf16_speed(targs.amp, args.allow_slow_bf16)
    except SlowBF16Error as exc:
        return refuse(exc)
    model, _ = trained_dense(
        "alexnet32", train_data, seed=args.seed, allow_slow_bf16=args.allow_slow_bf16
    )
    own_lr = args.core_lr is not None and args.core_lr != targs.core_lr
    failed = 0
    try:
        targets = [(t, parse_target(t)) for t in args.targets.split(",") if t]
    except ValueError as exc:
        p.error(str(exc))
    bad = [t for t in args.topologies.split(",") if t not in TOPOLOGIES]
    if bad:
        p.error(f"--topologies: unknown {bad}; valid: {list(TOPOLOGIES)}")
    for text, target in targets:
        for topo in args.topologies.split(","):
            key = f"{topo}@{text}/s{args.seed}" + (f"/lr{args.core_lr:g}" if own_lr else "")
            if key in data["points"]:
                continue
            network, act, layout = TOPOLOGIES[topo]
            layers = plan_for(network, target, layout)
            if layers is None:
                infeasible = {
                    "topology": topo,
                    "target": target,
                    "infeasible": "no plan within the budget of some layer",
                }
                save_entry(args.out, data, "points", key, infeasible)
                continue
            t0 = time.perf_counter()
            try:
                student = copy.deepcopy(model)
                torch.manual_seed(args.seed)
                spec = {
                    "defaults": {
                        "network": network,
                        "activation": act,
                        "bias": "generated",
                        "bias_bond_dim": 1,
                    },
                    "layers": {
                        n: {
                            **{k: c[k] for k in ("num_sites", "bond_dim", "layout", "arity")},
                            **({"core_lr": args.core_lr} if own_lr else {}),
                        }
                        for n, c in layers.items()
                    },
                }
                compress(
                    student,
                    recipe=spec,
                    fit_steps=targs.fit_steps,
                    calibration=train_data.tensors[0][: targs.calibration],
                )
                # what the compressed layers really store (weights and generated biases)
                report = compression_report(student).layers
                stored = sum(r.stored_params for r in report)
                planned = sum(c["stored"] for c in layers.values())
                if stored != planned:
                    raise RuntimeError(f"the plan counted {planned} stored numbers, got {stored}")
                dense_n = sum(m * n + m for m, n in LAYERS.values())
                acc_fit = accuracy(student, test_data)
                table.finetune(student, model, train_data, targs, args.seed)
                point = {
                    "topology": topo,
                    "target": target,
                    "layers": layers,
                    "stored": stored,
                    "ratio": dense_n / stored,
                    "layer_ratios": {r.name: r.ratio for r in report},
                    "acc_after_fit": acc_fit,
                    "acc": accuracy(student, test_data),
                    "core_lr": args.core_lr if own_lr else targs.core_lr,
                    "seconds": time.perf_counter() - t0,
                    "command": command,
                    "machine": machine(args.threads),
                }
            except Exception as exc:  # reported; the other points still run
                log(f"{key}: FAILED: {exc!r}")
                failed += 1
                continue
            point["learned_nothing"] = point["acc"] < table.CHANCE_BELOW
            save_entry(args.out, data, "points", key, point)
            log(f"{key}: ratio {point['ratio']:,.0f}x, test accuracy {point['acc']:.4f}")
            if point["learned_nothing"]:  # cached (the protocol gave it), but not a success
                log(
                    f"{key}: FAILED: test accuracy {point['acc']:.4f} is chance (below "
                    f"{table.CHANCE_BELOW}): the fine-tuning learned nothing; try a lower "
                    "--core-lr"
                )
                failed += 1
    merged = json.loads(args.out.read_text()) if args.out.exists() else data  # both runs'
    plot(merged, args.png)
    write_readme(args.readme, markdown(merged), START, END)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
