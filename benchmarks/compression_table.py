"""Compression table: AlexNet-32 and VGG-16-32 on full Fashion-MNIST, dense vs ADNTN, 3 seeds.

Protocol (the same for every row of one model; one row = one (model, recipe, seed)):

1. Train the dense model end to end (``--epochs``, Adam, cosine decay, batch
   ``--batch-size``, bf16 autocast, no augmentation) on the Fashion-MNIST training set
   through :func:`adntn_export.training.train` (``dense_models.py``; cached in
   ``results/cache/``, not committed).
2. ``dense`` row: fine-tune a copy end to end for ``--ft-epochs`` with
   :func:`adntn_export.training.train` (dropout off, cross-entropy + 0.5 distillation at
   T=4 from the trained dense model, Adam with ``--ft-lr`` for the dense parameters and
   ``--core-lr`` for ADNTN cores, cosine decay).
3. ``<network>`` rows (``ttn``, ``attn``, ``mera``): compress the layers of the recipe
   ``<model>_<network>`` in a copy of the trained model (generated biases: every stored
   number counts), fit each layer (``init='svd'``, activation-aware on ``--calibration``
   training images), then fine-tune exactly as in step 2. ``<network>_linear`` rows: the
   same recipe with ``activation='identity'`` (a linear tree tensor network with the same
   stored numbers), trained the same way: what the nonlinearity buys. The ``whole`` row:
   the recipe ``<model>_whole``, which compresses the convolutions too (whole-network
   compression), trained the same way; ``whole48``: the recipe ``<model>_whole48`` (AlexNet-32:
   rank-48 convolutions and a wider classifier, still above 50x for the whole model);
   ``whole_lowrank``: ``<model>_whole_lowrank`` (fc6/fc7 in the split layout too, so the
   layer-wise fit starts them from their truncated SVD instead of a 20,000x tree; VGG-16-32's
   also never discards a split layer's fit: the recipe's ``discard_fit_above`` is null there);
   ``whole_svd``: the same with fc8 low-rank too; ``whole_deep``: ``<model>_whole_deep``
   (VGG-16-32: as ``whole_lowrank`` with conv1_2-conv2_2 dense and fc7 at rank 16, about
   21x). ``ttn_target``: the recipe
   ``<model>_ttn_target``, the classifier at the issue's per-layer ratio targets (fc6 >= 100,000x
   on AlexNet-32 and >= 20,000x on VGG-16-32, fc7 >= 150,000x, fc8 >= 100x; the convolutions
   dense), with the plans ``frontier.py`` finds; ``ttn_target_linear``: the same, identity
   activations.
4. A recipe suffixed ``_ftN`` (``whole_deep_ft3``, ``dense_ft3``): the same row fine-tuned
   ``N`` epochs instead of ``--ft-epochs`` (same cosine schedule over the longer run), so a
   recipe that needs more fine-tuning is compared with the dense model given the same.

Every finished row is written at once to ``results/compression.json`` (committed) with its
command, wall time and machine, and skipped by a later run with the same protocol, so the
table is built row by row across sessions; the README table (mean +- std over the seeds
present) is rewritten after each row. Usage (the full protocol)::

    PYTHONPATH=.:runtimes:models python benchmarks/compression_table.py --threads 1
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from adntn_export import compression_report
from adntn_export.compress import compress, list_recipes, load_recipe
from adntn_export.training import TrainConfig, train

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import cache_row, write_readme  # noqa: E402
from dense_models import (  # noqa: E402
    Autocast,
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
START, END = "<!-- compression-table:start -->", "<!-- compression-table:end -->"
MODELS = ("alexnet32", "vgg16_32")
NETWORKS = ("ttn", "attn", "mera")
#: ``whole``: the recipe ``<model>_whole`` (convolutions compressed too; see its description);
#: ``whole48``: ``<model>_whole48``, rank-48 convolutions and a wider classifier (AlexNet-32 only);
#: ``whole_lowrank``: ``<model>_whole_lowrank``, fc6/fc7 low-rank too (their SVD start survives);
#: ``whole_svd``: ``<model>_whole_svd``, fc8 low-rank too (every layer starts from its SVD);
#: ``whole_deep``: ``<model>_whole_deep``, the first convolutions dense (VGG-16-32 only);
#: ``ttn_target``: ``<model>_ttn_target``, the classifier at the per-layer ratio targets.
#: A row whose test accuracy is below this (10 classes: chance is 0.1) learned nothing: the
#: run reports it as failed and exits 1 (the row stays cached: the protocol gave it).
CHANCE_BELOW = 0.2
RECIPES = (
    "dense",
    *NETWORKS,
    *(f"{n}_linear" for n in NETWORKS),
    "whole",
    "whole48",
    "whole_lowrank",
    "whole_svd",
    "whole_deep",
    "ttn_target",
    "ttn_target_linear",
)
LINEAR = "_linear"  # a recipe name's suffix: the same recipe with identity activations
#: a recipe name's last suffix ``_ftN``: the same row fine-tuned N epochs (1 <= N <= MAX_FT)
LONGER_FT = re.compile(r"^(?P<base>.+)_ft(?P<epochs>[0-9]+)$")
MAX_FT = 20


def split_recipe(recipe: str) -> tuple[str, int | None]:
    """``(base recipe, fine-tuning epochs)`` of a row's recipe name; ``None``: the protocol's."""
    m = LONGER_FT.match(recipe)
    if m is None:
        return recipe, None
    return m["base"], int(m["epochs"])


def valid_recipe(recipe: str) -> bool:
    """A recipe of :data:`RECIPES`, optionally with a ``_ftN`` suffix, 1 <= N <= MAX_FT."""
    base, epochs = split_recipe(recipe)
    return base in RECIPES and (epochs is None or 1 <= epochs <= MAX_FT)


def finetune(
    model: nn.Module, teacher: nn.Module, data, args, seed: int, epochs: int | None = None
) -> float:
    """End-to-end fine-tuning through the library's loop, identical for every row.

    ``epochs``: a ``_ftN`` row's epochs (``None``: ``--ft-epochs``).
    """
    for m in model.modules():  # no dropout while fine-tuning (same for every row)
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    cfg = TrainConfig(
        epochs=args.ft_epochs if epochs is None else epochs,
        batch_size=args.ft_batch_size,
        lr=args.ft_lr,
        core_lr=args.core_lr,
        seed=seed,
        distill_weight=0.5,
        temperature=4.0,
        min_lr_ratio=0.02,
        progress=False,
    )
    result = train(Autocast(model, args.amp), data, config=cfg, teacher=Autocast(teacher, args.amp))
    model.eval()
    return result.seconds


def layer_rows(model: nn.Module, cmodel: nn.Module) -> tuple[list[dict], object]:
    """One dict per compressed layer of ``cmodel``: shapes, stored numbers, ratios, fit error."""
    alias = {path: name for name, path in {**model.conv_layers, **model.fc_layers}.items()}
    rep = compression_report(cmodel)
    rows = []
    for lr_ in rep.layers:
        fit = cmodel.adntn_fit_report.get(lr_.name)
        rows.append(
            {
                "layer": alias.get(lr_.name, lr_.name),
                "module": lr_.name,
                "shape": list(lr_.shape),
                "bond_dims": list(lr_.bond_dims),
                "num_sites": cmodel.adntn_layer_configs[lr_.name]["num_sites"],
                "layout": cmodel.adntn_layer_configs[lr_.name].get("layout", "paired"),
                # the recipe's fine-tuning LR of this layer's cores (None: --core-lr)
                "core_lr": cmodel.adntn_layer_configs[lr_.name].get("core_lr"),
                "dense_params": lr_.dense_params,
                "stored_params": lr_.stored_params,
                "ratio": lr_.ratio,
                "weight_ratio": lr_.weight_ratio,
                "fit_relative_error": None if fit is None else fit.relative_error,
                "fit_discarded": None if fit is None else bool(fit.discarded),
            }
        )
    return rows, rep


def has_recipe(name: str, recipe: str) -> bool:
    """Whether the row ``(name, recipe)`` exists: ``dense`` always, else a shipped recipe."""
    base = split_recipe(recipe)[0]
    return base == "dense" or f"{name}_{base.removesuffix(LINEAR)}" in list_recipes()


def run_row(name: str, recipe: str, seed: int, args, train_data, test_data) -> dict:
    """Train (or load) the dense model of ``seed``, then the row's compression and fine-tuning."""
    t0 = time.perf_counter()
    model, t_train = trained_dense(
        name,
        train_data,
        seed=seed,
        epochs=args.epochs,
        bs=args.batch_size,
        lr=args.lr,
        amp=args.amp,
        allow_slow_bf16=args.allow_slow_bf16,
    )
    row: dict = {
        "model": name,
        "recipe": recipe,
        "seed": seed,
        "dense_train_seconds": t_train,
        "dense_acc_after_training": accuracy(model, test_data),
        "dense_params_total": sum(p.numel() for p in model.parameters()),
    }
    student = copy.deepcopy(model)
    base, ft_epochs = split_recipe(recipe)
    row["ft_epochs"] = args.ft_epochs if ft_epochs is None else ft_epochs
    if base != "dense":
        linear = base.endswith(LINEAR)
        spec = load_recipe(f"{name}_{base.removesuffix(LINEAR)}")
        if linear:
            spec = {**spec, "defaults": {**spec["defaults"], "activation": "identity"}}
        torch.manual_seed(seed)
        compress(
            student,
            recipe=spec,
            fit_steps=args.fit_steps,
            calibration=train_data.tensors[0][: args.calibration],
            max_calibration_rows=args.calibration,
            verbose=True,
        )
        row["acc_after_fit"] = accuracy(student, test_data)
        log(f"{name}/{recipe}/s{seed}: after the layer-wise fit: {row['acc_after_fit']:.4f}")
        layers, rep = layer_rows(model, student)
        row.update(
            layers=layers,
            compressed_ratio=rep.total_ratio,
            compressed_weight_ratio=rep.weight_ratio,
            model_ratio=rep.model_ratio,
        )
    row["ft_seconds"] = finetune(student, model, train_data, args, seed, ft_epochs)
    row["acc"] = accuracy(student, test_data)
    row["seconds"] = time.perf_counter() - t0
    log(f"{name}/{recipe}/s{seed}: test accuracy {row['acc']:.4f} ({row['seconds'] / 60:.1f} min)")
    return row


