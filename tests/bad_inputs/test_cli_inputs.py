"""Hostile inputs to the ``adntn`` CLI and the training / compression API (issue #12).

Every case must fail before any work: exit code 2 (or the documented exception), a message
that names the bad value (the path or the flag) and what is valid, within 10 s, and nothing
left behind in the working directory.

Unwritable places that work for root as well as for a normal user (root ignores file modes):
a path below a regular file (ENOTDIR), ``/sys`` (sysfs refuses new files) and ``/proc``. A
folder made read-only with ``chmod`` would not stop root.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from adntn_export.cli import main

LIMIT_S = 10.0
TINY = ["--epochs", "1", "--limit", "64", "--test-limit", "32", "--no-progress"]
SYS_DIR = Path("/sys")


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def place(tmp_path, monkeypatch):
    """A working directory with a regular file, a directory and a checkpoint in it."""
    from adntn_export.commands.train import _save
    from adntn_models import get_model

    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    torch.manual_seed(0)
    _save(get_model("mlp"), "mlp", tmp_path / "mlp.pt")
    return tmp_path


def _run_cli(argv: list[str], place: Path, capsys) -> tuple[int, str, float]:
    argv = [a.format(root=place) for a in argv]
    before = _snapshot(place)
    t0 = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert _snapshot(place) == before, "files were left behind"
    return code, err, seconds


UNDER_FILE = "{root}/file/sub/out"
# (id, argv, substrings the error must contain: the flag, the bad value, what is valid)
CASES: list[tuple[str, list[str], list[str]]] = [
    # --- outputs that cannot be written: refused before any data is read or step taken
    ("train-out-below-file", ["train", "mlp", "--out", UNDER_FILE, *TINY],
     ["--out", "file/sub/out", "is a file, not a directory"]),
    ("train-out-sysfs", ["train", "mlp", "--out", "/sys/adntn-out", *TINY],
     ["--out", "/sys/adntn-out", "not writable", "writable folder"]),
    ("train-out-is-file", ["train", "mlp", "--out", "{root}/file", *TINY],
     ["--out", "existing file", "give a directory"]),
    ("train-ckpt-below-file", ["train", "mlp", "--checkpoint-dir", UNDER_FILE, *TINY],
     ["--checkpoint-dir", "file/sub/out", "not a directory"]),
    ("train-ckpt-proc", ["train", "mlp", "--checkpoint-dir", "/proc/adntn-ck", *TINY],
     ["--checkpoint-dir", "/proc/adntn-ck", "not writable"]),
    ("compress-fit-out-below-file",
     ["compress", "mlp", "--fit", "--layers", "fc1", "--out", UNDER_FILE + ".json"],
     ["--out", "file/sub/out.json", "not a directory"]),
    ("compress-out-is-dir", ["compress", "mlp", "--fit", "--out", "{root}/dir"],
     ["--out", "existing directory", "give a file name"]),
    ("compress-out-proc", ["compress", "mlp", "--out", "/proc/adntn.json"],
     ["--out", "/proc/adntn.json", "not writable"]),
    ("export-o-existing-dir", ["export", "{root}/mlp.pt", "-o", "{root}/dir"],
     ["-o/--output", "existing directory", "give a file name"]),
    ("export-o-sysfs", ["export", "{root}/mlp.pt", "-o", "/sys/adntn.onnx"],
     ["-o/--output", "/sys/adntn.onnx", "not writable"]),
    ("bench-json-below-file", ["bench", "{root}/missing.onnx", "--json", UNDER_FILE + ".json"],
     ["--json", "file/sub/out.json", "not a directory"]),
    ("bench-plot-existing-dir", ["bench", "{root}/missing.onnx", "--plot", "{root}/dir"],
     ["--plot", "existing directory"]),
    ("demo-out-below-file", ["demo", "--quick", "--out", UNDER_FILE],
     ["--out", "file/sub/out", "not a directory"]),
    ("report-json-sysfs", ["report", "--shape", "64x64", "--json", "/sys/adntn.json"],
     ["--json", "/sys/adntn.json", "not writable"]),
    ("compile-o-below-file", ["compile", "{root}/m.onnx", "--target", "host", "-o", UNDER_FILE],
     ["-o/--output", "file/sub/out", "not a directory"]),
    ("tune-o-is-file", ["tune", "{root}/m.onnx", "--target", "host", "--trials", "1",
                        "-o", "{root}/file"],
     ["-o/--output", "existing file"]),
    # --- option values out of range: refused before any work, naming the CLI flag
    ("train-epochs-0", ["train", "mlp", *TINY, "--epochs", "0"], ["--epochs", ">= 1", "got 0"]),
    ("train-dense-epochs-neg", ["train", "mlp", *TINY, "--dense-epochs", "-3"],
     ["--dense-epochs", ">= 1", "-3"]),
    ("train-batch-0", ["train", "mlp", *TINY, "--batch-size", "0"], ["--batch-size", ">= 1"]),
    ("train-limit-0", ["train", "mlp", *TINY, "--limit", "0"], ["--limit", ">= 1", "got 0"]),
    ("train-lr-0", ["train", "mlp", *TINY, "--lr", "0"], ["--lr", "> 0", "got 0.0"]),
    ("train-lr-nan", ["train", "mlp", *TINY, "--lr", "nan"], ["--lr", "> 0", "nan"]),
    ("train-distill-5", ["train", "mlp", *TINY, "--layers", "fc1", "--distill", "5"],
     ["--distill", "in [0, 1]", "got 5.0"]),
    ("train-distill-no-compression", ["train", "mlp", *TINY, "--distill", "0.5"],
     ["--distill", "needs compression flags", "--layers"]),
    ("train-reconstruction-no-compression", ["train", "mlp", *TINY, "--reconstruction", "1"],
     ["--reconstruction", "needs compression flags"]),
    ("train-temperature-neg", ["train", "mlp", *TINY, "--layers", "fc1", "--temperature", "-1"],
     ["--temperature", "> 0", "-1"]),
    ("train-core-lr-neg", ["train", "mlp", *TINY, "--layers", "fc1", "--core-lr", "-0.1"],
     ["--core-lr", "> 0", "-0.1"]),
    ("train-resume-no-ckpt-dir", ["train", "mlp", *TINY, "--resume"],
     ["--resume needs --checkpoint-dir"]),
    ("train-bond-dim-0", ["train", "mlp", *TINY, "--layers", "fc1", "--bond-dim", "0"],
     ["--bond-dim", ">= 1", "got 0"]),
    ("train-activation-unknown", ["train", "mlp", *TINY, "--layers", "fc1", "--activation",
                                  "swish"], ["--activation", "'swish'", "tanh", "relu"]),
    ("train-layer-unknown", ["train", "mlp", *TINY, "--layers", "nope"], ["nope", "fc1"]),
    ("train-model-unknown", ["train", "resnet", *TINY], ["resnet", "small_cnn"]),
    ("compress-fit-steps-neg", ["compress", "mlp", "--fit", "--fit-steps", "-1"],
     ["--fit-steps", ">= 0", "-1"]),
    ("export-batch-0", ["export", "{root}/mlp.pt", "-o", "{root}/m.onnx", "--batch", "0"],
     ["--batch", ">= 1", "got 0"]),
    ("export-opset-7", ["export", "{root}/mlp.pt", "-o", "{root}/m.onnx", "--opset", "7"],
     ["--opset", "in [18, ", "got 7"]),
    ("export-tile-rows-0", ["export", "{root}/mlp.pt", "-o", "{root}/m.onnx", "--tile-rows", "0"],
     ["--tile-rows", "in [1, 2147483647]", "got 0"]),
    ("demo-epochs-0", ["demo", "--quick", "--epochs", "0"], ["--epochs", ">= 1", "got 0"]),
    ("tune-trials-neg", ["tune", "{root}/m.onnx", "--target", "host", "--trials", "-2",
                         "-o", "{root}/t"], ["--trials", ">= 0", "-2"]),
    ("compile-input-shape", ["compile", "{root}/m.onnx", "--target", "host", "-o", "{root}/c",
                             "--input-shape", "x=1,a"], ["--input-shape", "x=1,a", "integer"]),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "must"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_cli_refuses_before_work(argv, must, place, capsys):
    if any("/sys/" in a for a in argv) and not SYS_DIR.is_dir():
        pytest.skip("no /sys on this system")
    code, err, seconds = _run_cli(argv, place, capsys)
    assert code == 2, err
    assert "Traceback" not in err
    assert err.startswith(f"adntn {argv[0]}: error: "), err
    for text in must:
        assert text in err, (text, err)
    assert seconds < LIMIT_S


def test_late_oserror_is_reported_not_raised(place, capsys, monkeypatch):
    """An OSError after the checks (disk full, a folder removed meanwhile): exit 2, the path
    and the reason, no traceback."""
    from adntn_export.commands import report

    def fail(args):
        raise PermissionError(13, "Permission denied", str(place / "out.json"))

    monkeypatch.setattr(report, "run", fail)
    code, err, _ = _run_cli(["report", "--shape", "8x8"], place, capsys)
    assert code == 2 and "Traceback" not in err
    assert err == f"adntn report: error: cannot write {place / 'out.json'}: Permission denied\n"


def test_late_oserror_names_path_and_reason():
    from adntn_export.cli import describe_os_error

    exc = PermissionError(13, "Permission denied", "/data/out/model.pt")
    assert describe_os_error(exc) == "cannot write /data/out/model.pt: Permission denied"
    exc = FileNotFoundError(2, "No such file or directory", "/x")
    assert describe_os_error(exc) == "cannot access /x: No such file or directory"


# ----------------------------------------------------------------------------- resume


@pytest.fixture
def trained(place, capsys):
    """One finished tiny run with checkpoints in ``ck/``."""
    argv = ["train", "mlp", *TINY, "--checkpoint-dir", "ck", "--out", "o1"]
    assert main(argv) == 0
    capsys.readouterr()
    return place


@pytest.mark.parametrize(
    ("change", "must"),
    [
        (["--epochs", "2"], ["--epochs was 1, now 2"]),
        (["--lr", "0.01"], ["--lr was 0.001, now 0.01"]),
        (["--seed", "3", "--batch-size", "32"], ["--batch-size was 64, now 32", "--seed was 0"]),
        (["--optimizer", "sgd"], ["--optimizer was 'adam', now 'sgd'"]),
        (["--limit", "128"], ["--limit was 64, now 128"]),
        (["--layers", "fc1", "--bond-dim", "2"], ["--layers was None, now ['fc1']"]),
    ],
    ids=["epochs", "lr", "seed+batch", "optimizer", "limit", "compression"],
)
def test_resume_with_changed_settings_is_refused(change, must, trained, capsys):
    argv = ["train", "mlp", *TINY, "--checkpoint-dir", "ck", "--out", "o2", "--resume", *change]
    before = _snapshot(trained)
    t0 = time.perf_counter()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    for text in must:
        assert text in err, (text, err)
    assert "another --checkpoint-dir" in err and "--checkpoint-dir 'ck'" in err
    assert time.perf_counter() - t0 < LIMIT_S
    assert _snapshot(trained) == before


def test_resume_of_older_checkpoint_checks_its_training_settings(trained, capsys):
    """Without settings.json (checkpoints of an earlier adntn), the checkpoint's own
    training settings are compared."""
    (trained / "ck" / "settings.json").unlink()
    argv = ["train", "mlp", *TINY, "--checkpoint-dir", "ck", "--out", "o2", "--resume"]
    assert main([*argv, "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "--dense-epochs/--epochs was 1, now 2" in err and "ck/dense/last.pt" in err


def test_resume_with_same_settings_continues(trained, capsys):
    argv = ["train", "mlp", *TINY, "--checkpoint-dir", "ck", "--out", "o2", "--resume"]
    assert main(argv) == 0
    assert (trained / "o2" / "summary.json").is_file()


def test_resume_api_names_every_change(tmp_path):
    from adntn_export.training import ResumeMismatchError, TrainConfig, dataset_for, train
    from adntn_models import get_model

    data = dataset_for("mlp", "train", limit=64)
    cfg = TrainConfig(epochs=1, progress=False, checkpoint_dir=str(tmp_path))
    train(get_model("mlp"), data, config=cfg)
    cfg2 = dataclasses.replace(cfg, epochs=2, lr=0.5, resume=True)
    with pytest.raises(ResumeMismatchError, match=r"epochs 1 -> 2, lr 0.001 -> 0.5") as info:
        train(get_model("mlp"), data, config=cfg2)
    assert info.value.changes == [("epochs", 1, 2), ("lr", 0.001, 0.5)]


def test_resumed_epoch_loss_averages_the_whole_epoch(tmp_path):
    """Ctrl-C mid-epoch, then --resume: the epoch's train_loss is the uninterrupted one."""
    from adntn_export.training import TrainConfig, dataset_for, train
    from adntn_models import get_model

    data = dataset_for("mlp", "train", limit=640)

    def run(**kw):
        torch.manual_seed(0)
        cfg = TrainConfig(epochs=2, batch_size=64, progress=False, **kw)
        return train(get_model("mlp"), data, config=cfg)

    full = run()
    stopped = run(checkpoint_dir=str(tmp_path), max_steps=13)  # epoch 1, step 3 of 10
    assert not stopped.completed
    resumed = run(checkpoint_dir=str(tmp_path), resume=True)
    assert resumed.resumed_from_step == 13
    assert [e["train_loss"] for e in resumed.epochs] == [e["train_loss"] for e in full.epochs]


