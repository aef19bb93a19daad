"""Task-aware training: learns, resumes bit-identically, fails clearly, runs under torchrun."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

from adntn_export.training import (
    CHECKPOINT_NAME,
    CheckpointError,
    TrainConfig,
    dataset_for,
    evaluate,
    load_checkpoint,
    train,
    train_compressed,
)
from adntn_models import get_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data():
    return dataset_for("mlp", "train", limit=640), dataset_for("mlp", "test", limit=400)


def _run(train_ds, test_ds=None, **kw):
    torch.manual_seed(0)
    model = get_model("mlp", dropout=0.2)
    cfg = TrainConfig(epochs=2, batch_size=64, lr=2e-3, progress=False, **kw)
    return model, train(model, train_ds, config=cfg, test_data=test_ds)


def test_short_run_learns(data):
    train_ds, test_ds = data
    model, res = _run(train_ds, test_ds)
    assert res.completed and res.global_step == 20
    first = sum(res.losses[:3]) / 3
    last = sum(res.losses[-3:]) / 3
    assert last < 0.6 * first
    assert res.test_accuracy is not None and res.test_accuracy > 0.6  # chance is 0.1
    assert [e["epoch"] for e in res.epochs] == [0.0, 1.0]


def test_resume_is_bit_identical(tmp_path, data):
    train_ds, _ = data
    full, full_res = _run(train_ds)
    # interrupted mid-epoch (step 7 of 10 in epoch 0), then resumed
    part, part_res = _run(train_ds, checkpoint_dir=str(tmp_path), max_steps=7)
    assert not part_res.completed and part_res.global_step == 7
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert (state["epoch"], state["step_in_epoch"]) == (0, 7)
    resumed, res = _run(train_ds, checkpoint_dir=str(tmp_path), resume=True)
    assert res.completed and res.resumed_from_step == 7 and res.global_step == 20
    assert res.losses == full_res.losses
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_resume_across_epoch_boundary(tmp_path, data):
    train_ds, _ = data
    full, _ = _run(train_ds)
    _run(train_ds, checkpoint_dir=str(tmp_path), max_steps=10)
    resumed, res = _run(train_ds, checkpoint_dir=str(tmp_path), resume=True)
    assert res.resumed_from_step == 10
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_truncated_checkpoint_error(tmp_path, data):
    train_ds, _ = data
    _run(train_ds, checkpoint_dir=str(tmp_path), max_steps=3)
    path = tmp_path / CHECKPOINT_NAME
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match=r"truncated or corrupt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"truncated or corrupt"):
        _run(train_ds, checkpoint_dir=str(tmp_path), resume=True)
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left behind


def test_missing_data_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"not found"):
        dataset_for("mlp", "train", root=tmp_path / "nope")
    with pytest.raises(ValueError, match=r"valid models: mlp, small_cnn"):
        dataset_for("resnet", "train")


def test_config_errors(data):
    train_ds, _ = data
    with pytest.raises(ValueError, match=r"unknown optimizer 'lbfgs'; valid"):
        _run(train_ds, optimizer="lbfgs")
    with pytest.raises(ValueError, match=r"distill_weight > 0 needs a teacher"):
        _run(train_ds, distill_weight=0.5)


def test_fit_then_finetune_with_distillation_and_reconstruction(data):
    train_ds, test_ds = data
    torch.manual_seed(0)
    dense = get_model("mlp")
    train(dense, train_ds, config=TrainConfig(epochs=2, lr=2e-3, progress=False))
    calib = torch.stack([train_ds[i][0] for i in range(64)])
    cfg = TrainConfig(
        epochs=2,
        lr=2e-3,
        core_lr=1e-2,
        distill_weight=0.5,
        reconstruction_weight=0.1,
        progress=False,
    )
    student, res = train_compressed(
        dense,
        train_ds,
        compress_kwargs={"layers": ["fc1"], "bond_dim": 3, "fit_steps": 20},
        config=cfg,
        calibration=calib,
        test_data=test_ds,
    )
    assert "layers.0" in student.adntn_fit_report
    assert res.test_accuracy is not None and res.test_accuracy > 0.5
    assert evaluate(student, test_ds)[1] == pytest.approx(res.test_accuracy)


def test_optimizer_groups_cores_by_layer_core_lr():
    """A layer's own core_lr wins over TrainConfig.core_lr; dense parameters keep lr."""
    from adntn_export.layers import ADNTNLinear
    from adntn_export.training import _make_optimizer

    hinted = ADNTNLinear(8, 6, bond_dim=2, bias="generated", core_lr=1e-3)
    plain = ADNTNLinear(6, 4, bond_dim=2)
    model = nn.Sequential(hinted, nn.Tanh(), plain, nn.Linear(4, 3))
    opt = _make_optimizer(model, TrainConfig(lr=3e-4, core_lr=3e-2, progress=False))
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    for p in [*hinted.weight_generator.parameters(), *hinted.bias_generator.parameters()]:
        assert lr_of[id(p)] == 1e-3
    for p in plain.weight_generator.parameters():
        assert lr_of[id(p)] == 3e-2
    assert lr_of[id(plain.bias)] == lr_of[id(model[3].weight)] == 3e-4
    assert len(lr_of) == sum(1 for _ in model.parameters())
    # without TrainConfig.core_lr the unhinted cores train at lr
    opt = _make_optimizer(model, TrainConfig(lr=3e-4, progress=False))
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    assert {lr_of[id(p)] for p in plain.weight_generator.parameters()} == {3e-4}
    assert {lr_of[id(p)] for p in hinted.weight_generator.parameters()} == {1e-3}


TORCHRUN_SCRIPT = """
import os, sys, torch
from adntn_export.training import TrainConfig, dataset_for, train
from adntn_models import get_model
torch.manual_seed(0)
m = get_model("mlp")
ds = dataset_for("mlp", "train", limit=256)
r = train(m, ds, config=TrainConfig(epochs=1, batch_size=32, progress=False,
          checkpoint_dir=sys.argv[1]))
os.makedirs(sys.argv[1], exist_ok=True)
with open(os.path.join(sys.argv[1], "rank" + os.environ["RANK"] + ".txt"), "w") as fh:
    fh.write(f"RANK {os.environ['RANK']} STEPS {r.global_step} LOSS {r.losses[-1]}")
"""


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun not on PATH")
    script = tmp_path / "ddp.py"
    script.write_text(TORCHRUN_SCRIPT)
    paths = os.pathsep.join(str(ROOT / p) for p in (".", "runtimes", "models"))
    env = {**os.environ, "PYTHONPATH": paths}
    # --standalone: the rendezvous takes a free port (a fixed one can be held by another run)
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", str(script)]
    proc = subprocess.run(
        [*cmd, str(tmp_path / "ck")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # One result file per rank (their stdout writes interleave, even mid-line).
    text = " ".join(p.read_text() for p in sorted((tmp_path / "ck").glob("rank*.txt")))
    ranks = dict(re.findall(r"RANK (\d) STEPS (\d+)", text))
    assert sorted(ranks) == ["0", "1"], text
    # each rank sees half of the 256 images: 4 steps of 32; DDP keeps the replicas in sync
    assert set(ranks.values()) == {"4"}
    state = load_checkpoint(tmp_path / "ck" / CHECKPOINT_NAME)
    assert state["world_size"] == 2 and isinstance(state["rng"], list) and len(state["rng"]) == 2
