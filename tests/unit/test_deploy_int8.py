"""INT8 deploy (edgekit.deploy): integer kernels in the file, data-free BN ranges, fidelity floor, broken ranges
rejected, a method's int8 codes kept exactly, and the --deploy path of api.compress."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from edgekit.deploy import build_qdq, check, codes, deploy_int8, int8, ranges
from edgekit.errors import ConfigError, ExportMismatchError
from edgekit.methods import rtn as baseline_rtn
from edgekit.model_io import InputSpec
from edgekit.quant import get_codes

SPECS = [InputSpec("input", [1, 3, 8, 8])]


class Block(nn.Module):
    """conv-BN-ReLU."""

    def __init__(self, cin: int, cout: int, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


class TinyCNN(nn.Module):
    """stem (conv-BN-ReLU6), residual block, depthwise conv-BN-ReLU, pointwise conv-BN-ReLU, linear head on the
    flattened map (a global mean of random features barely depends on the input, which no check could judge)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(16)
        self.res = Block(16, 16)
        self.dw = Block(16, 16, groups=16)
        self.pw = Block(16, 32)
        self.fc = nn.Linear(32 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.relu6(self.stem_bn(self.stem(x)))
        x = x + self.res(x)
        x = self.pw(self.dw(x))
        return self.fc(x.flatten(1))


def tiny_cnn(seed: int = 0) -> TinyCNN:
    """Random weights with non-trivial BN statistics (as a trained net has)."""
    torch.manual_seed(seed)
    m = TinyCNN()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.3, 0.3)
    return m.eval()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Data-free INT8 of the tiny CNN (input range given, so every conv is integer), built once."""
    work = tmp_path_factory.mktemp("int8")
    model = tiny_cnn()
    rec = build_qdq(model, SPECS, work, input_range=(-4.0, 4.0))
    return model, work, rec


def test_integer_kernels_in_the_file_ort_runs(built):
    model, work, rec = built
    ops = int8.int8_ops(work / "int8.onnx")  # the graph ORT executes after its QDQ fusion
    assert ops.get("QLinearConv", 0) == 4, ops  # stem, residual, depthwise, pointwise
    assert ops.get("QLinearAdd", 0) == 1 and ops.get("QGemm", 0) == 1, ops
    assert "Conv" not in ops and "Gemm" not in ops, ops
    assert rec["left_in_float"] == {}
    w = {i.name: i for i in onnx.load(str(work / "int8.onnx")).graph.initializer}
    assert w["stem.weight_quantized"].data_type == onnx.TensorProto.INT8
    assert numpy_helper.to_array(w["stem.weight_scale"]).shape == (16,)  # per output channel


def test_fidelity_within_the_floor_on_ort_and_openvino(built, tmp_path):
    model, work, _ = built
    inputs = check.validation_inputs(SPECS, None)
    res = check.fidelity(model, work / "int8.onnx", "onnxruntime", inputs)
    assert res["passed"], res["failed"]
    assert res["outputs"]["linear"]["cosine"] >= check.FLOORS["cosine"]
    assert res["runtime_config"].get("session.disable_quant_qdq") is None  # fused kernels, not weight-only mode
    from edgekit.deploy import _ov_convert

    xml = _ov_convert(work / "int8.onnx", tmp_path / "m.xml")
    assert "FakeQuantize" in xml.read_text()
    res_ov = check.fidelity(model, xml, "openvino", inputs)
    assert res_ov["passed"], res_ov["failed"]


def test_bn_ranges_equal_a_hand_computation(built):
    model, work, _ = built
    proto = onnx.load(str(work / "float.onnx"))
    bn_map = int8.export_float(model, SPECS, work / "again.onnx")
    tensor = next(t for t, b in bn_map.items() if b == "stem_bn")
    got = int8.data_free_ranges(model, work / "again.onnx", bn_map, k=6.0, input_range=None)
    bn = model.stem_bn
    mu, var, g, b = (t.detach().double().numpy() for t in (bn.running_mean, bn.running_var, bn.weight, bn.bias))
    lo_c = g * ((mu - 6 * np.sqrt(var)) - mu) / np.sqrt(var + bn.eps) + b  # BN(mean - k std), gamma > 0 here
    hi_c = g * ((mu + 6 * np.sqrt(var)) - mu) / np.sqrt(var + bn.eps) + b
    assert got[tensor] == pytest.approx((min(lo_c.min(), 0.0), hi_c.max()), rel=1e-9)
    relu6 = next(n.output[0] for n in proto.graph.node if n.op_type == "Clip" and n.input[0] == tensor)
    assert got[relu6] == pytest.approx((0.0, min(hi_c.max(), 6.0)))
    # the residual add: per-channel sum of the two ranges (ReLU6 of the stem + ReLU of the block), then the max
    res_bn = next(t for t, b in bn_map.items() if b == "res.bn")
    rb = ranges.bn_range(model.res.bn, 6.0)
    add = next(n.output[0] for n in proto.graph.node if n.op_type == "Add")
    want = float(np.max(np.clip(hi_c, 0, 6) + np.maximum(rb[1], 0)))
    assert got[add] == pytest.approx((0.0, want)) and res_bn in got


def test_a_broken_range_is_rejected(built, tmp_path):
    """Scale of the residual add's activation 1000x too small: saturated codes; validation must fail."""
    model, work, _ = built
    proto = onnx.load(str(work / "int8.onnx"))
    add = next(n.output[0] for n in proto.graph.node if n.op_type == "Add")
    scale = next(i for i in proto.graph.initializer if i.name == f"{add}_scale")
    scale.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(scale) / 1000, scale.name))
    bad = tmp_path / "bad.onnx"
    onnx.save(proto, str(bad))
    res = check.fidelity(model, bad, "onnxruntime", check.validation_inputs(SPECS, None))
    assert not res["passed"] and any("response cosine" in f for f in res["failed"])


