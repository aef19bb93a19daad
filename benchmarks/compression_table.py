"""Compression table: AlexNet-32 and VGG-16-32 on full Fashion-MNIST, dense vs TTN/aTTN/MERA.

Protocol (the same for every row of one model):

1. Train the dense model end to end (``--epochs``, SGD + momentum, one-cycle LR,
   seed ``--seed``, no augmentation) on the Fashion-MNIST training set
   (28x28 gray, zero-padded to 32x32 and repeated to RGB).
2. Freeze the trunk (``features`` + ``avgpool``) and cache its output for the training
   set (first ``--ft-limit`` images) and the full 10,000-image test set.
3. Dense baseline: fine-tune a copy of the trained classifier for ``--ft-epochs`` on the
   cached features (cross-entropy + distillation from the trained dense classifier's
   logits, Adam, cosine LR).
4. For each topology: compress fc6, fc7, fc8 of a copy with the recipe
   ``<model>_<network>`` (``bias='generated'``: every stored number counts), fit each
   layer to the dense weights (activation-aware, calibration inputs from training images),
   then fine-tune the classifier exactly as in step 3.

Writes ``benchmarks/results/compression.json`` and the table between the markers in
``benchmarks/README.md``. Usage::

    PYTHONPATH=.:runtimes:models python benchmarks/compression_table.py --epochs 1
"""

from __future__ import annotations

import argparse
import copy
import json
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

HERE = Path(__file__).resolve().parent
START, END = "<!-- compression-table:start -->", "<!-- compression-table:end -->"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load(root, split, limit):
    images, labels = load_fashion_mnist(root, split, limit)
    ds = as_tensor_dataset(images, labels, image_size=32, channels=3)
    x, y = ds.tensors
    return x.contiguous(), y


def trunk(model, x):
    return torch.flatten(model.avgpool(model.features(x)), 1)


@torch.no_grad()
def batched(fn, x, bs=500):
    return torch.cat([fn(x[i : i + bs]) for i in range(0, len(x), bs)])


def accuracy(logits, y):
    return float((logits.argmax(1) == y).float().mean())


def train_dense(model, x, y, *, epochs, bs, lr, seed):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((len(x) + bs - 1) // bs)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.05)
    model.train()
    step = 0
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), bs):
            idx = perm[i : i + bs]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 50 == 0:
                log(f"  dense epoch {epoch} step {step}/{steps} loss {loss.item():.4f}")