# ----------------------------------------------------------------------------- API


class _Two(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(32, 32)
        self.fc2 = nn.Linear(32, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


def _same_model(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return (
        [type(m) for m in a.modules()] == [type(m) for m in b.modules()]
        and sa.keys() == sb.keys()
        and all(torch.equal(sa[k], sb[k]) for k in sa)
    )


@pytest.mark.parametrize("fit", [False, True], ids=["no-fit", "fit"])
def test_compress_failing_on_second_layer_leaves_model_unchanged(fit):
    from adntn_export.compress import compress

    torch.manual_seed(0)
    model = _Two()
    original = copy.deepcopy(model)
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="bond_dim"):
        compress(model, layers={"fc1": {}, "fc2": {"bond_dim": 0}}, fit=fit, fit_steps=5)
    assert time.perf_counter() - t0 < LIMIT_S
    assert _same_model(model, original)
    assert not hasattr(model, "adntn_fit_report")


def test_compress_failing_mid_fit_leaves_model_unchanged(monkeypatch):
    from adntn_export.compress import compress
    from adntn_export.layers import ADNTNLinear

    real = ADNTNLinear.from_linear
    calls = []

    def flaky(dense, **kw):
        calls.append(dense)
        if len(calls) == 2:
            raise RuntimeError("fit failed on the second layer")
        return real(dense, **kw)

    monkeypatch.setattr(ADNTNLinear, "from_linear", flaky)
    torch.manual_seed(0)
    model = _Two()
    original = copy.deepcopy(model)
    with pytest.raises(RuntimeError, match="second layer"):
        compress(model, layers=["fc1", "fc2"], fit_steps=5)
    assert len(calls) == 2
    assert _same_model(model, original)
    model2 = compress(copy.deepcopy(original), layers=["fc1"], fit_steps=5)
    assert type(model2.fc1).__name__ == "ADNTNLinear"  # and the same call works when it can


def test_export_onnx_to_existing_directory_refused_before_export(tmp_path, monkeypatch):
    from adntn_export import onnx_export

    def boom(*a, **k):
        raise AssertionError("exported before checking the path")

    monkeypatch.setattr(onnx_export, "export_onnx_model", boom)
    with pytest.raises(IsADirectoryError, match="existing directory") as info:
        onnx_export.export_onnx(_Two(), torch.randn(1, 32), tmp_path)
    assert info.value.filename == str(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_train_api_unwritable_checkpoint_dir_fails_before_training(tmp_path):
    from adntn_export.training import TrainConfig, dataset_for, train
    from adntn_models import get_model

    (tmp_path / "file").write_text("x")
    model = get_model("mlp")
    before = copy.deepcopy(model.state_dict())
    cfg = TrainConfig(epochs=1, progress=False, checkpoint_dir=str(tmp_path / "file" / "ck"))
    with pytest.raises(NotADirectoryError):
        train(model, dataset_for("mlp", "train", limit=64), config=cfg)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # no step
    assert sorted(os.listdir(tmp_path)) == ["file"]
