"""``adntn demo``: dense vs ADNTN small CNN on the shipped Fashion-MNIST subset, end to end.

No network, no data directory: the 3,000/1,000-image Fashion-MNIST subset ships in
``adntn_models``. The demo trains the dense small CNN, compresses its big layer
(fc1, 3136 -> 128) into an ADNTN (layer-wise fit, kept only if it captures the dense
weight, then fine-tuning with distillation from the dense model), prints both test
accuracies and the compression table, saves both models, and, when the ONNX exporter
and onnxruntime are available, exports the ADNTN model to ONNX and checks it against
torch under onnxruntime.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from adntn_export.commands._common import check_number, check_output_dir

#: What ``adntn demo`` compresses: small_cnn's fc1 (3136 -> 128) as a TTN.
DEMO_COMPRESSION: dict[str, Any] = {
    "layers": ["fc1"],
    "network": "ttn",
    "bond_dim": 4,
    "activation": "tanh",
    "num_sites": 4,
}


def register(subparsers: Any) -> None:
    """Add the ``demo`` verb."""
    p = subparsers.add_parser(
        "demo",
        help="train a dense and an ADNTN small CNN on the shipped data, compare, export",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
    )
    p.add_argument("--out", default="adntn-demo", help="output directory (default ./adntn-demo)")
    p.add_argument("--quick", action="store_true", help="reduced run (used by the tests)")
    p.add_argument(
        "--epochs",
        type=int,
        help="epochs of each training stage (default 4; quick 1)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-onnx", action="store_true", help="skip the ONNX export check")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``adntn demo``."""
    from rich.console import Console

    from adntn_export.report import compression_report
    from adntn_export.training import dataset_for

    console = Console(width=120)
    start = time.perf_counter()
    check_number("--epochs", args.epochs, low=1)
    out = check_output_dir("--out", args.out)
    assert out is not None
    quick = args.quick
    epochs = args.epochs or (1 if quick else 4)
    train_ds = dataset_for("small_cnn", "train", limit=600 if quick else None)
    test_ds = dataset_for("small_cnn", "test", limit=300 if quick else None)
    console.print(
        f"[bold]adntn demo[/]: small CNN on the shipped Fashion-MNIST subset "
        f"({len(train_ds)} train / {len(test_ds)} test images), {epochs} epoch(s) per stage"
    )
    dense, dense_acc = _train_dense(args, epochs, train_ds, test_ds)
    student, acc_fit, adntn_acc = _compress_and_finetune(
        args, epochs, dense, train_ds, test_ds, console
    )
    report = compression_report(student)
    _print_tables(console, dense, dense_acc, adntn_acc, report)
    summary = _write_outputs(out, dense, student, report, train_ds, test_ds, epochs)
    summary.update(
        dense_accuracy=dense_acc, adntn_accuracy=adntn_acc, adntn_accuracy_after_fit=acc_fit
    )
    if not args.no_onnx:
        summary["onnx"] = _onnx_check(student, test_ds, out, console)
    summary["seconds"] = time.perf_counter() - start
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    console.print(
        f"Done in {summary['seconds']:.0f} s: dense {dense_acc:.4f} vs ADNTN {adntn_acc:.4f}; "
        f"fc1 stored in {report.adntn_stored_params:,} numbers instead of "
        f"{report.adntn_dense_params:,} ({report.total_ratio:,.0f}x).\n"
        f"Wrote {out}/: dense.pt, adntn.pt (load with adntn_export.checkpoint.load_model), "
        f"compression.json, summary.json"
        + (", adntn.onnx" if summary.get("onnx", {}).get("path") else "")
    )
    return 0


def _train_dense(args: argparse.Namespace, epochs: int, train_ds: Any, test_ds: Any) -> Any:
    """Step 1: the dense small CNN; returns ``(model, test accuracy)``."""
    import torch

    from adntn_export.training import TrainConfig, train
    from adntn_models import get_model

    torch.manual_seed(args.seed)
    dense = get_model("small_cnn")
    cfg = TrainConfig(
        epochs=epochs, batch_size=64, lr=2e-3, seed=args.seed, progress=not args.no_progress
    )
    dense_res = train(dense, train_ds, config=cfg, test_data=test_ds, description="dense")
    return dense, dense_res.test_accuracy or 0.0