def finetune_classifier(
    clf, feats, y, teacher_logits, *, epochs, bs, lr, core_lr, seed, T=4.0, alpha=0.5
):
    g = torch.Generator().manual_seed(seed)
    for m in clf.modules():  # no dropout while fine-tuning (same for every row)
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    core = [p for m in clf.modules() if isinstance(m, ADNTNLayer) for p in m.parameters()]
    core_ids = {id(p) for p in core}
    rest = [p for p in clf.parameters() if id(p) not in core_ids]
    groups = [{"params": rest, "lr": lr}] + ([{"params": core, "lr": core_lr}] if core else [])
    opt = torch.optim.Adam(groups, lr=lr)
    steps = max(1, epochs * ((len(feats) + bs - 1) // bs))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.02)
    clf.train()
    if not rest and not core:
        return
    for _ in range(epochs):
        perm = torch.randperm(len(feats), generator=g)
        for i in range(0, len(feats), bs):
            idx = perm[i : i + bs]
            out = clf(feats[idx])
            ce = F.cross_entropy(out, y[idx])
            kd = F.kl_div(
                F.log_softmax(out / T, 1),
                F.log_softmax(teacher_logits[idx] / T, 1),
                log_target=True,
                reduction="batchmean",
            )
            loss = (1 - alpha) * ce + alpha * T * T * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    clf.eval()


def run_model(name, args, xtr, ytr, xte, yte):
    t0 = time.perf_counter()
    torch.manual_seed(args.seed)
    kwargs = {"batch_norm": True} if name == "vgg16_32" else {}
    model = get_model(name, **kwargs)
    xtrain, ytrain = xtr[: args.train_limit], ytr[: args.train_limit]
    log(f"{name}: training dense on {len(xtrain)} images for {args.epochs} epoch(s)")
    train_dense(
        model, xtrain, ytrain, epochs=args.epochs, bs=args.batch_size, lr=args.lr, seed=args.seed
    )
    model.eval()
    t_train = time.perf_counter() - t0
    log(f"{name}: caching trunk features")
    ftr = batched(lambda b: trunk(model, b), xtr[: args.ft_limit])
    fte = batched(lambda b: trunk(model, b), xte)
    yft = ytr[: args.ft_limit]
    with torch.no_grad():
        teacher_tr = model.classifier(ftr)
        acc_trained = accuracy(model.classifier(fte), yte)
    log(f"{name}: dense after end-to-end training: test accuracy {acc_trained:.4f}")
    result = {
        "dense_params_total": sum(p.numel() for p in model.parameters()),
        "train_images": len(xtrain),
        "ft_images": len(ftr),
        "test_images": len(fte),
        "dense_acc_after_training": acc_trained,
        "dense_train_seconds": t_train,
    }
    clf = copy.deepcopy(model.classifier)
    t1 = time.perf_counter()
    finetune_classifier(
        clf,
        ftr,
        yft,
        teacher_tr,
        epochs=args.ft_epochs,
        bs=args.ft_batch_size,
        lr=args.ft_lr,
        core_lr=args.core_lr,
        seed=args.seed,
    )
    with torch.no_grad():
        result["dense_acc"] = accuracy(clf(fte), yte)
    result["dense_ft_seconds"] = time.perf_counter() - t1
    log(f"{name}: dense baseline after classifier fine-tuning: {result['dense_acc']:.4f}")
    fc_alias = {v: k for k, v in model.fc_layers.items()}
    result["networks"] = {}
    for net in args.networks:
        t2 = time.perf_counter()
        recipe = f"{name}_{net}"
        cmodel = copy.deepcopy(model)
        torch.manual_seed(args.seed)
        compress(
            cmodel,
            recipe=recipe,
            match_norm=True,
            fit_steps=args.fit_steps,
            calibration=xtr[: args.calibration],
            max_calibration_rows=args.calibration,
            verbose=True,
        )
        cmodel.eval()
        with torch.no_grad():
            acc_fit = accuracy(batched(cmodel.classifier, fte), yte)
        log(f"{name}/{net}: after layer-wise fit: test accuracy {acc_fit:.4f}")
        finetune_classifier(
            cmodel.classifier,
            ftr,
            yft,
            teacher_tr,
            epochs=args.ft_epochs,
            bs=args.ft_batch_size,
            lr=args.ft_lr,
            core_lr=args.core_lr,
            seed=args.seed,
        )
        with torch.no_grad():
            acc = accuracy(batched(cmodel.classifier, fte), yte)
        rep = compression_report(cmodel)
        layers = []
        for lr_ in rep.layers:
            fit = cmodel.adntn_fit_report.get(lr_.name)
            layers.append(
                {
                    "layer": fc_alias.get(lr_.name, lr_.name),
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
                }
            )
        result["networks"][net] = {
            "recipe": load_recipe(recipe),
            "acc_after_fit": acc_fit,
            "acc": acc,
            "layers": layers,
            "classifier_ratio": rep.total_ratio,
            "classifier_weight_ratio": rep.weight_ratio,
            "model_ratio": rep.model_ratio,
            "seconds": time.perf_counter() - t2,
        }
        log(
            f"{name}/{net}: test accuracy {acc:.4f} (dense {result['dense_acc']:.4f}); "
            + ", ".join(f"{r['layer']} {r['ratio']:,.0f}x" for r in layers)
        )
    result["wall_seconds"] = time.perf_counter() - t0
    return result


def markdown(data):
    lines = [
        START,
        "",
        f"Command: `{data['command']}`  ",
        f"Machine: {data['machine']}  ",
        f"Wall time: {data['wall_seconds'] / 60:.1f} min  ",
        f"Protocol: {data['protocol']}",
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
            f"parameters; trained on {res['train_images']:,} images, classifier fine-tuned on "
            f"{res['ft_images']:,} cached feature vectors, tested on {res['test_images']:,}).",
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
                shape = f"{row['shape'][0]}x{row['shape'][1]}"
                lines.append(
                    f"| {net} | {row['layer']} | {shape} | {max(row['bond_dims'])} / "
                    f"{row['num_sites']} | {row['dense_params']:,} | {row['stored_params']:,} | "
                    f"{row['ratio']:,.0f}x | {row['weight_ratio']:,.0f}x | {fit} | {acc} |"
                )
            lines.append(
                f"| {net} | classifier | | | | | {nr['classifier_ratio']:,.0f}x | "
                f"{nr['classifier_weight_ratio']:,.0f}x | | after fit only: "
                f"{nr['acc_after_fit']:.4f} |"
            )
        lines.append("")
    lines.append(END)
    return "\n".join(lines)


def write_readme(path, block):
    text = path.read_text() if path.exists() else "# Benchmarks\n\n## Compression table\n\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--models", default="alexnet32,vgg16_32", help="comma-separated: alexnet32, vgg16_32"
    )
    p.add_argument("--networks", default="ttn,attn,mera", help="comma-separated: ttn, attn, mera")
    p.add_argument(
        "--root", default="/usr/share/datasets/fashion-mnist", help="Fashion-MNIST IDX directory"
    )
    p.add_argument("--epochs", type=int, default=1, help="end-to-end dense training epochs")
    p.add_argument(
        "--ft-epochs", type=int, default=2, help="classifier fine-tuning epochs (all rows)"
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
        help="training images whose features are cached for fine-tuning",
    )
    p.add_argument("--test-limit", type=int, default=None, help="test images (default all 10k)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-4, help="dense training LR (Adam, cosine)")
    p.add_argument("--ft-lr", type=float, default=1e-3, help="classifier fine-tuning LR (Adam)")
    p.add_argument("--ft-batch-size", type=int, default=64)
    p.add_argument(
        "--core-lr", type=float, default=1e-2, help="fine-tuning LR of ADNTN cores (Adam)"
    )
    p.add_argument("--fit-steps", type=int, default=200)
    p.add_argument(
        "--calibration",
        type=int,
        default=256,
        help="calibration images/rows for the activation-aware fit",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", type=Path, default=HERE / "results" / "compression.json")
    p.add_argument("--readme", type=Path, default=HERE / "README.md")
    p.add_argument(
        "--render", action="store_true", help="only rewrite the README table from --out's JSON"
    )
    args = p.parse_args(argv)
    if args.render:
        write_readme(args.readme, markdown(json.loads(args.out.read_text())))
        return 0
    args.networks = [n for n in args.networks.split(",") if n]
    for n in args.networks:
        if n not in ("ttn", "attn", "mera"):
            p.error(f"unknown network {n!r}; valid: ttn, attn, mera")
    models = [m for m in args.models.split(",") if m]
    for m in models:
        if m not in ("alexnet32", "vgg16_32"):
            p.error(f"unknown model {m!r}; valid: alexnet32, vgg16_32")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()
    xtr, ytr = load(args.root, "train", None)
    xte, yte = load(args.root, "test", args.test_limit)
    log(f"data: train {tuple(xtr.shape)}, test {tuple(xte.shape)}")
    data = {}
    if args.out.exists():
        try:
            data = json.loads(args.out.read_text())
        except json.JSONDecodeError:
            data = {}
    data.setdefault("models", {})
    data["command"] = "PYTHONPATH=.:runtimes:models python " + " ".join(
        [sys.argv[0], *(argv if argv is not None else sys.argv[1:])]
    )
    data["machine"] = (
        f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__} ({args.threads} threads), "
        f"Python {platform.python_version()}; shared with other jobs while it ran"
    )
    data["protocol"] = (
        f"dense model trained end to end {args.epochs} epoch(s) (Adam LR {args.lr}, cosine "
        f"decay, batch {args.batch_size}, seed {args.seed}, no augmentation; VGG-16-32 with "
        "BatchNorm); trunk frozen; classifier fine-tuned "
        f"{args.ft_epochs} epoch(s) on cached trunk features (dropout off, batch "
        f"{args.ft_batch_size}, Adam LR {args.ft_lr} for dense parameters and {args.core_lr} "
        "for ADNTN cores, cosine decay, CE + 0.5 KD at T=4 from the trained dense classifier) "
        "for the dense baseline and every ADNTN; ADNTN layers fitted first "
        f"({args.fit_steps} Adam steps, activation-aware on {args.calibration} calibration "
        "images, then rescaled to the dense weight's norm); biases generated"
    )
    for m in models:
        data["models"][m] = run_model(m, args, xtr, ytr, xte, yte)
        data["wall_seconds"] = time.perf_counter() - t0
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, args.out)
        write_readme(args.readme, markdown(data))
        log(f"wrote {args.out} and {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
