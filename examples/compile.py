"""Stage 5: compile an exported ADNTN model with TVM for a target (default: this host).

    PYTHONPATH=.:runtimes:models python examples/compile.py [--quick] [--target host] [--out DIR]

Cross targets (rpi4, rpi5, jetson-orin-nano, ...) need their cross compiler. Exits 77
(skipped) when TVM or the TVM backend is missing.
"""

import argparse
import sys
from pathlib import Path

import torch

from adntn_export.compress import compress
from adntn_models import get_model

try:
    from adntn_export.onnx_export import export_onnx
    from adntn_export.tvm_backend.compile import compile_onnx
except ImportError as exc:
    print(f"skipped: {exc}")
    sys.exit(77)

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--quick", action="store_true", help="a small MLP instead of the small CNN")
p.add_argument("--target", default="host")
p.add_argument("--out", type=Path, default=Path("adntn-example") / "tvm")
args = p.parse_args()

torch.manual_seed(0)
name, shape = ("mlp", (1, 1, 28, 28)) if args.quick else ("small_cnn", (1, 1, 28, 28))
model = compress(get_model(name), layers=["fc1"], bond_dim=3, fit=False).eval()
args.out.mkdir(parents=True, exist_ok=True)
onnx_path = export_onnx(
    model, torch.randn(*shape), args.out / f"{name}.onnx", mode="fused", dynamic_batch=False
)
manifest = compile_onnx(onnx_path, args.target, args.out)
print(f"compiled {onnx_path} for {args.target} into {args.out}: {manifest}")
