"""Trained dense zoo models for the benchmarks, trained once through the library's loop and cached.

:func:`trained_dense` trains AlexNet-32 / VGG-16-32 on full Fashion-MNIST with
:func:`adntn_export.training.train` (Adam, cosine decay, seeded, bf16 autocast around the
forward pass through :class:`Autocast`) and caches the state in ``results/cache/`` (not
committed) under a key holding every setting that changes the weights. Used by
``compression_table.py``, ``fit_vs_svd.py`` and ``frontier.py``; run it directly to train
ahead (``python benchmarks/dense_models.py --models alexnet32 --seeds 0``).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import TensorDataset

from adntn_export.training import TrainConfig, dataset_for, train
from adntn_models import get_model

HERE = Path(__file__).resolve().parent
CACHE = HERE / "results" / "cache"
FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def log(msg: str) -> None:
    """One timestamped line on stdout (the benchmarks' logs)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def machine(threads: int) -> str:
    """The machine line every result row records."""
    return (
        f"{platform.machine()} {os.cpu_count()} CPU cores, torch {torch.__version__} "
        f"({threads} threads), Python {platform.python_version()}; load average "
        + "/".join(f"{v:.2f}" for v in os.getloadavg())
    )


class Autocast(nn.Module):
    """Runs ``model`` under CPU bf16 autocast (``amp='bf16'``) and returns float32 logits,
    so :func:`adntn_export.training.train` trains in bf16 without a loop of its own."""

    def __init__(self, model: nn.Module, amp: str = "bf16") -> None:
        super().__init__()
        self.model, self.amp = model, amp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.amp == "bf16"):
            out = self.model(x)
        return out.float()


def load_split(split: str, limit: int | None = None, root: str = FASHION_MNIST) -> TensorDataset:
    """Fashion-MNIST shaped for AlexNet-32 / VGG-16-32 (32x32 RGB)."""
    return dataset_for("alexnet32", split, root=root, limit=limit)  # type: ignore[return-value]


def accuracy(model: nn.Module, data: TensorDataset, bs: int = 500) -> float:
    """Test accuracy in float32, eval mode (the precision the exported model runs in)."""
    x, y = data.tensors
    was = model.training
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + bs]).argmax(1) for i in range(0, len(x), bs)])
    model.train(was)
    return float((pred == y).float().mean())


def new_model(name: str, seed: int) -> nn.Module:
    """A freshly initialised zoo model (VGG-16-32 with BatchNorm), seeded."""
    torch.manual_seed(seed)
    return get_model(name, **({"batch_norm": True} if name == "vgg16_32" else {}))


def dense_key(name: str, n: int, epochs: int, bs: int, lr: float, seed: int, amp: str) -> str:
    """Cache key: every setting that changes the trained weights (``lib``: the library loop)."""
    return f"{name}-n{n}-e{epochs}-bs{bs}-lr{lr}-s{seed}-{amp}-lib"


def trained_dense(
    name: str,
    train_data: TensorDataset,
    *,
    seed: int,
    epochs: int = 3,
    bs: int = 128,
    lr: float = 3e-4,
    amp: str = "bf16",
    cache: Path | None = CACHE,
) -> tuple[nn.Module, float]:
    """The dense model after end-to-end training and its training seconds, cached."""
    model = new_model(name, seed)
    key = dense_key(name, len(train_data), epochs, bs, lr, seed, amp)
    path = cache / f"{key}.pt" if cache else None
    if path is not None and path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["state_dict"])
        log(f"{name}: loaded the trained dense model from {path}")
        model.eval()
        return model, float(state["train_seconds"])
    log(f"{name} seed {seed}: training dense on {len(train_data)} images for {epochs} epoch(s)")
    # Checkpoints every 100 steps (cache/<key>.ckpt/last.pt): a stopped training resumes
    # where it stopped, bit-identical to an uninterrupted run.
    ckpt = cache / f"{key}.ckpt" if cache else None
    cfg = TrainConfig(
        epochs=epochs,
        batch_size=bs,
        lr=lr,
        seed=seed,
        min_lr_ratio=0.05,
        progress=False,
        checkpoint_dir=str(ckpt) if ckpt else None,
        checkpoint_every=100,
        resume=True,
    )
    torch.manual_seed(seed)
    result = train(Autocast(model, amp), train_data, config=cfg, description=f"{name} dense")
    model.eval()
    if result.resumed_from_step is not None:
        log(f"{name} seed {seed}: resumed from step {result.resumed_from_step}")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".pt.tmp")
        torch.save({"state_dict": model.state_dict(), "train_seconds": result.seconds}, tmp)
        os.replace(tmp, path)
        log(f"{name}: cached the trained dense model in {path} ({result.seconds / 60:.1f} min)")
    return model, result.seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="alexnet32", help="comma-separated: alexnet32, vgg16_32")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_split("train")
    for name in args.models.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            trained_dense(name, data, seed=seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