def test_nan_output_fails_whatever_the_figures(built, tmp_path):
    model, work, _ = built
    proto = onnx.load(str(work / "int8.onnx"))
    out = proto.graph.output[0].name
    for n in proto.graph.node:  # logits * NaN
        n.output[:] = [o if o != out else "pre_nan" for o in n.output]
    proto.graph.initializer.append(numpy_helper.from_array(np.array(np.nan, np.float32), "nan"))
    proto.graph.node.append(onnx.helper.make_node("Mul", ["pre_nan", "nan"], [out]))
    onnx.save(proto, str(tmp_path / "nan.onnx"))
    res = check.fidelity(model, tmp_path / "nan.onnx", "onnxruntime", check.validation_inputs(SPECS, None))
    assert not res["passed"] and "NaN" in res["failed"][0]


@pytest.mark.parametrize("bits", [8, 4])
def test_rtn_codes_are_the_int8_weights_exactly(tmp_path, bits):
    """8-bit codes (channel max ±127) and 4-bit codes (±7: MinMax would re-round them) alike."""
    model, _ = baseline_rtn.apply(tiny_cnn(1), baseline_rtn.Config(bits=bits))
    codes_ = get_codes(model)
    rec = deploy_int8(model, SPECS, tmp_path / "m.onnx", "onnxruntime", codes=codes_, input_range=(-4.0, 4.0),
                      runs=2)
    wc = rec["weight_codes"]
    assert wc["checked"] == 5 and wc["all_exact"], wc  # 4 convs (BN folded: sign/scale per channel) + the head
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "m.onnx")).graph.initializer}
    np.testing.assert_array_equal(inits["fc.weight_quantized"], codes_["fc.weight"].codes.numpy())
    assert rec["passed"] and set(rec["speed"]["median_ms"]) == {"fp32", "int8"}
    # and a code that was changed after the fact is reported, not silently accepted
    codes_["fc.weight"].codes[0, 0] += 1
    assert not codes.check_codes(tmp_path / "m.onnx", codes_)["all_exact"]


@pytest.mark.parametrize("grid,bits,exact", [("midtread", 6, True), ("midrise", 7, True), ("midrise", 8, False)])
def test_udfc_codes_exact_or_reported(tmp_path, grid, bits, exact):
    """UDFC's default mid-tread grid at 6 bits: exact. The paper's mid-rise grid w = s(c + 1/2) = (s/2)(2c + 1):
    exact as odd int8 codes up to 7 bits; at 8 bits 2c + 1 reaches ±255 and the record says the weights moved."""
    from edgekit.methods import udfc

    cfg = udfc.Config(ratio=0, bits=bits, grid=grid)
    model, _ = udfc.apply(tiny_cnn(2), cfg, example_inputs=(torch.randn(1, 3, 8, 8),))
    codes_ = get_codes(model)
    build_qdq(model, SPECS, tmp_path, input_range=(-4.0, 4.0), codes=codes_)
    rec = codes.check_codes(tmp_path / "int8.onnx", codes_, tmp_path / "float.onnx")
    assert rec["checked"] == len(codes_) >= 4
    assert rec["exact_except_bias_widened"] is exact, rec
    q = numpy_helper.to_array(next(i for i in onnx.load(str(tmp_path / "int8.onnx")).graph.initializer
                                   if i.name == "fc.weight_quantized"))
    c = codes_["fc.weight"].codes.numpy()
    if exact:  # the head has no BN fold: the file holds the codes themselves
        np.testing.assert_array_equal(q, 2 * c + 1 if grid == "midrise" else c)
    else:
        assert all("mid-rise" in v["reason"] for v in rec["not_exact"].values()) and rec["not_exact"]


