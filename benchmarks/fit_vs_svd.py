"""Compressing a trained layer without the task's data: ADNTN fit vs truncated SVD.

For a dense AlexNet-32 trained on full Fashion-MNIST (``dense_models.py``, seed 0), each of
fc6, fc7 and conv5 is compressed alone at 10x, 100x, 1,000x and 10,000x fewer stored
weight numbers (the bias stays dense on both sides) in two ways:

* **ADNTN**: a TTN with tanh levels (the default activation), started from the
  hierarchical SVD of the trained weight (``init="svd"``) and fitted for ``--fit-steps``
  Adam steps (activation-aware on ``--calibration`` training images: the only data it
  sees, no labels, no fine-tuning), then ``compress(select="output")``: of the fit, its
  start and a fresh initialisation, the layer whose model predictions on the calibration
  images stay closest (KL divergence) to the dense model's. The site layout (paired, or
  split: row-only and column-only sites, which contains truncated SVD), sites and bond
  dimensions are chosen among a few shapes with at most the budget's stored numbers by the
  same score, applied to each shape's hierarchical SVD. A split plan of two sites has one
  level and so no activation: it is a low-rank product (its start is truncated SVD);
* **truncated SVD** with the largest rank that fits the same budget (rank 0, the zero
  matrix, when even rank 1 does not fit).

Each row records the relative Frobenius error of the weight, the activation-aware error on
the calibration inputs, the test accuracy of the model with that one layer replaced (no
fine-tuning), which candidate was kept (fit / start / fresh: ``discarded``), whether
``compress``'s default rule (``select="objective"``) would discard the fit (weight error
>= 0.9 and error on the calibration inputs >= 0.5), and, with
``--random-init``, the same fit started from random cores. Rows are cached in
``results/fit_vs_svd.json`` as they finish (a later run skips them), each with its
command, wall time and machine. Usage::

    PYTHONPATH=.:runtimes:models python benchmarks/fit_vs_svd.py --threads 1
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch
from torch import nn

from adntn_export.compress import compress
from adntn_export.generator import WeightGenerator
from adntn_export.layers import ADNTNLayer
from adntn_export.svd_baseline import truncated_svd
from adntn_export.svd_init import svd_initialize
from adntn_runtime.plan import ADNTNPlan

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import cache_row, write_readme  # noqa: E402
from dense_models import (  # noqa: E402
    SlowBF16Error,
    accuracy,
    add_allow_slow_bf16,
    load_split,
    log,
    machine,
    refuse,
    trained_dense,
)

HERE = Path(__file__).resolve().parent
START, END = "<!-- fit-vs-svd:start -->", "<!-- fit-vs-svd:end -->"
#: compress()'s default discard_fit_above.
DISCARD_AT = 0.9


def weight_2d(module: nn.Module) -> torch.Tensor:
    """A Linear's weight, or a Conv2d's kernel as ``(out, in * kh * kw)``."""
    w = module.weight.detach()
    return w.reshape(w.shape[0], -1)


def candidate_plans(shape: tuple[int, int], budget: int) -> list[ADNTNPlan]:
    """TTN plans of ``shape`` with at most ``budget`` stored numbers. For each site layout
    (paired, split) and site count: the largest uniform bond, the largest bond doubling per
    level, and (split) the largest bond halving per level, each level capped at 64."""
    m, n = shape
    plans = []
    shapes = [("paired", s, g) for s in (2, 3, 4, 6, 8, 12) for g in (1.0, 2.0)]
    shapes += [("split", s, g) for s in (2, 3, 4, 5, 6) for g in (1.0, 2.0, 0.5)]
    for layout, sites, growth in shapes:
        height = max(ADNTNPlan(m, n, num_sites=sites, bond_dim=1, layout=layout).height, 1)
        if growth != 1.0 and height == 1:
            continue  # one bond level: growth changes nothing

        def plan_for(
            b: int, sites: int = sites, growth: float = growth, height: int = height, **kw: str
        ) -> ADNTNPlan:
            bonds = [max(1, min(round(b * growth**h), max(b, 64))) for h in range(height)]
            return ADNTNPlan(
                m, n, network="ttn", num_sites=sites, bond_dim=bonds, activation="tanh", **kw
            )

        lo, hi = 0, 1
        while hi <= 4096 and plan_for(hi, layout=layout).num_parameters <= budget:
            lo, hi = hi, hi * 2
        while hi - lo > 1:  # plan_for(lo) fits (or lo == 0), plan_for(hi) does not
            mid = (lo + hi) // 2
            fits = plan_for(mid, layout=layout).num_parameters <= budget
            lo, hi = (mid, hi) if fits else (lo, mid)
        if lo >= 1 and plan_for(lo, layout=layout) not in plans:
            plans.append(plan_for(lo, layout=layout))
    return plans


def choose_plan(
    w: torch.Tensor, budget: int, x_cal: torch.Tensor, score
) -> tuple[ADNTNPlan | None, list[dict]]:
    """The candidate whose hierarchical SVD (identity levels) keeps the model's predictions on
    the calibration images closest to the dense model's (``score(weight)``: KL divergence;
    ties: the smaller activation error)."""
    tried = []
    best: tuple[tuple[float, float], ADNTNPlan | None] = ((math.inf, math.inf), None)
    ref = w.double()
    for plan in candidate_plans((w.shape[0], w.shape[1]), budget):
        lin = ADNTNPlan.from_dict({**plan.to_dict(), "activation": "identity"})
        gen = WeightGenerator(lin, dtype=torch.float64)
        svd_initialize(gen, w)
        with torch.no_grad():
            gw = gen.weight()
            err = float((gw - ref).norm() / ref.norm())
            act = activation_error(gw, ref, x_cal)
        kl = score(gw)
        tried.append(
            {
                "layout": plan.layout,
                "num_sites": plan.num_sites,
                "bond_dims": list(plan.bond_dims),
                "stored": plan.num_parameters,
                "hsvd_error": err,
                "hsvd_activation_error": act,
                "hsvd_output_kl": kl,
            }
        )
        if (kl, act) < best[0]:
            best = ((kl, act), plan)
    return best[1], tried


def output_kl(model: nn.Module, module_name: str, images: torch.Tensor):
    """``score(weight)``: the KL divergence of the model's predictions on ``images`` with the
    layer's weight replaced, from the dense model's (compress's ``select="output"`` score)."""
    from adntn_export.compress import model_outputs, output_divergence

    ref = model_outputs(model, images)

    def score(w: torch.Tensor) -> float:
        return output_divergence(model_outputs(with_weight(model, module_name, w), images), ref)

    return score


def activation_error(w: torch.Tensor, ref: torch.Tensor, x: torch.Tensor) -> float:
    """``||(W - W_d) X^T|| / ||W_d X^T||`` on calibration inputs ``x``."""
    return float(((x @ (w - ref).T).norm() / (x @ ref.T).norm()).item())


def layer_inputs(model: nn.Module, module_name: str, images: torch.Tensor) -> torch.Tensor:
    """The rows the layer multiplies: a Linear's inputs, or a Conv2d's patches."""
    from adntn_export.fitting import capture_layer_inputs

    x = capture_layer_inputs(model, [module_name], images)[module_name]
    mod = model.get_submodule(module_name)
    if isinstance(mod, nn.Conv2d):
        cols = nn.functional.unfold(x, mod.kernel_size, mod.dilation, mod.padding, mod.stride)
        x = cols.transpose(1, 2).reshape(-1, cols.shape[1])
        x = x[torch.linspace(0, len(x) - 1, min(len(x), 4096)).long()]
    return x.reshape(-1, x.shape[-1]).double()


def with_weight(model: nn.Module, module_name: str, w: torch.Tensor) -> nn.Module:
    """A copy of ``model`` whose layer ``module_name`` has the dense weight ``w``."""
    out = copy.deepcopy(model)
    mod = out.get_submodule(module_name)
    with torch.no_grad():
        mod.weight.copy_(w.reshape(mod.weight.shape).to(mod.weight.dtype))
    return out


def run_row(model, alias, module_name, ratio, args, calib_images, test, x_cal, dense_acc):
    """One (layer, ratio) row: ADNTN (svd init, fitted), truncated SVD, optional random init."""
    t0 = time.perf_counter()
    ref = weight_2d(model.get_submodule(module_name))
    budget = ref.numel() // ratio
    row: dict = {
        "layer": alias,
        "module": module_name,
        "shape": list(ref.shape),
        "ratio_target": ratio,
        "budget": budget,
        "dense_acc": dense_acc,
    }
    svd = truncated_svd(ref, budget)
    row["svd"] = {
        "rank": svd.rank,
        "stored": svd.stored,
        "ratio": ref.numel() / svd.stored if svd.stored else math.inf,
        "relative_error": svd.relative_error,
        "activation_error": activation_error(svd.weight.double(), ref.double(), x_cal),
        "acc": accuracy(with_weight(model, module_name, svd.weight), test),
    }
    log(
        f"{alias} {ratio}x: SVD rank {svd.rank}: error {svd.relative_error:.4f}, acc "
        f"{row['svd']['acc']:.4f}"
    )
    score = output_kl(model, module_name, calib_images)
    row["svd"]["output_kl"] = score(svd.weight)
    plan, tried = choose_plan(ref, budget, x_cal, score)
    row["candidates"] = tried
    if plan is None:
        row["adntn"] = None
        log(f"{alias} {ratio}x: no TTN fits in {budget} numbers")
    else:
        for init in ("svd", "random") if ratio in args.random_init else ("svd",):
            cm = copy.deepcopy(model)
            torch.manual_seed(args.seed)
            t1 = time.perf_counter()
            compress(
                cm,
                layers=[module_name],
                network="ttn",
                bond_dim=list(plan.bond_dims),
                num_sites=plan.num_sites,
                layout=plan.layout,
                activation="tanh",
                bias="dense",
                fit_steps=args.fit_steps,
                calibration=calib_images,
                init=init,
                select="output",  # of fit, start and fresh: the closest predictions
            )
            layer = cm.get_submodule(module_name)
            assert isinstance(layer, ADNTNLayer)
            fit = cm.adntn_fit_report[module_name]
            with torch.no_grad():
                w = layer.dense_weight().double().reshape(ref.shape)
            entry = {
                "init": init,
                "layout": plan.layout,
                "num_sites": plan.num_sites,
                "bond_dims": list(plan.bond_dims),
                "activation": "tanh" if plan.activations else "none (one level)",
                "stored": plan.num_parameters,
                "ratio": ref.numel() / plan.num_parameters,
                "initial_relative_error": fit.initial_relative_error,
                "fit_relative_error": fit.relative_error,
                "fit_activation_error": fit.activation_error,
                "initial_objective": fit.initial_objective,
                "objective": fit.objective,
                "selected": fit.selected,
                "output_kl": fit.output_errors,
                # select="output" kept the fresh initialisation
                "discarded": fit.discarded,
                # what compress's default rule (select="objective") makes of the fit
                "objective_rule_discards": fit.learned_nothing(DISCARD_AT),
                "relative_error": float((w - ref.double()).norm() / ref.double().norm()),
                "activation_error": activation_error(w, ref.double(), x_cal),
                "acc": accuracy(cm, test),
                "fit_seconds": time.perf_counter() - t1,
            }
            row["adntn" if init == "svd" else "adntn_random_init"] = entry
            log(
                f"{alias} {ratio}x: ADNTN {init} init {plan.layout} {plan.num_sites} sites bonds "
                f"{list(plan.bond_dims)} ({entry['ratio']:,.0f}x): error "
                f"{entry['relative_error']:.4f}{' (discarded)' if entry['discarded'] else ''}, "
                f"acc {entry['acc']:.4f}"
            )
    row["seconds"] = time.perf_counter() - t0
    return row


def markdown(data: dict) -> str:
    """The fit-vs-SVD table (between the README markers)."""
    lines = [
        START,
        "",
        f"Dense AlexNet-32: test accuracy {data.get('dense_acc', float('nan')):.4f}. "
        f"{data['protocol']}",
        "",
        "| layer | target | ADNTN layout sites / bonds | ADNTN ratio | ADNTN error (act.) "
        "| kept | ADNTN acc "
        "| SVD rank | SVD ratio | SVD error (act.) | SVD acc | random-init error |",
        "|---|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key in sorted(data["rows"], key=lambda k: (data["rows"][k]["layer"], int(k.split("@")[1]))):
        r = data["rows"][key]
        a, s = r.get("adntn"), r["svd"]
        rnd = r.get("adntn_random_init")
        if a is None:
            acell = "| none fits | | | | |"
        else:
            acell = (
                f"| {a.get('layout', 'paired')} {a['num_sites']} / {a['bond_dims']} | "
                f"{a['ratio']:,.0f}x | "
                f"{a['relative_error']:.3f} ({a['activation_error']:.3f}) | "
                f"{a.get('selected', 'fit')} | {a['acc']:.4f} |"
            )
        sratio = "-" if s["rank"] == 0 else f"{s['ratio']:,.0f}x"
        lines.append(
            f"| {r['layer']} | {r['ratio_target']:,}x {acell} {s['rank']} | {sratio} | "
            f"{s['relative_error']:.3f} ({s['activation_error']:.3f}) | {s['acc']:.4f} | "
            + (f"{rnd['relative_error']:.3f}" if rnd else "")
            + " |"
        )
    lines += ["", END]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--layers", default="conv5,fc6,fc7", help="in the order they run")
    p.add_argument("--ratios", default="100,1000,10,10000", help="in the order they run")
    p.add_argument("--fit-steps", type=int, default=100)
    p.add_argument("--calibration", type=int, default=256, help="training images, no labels")
    p.add_argument("--random-init", default="1000", help="ratios that also fit from random")
    p.add_argument("--seed", type=int, default=0, help="the dense model's seed")
    p.add_argument("--threads", type=int, default=1)
    add_allow_slow_bf16(p)
    p.add_argument("--out", type=Path, default=HERE / "results" / "fit_vs_svd.json")
    p.add_argument("--readme", type=Path, default=HERE / "README.md")
    p.add_argument("--render", action="store_true", help="only rewrite the README table")
    args = p.parse_args(argv)
    args.random_init = {int(r) for r in args.random_init.split(",") if r}
    if args.render:
        write_readme(args.readme, markdown(json.loads(args.out.read_text())), START, END)
        return 0
    torch.set_num_threads(args.threads)
    protocol = (
        f"ADNTN: TTN with tanh levels, init='svd', {args.fit_steps} Adam steps activation-aware "
        f"on {args.calibration} training images (no labels, no fine-tuning), then of the fit, "
        "its start and a fresh initialisation the one whose model predictions on those images "
        "stay closest to the dense model's (KL; compress(select='output')); site layout "
        "(paired or split), sites and bonds chosen by the same score of their hierarchical "
        "SVD within the budget; bias kept dense on both "
        "sides; ratio = dense weight numbers / stored weight numbers; errors are relative "
        "Frobenius errors of the weight (in brackets: on the calibration inputs' products)"
    )
    data: dict = {"protocol": protocol, "rows": {}}
    if args.out.exists():
        old = json.loads(args.out.read_text())
        if old.get("protocol") == protocol:
            data = old
        else:  # the rows of another protocol stay in git history, not mixed in
            log(f"{args.out} holds another protocol: starting a new table")
    command = "PYTHONPATH=.:runtimes:models python " + " ".join(
        [sys.argv[0], *(argv if argv is not None else sys.argv[1:])]
    )
    train = load_split("train")
    test = load_split("test")
    try:
        model, _ = trained_dense(
            "alexnet32", train, seed=args.seed, allow_slow_bf16=args.allow_slow_bf16
        )
    except SlowBF16Error as exc:
        return refuse(exc)
    dense_acc = accuracy(model, test)
    data["dense_acc"] = dense_acc
    log(f"dense AlexNet-32 seed {args.seed}: test accuracy {dense_acc:.4f}")
    calib = train.tensors[0][: args.calibration]
    aliases = {**model.fc_layers, **model.conv_layers}
    failed = 0
    for ratio in (int(r) for r in args.ratios.split(",")):
        for alias in args.layers.split(","):
            key = f"{alias}@{ratio}"
            if key in data["rows"]:
                log(f"{key}: cached, skipped")
                continue
            module_name = aliases[alias]
            x_cal = layer_inputs(model, module_name, calib)
            try:
                row = run_row(model, alias, module_name, ratio, args, calib, test, x_cal, dense_acc)
            except Exception as exc:  # a failed row is reported, the others still run
                log(f"{key}: FAILED: {exc!r}")
                failed += 1
                continue
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
                note=f" ({row['seconds']:.0f} s)",
            )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
