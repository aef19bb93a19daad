"""Stage 3: export an ADNTN model to ONNX (fused mode) and check it under onnxruntime.

    PYTHONPATH=.:runtimes:models python examples/export.py [--quick] [--out DIR]

Exits with code 77 (skipped) when the ONNX exporter or onnxruntime is missing.
"""

import argparse
import sys
from pathlib import Path

import torch

from adntn_export.compress import compress
from adntn_models import get_model

try:
    import onnxruntime as ort

    from adntn_export.onnx_export import export_onnx
except ImportError as exc:
    print(f"skipped: {exc}")
    sys.exit(77)

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--quick", action="store_true")
p.add_argument("--out", type=Path, default=Path("adntn-example"))
p.add_argument("--mode", default="fused", help="fused, regenerate, materialize, dense or auto")
args = p.parse_args()

torch.manual_seed(0)
model = compress(get_model("small_cnn"), layers=["fc1"], bond_dim=4, num_sites=4, fit=False).eval()
x = torch.randn(4, 1, 28, 28)
args.out.mkdir(parents=True, exist_ok=True)
path = export_onnx(model, x[:1], args.out / f"small_cnn_{args.mode}.onnx", mode=args.mode, opset=18)
sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
with torch.no_grad():
    err = float((torch.from_numpy(got) - model(x)).abs().max())
print(f"wrote {path}; max |onnxruntime - torch| = {err:.2e}")
sys.exit(0 if err < 1e-3 else 1)
