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
import functools
import os
import platform
import statistics
import sys
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


# bf16 autocast slower than float32 by more than this: the CPU has no native bf16 kernels.
BF16_SLOWDOWN_LIMIT = 3.0
ALLOW_SLOW_BF16 = "--allow-slow-bf16"


class SlowBF16Error(RuntimeError):
    """bf16 autocast on this CPU is far slower than float32 (see :func:`bf16_slowdown`)."""


@functools.cache
def bf16_slowdown() -> tuple[float, float]:
    """Measured seconds of one training step (forward and backward) of a small convolution
    block in float32 and under CPU bf16 autocast, at torch's current thread count (median of
    3 steps after a warm-up each; about a second in all).

    The protocol trains under bf16 autocast; the machines of the committed rows trained a
    dense VGG-16-32 in 25-65 min with it (``dense_train_seconds`` in
    ``results/compression.json``). A CPU without native bf16 kernels (torch's capability
    ``AVX2``) takes slow paths: measured 2026-12-08 on a 2-core AVX2 EPYC, one VGG-16-32
    training step at batch 128 took 150-190 s under bf16 autocast against 5.7-6.1 s in
    float32, and two dense trainings had not reached their first checkpoint (100 steps) after
    96 minutes. This probe there: 7-12 ms in float32 vs 165-296 ms in bf16."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(32, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1),
        nn.Flatten(),
        nn.Linear(32 * 16 * 16, 10),
    )
    x = torch.randn(16, 32, 16, 16)

    def step(bf16: bool) -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = net(x)
        out.float().sum().backward()
        return time.perf_counter() - t0

    fp32, bf16 = (statistics.median([step(b) for _ in range(4)][1:]) for b in (False, True))
    return fp32, bf16


def check_bf16_speed(amp: str, allow_slow: bool = False, flag: str | None = None) -> None:
    """Raise :class:`SlowBF16Error` when ``amp == "bf16"`` and this CPU runs bf16 autocast
    more than :data:`BF16_SLOWDOWN_LIMIT` times slower than float32, unless ``allow_slow``.
    ``flag``: the CLI flag that chose ``amp``, named in the error (``--amp``); ``None`` where
    the script has no such flag (the protocol's bf16)."""
    if amp != "bf16" or allow_slow:
        return
    fp32, bf16 = bf16_slowdown()
    if bf16 > BF16_SLOWDOWN_LIMIT * fp32:
        what = f"{flag} {amp}" if flag else "bf16 autocast (the protocol's)"
        raise SlowBF16Error(
            f"{what}: this CPU runs bf16 autocast {bf16 / fp32:.0f}x slower than float32 "
            f"(measured: a small convolution block's training step {1e3 * bf16:.1f} ms vs "
            f"{1e3 * fp32:.1f} ms; torch's CPU capability "
            f"{torch.backends.cpu.get_cpu_capability()}): every training step would be "
            "about that many times slower. Run it on a CPU where bf16 is not slower than "
            "float32 (the committed rows' machines trained a dense VGG-16-32 in 25-65 min), "
            f"or pass {ALLOW_SLOW_BF16} to train here anyway"
            + (f" ({flag} none is another protocol: its rows are not mixed in)" if flag else "")
        )


def add_allow_slow_bf16(p: argparse.ArgumentParser) -> None:
    """The flag that lets a script train under bf16 autocast on a CPU without fast bf16."""
    p.add_argument(
        ALLOW_SLOW_BF16,
        action="store_true",
        help="train under bf16 autocast even where this CPU runs it far slower than float32 "
        "(refused by default: no native bf16, measured at start)",
    )


def refuse(exc: SlowBF16Error) -> int:
    """Print ``exc`` as the script's error (``script.py: error: ...``, as argparse would) and
    return exit status 2."""
    print(f"{os.path.basename(sys.argv[0])}: error: {exc}", file=sys.stderr)
    return 2


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
    allow_slow_bf16: bool = False,
) -> tuple[nn.Module, float]:
    """The dense model after end-to-end training and its training seconds, cached.

    Raises:
        SlowBF16Error: it must be trained (not cached), ``amp == "bf16"`` and this CPU has no
            fast bf16 (:func:`check_bf16_speed`), unless ``allow_slow_bf16``.
    """
    model = new_model(name, seed)
    key = dense_key(name, len(train_data), epochs, bs, lr, seed, amp)
    path = cache / f"{key}.pt" if cache else None
    if path is not None and path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state["state_dict"])
        log(f"{name}: loaded the trained dense model from {path}")
        model.eval()
        return model, float(state["train_seconds"])
    check_bf16_speed(amp, allow_slow_bf16)
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
    add_allow_slow_bf16(p)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_split("train")
    try:
        for name in args.models.split(","):
            for seed in (int(s) for s in args.seeds.split(",")):
                trained_dense(name, data, seed=seed, allow_slow_bf16=args.allow_slow_bf16)
    except SlowBF16Error as exc:
        return refuse(exc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
