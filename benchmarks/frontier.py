"""Accuracy-vs-ratio frontier of AlexNet-32's classifier: TTN, aTTN, MERA and the linear tree.

fc6 (2304 -> 4096) and fc7 (4096 -> 4096) of a trained dense AlexNet-32 (``dense_models.py``)
are compressed together at target ratios 10^2 .. 10^6 of their stored numbers (weights and
generated biases; fc8 and the trunk stay dense). For each target and topology the plan is
the largest uniform-bond one within the budget, split between the layers in proportion to
their dense sizes (4 .. 12 sites tried per layer: more exceed the 26 einsum labels; the
``*_split`` topologies use the split site layout, 2 .. 8 sites);
targets no plan reaches (1e5 and above: fewer numbers than the smallest plan) are recorded
as infeasible. Each point is then fitted (``init='svd'``) and fine-tuned exactly as a row of
``compression_table.py`` (1 epoch, distillation, same LRs) and its test accuracy measured.
Points are cached in ``results/frontier.json`` as they finish (a later run skips them);
``--plot`` draws ``frontier.png`` from the JSON (accuracy vs ratio, one line per topology). Usage::

    PYTHONPATH=.:runtimes:models python benchmarks/frontier.py --threads 1
    PYTHONPATH=.:runtimes:models python benchmarks/frontier.py --plot
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

from adntn_export.compress import compress
from adntn_runtime.plan import ADNTNPlan

sys.path.insert(0, str(Path(__file__).resolve().parent))
import compression_table as table  # noqa: E402
from _results import save  # noqa: E402
from dense_models import accuracy, load_split, log, machine, trained_dense  # noqa: E402

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
LAYERS = {"fc6": (4096, 2304), "fc7": (4096, 4096)}
TARGETS = (1e2, 1e3, 1e4, 3e4, 1e5, 1e6)


def layer_stored(
    network: str, shape: tuple[int, int], sites: int, bond: int, layout: str = "paired"
) -> int:
    """Stored numbers of one layer: weight cores plus a bond-1 bias generator."""
    plan = ADNTNPlan(*shape, network=network, num_sites=sites, bond_dim=bond, layout=layout)
    w = plan.num_parameters
    b = ADNTNPlan(shape[0], 1, network=network, bond_dim=1).num_parameters
    return w + b


def plan_for(network: str, target: float, layout: str = "paired") -> dict | None:
    """Per layer the (sites, bond) with the most stored numbers within the budget share; the
    budget is split in proportion to the layers' dense sizes. None when nothing fits."""
    out = {}
    for name, shape in LAYERS.items():
        budget = (shape[0] * shape[1] + shape[0]) / target
        best = None
        for sites in SITES[layout]:
            for bond in range(1, 257):
                try:
                    n = layer_stored(network, shape, sites, bond, layout)
                except ValueError:
                    break
                if n > budget:
                    break
                if best is None or n > best[2]:
                    best = (sites, bond, n)
        if best is None:
            return None
        out[name] = {
            "num_sites": best[0],
            "bond_dim": best[1],
            "stored": best[2],
            "layout": layout,
        }
    return out


def plot(data: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for topo in TOPOLOGIES:
        pts = sorted(
            (p["ratio"], p["acc"]) for p in data["points"].values() if p["topology"] == topo
        )
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=topo)
    if "dense_acc" in data:
        ax.axhline(data["dense_acc"], color="gray", linestyle="--", label="dense (fine-tuned)")
    ax.set_xscale("log")
    ax.set_xlabel("fc6+fc7 stored-number ratio")
    ax.set_ylabel("test accuracy")
    ax.set_title("AlexNet-32 / Fashion-MNIST: accuracy vs ratio")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--topologies", default=",".join(TOPOLOGIES))
    p.add_argument("--targets", default=",".join(f"{t:g}" for t in TARGETS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=HERE / "results" / "frontier.json")
    p.add_argument("--png", type=Path, default=HERE / "frontier.png")
    p.add_argument("--plot", action="store_true", help="only draw --png from --out")
    args = p.parse_args(argv)
    data: dict = {"points": {}}
    if args.out.exists():
        data = json.loads(args.out.read_text())
    if args.plot:
        plot(data, args.png)
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
    model, _ = trained_dense("alexnet32", train_data, seed=args.seed)
    failed = 0
    for target in (float(t) for t in args.targets.split(",")):
        for topo in args.topologies.split(","):
            key = f"{topo}@{target:g}/s{args.seed}"
            if key in data["points"]:
                continue
            network, act, layout = TOPOLOGIES[topo]
            layers = plan_for(network, target, layout)
            if layers is None:
                data["points"][key] = {"topology": topo, "target": target, "infeasible": True}
                save(args.out, data)
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
                        n: {k: c[k] for k in ("num_sites", "bond_dim", "layout")}
                        for n, c in layers.items()
                    },
                }
                compress(
                    student,
                    recipe=spec,
                    fit_steps=targs.fit_steps,
                    calibration=train_data.tensors[0][: targs.calibration],
                )
                stored = sum(c["stored"] for c in layers.values())
                dense_n = sum(m * n + m for m, n in LAYERS.values())
                acc_fit = accuracy(student, test_data)
                table.finetune(student, model, train_data, targs, args.seed)
                point = {
                    "topology": topo,
                    "target": target,
                    "layers": layers,
                    "stored": stored,
                    "ratio": dense_n / stored,
                    "acc_after_fit": acc_fit,
                    "acc": accuracy(student, test_data),
                    "seconds": time.perf_counter() - t0,
                    "command": command,
                    "machine": machine(args.threads),
                }
            except Exception as exc:  # reported; the other points still run
                log(f"{key}: FAILED: {exc!r}")
                failed += 1
                continue
            data["points"][key] = point
            save(args.out, data)
            log(f"{key}: ratio {point['ratio']:,.0f}x, test accuracy {point['acc']:.4f}")
    plot(data, args.png)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
