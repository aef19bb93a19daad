"""Task-aware training of (ADNTN-compressed) models: seeded, resumable, DDP-ready.

The objective of :func:`train` is

``(1 - distill_weight) * CE(student, y) + distill_weight * T^2 * KL(teacher_T || student_T)
+ reconstruction_weight * sum_l ||(W_l - W_l^dense) X_l||^2 / ||W_l^dense X_l||^2``

where the distillation term needs a dense ``teacher`` (its logits at temperature
``T``), and the activation-aware reconstruction term needs the teacher too (its
dense layers at the same module names as the student's ADNTN layers) plus
``calibration`` inputs, whose per-layer inputs ``X_l`` are captured once with
forward hooks on the teacher.

The usual flow is layer-wise fit, then end-to-end fine-tuning:
:func:`train_compressed` deep-copies a trained dense model, compresses it with
:func:`adntn_export.compress.compress` (fitting each layer to the dense weights,
activation-aware on calibration inputs), then fine-tunes it with :func:`train`
using the dense model as the teacher.

Reproducibility and resumption:

* :func:`seed_everything` seeds torch, numpy and :mod:`random` and turns on
  deterministic algorithms (``warn_only``); the shuffle order of epoch ``e`` is a
  function of ``(seed, e)`` only (a :class:`ResumableSampler`, a
  ``DistributedSampler`` that can start mid-epoch), and DataLoader workers are seeded.
* Checkpoints (``<checkpoint_dir>/last.pt``) hold the model, optimizer and
  scheduler states, every RNG state, the epoch, the step within it and the loss
  history; they are written atomically (temporary file, fsync, ``os.replace``) and
  read with ``torch.load(weights_only=True)``. ``resume=True`` continues from the
  last one, and the result is bit-identical to an uninterrupted run.
* Under ``torchrun`` (``WORLD_SIZE > 1``) the model is wrapped in
  ``DistributedDataParallel`` (gloo on CPU), each rank reads its shard, and only rank 0
  writes checkpoints and draws progress bars.
"""

from __future__ import annotations

import atexit
import copy
import math
import os
import random
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from adntn_export import checkpoint as _checkpoint
from adntn_export.checkpoint import TRAINING_FORMAT, Checkpoint, CheckpointError
from adntn_export.fitting import capture_layer_inputs
from adntn_export.layers import ADNTNLayer
from adntn_runtime.files import atomic_write

__all__ = [
    "CHECKPOINT_NAME",
    "CHECKPOINT_VERSION",
    "OPTIMIZERS",
    "RESUME_SETTINGS",
    "CheckpointError",
    "ResumeMismatchError",
    "ResumableSampler",
    "TrainConfig",
    "TrainResult",
    "check_resume",
    "evaluate",
    "load_checkpoint",
    "save_checkpoint",
    "seed_everything",
    "dataset_for",
    "train",
    "train_compressed",
]

#: File name of the training-state checkpoint inside ``checkpoint_dir``.
CHECKPOINT_NAME = "last.pt"
#: Format version stored in every checkpoint.
CHECKPOINT_VERSION = TRAINING_FORMAT
#: Valid ``TrainConfig.optimizer`` values.
OPTIMIZERS: tuple[str, ...] = ("adam", "adamw", "sgd")