def mean_std(values: list[float]) -> str:
    if not values:
        return ""
    if len(values) == 1:
        return f"{values[0]:.4f} (1 seed)"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f} ({len(values)} seeds)"


def markdown(data: dict) -> str:
    """The README table: one line per (model, recipe), mean ± std over the cached seeds."""
    lines = [START, "", f"Protocol: {data['protocol']}.", ""]
    rows = data["rows"].values()
    for name in MODELS:
        mine = [r for r in rows if r["model"] == name]
        if not mine:
            continue
        dense = [r["acc"] for r in mine if r["recipe"] == "dense"]
        lines += [
            f"### {name}",
            "",
            "| recipe | seeds | test acc (mean ± std) | vs dense mean | vs its own dense model "
            "| acc right after fit | per-layer ratios (with bias) | all compressed | whole model "
            "| fit errors |",
            "|---|---|---|---:|---:|---|---|---:|---:|---|",
        ]
        present = {r["recipe"] for r in mine}
        for recipe in sorted(present, key=lambda x: (RECIPES.index(split_recipe(x)[0]), x)):
            rr = sorted((r for r in mine if r["recipe"] == recipe), key=lambda r: r["seed"])
            if not rr:
                continue
            accs = [r["acc"] for r in rr]
            diff = f"{statistics.mean(accs) - statistics.mean(dense):+.4f}" if dense else "no dense"
            epochs = split_recipe(recipe)[1]
            same_ft = [r["acc"] for r in mine if r["recipe"] == f"dense_ft{epochs}"]
            if epochs is not None and same_ft and recipe != f"dense_ft{epochs}":
                # a longer-fine-tuned row against the dense model fine-tuned as long
                gap = statistics.mean(accs) - statistics.mean(same_ft)
                diff = f"{gap:+.4f} vs dense_ft{epochs}"
            seeds = ",".join(str(r["seed"]) for r in rr)
            paired = f"{statistics.mean(r['acc'] - r['dense_acc_after_training'] for r in rr):+.4f}"
            if split_recipe(recipe)[0] == "dense":
                vs = "" if recipe == "dense" else diff  # dense_ftN: what the longer run buys
                lines.append(
                    f"| {recipe} | {seeds} | {mean_std(accs)} | {vs} | {paired} | | | | 1x | |"
                )
                continue
            first = rr[0]
            ratios = ", ".join(f"{x['layer']} {x['ratio']:,.0f}x" for x in first["layers"])
            errs = ", ".join(
                f"{x['fit_relative_error']:.2f}{'d' if x['fit_discarded'] else ''}"
                for x in first["layers"]
                if x["fit_relative_error"] is not None
            )
            lines.append(
                f"| {recipe} | {seeds} | {mean_std(accs)} | {diff} | {paired} | "
                f"{mean_std([r['acc_after_fit'] for r in rr])} | {ratios} | "
                f"{first['compressed_ratio']:,.0f}x | {first['model_ratio']:,.1f}x | {errs} |"
            )
        lines.append("")
    lines += [
        "Vs dense mean: against the `dense` rows, or for a `_ftN` row against the `dense_ftN` "
        "rows when there are some (the same fine-tuning). "
        "Fit errors: relative error of each layer's layer-wise fit (seed of the first run; "
        "`d`: discarded by compress's rule, error >= 0.9). Vs its own dense model: the mean "
        "over seeds of each row's accuracy minus that of the trained dense model it started "
        "from (before the dense row's own fine-tuning). The trained dense model is cached per "
        "machine, not committed, and a retrain on another machine is not bit-identical "
        "(VGG-16-32 seed 0: 0.9308, retrained on 2026-12-06: 0.9321), so rows of one seed "
        "can start from different dense models: this column pairs each row with its own.",
        "",
        END,
    ]
    return "\n".join(lines)


