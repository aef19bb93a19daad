"""The one vocabulary of run modes, shared by torch, ONNX, the device runtime and TVM.

An ADNTN layer's *mode* says when its weight is formed:

* ``materialize``: generated once (at load) and kept; a dense-sized buffer in memory.
* ``regenerate``: generated at every call, tile by tile; the whole weight never exists.
* ``fused``: the input is contracted into the network; the weight is never formed.

Places that need more than a layer mode use explicit supersets:

* :class:`LoweringMode` adds ``dense``: the weight is stored dense in the file or artefact
  (an ONNX ``dense`` export; on TVM, "fold into constants at compile time").
* :class:`ExportMode` adds ``auto``: write the plan and let the device policy choose per layer.

Each public boundary validates once with :func:`parse_mode`, which names the bad value, the
valid choices and, when the value came from the command line, the flag.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import TypeVar

__all__ = ["ExportMode", "LoweringMode", "Mode", "missing_and_unknown", "parse_mode"]


class Mode(StrEnum):
    """How an ADNTN layer forms its weight at run time."""

    MATERIALIZE = "materialize"
    REGENERATE = "regenerate"
    FUSED = "fused"


class LoweringMode(StrEnum):
    """What a lowered layer stores and runs: a :class:`Mode`, or its dense weight."""

    MATERIALIZE = "materialize"
    REGENERATE = "regenerate"
    FUSED = "fused"
    DENSE = "dense"


class ExportMode(StrEnum):
    """What an export asks for: a :class:`LoweringMode` for every layer, or ``auto``."""

    MATERIALIZE = "materialize"
    REGENERATE = "regenerate"
    FUSED = "fused"
    DENSE = "dense"
    AUTO = "auto"


E = TypeVar("E", Mode, LoweringMode, ExportMode)


def parse_mode(value: object, kind: type[E], *, name: str = "mode") -> E:
    """``value`` as a member of ``kind``; else ``ValueError`` naming it and the valid choices.

    ``name`` is what the user typed the value as: a Python keyword (``"mode"``) or a CLI flag
    (``"--mode"``).
    """
    if isinstance(value, kind):
        return value
    try:
        return kind(value)
    except ValueError:
        choices = " | ".join(m.value for m in kind)
        raise ValueError(f"{name}={value!r} is not a valid mode; choose one of {choices}") from None


def missing_and_unknown(
    expected: Iterable[str], given: Iterable[str]
) -> tuple[list[str], list[str]]:
    """The expected names that ``given`` lacks, and the given names nobody expects, in order.

    The one check behind every "name each layer / input exactly" boundary (per-layer modes,
    session inputs, checkpoint tensors); each caller words its own error.
    """
    expected = list(expected)
    given = list(given)
    want, have = set(expected), set(given)
    return [n for n in expected if n not in have], [n for n in given if n not in want]
