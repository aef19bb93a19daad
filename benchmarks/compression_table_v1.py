"""Compression table v1 (one seed, its own training loop): kept to reproduce the one-seed
table (``results/compression_v1_one_seed.json``) and ``finetune_sweep.py``; the current table
is ``compression_table.py``.

Protocol (the same for every row of one model):

1. Train the dense model end to end (``--epochs``, Adam, cosine LR, batch
   ``--batch-size``, seed ``--seed``, bf16 autocast, no augmentation) on the Fashion-MNIST
   training set (28x28 gray, zero-padded to 32x32 and repeated to RGB). The trained model
   is cached in ``--cache`` under a key holding every one of those settings.
2. Dense baseline: fine-tune a copy end to end for ``--ft-epochs`` (dropout off,
   cross-entropy + distillation from the trained dense model's logits, Adam with one LR
   for the trunk, one for the classifier and one for ADNTN cores, cosine decay).
3. For each topology: compress the layers of the recipe ``<model>_<network>`` (conv and
   fully connected; ``bias='generated'``, so every stored number counts) in a copy of the
   trained model, fit each layer to its dense weights (activation-aware, calibration
   inputs from training images), then fine-tune exactly as in step 2.

Test accuracy is measured in float32 on the 10,000 test images. Writes
``benchmarks/results/compression.json`` and the table between the markers in
``benchmarks/README.md``. Usage (the full protocol)::

    PYTHONPATH=.:runtimes:models python benchmarks/compression_table_v1.py
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from adntn_export import ADNTNLayer, compression_report
from adntn_export.compress import compress, load_recipe
from adntn_models import as_tensor_dataset, get_model, load_fashion_mnist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import write_readme  # noqa: E402

HERE = Path(__file__).resolve().parent
START, END = "<!-- compression-table-v1:start -->", "<!-- compression-table-v1:end -->"


def _cosine(total, min_ratio):
    """The cosine LR factor (1 -> ``min_ratio`` over ``total`` steps) adntn train uses."""

    def factor(step):
        t = min(step, total) / total
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    return factor


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load(root, split, limit):
    images, labels = load_fashion_mnist(root, split, limit)
    ds = as_tensor_dataset(images, labels, image_size=32, channels=3)
    x, y = ds.tensors
    return x.contiguous(), y


def accuracy(logits, y):
    return float((logits.argmax(1) == y).float().mean())


def autocast(amp: str):
    """bf16 autocast on the CPU (AMX/AVX-512 BF16) or a no-op context for ``amp='none'``."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16")


def run_epochs(model, x, opt, sched, loss_fn, *, epochs, bs, seed, amp, label, every):
    """The one training loop of this benchmark: seeded shuffles, ``amp`` autocast around the
    forward pass, ``loss_fn(float32 logits, batch indices)``, a scheduler step per batch."""
    g = torch.Generator().manual_seed(seed)
    steps = epochs * ((len(x) + bs - 1) // bs)
    model.to(memory_format=torch.channels_last)
    model.train()
    step = 0
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), bs):
            idx = perm[i : i + bs]
            with autocast(amp):
                out = model(x[idx].contiguous(memory_format=torch.channels_last))
            loss = loss_fn(out.float(), idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % every == 0:
                log(f"  {label} epoch {epoch} step {step}/{steps} loss {loss.item():.4f}")
    model.to(memory_format=torch.contiguous_format)
    model.eval()


def train_dense(model, x, y, *, epochs, bs, lr, seed, amp):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((len(x) + bs - 1) // bs)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.05)
    run_epochs(
        model,
        x,
        opt,
        sched,
        lambda out, idx: F.cross_entropy(out, y[idx]),
        epochs=epochs,
        bs=bs,
        seed=seed,
        amp=amp,
        label="dense training",
        every=50,
    )


def trained_dense(name, args, x, y):
    """The dense model after end-to-end training, from ``args.cache`` when already trained.

    The cache key holds every setting that changes the trained weights, so a cached model is
    exactly what this run would train; the state loads with ``weights_only=True``.
    """
    torch.manual_seed(args.seed)
    kwargs = {"batch_norm": True} if name == "vgg16_32" else {}
    model = get_model(name, **kwargs)
    key = f"{name}-n{len(x)}-e{args.epochs}-bs{args.batch_size}-lr{args.lr}-s{args.seed}-{args.amp}"
    path = args.cache / f"{key}.pt" if args.cache else None
    if path is not None and path.exists():
        cached = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(cached["state_dict"])
        log(f"{name}: loaded the trained dense model from {path}")
        return model, cached["train_seconds"]
    log(f"{name}: training dense on {len(x)} images for {args.epochs} epoch(s)")
    t0 = time.perf_counter()
    train_dense(
        model,
        x,
        y,
        epochs=args.epochs,
        bs=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        amp=args.amp,
    )
    seconds = time.perf_counter() - t0
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".pt.tmp")
        torch.save({"state_dict": model.state_dict(), "train_seconds": seconds}, tmp)
        os.replace(tmp, path)
        log(f"{name}: cached the trained dense model in {path}")
    return model, seconds


def evaluate(model, x, y, bs=500):
    """Test accuracy in float32, eval mode (the precision the exported model runs in)."""
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(x[i : i + bs]) for i in range(0, len(x), bs)])
    return accuracy(logits, y)