def test_data_free_without_batchnorm_is_a_clear_error(tmp_path):
    from edgekit.errors import UnsupportedModelError

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()).eval()
    with pytest.raises(UnsupportedModelError, match="without BatchNorm needs calibration data"):
        build_qdq(model, SPECS, tmp_path)
    with pytest.raises(UnsupportedModelError, match="needs BatchNorm layers"):
        build_qdq(model, SPECS, tmp_path, form="static")


def test_calibrated_path_uses_the_data(tmp_path):
    model = tiny_cnn()
    calib = [(torch.randn(1, 3, 8, 8),) for _ in range(8)]
    rec = build_qdq(model, SPECS, tmp_path, calibration=calib)
    assert rec["calibration"] == {"method": "minmax", "samples": 8}
    assert int8.int8_ops(tmp_path / "int8.onnx").get("QLinearConv", 0) == 4  # the input range comes from data


def test_api_compress_deploy_int8_and_auto(tmp_path):
    from edgekit import api

    art = api.compress("demo", "rtn", {"bits": 8}, tmp_path / "a", runtimes=["onnxruntime", "openvino"], deploy="int8")
    man = json.loads((art / "manifest.json").read_text())
    for rt in ("onnxruntime", "openvino"):
        e = man["exports"][rt]
        assert e["precision"] == "int8" and e["deploy"]["form"] == "int8-qdq", e["deploy"]
        assert e["validation"]["passed"] and "int8" in e["deploy"]["speed"]["ratio_to_fp32"]
        assert e["deploy"]["int8"]["weight_codes"]["exact_except_bias_widened"]
    assert "QLinearConv" in man["exports"]["onnxruntime"]["deploy"]["int8"]["ort_kernels"]
    art2 = api.compress("demo", "rtn", {"bits": 8}, tmp_path / "b", runtimes=["onnxruntime"], deploy="auto")
    d = json.loads((art2 / "manifest.json").read_text())["exports"]["onnxruntime"]["deploy"]
    med = d["speed"]["median_ms"]
    chosen = {"int8-qdq": "int8", "default": "default", "fp32": "fp32"}[d["form"]]
    assert med[chosen] == min(med.values()) and med[chosen] <= med["fp32"]  # auto never keeps a slower form


def test_api_compress_takes_a_data_path_and_calibrates_on_it(tmp_path):
    """api.compress(data="file.npz") opens the file as --data does (it was ignored as an unknown object before,
    and the deploy fell back to data-free ranges without a word)."""
    from edgekit import api
    from edgekit.models.digits_cnn import digits_split

    x = digits_split()[0][:8].numpy()
    np.savez(tmp_path / "calib.npz", x=x)
    art = api.compress("demo", "rtn", {"bits": 8}, tmp_path / "a", runtimes=["onnxruntime"], deploy="int8",
                       data=str(tmp_path / "calib.npz"))
    cal = json.loads((art / "manifest.json").read_text())["exports"]["onnxruntime"]["deploy"]["int8"]["calibration"]
    assert cal == {"method": "minmax", "samples": 8}, cal


def test_api_deploy_fails_closed_on_broken_ranges(tmp_path, monkeypatch):
    from edgekit import api

    real = int8.data_free_ranges
    monkeypatch.setattr(int8, "data_free_ranges",
                        lambda *a, **k: {n: (lo / 1000, hi / 1000) for n, (lo, hi) in real(*a, **k).items()})
    with pytest.raises(ExportMismatchError, match="failed validation"):
        api.compress("demo", "rtn", {"bits": 8}, tmp_path / "a", runtimes=["onnxruntime"], deploy="int8")
    assert not (tmp_path / "a").exists()


def test_bad_deploy_requests_fail_before_any_work(tmp_path):
    from edgekit import api

    with pytest.raises(ConfigError, match="choose one of"):
        api.compress("demo", "rtn", {}, tmp_path / "a", runtimes=["onnxruntime"], deploy="int4")
    with pytest.raises(ConfigError, match="needs --target"):
        api.compress("demo", "rtn", {}, tmp_path / "a", deploy="int8")


class TinyEncoder(nn.Module):
    """A 2-layer BERT (random weights, built in code): last hidden state."""

    def __init__(self) -> None:
        super().__init__()
        import transformers

        torch.manual_seed(0)
        self.bert = transformers.BertModel(transformers.BertConfig(
            vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0), add_pooling_layer=False).eval()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def test_tiny_bert_gets_dynamic_int8_matmuls(tmp_path):
    """No BatchNorm, attention: dynamic INT8 (ranges per call); integer MatMuls in ORT's graph; rtn codes kept."""
    pytest.importorskip("transformers")
    model, _ = baseline_rtn.apply(TinyEncoder().eval(), baseline_rtn.Config(bits=8))
    specs = [InputSpec("input_ids", [1, 16], "int64", high=100), InputSpec("attention_mask", [1, 16], "int64")]
    rec = deploy_int8(model, specs, tmp_path / "m.onnx", "onnxruntime", codes=get_codes(model), runs=2)
    assert rec["form"] == "int8-dynamic" and rec["passed"], rec["validation"]
    fused = rec["ort_kernels"].get("DynamicQuantizeMatMul", 0) + rec["ort_kernels"].get("MatMulIntegerToFloat", 0)
    assert fused >= 12, rec["ort_kernels"]  # q, k, v, out, ffn in, ffn out per layer
    assert rec["weight_codes"]["exact_except_bias_widened"], rec["weight_codes"]


