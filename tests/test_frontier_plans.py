"""benchmarks/frontier.py's plan search: targets parsed with CLI-flag errors, budgets kept,
the per-layer targets reached by the plans the ``*_ttn_target`` recipes ship."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from adntn_export.compress import load_recipe

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import frontier  # noqa: E402


def test_parse_target():
    assert frontier.parse_target("1e4") == {"fc6": 1e4, "fc7": 1e4}
    assert frontier.parse_target("1e5/1.5e5") == {"fc6": 1e5, "fc7": 1.5e5}
    for bad in ("abc", "0.5", "1e4/2e4/3e4", "1e4/"):
        with pytest.raises(ValueError, match=r"--targets: bad target .* valid: a ratio >= 1"):
            frontier.parse_target(bad)


def test_bias_generator_cost():
    # a bond-1 bias generator of a 4096-wide layer: what the 3e5 target cannot fit under
    assert frontier._bias_stored(4096) == 35


@pytest.mark.parametrize("target", ["1e2", "1e4", "1e5/1.5e5"])
def test_plans_stay_within_their_budgets(target):
    targets = frontier.parse_target(target)
    plans = frontier.plan_for("ttn", targets)
    assert plans is not None and set(plans) == set(frontier.LAYERS)
    for name, plan in plans.items():
        out_f, in_f = frontier.LAYERS[name]
        dense = out_f * in_f + out_f
        assert plan["ratio"] >= targets[name]
        assert plan["stored"] == frontier.layer_stored(
            "ttn", (out_f, in_f), plan["num_sites"], plan["bond_dim"], "paired", plan["arity"]
        )
        assert dense / plan["stored"] == pytest.approx(plan["ratio"])


def test_targets_past_the_smallest_plan_are_infeasible():
    assert frontier.plan_for("ttn", 3e5) is None


def test_the_target_recipe_ships_the_plans_the_search_finds():
    plans = frontier.plan_for("ttn", frontier.parse_target("1e5/1.5e5"))
    assert plans is not None
    layers = load_recipe("alexnet32_ttn_target")["layers"]
    for name, plan in plans.items():
        shipped = {"arity": 2, **layers[name]}
        assert shipped == {k: plan[k] for k in ("num_sites", "bond_dim", "arity")}


def test_two_runs_sharing_the_points_file_keep_each_others_points(tmp_path):
    """Two frontier runs (one per core) load the file at their start and save a point each:
    the second save keeps the first run's point (merged under the file's lock)."""
    import json

    from _results import save_entry

    out = tmp_path / "frontier.json"
    first = {"protocol": "p", "points": {}}
    second = {"protocol": "p", "points": {}}  # loaded before the first run saved anything
    save_entry(out, first, "points", "ttn@1e3/s1", {"acc": 0.9})
    save_entry(out, second, "points", "mera@1e3/s1", {"acc": 0.8})
    assert json.loads(out.read_text())["points"] == {
        "ttn@1e3/s1": {"acc": 0.9},
        "mera@1e3/s1": {"acc": 0.8},
    }
    # a file written under another protocol is not merged into this run's points
    other = {"protocol": "q", "points": {}}
    save_entry(out, other, "points", "attn@1e3/s1", {"acc": 0.7})
    assert json.loads(out.read_text())["points"] == {"attn@1e3/s1": {"acc": 0.7}}


def test_readme_table_marks_infeasible_targets_and_averages_seeds():
    data = {
        "dense_acc": 0.91,
        "points": {
            "ttn@1e3/s0": {"topology": "ttn", "acc": 0.90, "ratio": 1026.0},
            "ttn@1e3/s1": {"topology": "ttn", "acc": 0.92, "ratio": 1026.0},
            "attn@1e5/s0": {"topology": "attn", "infeasible": "no plan"},
            "ttn@1e5/s0": {"topology": "ttn", "acc": 0.85, "ratio": 100470.0},
        },
    }
    text = frontier.markdown(data)
    assert text.startswith(frontier.START) and text.endswith(frontier.END)
    assert "| target | ttn | attn |" in text
    assert "| 1e3 | 0.9100 (1,026x) |  |" in text
    assert "| 1e5 | 0.8500 (100,470x) | infeasible |" in text
    assert "seed(s) 0, 1" in text and "0.9100." in text
    assert "| 1e2 |" not in text  # no point, no row


def test_points_at_their_own_core_lr_and_at_chance_are_told_apart():
    assert frontier.parse_key("ttn@1e4/s1") == ("ttn", "1e4", 1, None)
    assert frontier.parse_key("attn@1e5/1.5e5/s2/lr0.003") == ("attn", "1e5/1.5e5", 2, 0.003)
    data = {
        "points": {
            "attn@1e2/s1": {"topology": "attn", "acc": 0.1, "ratio": 101.0},
            "attn@1e2/s1/lr0.003": {"topology": "attn", "acc": 0.91, "ratio": 101.0},
        }
    }
    text = frontier.markdown(data)
    assert "| target | attn | attn (core LR 0.003) |" in text
    assert "| 1e2 | chance: 0.1000 (101x) | 0.9100 (101x) |" in text


def test_core_lr_out_of_range_names_the_flag(capsys):
    with pytest.raises(SystemExit):
        frontier.main(["--core-lr", "3"])
    assert "--core-lr must be in (0, 1), got 3.0" in capsys.readouterr().err


def test_plot_keeps_chance_points_off_the_scale_of_the_learned_ones(tmp_path):
    pytest.importorskip("matplotlib")
    data = {
        "points": {
            "attn@1e2/s1": {"acc": 0.1, "ratio": 101.0},
            "attn@1e2/s1/lr0.003": {"acc": 0.91, "ratio": 101.0},
            "attn@1e3/s1": {"acc": 0.905, "ratio": 1064.0},
            "attn@3e5/s1": {"infeasible": "no plan"},
        },
        "dense_acc": 0.913,
    }
    fig = frontier.plot(data, tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 0
    import matplotlib.pyplot as plt

    assert not plt.fignum_exists(fig.number)  # closed after saving: a long-lived caller leaks none
    ax = fig.axes[0]
    bottom, top = ax.get_ylim()
    assert 0.8 < bottom < 0.905 and top > 0.913  # chance (0.1) does not squash the curve
    labels = ax.get_legend_handles_labels()[1]
    assert labels[:2] == ["attn", "attn (core LR 0.003)"]
    assert any(lbl.startswith("learned nothing") for lbl in labels)
    crosses = [ln for ln in ax.get_lines() if ln.get_label().startswith("learned nothing")]
    assert list(crosses[0].get_ydata()) == [bottom]  # drawn on the lower edge
