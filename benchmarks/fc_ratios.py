"""Compression ratios of ADNTN layers at the AlexNet / VGG-16 fully connected shapes.

Counts only (no training): every core, and the bias either dense or generated.
Writes ``benchmarks/results/fc_ratios.json`` and prints a table.

    python benchmarks/fc_ratios.py [--bond-dim 4]
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import torch

from adntn_export import ADNTNLinear, compression_report

SHAPES = {  # name: (in_features, out_features)
    "AlexNet fc6": (9216, 4096),
    "VGG-16 fc6": (25088, 4096),
    "fc7 (both)": (4096, 4096),
    "fc8 (both)": (4096, 1000),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bond-dim", type=int, default=4)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "fc_ratios.json"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    print(
        f"{'layer':12s} {'net':5s} {'sites':>5s} {'dense':>12s} {'cores':>6s} "
        f"{'weight x':>9s} {'+dense bias x':>13s} {'+gen. bias x':>12s}"
    )
    for name, (inp, out) in SHAPES.items():
        for net in ("ttn", "attn", "mera"):
            dense_bias = compression_report(
                ADNTNLinear(inp, out, network=net, bond_dim=args.bond_dim)
            ).layers[0]
            gen_bias = compression_report(
                ADNTNLinear(inp, out, network=net, bond_dim=args.bond_dim, bias="generated")
            ).layers[0]
            row = {
                "layer": name,
                "in_features": inp,
                "out_features": out,
                "network": net,
                "bond_dim": args.bond_dim,
                "num_sites": ADNTNLinear(
                    inp, out, network=net, bond_dim=args.bond_dim
                ).plan.num_sites,
                "dense_weight_params": dense_bias.dense_weight_params,
                "stored_weight_params": dense_bias.stored_weight_params,
                "weight_ratio": dense_bias.weight_ratio,
                "ratio_dense_bias": dense_bias.ratio,
                "ratio_generated_bias": gen_bias.ratio,
                "stored_params_generated_bias": gen_bias.stored_params,
            }
            rows.append(row)
            print(
                f"{name:12s} {net:5s} {row['num_sites']:5d} {row['dense_weight_params']:12,} "
                f"{row['stored_weight_params']:6,} {row['weight_ratio']:9,.0f} "
                f"{row['ratio_dense_bias']:13,.0f} {row['ratio_generated_bias']:12,.0f}"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": "python benchmarks/fc_ratios.py --bond-dim " + str(args.bond_dim),
                "python": platform.python_version(),
                "torch": torch.__version__,
                "rows": rows,
            },
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