def test_deploy_data_calibrates_when_data_trains_at_another_shape(tmp_path):
    """--deploy-data: the method's --data (here 4x4 images that cannot feed the 8x8 digits CNN) is not the deploy's
    calibration; without it the shape mismatch is a one-line error (exit 2), with it the INT8 file calibrates on it;
    --deploy-data without --deploy is refused."""
    from typer.testing import CliRunner

    from edgekit.cli import app
    from edgekit.models.digits_cnn import digits_split

    runner = CliRunner()
    x = digits_split()[0][:12].numpy()
    np.savez(tmp_path / "calib.npz", x=x)
    np.savez(tmp_path / "small.npz", x=x[:, :, :4, :4])
    base = ["compress", "demo", "--method", "rtn", "--set", "bits=8", "--target", "onnxruntime", "--deploy", "int8",
            "--data", str(tmp_path / "small.npz")]
    r = runner.invoke(app, base + ["-o", str(tmp_path / "a")])
    assert r.exit_code == 2 and "does not match input" in r.output and not (tmp_path / "a").exists(), r.output
    r = runner.invoke(app, base + ["--deploy-data", str(tmp_path / "calib.npz"), "-o", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    man = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert man["exports"]["onnxruntime"]["deploy"]["int8"]["calibration"] == {"method": "minmax", "samples": 12}
    assert "calib.npz" in man["fidelity"]["inputs"], man["fidelity"]
    r = runner.invoke(app, ["compress", "demo", "--method", "rtn", "--deploy-data", str(tmp_path / "calib.npz"),
                            "-o", str(tmp_path / "c")])
    assert r.exit_code == 2 and "add --deploy" in r.output and not (tmp_path / "c").exists(), r.output


def test_deploy_floors_are_checked_recorded_and_decide(tmp_path):
    """--deploy-floor: unknown keys and values outside [0, 1] (NaN too) are one-line errors before any work; a floor
    the INT8 file cannot meet fails `int8` closed (no artifact) and makes `auto` reject it; the floors used are in
    the record."""
    from edgekit import api
    from typer.testing import CliRunner

    from edgekit.cli import app

    for bad, msg in (({"cosin": 0.9}, "not a deploy floor"), ({"cosine": 1.5}, r"\[0, 1\]"),
                     ({"cosine": "nan"}, r"\[0, 1\]"), ({"cosine": "high"}, "give a number")):
        with pytest.raises(ConfigError, match=msg):
            check.check_floors(bad)
    with pytest.raises(ConfigError, match="add --deploy"):
        api.compress("demo", "rtn", {"bits": 8}, tmp_path / "x", runtimes=["onnxruntime"],
                     deploy_floors={"cosine": 0.9})
    r = CliRunner().invoke(app, ["compress", "demo", "--method", "rtn", "--target", "onnxruntime", "--deploy", "int8",
                                 "--deploy-floor", "top1=0.5", "-o", str(tmp_path / "y")])
    assert r.exit_code == 2 and "not a deploy floor" in r.output and not (tmp_path / "y").exists()
    # the demo's INT8 file has a mean cosine below 1 - 1e-9: an (absurd) floor of 1.0 rejects it
    with pytest.raises(ExportMismatchError, match="mean cosine"):
        api.compress("demo", "rtn", {"bits": 8}, tmp_path / "a", runtimes=["onnxruntime"], deploy="int8",
                     deploy_floors={"mean_cosine": 1.0})
    assert not (tmp_path / "a").exists()
    art = api.compress("demo", "rtn", {"bits": 8}, tmp_path / "b", runtimes=["onnxruntime"], deploy="auto",
                       deploy_floors={"mean_cosine": 1.0, "cosine": 0.5})
    d = json.loads((art / "manifest.json").read_text())["exports"]["onnxruntime"]["deploy"]
    assert d["form"] != "int8-qdq" and "int8 rejected: output" in d["why"], d["why"]
    tol = d["int8_validation"]["tolerance"]
    assert tol["mean_cosine"] == 1.0 and tol["cosine"] == 0.5 and tol["top1_agreement"] == check.FLOORS["top1_agreement"]