@dataclass
class TrainConfig:
    """Hyper-parameters and run settings of :func:`train`.

    Attributes:
        epochs: Passes over the training set.
        batch_size: Per-process batch size.
        lr: Peak learning rate (cosine decay to ``lr * min_lr_ratio`` over the run).
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"`` (momentum 0.9, Nesterov).
        weight_decay: Weight decay.
        seed: Seeds model init (done by the caller), shuffling, dropout and workers.
        distill_weight: Weight of the distillation term (needs a teacher); 0 = off.
        temperature: Distillation temperature.
        reconstruction_weight: Weight of the activation-aware reconstruction term
            (needs a teacher and calibration inputs); 0 = off.
        num_workers: DataLoader worker processes.
        checkpoint_dir: Where ``last.pt`` goes; ``None``: no checkpoints.
        checkpoint_every: Also checkpoint every this many steps (0: at epoch ends only).
        resume: Continue from ``checkpoint_dir/last.pt`` if it exists.
        max_steps: Stop (with a checkpoint) after this many steps in total; simulates an
            interruption, or bounds a run.
        progress: Draw rich progress bars.
        deterministic: ``torch.use_deterministic_algorithms(True, warn_only=True)``.
        min_lr_ratio: Final LR as a fraction of ``lr``.
        core_lr: Learning rate of the ADNTN cores (weight and bias generators);
            ``None``: ``lr``. Tiny cores often want a larger one. A layer's own
            ``core_lr`` (a recipe key; :class:`~adntn_export.layers.ADNTNLinear`) wins.
    """

    epochs: int = 3
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    seed: int = 0
    distill_weight: float = 0.0
    temperature: float = 4.0
    reconstruction_weight: float = 0.0
    num_workers: int = 0
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0
    resume: bool = False
    max_steps: int | None = None
    progress: bool = True
    deterministic: bool = True
    min_lr_ratio: float = 0.02
    core_lr: float | None = None

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field."""
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; valid: {list(OPTIMIZERS)}")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise ValueError(f"distill_weight must be in [0, 1], got {self.distill_weight!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if self.reconstruction_weight < 0:
            raise ValueError(
                f"reconstruction_weight must be >= 0, got {self.reconstruction_weight!r}"
            )
        if self.max_steps is not None and self.max_steps < 0:
            raise ValueError(f"max_steps must be None or >= 0, got {self.max_steps!r}")


@dataclass
class TrainResult:
    """What :func:`train` did: per-step losses, per-epoch metrics, where it stopped."""

    losses: list[float] = field(default_factory=list)
    epochs: list[dict[str, float]] = field(default_factory=list)
    global_step: int = 0
    epoch: int = 0
    completed: bool = False
    resumed_from_step: int | None = None
    seconds: float = 0.0
    test_accuracy: float | None = None
    test_loss: float | None = None
    checkpoint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)


# --------------------------------------------------------------------------- seeding


def seed_everything(seed: int, *, deterministic: bool = True) -> None:
    """Seed torch, numpy and :mod:`random`; optionally turn on deterministic algorithms."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def _worker_init(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


class ResumableSampler(DistributedSampler):
    """A ``DistributedSampler`` whose epoch order depends only on ``(seed, epoch)`` and that
    can start mid-epoch (``set_start(n)`` skips this rank's first ``n`` indices)."""

    def __init__(
        self, dataset: Dataset, *, num_replicas: int = 1, rank: int = 0, seed: int = 0
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.start = 0

    def set_start(self, start: int) -> None:
        """Skip the first ``start`` indices of the current epoch (for resuming)."""
        self.start = int(start)

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start :])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)


