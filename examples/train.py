"""Stage 1: train a dense small CNN, then its ADNTN version (fit + distilled fine-tuning).

PYTHONPATH=.:runtimes:models python examples/train.py [--quick] [--out DIR]
"""

import argparse
import copy
from pathlib import Path

import torch

from adntn_export.checkpoint import save_model
from adntn_export.compress import compress
from adntn_export.report import compression_report
from adntn_export.training import TrainConfig, dataset_for, evaluate, train
from adntn_models import get_model

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--quick", action="store_true", help="300 images, 1 epoch")
p.add_argument("--out", type=Path, default=Path("adntn-example"))
args = p.parse_args()

limit, epochs = (300, 1) if args.quick else (None, 4)
train_ds = dataset_for("small_cnn", "train", limit=limit)  # the shipped Fashion-MNIST subset
test_ds = dataset_for("small_cnn", "test", limit=200 if args.quick else None)

torch.manual_seed(0)
dense = get_model("small_cnn")
train(dense, train_ds, config=TrainConfig(epochs=epochs, lr=2e-3, progress=False))
print(f"dense test accuracy {evaluate(dense, test_ds)[1]:.4f}")

student = copy.deepcopy(dense)
calib = torch.stack([train_ds[i][0] for i in range(128)])
compress(
    student,
    layers=["fc1"],
    network="ttn",
    bond_dim=4,
    num_sites=4,
    calibration=calib,
    fit_steps=20 if args.quick else 300,
)
cfg = TrainConfig(epochs=epochs, lr=1e-3, core_lr=1e-2, distill_weight=0.5, progress=False)
res = train(student, train_ds, config=cfg, teacher=dense, test_data=test_ds)
print(
    f"ADNTN test accuracy {res.test_accuracy:.4f}, "
    f"fc1 {compression_report(student).total_ratio:,.0f}x smaller"
)

args.out.mkdir(parents=True, exist_ok=True)
path = save_model(
    student,
    args.out / "small_cnn_adntn.pt",
    example_input_shape=(1, 1, 28, 28),
    builder="adntn_models.registry:get_model",
    builder_kwargs={"name": "small_cnn"},
)
print(f"wrote {path}")
