"""``adntn compress``: compress a zoo model's layers and report the parameter counts."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path
from typing import Any

from adntn_export.commands._common import (
    add_compress_args,
    check_compress_args,
    check_compression_plan,
    check_output_file,
    compress_kwargs,
)


def register(subparsers: Any) -> None:
    """Add the ``compress`` verb."""
    p = subparsers.add_parser(
        "compress",
        help="compress a model with ADNTN layers and write the compression report",
        description=(
            "Build a zoo model, replace the chosen layers (a recipe, or --layers/--network/"
            "--bond-dim) by ADNTN layers, write the compression report as JSON and print it "
            "as a table. Fitting to the dense weights is optional (--fit) for a freshly "
            "initialised model; with --weights (a trained model's state_dict) every layer is "
            "fitted to its trained weights without the task's labels, and the report gives "
            "each fit's error beside a truncated SVD at the same stored numbers, and with "
            "--root the test accuracy right after compression (no fine-tuning) of the dense, "
            "ADNTN and SVD models."
        ),
    )
    p.add_argument("model", help="alexnet, alexnet32, vgg16, vgg16_32, mlp or small_cnn")
    p.add_argument("--out", default="compression.json", help="report JSON path")
    p.add_argument("--fit", action="store_true", help="fit each layer to the dense weights")
    p.add_argument("--list-recipes", action="store_true", help="list the named recipes and exit")
    p.add_argument(
        "--weights",
        help="trained weights of the model (.pt: a state_dict, or a dict with 'state_dict'); "
        "implies --fit",
    )
    p.add_argument(
        "--root",
        help="Fashion-MNIST IDX directory: calibration images for the activation-aware fit "
        "and test accuracy after compression (with --weights)",
    )
    p.add_argument("--calibration", type=int, default=256, help="calibration images (default 256)")
    p.add_argument("--test-limit", type=int, help="test images (default all)")
    p.add_argument(
        "--select",
        choices=("objective", "output"),
        default="objective",
        help="which cores each fitted layer keeps: 'objective' (default: the fit's, or a fresh "
        "start when it learned nothing: for fine-tuning) or 'output' (of the fit, its SVD start "
        "and a fresh start, the one whose model predictions on the calibration images stay "
        "closest to the dense model's: for use without fine-tuning; needs --root)",
    )
    add_compress_args(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Handler of ``adntn compress``."""
    from rich.console import Console

    from adntn_export.compress import compress, list_recipes
    from adntn_export.report import compression_report
    from adntn_models import FASHION_MNIST_MODELS, get_model

    if args.list_recipes:
        print("\n".join(list_recipes()))
        return 0
    check_compress_args(args)
    out = check_output_file("--out", args.out)
    assert out is not None
    if args.root is not None and args.model not in FASHION_MNIST_MODELS:
        raise ValueError(
            f"--root needs a model trained on Fashion-MNIST ({', '.join(FASHION_MNIST_MODELS)}), "
            f"got {args.model!r}"
        )
    if args.select == "output" and args.root is None:
        raise ValueError(
            "--select output needs calibration images: give --root (the Fashion-MNIST IDX "
            "directory), or use --select objective"
        )
    model = get_model(args.model)
    if args.weights is not None:
        load_weights(model, args.weights)
    dense = copy.deepcopy(model).eval() if args.weights is not None else None
    kwargs = compress_kwargs(args) or {}
    kwargs.setdefault("fit_steps", args.fit_steps)
    if args.fit or dense is not None:
        check_compression_plan(model, kwargs)
    kwargs.setdefault("init", args.init)
    calibration = test = None
    if args.root is not None:
        from adntn_export.training import dataset_for

        calibration = dataset_for(args.model, "train", root=args.root, limit=args.calibration)
        calibration = calibration.tensors[0]  # type: ignore[attr-defined]
        test = dataset_for(args.model, "test", root=args.root, limit=args.test_limit)
    fit = args.fit or dense is not None
    if args.select == "output" and not fit:
        raise ValueError("--select output needs --fit or --weights (it chooses among fits)")
    compress(model, fit=fit, calibration=calibration, select=args.select, verbose=True, **kwargs)
    report = compression_report(model)
    data = json.loads(report.to_json())
    Console().print(report.table())
    if dense is not None:
        data["fit_vs_svd"] = fit_vs_svd(dense, model, test)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2))
    print(f"wrote {out}")
    return 0


def load_weights(model: Any, path: str) -> None:
    """Load a trained state_dict (untrusted file: tensors only) into ``model``."""
    import torch

    if not Path(path).is_file():
        raise ValueError(f"--weights {path!r} is not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupt or non-tensor file
        raise ValueError(f"--weights {path!r} is not a readable state_dict: {exc}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"--weights {path!r} holds a {type(state).__name__}, not a state_dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"--weights {path!r} does not fit the model: {exc}") from None


def fit_vs_svd(dense: Any, compressed: Any, test: Any) -> dict[str, Any]:
    """Per layer: the fit's error and a truncated SVD's at the same stored weight numbers;
    with ``test``, the accuracy right after compression of dense, ADNTN and SVD models."""
    from adntn_export.svd_baseline import svd_baseline_model
    from adntn_export.training import evaluate

    baseline, svds = svd_baseline_model(dense, compressed)
    fits = compressed.adntn_fit_report
    layers = {}
    for name, svd in svds.items():
        fit = fits.get(name)
        layers[name] = {
            "fit_relative_error": None if fit is None else fit.relative_error,
            "fit_discarded": None if fit is None else fit.discarded,
            "fit_selected": None if fit is None else fit.selected,
            "fit_output_errors": None if fit is None else fit.output_errors,
            "svd_rank": svd.rank,
            "svd_stored": svd.stored,
            "svd_relative_error": svd.relative_error,
        }
        fit_text = "-" if fit is None else f"{fit.relative_error:.4f}"
        if fit is not None and fit.discarded:
            fit_text += " (discarded)"
        elif fit is not None and fit.selected != "fit":
            fit_text += f" (kept its {fit.selected}: closer model predictions)"
        print(
            f"{name}: fit error {fit_text}; truncated SVD at the same stored numbers: rank "
            f"{svd.rank}, error {svd.relative_error:.4f}"
        )
    out: dict[str, Any] = {"layers": layers}
    if test is not None:
        for key, m in (("dense", dense), ("adntn", compressed), ("svd", baseline)):
            out[f"{key}_accuracy"] = evaluate(m, test)[1]
        print(
            f"test accuracy right after compression (no fine-tuning): ADNTN "
            f"{out['adntn_accuracy']:.4f}, truncated SVD {out['svd_accuracy']:.4f}, dense "
            f"{out['dense_accuracy']:.4f}"
        )
    return out
