"""What the resumable benchmark scripts share: one JSON of cached rows, saved atomically
after every finished row, and the table block they keep up to date in a README.

Two runs of one script may share a results file (two parts of a table on two cores): a row
is merged into the file as it is on disk, under a lock, so neither run drops the other's
rows."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path


def save(path: Path, data: dict) -> None:
    """Write ``data`` as JSON to ``path`` atomically (a crash never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def write_readme(path: Path, block: str, start: str, end: str) -> None:
    """Replace the text between the ``start`` and ``end`` markers of ``path`` by ``block``
    (appended, markers included in ``block``, when they are not there yet).

    Scripts with different results files share one README: the read-modify-write holds an
    exclusive lock on the README itself, so two of them never drop each other's block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:  # creates it; the lock is advisory, on this descriptor
        fcntl.flock(handle, fcntl.LOCK_EX)
        text = path.read_text() or "# Benchmarks\n\n"
        if start in text and end in text:
            head, rest = text.split(start, 1)
            text = head + block + rest.split(end, 1)[1]
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
        path.write_text(text)


@contextlib.contextmanager
def _locked(out: Path) -> Iterator[None]:
    """An exclusive lock on ``out.lock`` (one per results file) while the block runs."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _merge(out: Path, data: dict, section: str) -> None:
    """Add to ``data[section]`` the entries another run saved to ``out`` meanwhile (when the
    file's ``protocol`` is ``data``'s); ``data``'s own entries win. Call it under the lock."""
    if out.exists():
        disk = json.loads(out.read_text())
        if disk.get("protocol") == data.get("protocol"):
            data[section] = {**disk.get(section, {}), **data.get(section, {})}


def save_entry(out: Path, data: dict, section: str, key: str, entry: dict) -> None:
    """Record ``entry`` as ``data[section][key]`` and save ``data`` to ``out``, merged first
    with what other runs saved there meanwhile, under the file's lock (nothing is dropped)."""
    with _locked(out):
        _merge(out, data, section)
        data.setdefault(section, {})[key] = entry
        save(out, data)


def cache_row(
    data: dict,
    key: str,
    row: dict,
    *,
    command: str,
    machine: dict,
    out: Path,
    readme: Path,
    markdown: Callable[[dict], str],
    markers: tuple[str, str],
    log: Callable[[str], None],
    note: str = "",
) -> None:
    """Record a finished row (with the command and machine that made it), save the JSON
    and refresh the README's table: an interrupted run loses at most the row in progress.

    The rows another run saved to ``out`` meanwhile (same ``protocol``, if ``data`` has one)
    are merged into ``data`` first, under an exclusive lock on ``out.lock``."""
    row["command"], row["machine"] = command, machine
    with _locked(out):
        _merge(out, data, "rows")
        data["rows"][key] = row
        save(out, data)
        write_readme(readme, markdown(data), *markers)
    log(f"{key}: row cached in {out}{note}")
