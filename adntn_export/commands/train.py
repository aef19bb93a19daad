"""``adntn train``: train a zoo model on Fashion-MNIST, optionally ADNTN-compressed, distilled."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from adntn_export.commands._common import add_compress_args, compress_kwargs, input_shape


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
    p.add_argument(
        "--distill",
        type=float,
        default=0.0,
        metavar="WEIGHT",
        help="distillation weight in [0, 1] (needs compression flags)",
    )
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument(
        "--reconstruction",
        type=float,
        default=0.0,
        metavar="WEIGHT",
        help="weight of the activation-aware reconstruction term",
    )
    p.add_argument("--checkpoint-dir", help="write training checkpoints (last.pt) here")
    p.add_argument("--checkpoint-every", type=int, default=0, help="also every N steps")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint-dir")
    p.add_argument("--out", default="adntn-train", help="output directory (default ./adntn-train)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_compress_args(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``adntn train``."""
    import torch

    from adntn_export.compress import compress
    from adntn_export.report import compression_report
    from adntn_export.training import TrainConfig, dataset_for, evaluate, train
    from adntn_models import get_model

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train_ds = dataset_for(args.model, "train", root=args.root, limit=args.limit)
    test_ds = dataset_for(args.model, "test", root=args.root, limit=args.test_limit)
    ck = compress_kwargs(args)
    if args.distill and ck is None:
        raise ValueError("--distill needs compression flags (--recipe, --layers, --network, ...)")

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

    torch.manual_seed(args.seed)
    model = get_model(args.model)
    summary: dict[str, Any] = {"model": args.model, "train_images": len(train_ds)}
    dense_res = train(
        model,
        train_ds,
        config=config(args.dense_epochs or args.epochs, "dense"),
        test_data=test_ds,
        description=f"{args.model} dense",
    )
    summary["dense"] = dense_res.to_dict()
    print(f"dense {args.model}: test accuracy {dense_res.test_accuracy:.4f}")
    final = model
    if ck is not None:
        import copy

        teacher = copy.deepcopy(model)
        calib = torch.stack([train_ds[i][0] for i in range(min(256, len(train_ds)))])
        compress(model, calibration=calib, verbose=True, **ck)
        acc_fit = evaluate(model, test_ds)[1]
        print(f"after layer-wise fit: test accuracy {acc_fit:.4f}")
        cfg = config(args.epochs, "adntn")
        cfg.distill_weight = args.distill
        cfg.temperature = args.temperature
        cfg.reconstruction_weight = args.reconstruction
        cfg.core_lr = args.core_lr
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
        summary["adntn"] = {
            **res.to_dict(),
            "accuracy_after_fit": acc_fit,
            "compression": report.to_dict(),
        }
        (out / "compression.json").write_text(report.to_json())
        print(
            f"ADNTN {args.model}: test accuracy {res.test_accuracy:.4f} "
            f"(dense {dense_res.test_accuracy:.4f}); "
            f"compressed layers {report.total_ratio:,.0f}x"
        )
        final = model
    path = _save(final, args.model, out / "model.pt")
    summary["model_file"] = str(path)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"wrote {path} and {out / 'summary.json'}")
    return 0


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
