"""compression_report: exact counts, ratios, table and JSON."""

from __future__ import annotations

import json

import pytest
from torch import nn

from adntn_export import ADNTNConv2d, ADNTNLinear, compression_report


def test_counts_are_exact() -> None:
    model = nn.Sequential(
        ADNTNConv2d(3, 16, 3, padding=1, bond_dim=2),
        nn.ReLU(),
        nn.Flatten(),
        ADNTNLinear(16 * 8 * 8, 256, bond_dim=3, bias="generated"),
        nn.ReLU(),
        nn.Linear(256, 10),
    )
    report = compression_report(model)
    conv, fc = report.layers
    assert (conv.name, fc.name) == ("0", "3")
    assert conv.dense_params == 16 * 3 * 9 + 16
    assert conv.stored_params == model[0].plan.num_parameters + 16
    assert fc.dense_params == 1024 * 256 + 256
    assert (
        fc.stored_params
        == model[3].plan.num_parameters + model[3].bias_generator.plan.num_parameters
    )
    assert fc.stored_params == sum(p.numel() for p in model[3].parameters())
    assert fc.ratio == fc.dense_params / fc.stored_params
    assert fc.weight_ratio == 1024 * 256 / model[3].plan.num_parameters
    stored = sum(p.numel() for p in model.parameters())
    assert report.model_stored_params == stored
    assert (
        report.model_dense_params
        == stored - conv.stored_params - fc.stored_params + conv.dense_params + fc.dense_params
    )
    assert report.total_ratio == pytest.approx(
        (conv.dense_params + fc.dense_params) / (conv.stored_params + fc.stored_params)
    )


def test_table_and_json() -> None:
    model = nn.Sequential(ADNTNLinear(4096, 4096, network="mera", bond_dim=4))
    report = compression_report(model)
    text = str(report)
    assert "ADNTN compression report" in text and "4096x4096" in text and "mera" in text
    data = json.loads(report.to_json())
    assert data["layers"][0]["dense_params"] == 4096 * 4096 + 4096
    assert data["layers"][0]["ratio"] == pytest.approx(report.layers[0].ratio)
    assert data["model_ratio"] > 1000


def test_plain_model_has_no_layers() -> None:
    report = compression_report(nn.Linear(3, 4))
    assert report.layers == () and report.model_ratio == 1.0


def test_bad_input() -> None:
    with pytest.raises(TypeError, match=r"compression_report needs an nn.Module, got dict"):
        compression_report({})
