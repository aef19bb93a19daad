"""Stage 2: compress AlexNet-32's classifier with a named recipe and print the report.

PYTHONPATH=.:runtimes:models python examples/compress.py [--quick] [--recipe NAME]
"""

import argparse
import json
from pathlib import Path

import torch

from adntn_export.compress import compress, list_recipes
from adntn_export.report import compression_report
from adntn_models import get_model

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--quick", action="store_true", help="no layer-wise fit")
p.add_argument("--out", type=Path, default=Path("adntn-example"), help="unused here")
p.add_argument("--recipe", default="alexnet32_ttn", choices=list_recipes())
args = p.parse_args()

torch.manual_seed(0)
model = get_model(args.recipe.rsplit("_", 1)[0])
compress(model, recipe=args.recipe, fit=not args.quick, fit_steps=100, verbose=True)
report = compression_report(model)
for layer in report.layers:
    print(
        f"{layer.name:14s} {layer.dense_params:>12,} -> {layer.stored_params:>6,} "
        f"({layer.ratio:,.0f}x, weight only {layer.weight_ratio:,.0f}x)"
    )
print(json.dumps({k: v.relative_error for k, v in model.adntn_fit_report.items()}))
x = torch.randn(2, *model.input_shape)
print("output", tuple(model.eval()(x).shape))