def _compress_and_finetune(
    args: argparse.Namespace, epochs: int, dense: Any, train_ds: Any, test_ds: Any, console: Any
) -> tuple[Any, float, float]:
    """Step 2: compress fc1 (layer-wise fit), then fine-tune with distillation from ``dense``.

    Returns ``(student, accuracy after the fit, accuracy after fine-tuning)``.
    """
    import copy

    import torch

    from adntn_export.compress import compress
    from adntn_export.training import TrainConfig, evaluate, train

    calib = torch.stack([train_ds[i][0] for i in range(min(256, len(train_ds)))])
    ft_cfg = TrainConfig(
        epochs=epochs,
        batch_size=64,
        lr=1e-3,
        core_lr=1e-2,
        seed=args.seed,
        distill_weight=0.5,
        temperature=4.0,
        progress=not args.no_progress,
    )
    student = copy.deepcopy(dense)
    fit_steps = 60 if args.quick else 300
    compress(student, calibration=calib, fit_steps=fit_steps, verbose=True, **DEMO_COMPRESSION)
    acc_fit = evaluate(student, test_ds)[1]
    if any(r.discarded for r in student.adntn_fit_report.values()):
        console.print(
            f"the layer-wise fit could not reproduce the dense weight at this ratio and was "
            f"discarded (compress(discard_fit_above=0.9)): the layer starts from its "
            f"Kaiming-scale initialisation; test accuracy before fine-tuning {acc_fit:.4f}"
        )
    else:
        console.print(f"after the layer-wise fit (before fine-tuning): test accuracy {acc_fit:.4f}")
    # Phase 1: the new cores (and fc2) learn against frozen conv features, so a freshly
    # fitted fc1 cannot wreck the trunk; phase 2: everything, end to end.
    for p in student.features.parameters():
        p.requires_grad_(False)
    train(
        student,
        train_ds,
        config=ft_cfg,
        teacher=copy.deepcopy(dense),
        description="ADNTN fine-tune (trunk frozen)",
    )
    for p in student.features.parameters():
        p.requires_grad_(True)
    ft_cfg.lr, ft_cfg.core_lr = 5e-4, 3e-3
    res = train(
        student,
        train_ds,
        config=ft_cfg,
        teacher=copy.deepcopy(dense),
        test_data=test_ds,
        description="ADNTN fine-tune (end to end)",
    )
    return student, acc_fit, res.test_accuracy or 0.0


def _print_tables(
    console: Any, dense: Any, dense_acc: float, adntn_acc: float, report: Any
) -> None:
    """Step 3: accuracy side by side, then the compression table."""
    from rich.table import Table

    dense_params = sum(p.numel() for p in dense.parameters())
    table = Table(title="Test accuracy (shipped Fashion-MNIST subset)")
    for col in ("model", "parameters stored", "test accuracy"):
        table.add_column(col, justify="right" if col != "model" else "left")
    table.add_row("dense small CNN", f"{dense_params:,}", f"{dense_acc:.4f}")
    table.add_row(
        "ADNTN small CNN (fc1 as TTN)",
        f"{report.model_stored_params:,}",
        f"{adntn_acc:.4f} ({adntn_acc - dense_acc:+.4f})",
    )
    console.print(table)
    console.print(report.table())


def _write_outputs(
    out: Path,
    dense: Any,
    student: Any,
    report: Any,
    train_ds: Any,
    test_ds: Any,
    epochs: int,
) -> dict[str, Any]:
    """Step 4: both models and the compression report; returns the summary's common part."""
    from adntn_export.commands.train import _save

    out.mkdir(parents=True, exist_ok=True)
    dense_path = _save(dense, "small_cnn", out / "dense.pt")
    adntn_path = _save(student, "small_cnn", out / "adntn.pt")
    (out / "compression.json").write_text(report.to_json())
    return {
        "data": "shipped Fashion-MNIST subset",
        "train_images": len(train_ds),
        "test_images": len(test_ds),
        "epochs_per_stage": epochs,
        "compression": DEMO_COMPRESSION,
        "fit_relative_error": {k: v.relative_error for k, v in student.adntn_fit_report.items()},
        "compressed_layer_ratio": report.total_ratio,
        "compressed_layer_weight_ratio": report.weight_ratio,
        "model_ratio": report.model_ratio,
        "dense_params": sum(p.numel() for p in dense.parameters()),
        "adntn_stored_params": report.model_stored_params,
        "files": {"dense": str(dense_path), "adntn": str(adntn_path)},
    }


def _onnx_check(model: Any, test_ds: Any, out: Path, console: Any) -> dict[str, Any]:
    """Export to ONNX and compare with torch under onnxruntime, if both are available."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        console.print("ONNX check skipped: onnxruntime is not installed (pip install adntn[onnx])")
        return {"skipped": "onnxruntime not installed"}
    try:
        from adntn_export.onnx_export import export_onnx
    except ImportError as exc:
        console.print(f"ONNX check skipped: the ONNX exporter is not available ({exc})")
        return {"skipped": f"exporter not importable: {exc}"}
    import numpy as np
    import onnxruntime as ort
    import torch

    x = torch.stack([test_ds[i][0] for i in range(16)])
    path = export_onnx(model.eval(), x[:1], out / "adntn.onnx", mode="fused")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    got = sess.run(None, {name: x.numpy()})[0]
    with torch.no_grad():
        want = model(x).numpy()
    err = float(np.abs(got - want).max())
    agree = float((got.argmax(1) == want.argmax(1)).mean())
    ok = err < 1e-3
    console.print(
        f"ONNX: wrote {path}; onnxruntime vs torch on 16 test images: max |diff| {err:.2e}, "
        f"same predicted class {agree:.0%} -> {'OK' if ok else 'MISMATCH'}"
    )
    return {"path": str(path), "max_abs_diff": err, "argmax_agreement": agree, "ok": ok}