@torch.no_grad()
def teacher_logits(model, x, amp, bs=500):
    """The trained dense model's logits on the training images (the distillation target)."""
    model.eval()
    out = []
    for i in range(0, len(x), bs):
        with autocast(amp):
            out.append(model(x[i : i + bs].contiguous(memory_format=torch.channels_last)).float())
    return torch.cat(out)


def param_groups(model, *, lr, trunk_lr, core_lr):
    """Adam groups: ADNTN cores, the rest of the classifier, and the rest of the trunk."""
    core = {id(p) for m in model.modules() if isinstance(m, ADNTNLayer) for p in m.parameters()}
    head = {id(p) for p in model.classifier.parameters()}
    groups = {"cores": ([], core_lr), "classifier": ([], lr), "trunk": ([], trunk_lr)}
    for p in model.parameters():
        kind = "cores" if id(p) in core else "classifier" if id(p) in head else "trunk"
        groups[kind][0].append(p)
    return [{"params": ps, "lr": rate, "name": k} for k, (ps, rate) in groups.items() if ps]


def finetune(model, x, y, teacher, args, *, label, T=4.0, alpha=0.5):
    """End-to-end fine-tuning, identical for the dense baseline and every ADNTN model."""
    torch.manual_seed(args.seed)
    for m in model.modules():  # no dropout while fine-tuning (same for every row)
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    opt = torch.optim.Adam(
        param_groups(model, lr=args.ft_lr, trunk_lr=args.ft_trunk_lr, core_lr=args.core_lr)
    )
    bs = args.ft_batch_size
    steps = max(1, args.ft_epochs * ((len(x) + bs - 1) // bs))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _cosine(steps, 0.02))

    def loss_fn(out, idx):
        ce = F.cross_entropy(out, y[idx])
        kd = F.kl_div(
            F.log_softmax(out / T, 1),
            F.log_softmax(teacher[idx] / T, 1),
            log_target=True,
            reduction="batchmean",
        )
        return (1 - alpha) * ce + alpha * T * T * kd

    run_epochs(
        model,
        x,
        opt,
        sched,
        loss_fn,
        epochs=args.ft_epochs,
        bs=bs,
        seed=args.seed,
        amp=args.amp,
        label=f"{label} fine-tuning",
        every=100,
    )


def layer_rows(model, cmodel):
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
                "network": lr_.network,
                "bond_dims": list(lr_.bond_dims),
                "num_sites": cmodel.adntn_layer_configs[lr_.name]["num_sites"],
                "dense_params": lr_.dense_params,
                "stored_params": lr_.stored_params,
                "ratio": lr_.ratio,
                "dense_weight_params": lr_.dense_weight_params,
                "stored_weight_params": lr_.stored_weight_params,
                "weight_ratio": lr_.weight_ratio,
                "fit_relative_error": None if fit is None else fit.relative_error,
                "fit_discarded": None if fit is None else bool(fit.discarded),
            }
        )
    return rows, rep


