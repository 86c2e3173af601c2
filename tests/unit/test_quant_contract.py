"""edgekit.quant: the typed export precision and the activation-quantizer records that export reads."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from edgekit.methods import MethodReport
from edgekit.quant import ActQ, act_records, attach_act_records, int_matmul_records, loosest


def test_loosest_precision_of_a_chain() -> None:
    assert loosest([]) == "fp32"
    assert loosest(["fp32", "fp16"]) == "fp16"
    assert loosest(["int", "fp16", "fp32"]) == "int"
    assert loosest(["fp32", "act_quant", "int"]) == "act_quant"
    with pytest.raises(ValueError, match="unknown export precision.*int8"):
        loosest(["int8"])


def test_method_report_carries_precision_as_a_field() -> None:
    rep = MethodReport("x")
    assert rep.export_precision == "fp32" and "export_precision" not in rep.extra
    rep.export_precision = "act_quant"
    assert rep.to_dict()["export_precision"] == "act_quant"


def test_act_records_found_inside_a_wrapper_only_when_asked() -> None:
    inner = nn.Sequential(nn.Linear(4, 4))
    rec = {"0": ActQ("int", (0, 0), torch.ones(1), qmax=7.0)}
    attach_act_records(inner, rec, int_matmul=False)
    wrapper = nn.Sequential(inner)
    assert set(act_records(inner)) == {"0"} and act_records(wrapper) == {}
    assert int_matmul_records(wrapper) == {}  # the method did not ask for integer MatMuls
    assert set(int_matmul_records(wrapper, force=True)) == {"0"}
    attach_act_records(inner, rec, int_matmul=True)
    assert set(int_matmul_records(wrapper)) == {"0"}
    attach_act_records(inner, {}, int_matmul=True)  # nothing recorded: nothing to rewrite
    assert int_matmul_records(wrapper, force=True) == {}
