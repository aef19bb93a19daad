"""Stage 4: load an exported ADNTN model with the device runtime under a memory budget, time it.

    PYTHONPATH=.:runtimes:models python examples/bench.py [--quick] [--budget-mb MB]

The runtime's policy picks each ADNTN layer's mode (materialize / regenerate / fused);
``session.decisions`` says which and why. Exits 77 (skipped) if a module is missing.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from adntn_export.compress import compress
from adntn_models import get_model

try:
    import adntn_runtime
    from adntn_export.onnx_export import export_onnx
except ModuleNotFoundError as exc:  # an optional dependency (onnx, onnxruntime) is missing
    print(f"skipped: {exc}")
    sys.exit(77)

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--quick", action="store_true", help="few runs, no calibration")
p.add_argument("--out", type=Path, default=Path("adntn-example"), help="unused here")
p.add_argument("--budget-mb", type=float, default=None)
args = p.parse_args()

torch.manual_seed(0)
model = compress(get_model("small_cnn"), layers=["fc1"], bond_dim=4, num_sites=4, fit=False).eval()
x = torch.randn(1, 1, 28, 28)
with tempfile.TemporaryDirectory() as tmp:
    path = export_onnx(model, x, Path(tmp) / "small_cnn_auto.onnx", mode="auto")
    sess = adntn_runtime.load(
        path, memory_budget_mb=args.budget_mb, batch=1, calibrate=not args.quick
    )
    for name, decision in sess.decisions.items():
        print(f"{name}: {decision}")
    feed = x.numpy().astype(np.float32)
    out = sess.run(feed)
    times = []
    for _ in range(5 if args.quick else 200):
        t = time.perf_counter()
        sess.run(feed)
        times.append((time.perf_counter() - t) * 1e3)
with torch.no_grad():
    err = float(np.abs(out[0] - model(x).numpy()).max())
print(
    f"median latency {statistics.median(times):.3f} ms over {len(times)} runs; "
    f"max |runtime - torch| = {err:.2e}"
)
sys.exit(0 if err < 1e-3 else 1)
