"""Fine-tuning sweep behind the compression table's choices, and bf16 vs float32 speed.

Two measurements, each printed as a table and written to ``results/finetune_sweep.json``:

1. Training throughput (images/s, median of 4 steps after one warm-up, batch 128) of the
   dense AlexNet-32 and VGG-16-32 in float32 and under bf16 autocast.
2. Short fine-tuning runs of AlexNet-32 (the trained dense model from
   ``compression_table_v1.py``'s cache, trained there first when missing): the dense model and
   TTN variants, each fine-tuned end to end exactly as in the table but on the first
   ``--ft-limit`` training images, then tested on all 10,000. The variants change one thing
   at a time: the ADNTN core learning rate, which convolutions are compressed, classifier
   capacity, the trunk learning rate.

Usage::

    PYTHONPATH=.:runtimes:models python benchmarks/finetune_sweep.py
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path

import compression_table_v1 as table
import torch
import torch.nn.functional as F

from adntn_export.compress import compress
from adntn_models import get_model

HERE = Path(__file__).resolve().parent
_CLASSIFIER = {
    "fc6": {"num_sites": 8},
    "fc7": {"num_sites": 12},
    "fc8": {"bond_dim": 3, "num_sites": 6},
}
_DEFAULTS = {"bond_dim": 2, "activation": "tanh", "bias": "generated", "bias_bond_dim": 1}


def recipe(**layers):
    return {"defaults": {**_DEFAULTS, "network": "ttn"}, "layers": {**_CLASSIFIER, **layers}}


# label -> (recipe or None for the dense model, overrides of the table's fine-tuning settings)
VARIANTS = {
    "dense": (None, {}),
    "ttn classifier, core LR 3e-3": (recipe(), {"core_lr": 3e-3}),
    "ttn classifier, core LR 1e-2": (recipe(), {"core_lr": 1e-2}),
    "ttn classifier, core LR 3e-2": (recipe(), {"core_lr": 3e-2}),
    "ttn classifier, core LR 1e-1": (recipe(), {"core_lr": 1e-1}),
    "+ conv5 bond 8, core LR 1e-2": (recipe(conv5={"bond_dim": 8}), {"core_lr": 1e-2}),
    "+ conv4, conv5 bond 6, core LR 1e-2": (
        recipe(conv4={"bond_dim": 6}, conv5={"bond_dim": 6}),
        {"core_lr": 1e-2},
    ),
    "fc6 bond 3, fc8 bond 4, core LR 1e-2": (
        recipe(fc6={"bond_dim": 3, "num_sites": 8}, fc8={"bond_dim": 4, "num_sites": 4}),
        {"core_lr": 1e-2},
    ),
    "ttn classifier, core LR 1e-2, trunk LR 3e-4": (
        recipe(),
        {"core_lr": 1e-2, "ft_trunk_lr": 3e-4},
    ),
}


def throughput(threads: int) -> list[dict]:
    rows = []
    for name in ("alexnet32", "vgg16_32"):
        for amp in ("none", "bf16"):
            torch.manual_seed(0)
            kwargs = {"batch_norm": True} if name == "vgg16_32" else {}
            model = get_model(name, **kwargs).to(memory_format=torch.channels_last)
            opt = torch.optim.Adam(model.parameters(), lr=3e-4)
            x = torch.randn(128, 3, 32, 32).contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, 10, (128,))
            times = []
            for _ in range(5):
                t = time.perf_counter()
                with table.autocast(amp):
                    out = model(x)
                loss = F.cross_entropy(out.float(), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                times.append(time.perf_counter() - t)
            ips = 128 / statistics.median(times[1:])
            rows.append({"model": name, "amp": amp, "threads": threads, "images_per_s": ips})
            print(f"{name:10s} {amp:5s} {ips:7.1f} images/s", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--ft-limit", type=int, default=20_000)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", type=Path, default=HERE / "results" / "finetune_sweep.json")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    speed = throughput(args.threads)
    # the compression table's defaults, so the cached dense model and fine-tuning match it
    base = table.parse_args([])
    xtr, ytr = table.load(args.root, "train", None)
    xte, yte = table.load(args.root, "test", None)
    model, _ = table.trained_dense("alexnet32", base, xtr, ytr)
    xft, yft = xtr[: args.ft_limit], ytr[: args.ft_limit]
    teacher = table.teacher_logits(model, xft, base.amp)
    rows = []
    for label, (spec, overrides) in VARIANTS.items():
        settings = argparse.Namespace(**{**vars(base), **overrides})
        m = copy.deepcopy(model)
        if spec is not None:
            torch.manual_seed(base.seed)
            compress(m, recipe=spec, fit=False)
        t = time.perf_counter()
        table.finetune(m, xft, yft, teacher, settings, label=label)
        acc = table.evaluate(m, xte, yte)
        rows.append(
            {
                "variant": label,
                "recipe": spec,
                "overrides": overrides,
                "acc": acc,
                "seconds": time.perf_counter() - t,
            }
        )
        print(f"{label:45s} test accuracy {acc:.4f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    data = {"ft_images": len(xft), "test_images": len(xte), "throughput": speed, "finetune": rows}
    args.out.write_text(json.dumps(data, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