# --------------------------------------------------------------------------- checkpoints


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
        "numpy_pos": int(np_state[2]),
        "numpy_has_gauss": int(np_state[3]),
        "numpy_cached_gaussian": float(np_state[4]),
        "python": random.getstate(),
    }


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            state["numpy_pos"],
            state["numpy_has_gauss"],
            state["numpy_cached_gaussian"],
        )
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_checkpoint(path: str | os.PathLike[str], state: Mapping[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file, fsync, ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as fh:
        torch.save(dict(state), fh)
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a training state (``last.pt``) with the one checkpoint loader
    (:func:`adntn_export.checkpoint.load_checkpoint`, ``kind="training"``); it reads like the
    stored dict (``state["epoch"]``).

    Raises:
        CheckpointError: If the file is missing, truncated or corrupt, of another kind or a
            newer format, or lacks a field.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    return _checkpoint.load_checkpoint(path, kind="training")


# --------------------------------------------------------------------------- pieces


def _dist_info() -> tuple[int, int]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    return world, rank


def _make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Parameter groups: the dense parameters at ``cfg.lr``; each ADNTN layer's cores at the
    layer's own ``core_lr`` hint, else ``cfg.core_lr``, else ``cfg.lr``."""
    core_lrs: dict[int, float] = {}
    for mod in model.modules():
        if isinstance(mod, ADNTNLayer):
            lr = mod.core_lr if mod.core_lr is not None else cfg.core_lr
            if lr is None:
                continue
            for gen in (mod.weight_generator, mod.bias_generator):
                if gen is not None:
                    core_lrs.update({id(p): lr for p in gen.parameters()})
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": [p for p in trainable if id(p) not in core_lrs]}]
    for lr in sorted(set(core_lrs.values())):
        groups.append({"params": [p for p in trainable if core_lrs.get(id(p)) == lr], "lr": lr})
    groups = [g for g in groups if g["params"]]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(
        groups, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay
    )


class _cosine:  # noqa: N801 - a picklable LR lambda (cosine from 1 to min_ratio)
    def __init__(self, total: int, min_ratio: float) -> None:
        self.total, self.min_ratio = total, min_ratio

    def __call__(self, step: int) -> float:
        t = min(step, self.total) / self.total
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def _reconstruction_targets(
    student: nn.Module, teacher: nn.Module, calibration: torch.Tensor, max_rows: int = 1024
) -> list[tuple[ADNTNLayer, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(student layer, X, dense W, ||W_d X||^2) for every ADNTN layer with a dense twin."""
    t_mods = dict(teacher.named_modules())
    pairs = []
    for name, mod in student.named_modules():
        if isinstance(mod, ADNTNLayer) and isinstance(t_mods.get(name), nn.Linear | nn.Conv2d):
            pairs.append((name, mod, t_mods[name]))
    if not pairs:
        return []
    captured = capture_layer_inputs(teacher, [name for name, _, _ in pairs], calibration)
    out = []
    for name, layer, dense in pairs:
        x = captured[name]
        if isinstance(dense, nn.Conv2d):
            cols = F.unfold(x, dense.kernel_size, dense.dilation, dense.padding, dense.stride)
            x = cols.transpose(1, 2).reshape(-1, cols.shape[1])
        else:
            x = x.reshape(-1, x.shape[-1])
        if x.shape[0] > max_rows:
            x = x[torch.linspace(0, x.shape[0] - 1, max_rows).long()]
        w = dense.weight.detach().reshape(dense.weight.shape[0], -1)
        ref = (x @ w.T).pow(2).sum().clamp_min(1e-30)
        out.append((layer, x, w, ref))
    return out


def _reconstruction_loss(
    targets: list[tuple[ADNTNLayer, torch.Tensor, torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    total = torch.zeros(())
    for layer, x, w, ref in targets:
        gen_w = layer.weight_generator.weight()
        total = total + (x @ (gen_w - w).T).pow(2).sum() / ref
    return total


def evaluate(model: nn.Module, dataset: Dataset, *, batch_size: int = 256) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``dataset`` (eval mode, no grad)."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    was = model.training
    model.eval()
    total_loss, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for x, y in loader:
            out = model(x)
            total_loss += float(F.cross_entropy(out, y, reduction="sum"))
            correct += int((out.argmax(1) == y).sum())
            n += len(y)
    model.train(was)
    if n == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    return total_loss / n, correct / n


def _progress(enabled: bool) -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )


# --------------------------------------------------------------------------- data


def dataset_for(
    model_name: str,
    split: str = "train",
    *,
    root: str | os.PathLike[str] | None = None,
    limit: int | None = None,
) -> Dataset:
    """Fashion-MNIST shaped for a zoo model; ``root=None`` means the shipped subset.

    Raises:
        ValueError: If the model does not train on Fashion-MNIST (valid:
            ``adntn_models.FASHION_MNIST_MODELS``).
        FileNotFoundError: If ``root`` is not a directory holding the IDX files.
    """
    from adntn_models import (
        FASHION_MNIST_MODELS,
        as_tensor_dataset,
        input_shape,
        load_fashion_mnist,
    )

    if model_name not in FASHION_MNIST_MODELS:
        raise ValueError(
            f"model {model_name!r} does not train on Fashion-MNIST; valid models: "
            f"{', '.join(FASHION_MNIST_MODELS)}"
        )
    channels, size, _ = input_shape(model_name)
    if root is None:
        images, labels = load_fashion_mnist(split=split, limit=limit, subset=True)
    else:
        images, labels = load_fashion_mnist(root, split, limit)
    ds = as_tensor_dataset(images, labels, image_size=size, channels=channels)
    x, y = ds.tensors
    return torch.utils.data.TensorDataset(x.contiguous(), y)


# --------------------------------------------------------------------------- resume settings

#: :class:`TrainConfig` fields that shape the result: a resumed run must keep them.
RESUME_SETTINGS: tuple[str, ...] = (
    "epochs",
    "batch_size",
    "lr",
    "optimizer",
    "weight_decay",
    "seed",
    "distill_weight",
    "temperature",
    "reconstruction_weight",
    "min_lr_ratio",
    "core_lr",
    "deterministic",
)


class ResumeMismatchError(CheckpointError):
    """``resume=True`` met a checkpoint written with other settings.

    ``changes`` lists ``(field, value in the checkpoint, value asked for now)``.
    """

    def __init__(self, path: str | os.PathLike[str], changes: list[tuple[str, Any, Any]]) -> None:
        self.path = str(path)
        self.changes = changes
        what = ", ".join(f"{name} {old!r} -> {new!r}" for name, old, new in changes)
        super().__init__(
            f"checkpoint {self.path!r} was written with other settings ({what}); resume with "
            "the checkpoint's settings, or start over with another checkpoint_dir"
        )


def _resume_changes(
    saved: Mapping[str, Any] | None, cfg: TrainConfig
) -> list[tuple[str, Any, Any]]:
    if not isinstance(saved, Mapping):  # a checkpoint without its settings: nothing to compare
        return []
    now = asdict(cfg)
    return [
        (name, saved.get(name), now[name])
        for name in RESUME_SETTINGS
        if saved.get(name) != now[name]
    ]


def check_resume(cfg: TrainConfig) -> None:
    """Refuse, before any work, to resume ``cfg.checkpoint_dir`` under other settings.

    Does nothing unless ``cfg.resume`` and a checkpoint exists.

    Raises:
        ResumeMismatchError: Naming every changed setting with its old and new value.
        CheckpointError: If the checkpoint is unreadable.
    """
    if not cfg.resume or not cfg.checkpoint_dir:
        return
    path = Path(cfg.checkpoint_dir) / CHECKPOINT_NAME
    if path.exists():
        changes = _resume_changes(load_checkpoint(path).get("config"), cfg)
        if changes:
            raise ResumeMismatchError(path, changes)


def _check_checkpoint_dir(cfg: TrainConfig) -> None:
    """Create ``checkpoint_dir`` and prove a file can be written there, before training."""
    if cfg.checkpoint_dir is None:
        return
    folder = Path(cfg.checkpoint_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):
        pass


# --------------------------------------------------------------------------- train


def _check_train_args(
    cfg: TrainConfig, train_data: Dataset, teacher: nn.Module | None, calibration: Any
) -> None:
    cfg.validate()
    if cfg.distill_weight > 0 and teacher is None:
        raise ValueError("distill_weight > 0 needs a teacher model")
    if cfg.reconstruction_weight > 0 and (teacher is None or calibration is None):
        raise ValueError("reconstruction_weight > 0 needs a teacher model and calibration inputs")
    if len(train_data) == 0:  # type: ignore[arg-type]
        raise ValueError("train_data is empty")


def _init_distributed() -> tuple[int, int]:
    world, rank = _dist_info()
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
            # The group this call made is torn down before the interpreter exits: a gloo
            # group left to static destructors can abort the process at exit.
            atexit.register(_destroy_process_group)
    return world, rank


def _destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _freeze_teacher(teacher: nn.Module | None) -> None:
    if teacher is not None:
        teacher.eval()
        for p in teacher.parameters():
            p.requires_grad_(False)


class _Run:
    """One call of :func:`train`: the optimiser, schedule and position, and the steps that
    move them (an epoch, a step, a checkpoint, a resume)."""

    def __init__(
        self,
        model: nn.Module,
        train_data: Dataset,
        cfg: TrainConfig,
        teacher: nn.Module | None,
        recon: list[Any],
    ) -> None:
        self.model, self.train_data, self.cfg = model, train_data, cfg
        self.teacher, self.recon = teacher, recon
        self.world, self.rank = _dist_info()
        self.net: nn.Module = model
        if self.world > 1:
            self.net = nn.parallel.DistributedDataParallel(model)
        self.opt = _make_optimizer(model, cfg)
        self.sampler = ResumableSampler(
            train_data, num_replicas=self.world, rank=self.rank, seed=cfg.seed
        )
        self.steps_per_epoch = math.ceil(self.sampler.num_samples / cfg.batch_size)
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, _cosine(max(self.total_steps, 1), cfg.min_lr_ratio)
        )
        self.result = TrainResult()
        self.epoch, self.step_in_epoch = 0, 0
        # running sums of the current epoch's loss (saved, so a resumed epoch averages all of it)
        self.epoch_loss, self.epoch_n = 0.0, 0
        self.ckpt_path = Path(cfg.checkpoint_dir) / CHECKPOINT_NAME if cfg.checkpoint_dir else None

    # ------------------------------------------------------------------ checkpoints

    def restore(self) -> None:
        """Continue from ``last.pt`` (refusing one written under other settings)."""
        assert self.ckpt_path is not None
        state = load_checkpoint(self.ckpt_path)
        changes = _resume_changes(state.get("config"), self.cfg)
        if changes:
            raise ResumeMismatchError(self.ckpt_path, changes)
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise CheckpointError(
                f"checkpoint {str(self.ckpt_path)!r} does not fit this model: {exc}"
            ) from exc
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.epoch, self.step_in_epoch = int(state["epoch"]), int(state["step_in_epoch"])
        res = self.result
        res.losses = list(state.get("losses", []))
        res.epochs = list(state.get("epoch_metrics", []))
        res.global_step = int(
            state.get("global_step", self.epoch * self.steps_per_epoch + self.step_in_epoch)
        )
        res.resumed_from_step = res.global_step
        self.epoch_loss, self.epoch_n = self._saved_sums(state)
        rng = state["rng"]
        _set_rng_state(rng[self.rank] if isinstance(rng, list) and self.rank < len(rng) else rng)

    def _saved_sums(self, state: Mapping[str, Any]) -> tuple[float, int]:
        sums = state.get("epoch_sums")
        if isinstance(sums, list) and self.rank < len(sums):
            return float(sums[self.rank][0]), int(sums[self.rank][1])
        # Older checkpoints: every step before a mid-epoch stop had a full batch.
        done = self.step_in_epoch
        steps = self.result.losses[-done:] if done else []
        return sum(steps) * self.cfg.batch_size, len(steps) * self.cfg.batch_size

    def checkpoint(self) -> None:
        """Write ``last.pt`` (rank 0; every rank's RNG and loss sums gathered)."""
        if self.ckpt_path is None:
            return
        local: Any = {"rng": _rng_state(), "sums": [self.epoch_loss, self.epoch_n]}
        gathered: list[Any] = [local]
        if self.world > 1:
            import torch.distributed as dist

            gathered = [None] * self.world
            dist.all_gather_object(gathered, local)
        if self.rank == 0:
            res = self.result
            save_checkpoint(
                self.ckpt_path,
                {
                    "version": CHECKPOINT_VERSION,
                    "model": self.model.state_dict(),
                    "optimizer": self.opt.state_dict(),
                    "scheduler": self.sched.state_dict(),
                    "rng": [g["rng"] for g in gathered] if self.world > 1 else local["rng"],
                    "epoch": self.epoch,
                    "step_in_epoch": self.step_in_epoch,
                    "epoch_sums": [g["sums"] for g in gathered],
                    "global_step": res.global_step,
                    "losses": list(res.losses),
                    "epoch_metrics": list(res.epochs),
                    "config": {k: v for k, v in asdict(self.cfg).items() if v is not None},
                    "world_size": self.world,
                },
            )
        self.result.checkpoint = str(self.ckpt_path)

    # ------------------------------------------------------------------ steps

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        cfg, T = self.cfg, self.cfg.temperature
        out = self.net(x)
        loss = F.cross_entropy(out, y)
        if cfg.distill_weight > 0:
            assert self.teacher is not None
            with torch.no_grad():
                t_out = self.teacher(x)
            kd = F.kl_div(
                F.log_softmax(out / T, 1),
                F.log_softmax(t_out / T, 1),
                log_target=True,
                reduction="batchmean",
            )
            loss = (1 - cfg.distill_weight) * loss + cfg.distill_weight * T * T * kd
        if self.recon:
            loss = loss + cfg.reconstruction_weight * _reconstruction_loss(self.recon)
        return loss

    def step(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """One optimiser step; returns the loss."""
        loss = self._loss(x, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.sched.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise RuntimeError(
                f"training diverged at step {self.result.global_step} (loss {value}); "
                f"lower lr (now {self.cfg.lr})"
            )
        self.result.losses.append(value)
        self.epoch_loss += value * len(y)
        self.epoch_n += len(y)
        self.step_in_epoch += 1
        self.result.global_step += 1
        return value

    def _loader(self) -> DataLoader:
        cfg = self.cfg
        self.sampler.set_epoch(self.epoch)
        self.sampler.set_start(self.step_in_epoch * cfg.batch_size)
        return DataLoader(
            self.train_data,
            batch_size=cfg.batch_size,
            sampler=self.sampler,
            num_workers=cfg.num_workers,
            worker_init_fn=_worker_init if cfg.num_workers else None,
            generator=torch.Generator().manual_seed(cfg.seed * 1000003 + self.epoch),
        )

    def run_epoch(self, bar: Any, task: Any) -> bool:
        """Train to the end of the current epoch; False when ``max_steps`` stopped it first."""
        cfg, res = self.cfg, self.result
        self.net.train()
        for x, y in self._loader():
            if cfg.max_steps is not None and res.global_step >= cfg.max_steps:
                return False
            value = self.step(x, y)
            bar.update(
                task, advance=1, info=f"epoch {self.epoch + 1}/{cfg.epochs} loss {value:.4f}"
            )
            if cfg.checkpoint_every and res.global_step % cfg.checkpoint_every == 0:
                self.checkpoint()
        return True

    def end_epoch(self, test_data: Dataset | None) -> None:
        """Record the epoch's metrics, move to the next epoch and checkpoint."""
        metrics: dict[str, float] = {"epoch": float(self.epoch)}
        if self.epoch_n:
            metrics["train_loss"] = self.epoch_loss / self.epoch_n
        if test_data is not None:
            metrics["test_loss"], metrics["test_accuracy"] = evaluate(self.model, test_data)
        self.result.epochs.append(metrics)
        self.epoch += 1
        self.step_in_epoch = 0
        self.epoch_loss, self.epoch_n = 0.0, 0
        self.checkpoint()

    def run(self, description: str, test_data: Dataset | None) -> bool:
        """Every remaining epoch, with a progress bar; False when ``max_steps`` stopped it."""
        with _progress(self.cfg.progress and self.rank == 0) as bar:
            task = bar.add_task(description, total=self.total_steps, info="")
            bar.update(task, completed=self.result.global_step)
            while self.epoch < self.cfg.epochs:
                if not self.run_epoch(bar, task):
                    return False
                self.end_epoch(test_data)
        return True


def train(
    model: nn.Module,
    train_data: Dataset,
    *,
    config: TrainConfig | None = None,
    teacher: nn.Module | None = None,
    calibration: torch.Tensor | None = None,
    test_data: Dataset | None = None,
    description: str = "train",
) -> TrainResult:
    """Train ``model`` in place on ``train_data`` (``(x, y)`` pairs); see the module docstring.

    Args:
        model: The student (dense or with ADNTN layers).
        train_data: Training set of ``(input, label)`` pairs.
        config: Hyper-parameters (default :class:`TrainConfig`).
        teacher: Dense model for distillation and/or the reconstruction term.
        calibration: Inputs for the activation-aware reconstruction term.
        test_data: If given, evaluated after every epoch and at the end.
        description: Label of the progress bar.

    Returns:
        A :class:`TrainResult`; ``completed`` is False when ``max_steps`` stopped the run.

    Raises:
        ValueError: On a bad config, or a term enabled without what it needs.
        OSError: If ``checkpoint_dir`` cannot be written (checked before training).
        CheckpointError: If ``resume`` meets a truncated or corrupt checkpoint.
        ResumeMismatchError: If ``resume`` meets a checkpoint written under other settings.
    """
    cfg = config or TrainConfig()
    _check_train_args(cfg, train_data, teacher, calibration)
    start_time = time.perf_counter()
    world, rank = _init_distributed()
    if rank == 0:
        _check_checkpoint_dir(cfg)
    seed_everything(cfg.seed, deterministic=cfg.deterministic)
    recon = []
    if cfg.reconstruction_weight > 0:
        assert teacher is not None and calibration is not None
        recon = _reconstruction_targets(model, teacher, calibration)
    _freeze_teacher(teacher)
    run = _Run(model, train_data, cfg, teacher, recon)
    if cfg.resume and run.ckpt_path is not None and run.ckpt_path.exists():
        run.restore()
    stopped = not run.run(description, test_data)
    result = run.result
    result.epoch = run.epoch
    result.completed = not stopped
    if stopped:
        run.checkpoint()
    elif test_data is not None:
        result.test_loss, result.test_accuracy = evaluate(model, test_data)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    result.seconds = time.perf_counter() - start_time
    return result


def train_compressed(
    dense: nn.Module,
    train_data: Dataset,
    *,
    compress_kwargs: Mapping[str, Any] | None = None,
    config: TrainConfig | None = None,
    calibration: torch.Tensor | None = None,
    test_data: Dataset | None = None,
    description: str = "fine-tune ADNTN",
) -> tuple[nn.Module, TrainResult]:
    """Layer-wise fit, then end-to-end fine-tuning with the dense model as the teacher.

    Deep-copies ``dense``, compresses the copy with
    :func:`~adntn_export.compress.compress` (``compress_kwargs``, e.g.
    ``{"recipe": "alexnet32_ttn"}`` or ``{"layers": ["fc1"], "bond_dim": 3}``; fitted,
    activation-aware on ``calibration``), then runs :func:`train` with ``teacher=dense``.

    Returns:
        ``(student, result)``; ``student.adntn_fit_report`` holds the layer-wise fits.
    """
    from adntn_export.compress import compress

    student = copy.deepcopy(dense)
    compress(student, calibration=calibration, **dict(compress_kwargs or {}))
    teacher = copy.deepcopy(dense)
    result = train(
        student,
        train_data,
        config=config,
        teacher=teacher,
        calibration=calibration,
        test_data=test_data,
        description=description,
    )
    return student, result
