"""Integer weights in ONNX: codes are stored as int8/int4 + DequantizeLinear, exactly, and only when they match."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto

from edgekit.export.onnx import to_onnx
from edgekit.methods import rtn as baseline_rtn
from edgekit.quant import WeightCode, attach_codes, get_codes, load_codes, save_codes, symmetric_per_channel
from edgekit.model_io import InputSpec


def _run(path, x):
    return ort.InferenceSession(str(path)).run(None, {"input": x.numpy()})[0]


@pytest.mark.parametrize("bits,dtype", [(8, TensorProto.INT8), (4, TensorProto.INT4)])
def test_rtn_codes_become_integer_initializers(tmp_path, tiny, bits, dtype):
    x = torch.randn(1, 3, 8, 8)
    specs = [InputSpec("input", [1, 3, 8, 8])]
    float_path = tmp_path / "f.onnx"
    to_onnx(tiny, (x,), specs, float_path)
    model, _ = baseline_rtn.apply(tiny, baseline_rtn.Config(bits=bits), None)
    q_path = tmp_path / "q.onnx"
    rep = to_onnx(model, (x,), specs, q_path, get_codes(model))
    assert rep["integer_weights"] == 2 and rep["unmatched"] == []
    m = onnx.load(str(q_path))
    ints = [i for i in m.graph.initializer if i.data_type == dtype]
    assert len(ints) == 2
    assert sum(n.op_type == "DequantizeLinear" for n in m.graph.node) == 2
    # the conv weight was BN-folded by the exporter: the factor must be in the DQ scale, outputs exact
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(_run(q_path, x), ref, rtol=1e-4, atol=1e-5)
    assert rep["weight_bytes_stored"] * (32 // bits) == rep["weight_bytes_float"]


def test_off_grid_weights_are_left_in_float_and_listed(tmp_path, tiny):
    x = torch.randn(1, 3, 8, 8)
    code = symmetric_per_channel(tiny.fc.weight.data, 8)
    attach_codes(tiny, "fc.weight", code)  # weights NOT replaced by the dequantized values
    rep = to_onnx(tiny, (x,), [InputSpec("input", [1, 3, 8, 8])], tmp_path / "m.onnx", get_codes(tiny))
    assert rep["unmatched"] == ["fc.weight"] and rep["integer_weights"] == 0


def test_offset_codes_for_midrise_grid(tmp_path, tiny):
    """A mid-rise grid (no zero level) needs an offset: DQ + Add must reproduce it exactly."""
    x = torch.randn(1, 3, 8, 8)
    w = tiny.fc.weight.data
    k = 4
    m_ = w.abs().max()
    n = torch.clamp(torch.round((2**k - 1) * (w / (2 * m_) + 0.5)), 0, 2**k - 1)
    code = WeightCode(codes=(n - 2 ** (k - 1)).to(torch.int16), scale=2 * m_ / (2**k - 1), axis=None, bits=k,
                      offset=m_ / (2**k - 1))
    with torch.no_grad():
        tiny.fc.weight.copy_(code.dequantize())
    assert 0 not in set(tiny.fc.weight.unique().tolist())
    attach_codes(tiny, "fc.weight", code)
    path = tmp_path / "m.onnx"
    rep = to_onnx(tiny, (x,), [InputSpec("input", [1, 3, 8, 8])], path, get_codes(tiny))
    assert rep["integer_weights"] == 1
    with torch.no_grad():
        np.testing.assert_allclose(_run(path, x), tiny(x).numpy(), rtol=1e-5, atol=1e-6)


def test_codes_roundtrip_files(tmp_path):
    c = symmetric_per_channel(torch.randn(6, 5), 4)
    save_codes({"a.weight": c}, tmp_path / "c.safetensors")
    back = load_codes(tmp_path / "c.safetensors")["a.weight"]
    assert torch.equal(back.dequantize(), c.dequantize()) and back.bits == 4


def test_fp4_grid_codes_store_four_bits_exactly(tmp_path):
    """FP4 E2M1 codes (values up to 12 units) do not fit int4 but take <= 16 values: uint4 indices into a table,
    4 bits per weight, exact on ONNX Runtime and OpenVINO."""
    from torch import nn

    from edgekit.export.onnx import to_onnx
    from edgekit.export.validate import validate
    from edgekit.model_io import InputSpec, example_inputs
    from edgekit.quant import get_codes
    from edgekit.quant.codes import WeightCode, attach_codes

    torch.manual_seed(0)
    grid = torch.tensor([0, 1, 2, 3, 4, 6, 8, 12, -1, -2, -3, -4, -6, -8, -12])
    m = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    for name, lin in (("0", m[0]), ("2", m[2])):
        c = WeightCode(grid[torch.randint(0, len(grid), lin.weight.shape)], torch.rand(lin.weight.shape[0]) * 0.1 + 0.01,
                       0, 4)
        with torch.no_grad():
            lin.weight.copy_(c.dequantize())
        attach_codes(m, f"{name}.weight", c)
        assert c.storage_bits() == 4
    specs = [InputSpec("input", [2, 64])]
    rep = to_onnx(m, example_inputs(specs), specs, tmp_path / "m.onnx", get_codes(m))
    assert rep["storage"] == {"lut4": 2} and rep["weight_bytes_float"] == 8 * rep["weight_bytes_stored"]
    for rt in ("onnxruntime", "openvino"):
        assert validate(m, specs, tmp_path / "m.onnx", rt, "int")["outputs"]["linear_1"]["rel_l2"] < 1e-6


class _ConvMLP(torch.nn.Module):
    """conv -> linear -> linear: the bit-plane unpack feeds a Conv and two MatMuls (OpenVINO once decoded MatMul
    weights wrong from integer unpack ops; export/qdq.py `_bitplanes`)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.fc1, self.fc2 = torch.nn.Linear(16, 40), torch.nn.Linear(40, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(torch.relu(self.conv(x)).mean((2, 3)))))


