"""atomic_write: whole file or nothing, normal permissions, clear errors."""

from __future__ import annotations

import os
import stat

import pytest

from adntn_runtime.files import atomic_write


def test_writes_whole_file_with_umask_permissions(tmp_path):
    target = tmp_path / "out.bin"
    with atomic_write(target) as f:
        f.write(b"abc")
    assert target.read_bytes() == b"abc"
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_error_keeps_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"), atomic_write(target) as f:
        f.write(b"partial")
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_missing_directory_is_named(tmp_path):
    with pytest.raises(PermissionError, match=r"cannot write .*nope.*is not writable"):
        with atomic_write(tmp_path / "nope" / "x.bin"):
            pass