def run_model(name, args, xtr, ytr, xte, yte):
    t0 = time.perf_counter()
    xtrain, ytrain = xtr[: args.train_limit], ytr[: args.train_limit]
    model, t_train = trained_dense(name, args, xtrain, ytrain)
    model.eval()
    if args.dense_only:
        return None
    xft, yft = xtr[: args.ft_limit], ytr[: args.ft_limit]
    acc_trained = evaluate(model, xte, yte)
    log(f"{name}: dense after end-to-end training: test accuracy {acc_trained:.4f}")
    teacher = teacher_logits(model, xft, args.amp)
    result = {
        "dense_params_total": sum(p.numel() for p in model.parameters()),
        "train_images": len(xtrain),
        "ft_images": len(xft),
        "test_images": len(xte),
        "dense_acc_after_training": acc_trained,
        "dense_train_seconds": t_train,
    }
    dense = copy.deepcopy(model)
    t1 = time.perf_counter()
    finetune(dense, xft, yft, teacher, args, label=f"{name}/dense")
    result["dense_acc"] = evaluate(dense, xte, yte)
    result["dense_ft_seconds"] = time.perf_counter() - t1
    log(f"{name}: dense baseline after fine-tuning: {result['dense_acc']:.4f}")
    del dense
    result["networks"] = {}
    for net in args.networks:
        t2 = time.perf_counter()
        recipe = f"{name}_{net}"
        cmodel = copy.deepcopy(model)
        torch.manual_seed(args.seed)
        compress(
            cmodel,
            recipe=recipe,
            fit_steps=args.fit_steps,
            calibration=xtr[: args.calibration],
            max_calibration_rows=args.calibration,
            verbose=True,
        )
        acc_fit = evaluate(cmodel, xte, yte)
        log(f"{name}/{net}: after layer-wise fit: test accuracy {acc_fit:.4f}")
        finetune(cmodel, xft, yft, teacher, args, label=f"{name}/{net}")
        acc = evaluate(cmodel, xte, yte)
        rows, rep = layer_rows(model, cmodel)
        result["networks"][net] = {
            "recipe": load_recipe(recipe),
            "acc_after_fit": acc_fit,
            "acc": acc,
            "layers": rows,
            "compressed_ratio": rep.total_ratio,
            "compressed_weight_ratio": rep.weight_ratio,
            "model_ratio": rep.model_ratio,
            "seconds": time.perf_counter() - t2,
        }
        log(
            f"{name}/{net}: test accuracy {acc:.4f} (dense {result['dense_acc']:.4f}); "
            + ", ".join(f"{r['layer']} {r['ratio']:,.0f}x" for r in rows)
        )
    result["wall_seconds"] = time.perf_counter() - t0
    return result