@pytest.mark.parametrize("bits,values", [(1, [-1, 1]), (2, [-2, -1, 1, 2]), (3, [-4, -2, -1, 0, 1, 2, 3, 4]),
                                         (2, [-1, 0, 1])])
def test_low_bit_codes_are_stored_in_that_many_bit_planes_exactly(tmp_path, bits, values):
    """A <= 3-bit request stores b = ceil(log2(#values)) bits per weight, not int4's 4, and decodes exactly on
    ONNX Runtime and OpenVINO through Conv and MatMul consumers."""
    import openvino as ov

    from edgekit.export.qdq import plane_bits

    torch.manual_seed(0)
    model = _ConvMLP().eval()
    g = torch.Generator().manual_seed(1)
    vals = torch.tensor(values, dtype=torch.float32)
    numel = 0
    for name, mod in (("conv", model.conv), ("fc1", model.fc1), ("fc2", model.fc2)):
        codes = vals[torch.randint(0, len(values), mod.weight.shape, generator=g)]
        scale = torch.rand(mod.weight.shape[0], generator=g) * 0.1 + 0.01
        code = WeightCode(codes, scale, 0, bits)
        with torch.no_grad():
            mod.weight.copy_(code.dequantize())
        attach_codes(model, f"{name}.weight", code)
        numel += mod.weight.numel()
        assert code.storage_bits() == plane_bits(len(values))
    x = torch.randn(2, 3, 8, 8)
    path = tmp_path / "q.onnx"
    rep = to_onnx(model, (x,), [InputSpec("input", [2, 3, 8, 8])], path, get_codes(model))
    b = plane_bits(len(values))
    assert rep["storage"] == {"bitplane": 3} and rep["integer_weights"] == 3
    assert rep["weight_bytes_stored"] == int(numel * b / 8)
    m = onnx.load(str(path))  # no float copy of any weight left in the file
    assert not [i for i in m.graph.initializer if i.data_type == TensorProto.FLOAT and np.prod(i.dims) >= 100]
    with torch.no_grad():
        ref = model(x).numpy()
    np.testing.assert_allclose(_run(path, x), ref, rtol=1e-5, atol=1e-6)
    compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    np.testing.assert_allclose(compiled({"input": x.numpy()})[0], ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bits,group", [(4, 16), (8, 32)])
def test_group_codes_become_blocked_dequantize_exactly(tmp_path, bits, group):
    """RTN group_size: one scale per `group` input weights; exported as int4/int8 + DequantizeLinear(block_size),
    exact on ONNX Runtime and OpenVINO (no activation quantization), the file holds `bits` per weight; group scales
    follow an outlier only within its group (per-channel scales would coarsen the whole row)."""
    import openvino as ov

    from edgekit.runtimes import open_session

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
    with torch.no_grad():
        net[0].weight[3, 5] = 4.0  # an outlier in row 3
    w0 = net[0].weight.detach().clone()
    x = torch.randn(2, 64)
    specs = [InputSpec("input", [2, 64])]
    per_ch, _ = baseline_rtn.apply(__import__("copy").deepcopy(net), baseline_rtn.Config(bits=bits), None)
    model, rep_m = baseline_rtn.apply(net, baseline_rtn.Config(bits=bits, group_size=group), None)
    codes = get_codes(model)
    assert codes["0.weight"].group_size == group and codes["0.weight"].scale.shape == (32, 64 // group)
    assert codes["0.weight"].storage_bits() == bits
    # the outlier's row: group-wise error is smaller than per-channel on the groups without the outlier
    err_g = (model[0].weight[3, 32:] - w0[3, 32:]).abs().max()
    err_c = (per_ch[0].weight[3, 32:] - w0[3, 32:]).abs().max()
    assert err_g < err_c / 3, (err_g, err_c)
    assert rep_m.bits_per_weight > bits  # the fp32 group scales are counted
    path = tmp_path / "g.onnx"
    rep = to_onnx(model, (x,), specs, path, codes)
    assert rep["integer_weights"] == 2 and rep["unmatched"] == [] and not rep.get("kept_float")
    m = onnx.load(str(path))
    dqs = [n for n in m.graph.node if n.op_type == "DequantizeLinear"]
    assert sorted(next(a.i for a in n.attribute if a.name == "block_size") for n in dqs) == [group, group]
    with torch.no_grad():
        ref = model(x).numpy()
    for rt in ("onnxruntime", "openvino"):
        y = open_session(path, rt, threads=1).run({"input": x.numpy()})[0]
        np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-5, err_msg=rt)
    assert ov is not None
    save_codes(codes, tmp_path / "c.safetensors")
    back = load_codes(tmp_path / "c.safetensors")
    assert back["0.weight"].group_size == group and torch.equal(back["0.weight"].dequantize(), model[0].weight)


def test_group_codes_refuse_bad_shapes():
    with pytest.raises(ValueError, match="multiple of the group"):
        WeightCode(torch.zeros(4, 10), torch.ones(4, 2), 0, 4, group_size=4)
