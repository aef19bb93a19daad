"""``adntn train``: train a zoo model on Fashion-MNIST, optionally ADNTN-compressed, distilled."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from adntn_export.commands._common import (
    add_compress_args,
    check_compress_args,
    check_compression_plan,
    check_number,
    check_output_dir,
    compress_kwargs,
    input_shape,
)


def _add_loss_weight(p: argparse.ArgumentParser, flag: str, help: str) -> None:
    """A weight of an extra loss term (``WEIGHT``, default 0: the term is off)."""
    p.add_argument(flag, type=float, default=0.0, metavar="WEIGHT", help=help)


def register(subparsers: Any) -> None:
    """Add the ``train`` verb."""
    p = subparsers.add_parser(
        "train",
        help="train a model (dense, or ADNTN-compressed with distillation)",
        description=(
            "Train a zoo model on Fashion-MNIST (the shipped 3,000/1,000 subset unless --root). "
            "With compression flags: train dense (or load --teacher epochs), compress (fit each "
            "layer to the dense weights), then fine-tune end to end, distilling from the dense "
            "model with --distill. Checkpoints in --checkpoint-dir; --resume continues."
        ),
    )
    p.add_argument("model", help="mlp, small_cnn, alexnet32 or vgg16_32")
    p.add_argument("--root", help="Fashion-MNIST IDX directory (default: shipped subset)")
    p.add_argument("--limit", type=int, help="use only the first N training images")
    p.add_argument("--test-limit", type=int, help="use only the first N test images")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--dense-epochs", type=int, help="dense teacher epochs (default --epochs)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--core-lr", type=float, help="learning rate of ADNTN cores (default --lr)")
    p.add_argument("--optimizer", choices=("adam", "adamw", "sgd"), default="adam")
    p.add_argument("--seed", type=int, default=0)
    _add_loss_weight(p, "--distill", "distillation weight in [0, 1] (needs compression flags)")
    p.add_argument("--temperature", type=float, default=4.0)
    _add_loss_weight(p, "--reconstruction", "weight of the activation-aware reconstruction term")
    p.add_argument("--checkpoint-dir", help="write training checkpoints (last.pt) here")
    p.add_argument("--checkpoint-every", type=int, default=0, help="also every N steps")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from --checkpoint-dir, with the same settings (a change is refused)",
    )
    p.add_argument("--out", default="adntn-train", help="output directory (default ./adntn-train)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_compress_args(p)
    p.set_defaults(handler=run)


#: ``TrainConfig`` field -> the ``adntn train`` flag that sets it (for resume messages).
_FLAGS = {
    "epochs": "--epochs",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "optimizer": "--optimizer",
    "seed": "--seed",
    "distill_weight": "--distill",
    "temperature": "--temperature",
    "reconstruction_weight": "--reconstruction",
    "core_lr": "--core-lr",
}


def _check_args(args: argparse.Namespace, compressing: bool) -> None:
    """Every option range and output path, before any data is read or any step is taken."""
    for flag, value in (
        ("--epochs", args.epochs),
        ("--dense-epochs", args.dense_epochs),
        ("--batch-size", args.batch_size),
        ("--limit", args.limit),
        ("--test-limit", args.test_limit),
    ):
        check_number(flag, value, low=1)
    for flag, value in (("--lr", args.lr), ("--core-lr", args.core_lr)):
        check_number(flag, value, low=0, low_open=True)
    check_number("--temperature", args.temperature, low=0, low_open=True)
    check_number("--distill", args.distill, low=0, high=1)
    check_number("--reconstruction", args.reconstruction, low=0)
    check_number("--checkpoint-every", args.checkpoint_every, low=0)
    check_compress_args(args)
    for flag in ("--distill", "--reconstruction"):
        if getattr(args, flag[2:]) and not compressing:
            raise ValueError(f"{flag} needs compression flags (--recipe, --layers, --network, ...)")
    if args.resume and not args.checkpoint_dir:
        raise ValueError("--resume needs --checkpoint-dir (the folder of the run to continue)")
    check_output_dir("--out", args.out)
    check_output_dir("--checkpoint-dir", args.checkpoint_dir)


#: What a run is: every flag that changes the trained model. ``--resume`` must keep them all.
_RUN_FLAGS: tuple[str, ...] = (
    "model",
    "root",
    "limit",
    "epochs",
    "dense_epochs",
    "batch_size",
    "lr",
    "core_lr",
    "optimizer",
    "seed",
    "distill",
    "temperature",
    "reconstruction",
    "recipe",
    "layers",
    "network",
    "bond_dim",
    "activation",
    "bias",
    "num_sites",
    "layout",
    "fit_steps",
)
#: Written in --checkpoint-dir: the settings of the run whose checkpoints it holds.
SETTINGS_NAME = "settings.json"


def _flag(attr: str) -> str:
    return "model" if attr == "model" else "--" + attr.replace("_", "-")


def _check_run_settings(args: argparse.Namespace) -> Path | None:
    """With --resume, refuse a --checkpoint-dir whose run had other settings (naming each
    changed flag with its old and new value). Returns where the settings go (or None)."""
    if not args.checkpoint_dir:
        return None
    path = Path(args.checkpoint_dir) / SETTINGS_NAME
    if not (args.resume and path.is_file()):
        return path
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"--resume: cannot read {str(path)!r} ({exc}); delete it to resume anyway"
        ) from None
    now = json.loads(json.dumps({a: getattr(args, a) for a in _RUN_FLAGS}))
    changed = [a for a in _RUN_FLAGS if a in old and old[a] != now[a]]
    if changed:
        what = "; ".join(f"{_flag(a)} was {old[a]!r}, now {now[a]!r}" for a in changed)
        raise ValueError(
            f"--resume: --checkpoint-dir {args.checkpoint_dir!r} holds a run with other "
            f"settings ({what}); rerun with the old values, or start over with another "
            "--checkpoint-dir"
        )
    return path


def _write_run_settings(path: Path | None, args: argparse.Namespace) -> None:
    if path is None:
        return
    from adntn_runtime.files import atomic_write

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as fh:
        fh.write(json.dumps({a: getattr(args, a) for a in _RUN_FLAGS}, indent=1).encode())


def _check_resume(cfg: Any, stage: str) -> None:
    """Refuse, before any work, to resume a stage whose checkpoint has other settings."""
    from adntn_export.training import ResumeMismatchError, check_resume

    try:
        check_resume(cfg)
    except ResumeMismatchError as exc:
        flags = dict(_FLAGS, epochs="--dense-epochs/--epochs" if stage == "dense" else "--epochs")
        what = "; ".join(
            f"{flags.get(name, name)} was {old!r}, now {new!r}" for name, old, new in exc.changes
        )
        raise ValueError(
            f"--resume: the {stage} checkpoint {exc.path!r} was written with other settings "
            f"({what}); rerun with the old values, or start over with another --checkpoint-dir"
        ) from None


def run(args: argparse.Namespace) -> int:
    """Handler of ``adntn train``."""
    import torch

    from adntn_export.training import TrainConfig, dataset_for, train
    from adntn_models import get_model

    ck = compress_kwargs(args)
    _check_args(args, ck is not None)

    def config(epochs: int, sub: str) -> TrainConfig:
        return TrainConfig(
            epochs=epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            optimizer=args.optimizer,
            seed=args.seed,
            checkpoint_dir=str(Path(args.checkpoint_dir) / sub) if args.checkpoint_dir else None,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
            progress=not args.no_progress,
        )

    dense_cfg = config(args.dense_epochs or args.epochs, "dense")
    cfg = config(args.epochs, "adntn")
    cfg.distill_weight = args.distill
    cfg.temperature = args.temperature
    cfg.reconstruction_weight = args.reconstruction
    cfg.core_lr = args.core_lr
    settings = _check_run_settings(args)
    _check_resume(dense_cfg, "dense")  # checkpoints written before settings.json existed
    if ck is not None:
        _check_resume(cfg, "adntn")
    train_ds = dataset_for(args.model, "train", root=args.root, limit=args.limit)
    test_ds = dataset_for(args.model, "test", root=args.root, limit=args.test_limit)
    torch.manual_seed(args.seed)
    model = get_model(args.model)
    check_compression_plan(model, ck)
    _write_run_settings(settings, args)
    summary: dict[str, Any] = {"model": args.model, "train_images": len(train_ds)}
    dense_res = train(
        model, train_ds, config=dense_cfg, test_data=test_ds, description=f"{args.model} dense"
    )
    summary["dense"] = dense_res.to_dict()
    print(f"dense {args.model}: test accuracy {dense_res.test_accuracy:.4f}")
    report = None
    if ck is not None:
        summary["adntn"], report = _compressed_stage(args, model, ck, cfg, train_ds, test_ds)
        print(
            f"ADNTN {args.model}: test accuracy {summary['adntn']['test_accuracy']:.4f} "
            f"(dense {dense_res.test_accuracy:.4f}); "
            f"compressed layers {report.total_ratio:,.0f}x"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if report is not None:
        (out / "compression.json").write_text(report.to_json())
    path = _save(model, args.model, out / "model.pt")
    summary["model_file"] = str(path)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"wrote {path} and {out / 'summary.json'}")
    return 0


def _compressed_stage(
    args: argparse.Namespace,
    model: Any,
    ck: dict[str, Any],
    cfg: Any,
    train_ds: Any,
    test_ds: Any,
) -> tuple[dict[str, Any], Any]:
    """Compress the trained ``model`` in place (layer-wise fit), then fine-tune it with the
    dense copy as the teacher. Returns the stage's summary and its compression report."""
    import copy

    import torch

    from adntn_export.compress import compress
    from adntn_export.report import compression_report
    from adntn_export.training import evaluate, train

    teacher = copy.deepcopy(model)
    calib = torch.stack([train_ds[i][0] for i in range(min(256, len(train_ds)))])
    compress(model, calibration=calib, verbose=True, **ck)
    acc_fit = evaluate(model, test_ds)[1]
    print(f"after layer-wise fit: test accuracy {acc_fit:.4f}")
    res = train(
        model,
        train_ds,
        config=cfg,
        teacher=teacher,
        calibration=calib if args.reconstruction else None,
        test_data=test_ds,
        description=f"{args.model} ADNTN",
    )
    report = compression_report(model)
    stage = {**res.to_dict(), "accuracy_after_fit": acc_fit, "compression": report.to_dict()}
    return stage, report


def _save(model: Any, name: str, path: Path) -> Path:
    """Save with :func:`adntn_export.checkpoint.save_model` (else a plain state_dict)."""
    try:
        from adntn_export.checkpoint import save_model
    except ImportError:  # pragma: no cover - the checkpoint module is optional
        import torch

        torch.save(model.state_dict(), path)
        return path
    return save_model(
        model,
        path,
        example_input_shape=input_shape(model),
        builder="adntn_models.registry:get_model",
        builder_kwargs={"name": name},
    )
