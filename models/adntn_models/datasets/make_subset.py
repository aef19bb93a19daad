"""Make the Fashion-MNIST subset shipped in ``adntn_models/data/fashion_mnist_subset/``.

Run from the repository (with ``dataset-fashion-mnist`` installed)::

    PYTHONPATH=models python -m adntn_models.datasets.make_subset

It draws, with ``numpy.random.default_rng(seed)``, ``per_class`` images of each of
the 10 classes without replacement (train: 300, test: 100, seed 0), shuffles the
selection with the same generator, and writes the four standard gzipped IDX files
(gzip level 9, no time stamp), so the output is byte-for-byte reproducible.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from .fashion_mnist import DEFAULT_ROOT, FASHION_MNIST_CLASSES, idx_file_names, load_fashion_mnist
from .idx import write_idx

__all__ = ["DEFAULT_OUT", "DEFAULT_PER_CLASS", "DEFAULT_SEED", "balanced_indices", "make_subset"]

#: The shipped subset's folder in the source tree.
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "data" / "fashion_mnist_subset"

#: Images per class in each split of the shipped subset.
DEFAULT_PER_CLASS: dict[str, int] = {"train": 300, "test": 100}

#: Seed of the shipped subset.
DEFAULT_SEED = 0


def balanced_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``per_class`` examples of every class, drawn without replacement, shuffled.

    Args:
        labels: Integer labels ``[N]`` with values ``0..num_classes-1``.
        per_class: Examples to draw per class.
        rng: The random generator (consumed: one draw per class, then one permutation).

    Returns:
        int64 indices into ``labels``, ``per_class * num_classes`` of them.

    Raises:
        ValueError: If a class has fewer than ``per_class`` examples.
    """
    chosen = []
    for cls in range(len(FASHION_MNIST_CLASSES)):
        pool = np.flatnonzero(labels == cls)
        if len(pool) < per_class:
            raise ValueError(f"class {cls} has {len(pool)} examples, fewer than {per_class}")
        chosen.append(np.sort(rng.choice(pool, size=per_class, replace=False)))
    return rng.permutation(np.concatenate(chosen)).astype(np.int64)


def make_subset(
    root: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    *,
    per_class: dict[str, int] | None = None,
    seed: int = DEFAULT_SEED,
) -> list[Path]:
    """Write a class-balanced Fashion-MNIST subset as four gzipped IDX files.

    Args:
        root: Directory of the full data set; ``None`` means the Debian location.
        out: Destination directory (created if needed); ``None`` means :data:`DEFAULT_OUT`.
        per_class: Images per class for ``"train"`` and ``"test"``; ``None`` means
            :data:`DEFAULT_PER_CLASS`.
        seed: Seed of ``numpy.random.default_rng`` (one generator for both splits).

    Returns:
        The files written.
    """
    per_class = dict(DEFAULT_PER_CLASS if per_class is None else per_class)
    out = DEFAULT_OUT if out is None else Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = []
    for split in ("train", "test"):
        images, labels = load_fashion_mnist(root, split)
        idx = balanced_indices(labels, per_class[split], rng)
        written.append(write_idx(out / idx_file_names(split, "images")[0], images[idx]))
        written.append(
            write_idx(out / idx_file_names(split, "labels")[0], labels[idx].astype(np.uint8))
        )
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; see the module docstring.

    Args:
        argv: Arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit code.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="full data set directory")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--train-per-class", type=int, default=DEFAULT_PER_CLASS["train"])
    parser.add_argument("--test-per-class", type=int, default=DEFAULT_PER_CLASS["test"])
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    files = make_subset(
        args.root,
        args.out,
        per_class={"train": args.train_per_class, "test": args.test_per_class},
        seed=args.seed,
    )
    for path in files:
        print(f"{path}  {path.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