def _csv(
    text: str,
    valid: tuple[str, ...],
    flag: str,
    p: argparse.ArgumentParser,
    accepts: Callable[[str], bool] | None = None,
    hint: str = "",
) -> list[str]:
    """Split a comma-separated flag value; each item must satisfy ``accepts`` (default:
    be one of ``valid``), else exit with the flag, the bad item and the valid ones."""
    ok = accepts or valid.__contains__
    out = [x for x in text.split(",") if x]
    for x in out:
        if not ok(x):
            p.error(f"unknown {flag} value {x!r}; valid: {', '.join(valid)}{hint}")
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="alexnet32,vgg16_32", help="comma-separated")
    p.add_argument(
        "--recipes", default=",".join(RECIPES), help=f"comma-separated: {', '.join(RECIPES)}"
    )
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--epochs", type=int, default=3, help="end-to-end dense training epochs")
    p.add_argument("--ft-epochs", type=int, default=1, help="fine-tuning epochs (every row)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-4, help="dense training LR (Adam, cosine)")
    p.add_argument("--ft-lr", type=float, default=3e-4, help="fine-tuning LR of dense params")
    p.add_argument("--ft-batch-size", type=int, default=128)
    p.add_argument("--core-lr", type=float, default=3e-2, help="fine-tuning LR of ADNTN cores")
    p.add_argument("--fit-steps", type=int, default=100)
    p.add_argument("--calibration", type=int, default=256, help="calibration images")
    p.add_argument("--amp", choices=("bf16", "none"), default="bf16")
    p.add_argument("--threads", type=int, default=1)
    add_allow_slow_bf16(p)
    p.add_argument("--out", type=Path, default=HERE / "results" / "compression.json")
    p.add_argument("--readme", type=Path, default=HERE / "README.md")
    p.add_argument("--render", action="store_true", help="only rewrite the README table")
    args = p.parse_args(argv)
    args.models = _csv(args.models, MODELS, "--models", p)
    args.recipes = _csv(
        args.recipes,
        RECIPES,
        "--recipes",
        p,
        accepts=valid_recipe,
        hint=f" (each optionally suffixed _ftN, 1 <= N <= {MAX_FT})",
    )
    for recipe in args.recipes:
        if not any(has_recipe(name, recipe) for name in args.models):
            p.error(
                f"--recipes {recipe}: no recipe {recipe!r} for --models "
                f"{','.join(args.models)} (shipped: {', '.join(list_recipes())})"
            )
    try:
        args.seeds = [int(s) for s in args.seeds.split(",") if s]
    except ValueError:
        p.error(f"--seeds must be comma-separated integers, got {args.seeds!r}")
    return args


def protocol_text(args: argparse.Namespace) -> str:
    return (
        f"dense model trained end to end {args.epochs} epoch(s) with adntn_export.training.train "
        f"(Adam LR {args.lr}, cosine decay, batch {args.batch_size}, {args.amp} autocast, no "
        "augmentation; VGG-16-32 with BatchNorm); then the dense baseline and every ADNTN "
        f"model fine-tuned end to end {args.ft_epochs} epoch(s) the same way (dropout off, "
        f"batch {args.ft_batch_size}, Adam LR {args.ft_lr} dense parameters / {args.core_lr} "
        "ADNTN cores, cosine decay, CE + 0.5 KD at T=4 from the trained dense model); ADNTN "
        f"layers fitted first (init='svd', {args.fit_steps} Adam steps, activation-aware on "
        f"{args.calibration} calibration images; a fit with weight error >= 0.9 and error on "
        "those inputs >= 0.5 is discarded for the Kaiming-scale initialisation); biases "
        "generated; *_linear rows: the same recipe with identity activations; *_ftN rows: "
        "the same row fine-tuned N epochs; test accuracy in float32 on 10,000 images"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    protocol = protocol_text(args)
    data: dict = {"protocol": protocol, "rows": {}}
    if args.out.exists():
        old = json.loads(args.out.read_text())
        if old.get("protocol") == protocol:
            data = old
        elif not args.render:
            log(f"{args.out} holds another protocol: its rows are not mixed in (kept in git)")
    if args.render:
        write_readme(args.readme, markdown(data), START, END)
        return 0
    torch.set_num_threads(args.threads)
    command = "PYTHONPATH=.:runtimes:models python " + " ".join(
        [sys.argv[0], *(argv if argv is not None else sys.argv[1:])]
    )
    train_data, test_data = load_split("train"), load_split("test")
    failed = 0
    # seed-major: a whole first seed of the table before the second
    for seed in args.seeds:
        for name in args.models:
            for recipe in args.recipes:
                key = f"{name}/{recipe}/s{seed}"
                if key in data["rows"]:
                    log(f"{key}: cached, skipped")
                    continue
                if not has_recipe(name, recipe):
                    log(f"{key}: no recipe {name}_{recipe} shipped, skipped")
                    continue
                try:  # before any training: its fine-tuning runs under --amp too
                    check_bf16_speed(args.amp, args.allow_slow_bf16, flag="--amp")
                except SlowBF16Error as exc:
                    return refuse(exc)
                try:
                    row = run_row(name, recipe, seed, args, train_data, test_data)
                except Exception as exc:  # reported; the other rows still run
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
                )
                if row["acc"] < CHANCE_BELOW:  # kept (it is what the protocol gave), not success
                    log(f"{key}: FAILED: test accuracy {row['acc']:.4f} is at chance (10 classes)")
                    failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