def markdown(data):
    lines = [
        START,
        "",
        f"Protocol: {data['protocol']}. Wall time: {data['wall_seconds'] / 60:.1f} min in all.",
        "",
    ]
    head = (
        "| network | layer | shape | bond / sites | dense params | stored params "
        "| ratio (with bias) | weight-only ratio | fit rel. error | test acc (vs dense) |"
    )
    for name, res in data["models"].items():
        lines += [
            f"### {name}",
            "",
            f"Dense baseline: test accuracy **{res['dense_acc']:.4f}** (after end-to-end "
            f"training: {res['dense_acc_after_training']:.4f}; {res['dense_params_total']:,} "
            f"parameters; trained on {res['train_images']:,} images, fine-tuned on "
            f"{res['ft_images']:,}, tested on {res['test_images']:,}).",
            "",
            f"Command: `{res['command']}`  ",
            f"Machine: {res['machine']}  ",
            f"Wall time: {res['wall_seconds'] / 60:.1f} min",
            "",
            head,
            "|---|---|---|---|---:|---:|---:|---:|---:|---|",
        ]
        for net, nr in res["networks"].items():
            for i, row in enumerate(nr["layers"]):
                acc = ""
                if i == 0:
                    acc = f"**{nr['acc']:.4f}** ({nr['acc'] - res['dense_acc']:+.4f})"
                err = row["fit_relative_error"]
                fit = "" if err is None else f"{err:.3f}"
                if row.get("fit_discarded"):
                    fit += " (discarded)"
                shape = "x".join(str(d) for d in row["shape"])
                lines.append(
                    f"| {net} | {row['layer']} | {shape} | {max(row['bond_dims'])} / "
                    f"{row['num_sites']} | {row['dense_params']:,} | {row['stored_params']:,} | "
                    f"{row['ratio']:,.0f}x | {row['weight_ratio']:,.0f}x | {fit} | {acc} |"
                )
            lines.append(
                f"| {net} | all compressed | | | | | {nr['compressed_ratio']:,.0f}x | "
                f"{nr['compressed_weight_ratio']:,.0f}x | | after fit only: "
                f"{nr['acc_after_fit']:.4f}; whole model {nr['model_ratio']:,.1f}x |"
            )
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (``--networks``/``--models`` split into lists and checked)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--models", default="alexnet32,vgg16_32", help="comma-separated: alexnet32, vgg16_32"
    )
    p.add_argument("--networks", default="ttn,attn,mera", help="comma-separated: ttn, attn, mera")
    p.add_argument(
        "--root", default="/usr/share/datasets/fashion-mnist", help="Fashion-MNIST IDX directory"
    )
    p.add_argument("--epochs", type=int, default=3, help="end-to-end dense training epochs")
    p.add_argument(
        "--ft-epochs", type=int, default=1, help="end-to-end fine-tuning epochs (every row)"
    )
    p.add_argument(
        "--train-limit",
        type=int,
        default=None,
        help="training images for the dense model (default all 60k)",
    )
    p.add_argument(
        "--ft-limit",
        type=int,
        default=None,
        help="training images used for fine-tuning (default all 60k)",
    )
    p.add_argument("--test-limit", type=int, default=None, help="test images (default all 10k)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-4, help="dense training LR (Adam, cosine)")
    p.add_argument(
        "--ft-lr", type=float, default=3e-4, help="fine-tuning LR of the classifier (Adam)"
    )
    p.add_argument(
        "--ft-trunk-lr", type=float, default=1e-4, help="fine-tuning LR of the trunk (Adam)"
    )
    p.add_argument("--ft-batch-size", type=int, default=128)
    p.add_argument(
        "--core-lr", type=float, default=3e-2, help="fine-tuning LR of ADNTN cores (Adam)"
    )
    p.add_argument("--fit-steps", type=int, default=100)
    p.add_argument(
        "--calibration",
        type=int,
        default=256,
        help="calibration images/rows for the activation-aware fit",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--amp",
        choices=("bf16", "none"),
        default="bf16",
        help="autocast for training and fine-tuning (bf16 on the CPU, or none for float32)",
    )
    p.add_argument(
        "--cache",
        type=Path,
        default=HERE / "results" / "cache",
        help="directory of trained dense models, keyed by every training setting",
    )
    p.add_argument(
        "--dense-only", action="store_true", help="only train (and cache) the dense models"
    )
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", type=Path, default=HERE / "results" / "compression_v1_one_seed.json")
    p.add_argument("--readme", type=Path, default=HERE / "README.md")
    p.add_argument(
        "--render", action="store_true", help="only rewrite the README table from --out's JSON"
    )
    args = p.parse_args(argv)
    args.networks = [n for n in args.networks.split(",") if n]
    for n in args.networks:
        if n not in ("ttn", "attn", "mera"):
            p.error(f"unknown network {n!r}; valid: ttn, attn, mera")
    args.models = [m for m in args.models.split(",") if m]
    for m in args.models:
        if m not in ("alexnet32", "vgg16_32"):
            p.error(f"unknown model {m!r}; valid: alexnet32, vgg16_32")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.render:
        write_readme(args.readme, markdown(json.loads(args.out.read_text())), START, END)
        return 0
    models = args.models
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    xtr, ytr = load(args.root, "train", None)
    xte, yte = load(args.root, "test", args.test_limit)
    log(f"data: train {tuple(xtr.shape)}, test {tuple(xte.shape)}")
    command = "PYTHONPATH=.:runtimes:models python " + " ".join(
        [sys.argv[0], *(argv if argv is not None else sys.argv[1:])]
    )
    machine = (
        f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__} ({args.threads} threads), "
        f"Python {platform.python_version()}; load average at the start "
        + "/".join(f"{v:.2f}" for v in os.getloadavg())
    )
    protocol = (
        f"dense model trained end to end {args.epochs} epoch(s) (Adam LR {args.lr}, cosine "
        f"decay, batch {args.batch_size}, seed {args.seed}, {args.amp} autocast, no "
        "augmentation; VGG-16-32 with BatchNorm); then the dense baseline and every ADNTN "
        f"model fine-tuned end to end {args.ft_epochs} epoch(s) the same way (dropout off, "
        f"batch {args.ft_batch_size}, Adam LR {args.ft_trunk_lr} trunk / {args.ft_lr} "
        f"classifier / {args.core_lr} ADNTN cores, cosine decay, CE + 0.5 KD at T=4 from the "
        f"trained dense model); ADNTN layers fitted first ({args.fit_steps} Adam steps, "
        f"activation-aware on {args.calibration} calibration images; a fit with relative "
        "error >= 0.9 is discarded for the Kaiming-scale initialisation, otherwise rescaled "
        "to the dense weight's norm); biases generated; test accuracy in float32"
    )
    # Models run earlier under the same protocol (e.g. one --models at a time) are kept;
    # a file written under another protocol is replaced, never mixed into one table.
    data = {}
    if args.out.exists():
        try:
            data = json.loads(args.out.read_text())
        except json.JSONDecodeError:
            data = {}
        if data.get("protocol") != protocol:
            log(f"{args.out} was written under another protocol: starting a new table")
            data = {}
    data["protocol"] = protocol
    data.setdefault("models", {})
    for m in models:
        result = run_model(m, args, xtr, ytr, xte, yte)
        if result is None:
            continue
        result["command"], result["machine"] = command, machine
        data["models"][m] = result
        data["wall_seconds"] = sum(r["wall_seconds"] for r in data["models"].values())
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, args.out)
        write_readme(args.readme, markdown(data), START, END)
        log(f"wrote {args.out} and {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
