"""The ``adntn`` console script: every verb has --help; errors exit 2 with a message."""

from __future__ import annotations

import subprocess
import sys

import pytest

from adntn_export.cli import build_parser, main

VERBS = sorted(build_parser()._subparsers._group_actions[0].choices)  # noqa: SLF001


def test_expected_verbs_exist() -> None:
    for verb in ("demo", "train", "compress", "export", "bench", "compile", "tune", "report"):
        assert verb in VERBS


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([verb, "--help"])
    assert exc.value.code == 0
    assert "usage: adntn " + verb in capsys.readouterr().out


def test_top_level_help_is_fast_and_lists_verbs() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "adntn_export.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for verb in VERBS:
        assert verb in out


def test_report_verb_prints_plan(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--shape", "4096x4096", "--network", "mera", "--bond-dim", "4"]) == 0
    out = capsys.readouterr().out
    assert "ADNTN mera plan" in out and "ratio" in out


def test_report_verb_bad_shape(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", "--shape", "40x", "--network", "ttn"]) == 2
    assert "--shape must look like OUTxIN" in capsys.readouterr().err


def test_package_level_api() -> None:
    import adntn_export

    assert callable(adntn_export.compress)
    assert adntn_export.export_onnx.__module__ == "adntn_export.onnx_export"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        adntn_export.nope  # noqa: B018
