"""LiteRT deploy forms (edgekit.deploy.litert): full-integer static INT8 with data-free BN ranges and dynamic-range
INT8 through ai-edge-quantizer; integer tensors in the file, fidelity within the floor, a broken range rejected,
the method's codes compared, and `auto` never keeping a form slower than FP32."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("ai_edge_quantizer")
pytest.importorskip("litert_torch")

from edgekit.deploy import check, int8, litert  # noqa: E402
from edgekit.errors import ExportMismatchError  # noqa: E402
from edgekit.methods import rtn  # noqa: E402
from edgekit.model_io import InputSpec  # noqa: E402
from edgekit.quant import get_codes  # noqa: E402

from .test_deploy_int8 import SPECS, TinyEncoder, tiny_cnn  # noqa: E402


def _details(path):
    return litert._interpreter(path).get_tensor_details()  # noqa: SLF001


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """RTN 8-bit tiny CNN: float .tflite, data-free full-integer and dynamic-range files, built once."""
    work = tmp_path_factory.mktemp("litert") / "tflite"
    work.mkdir()
    model, _ = rtn.apply(tiny_cnn(1), rtn.Config(bits=8))
    ftfl = litert.float_tflite(model, SPECS, work)
    static, srec = litert.build(model, SPECS, ftfl, work, "int8", input_range=(-4.0, 4.0))
    dyn, drec = litert.build(model, SPECS, ftfl, work, "int8_dynamic")
    return model, work, ftfl, (static, srec), (dyn, drec)


def test_static_file_is_integer_up_to_the_classifier(cnn):
    """Data-free: every layer with a BN-statistics range is int8 (input included, its range given); the classifier's
    FULLY_CONNECTED has no trusted range (no BN after it) and stays float, as in the ORT file."""
    model, _, _, (static, rec), _ = cnn
    det = _details(static)
    floats = {d["name"] for d in det if np.dtype(d["dtype"]) == np.float32}
    ints = [d for d in det if np.dtype(d["dtype"]) == np.int8]
    assert rec["left_in_float"] == ["FULLY_CONNECTED"], rec["left_in_float"]
    assert rec["calibration"]["kept_float_no_trusted_range"] == ["serving_default_output_0_output"]
    assert 0 < len(floats) <= 4, floats  # the classifier's input (dequantized), weight, bias, output
    assert len(ints) >= 10
    interp = litert._interpreter(static)  # noqa: SLF001
    assert np.dtype(interp.get_input_details()[0]["dtype"]) == np.int8
    assert np.dtype(interp.get_output_details()[0]["dtype"]) == np.float32
    ops = litert.op_names(static)
    assert ops.get("CONV_2D") == 3 and ops.get("DEPTHWISE_CONV_2D") == 1 and ops.get("FULLY_CONNECTED") == 1
    # conv weights are int8 per output channel (one scale per channel)
    w = [d for d in det if np.dtype(d["dtype"]) == np.int8 and len(d["shape"]) == 4 and d["shape"][0] in (16, 32)
         and len(d["quantization_parameters"]["scales"]) == d["shape"][0]]
    assert len(w) >= 3
    assert rec["calibration"]["tensors_from_bn_ranges"] >= 5  # stem, res, add, dw, pw outputs at least


def test_unknown_input_range_leaves_the_first_layer_float(cnn, tmp_path):
    """Data-free without an input range: input -> transpose -> stem conv float, every later tensor int8."""
    model, _, ftfl, _, _ = cnn
    (tmp_path / "float.tflite").symlink_to(ftfl)
    path, rec = litert.build(model, SPECS, tmp_path / "float.tflite", tmp_path, "int8")
    assert rec["left_in_float"] == ["TRANSPOSE", "CONV_2D", "FULLY_CONNECTED"], rec["left_in_float"]
    interp = litert._interpreter(path)  # noqa: SLF001
    assert np.dtype(interp.get_input_details()[0]["dtype"]) == np.float32
    ops = litert.op_names(path)
    assert ops.get("QUANTIZE", 0) >= 1 and ops.get("CONV_2D") == 3
    det = {d["name"]: np.dtype(d["dtype"]).name for d in _details(path)}
    assert sum(v == "int8" for v in det.values()) >= 10  # 2 later convs' weights + activations (head stays float)
    res = check.fidelity(model, path, "tflite", check.validation_inputs(SPECS, None))
    assert res["passed"], res["failed"]


class PadNet(torch.nn.Module):
    """conv-BN-ReLU, then a stride-2 conv whose padding litert-torch writes as a PAD of the ReLU output."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1 = torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8)
        self.c2, self.b2 = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1), torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.b1(self.c1(x)))
        x = torch.relu(self.b2(self.c2(x)))
        return self.fc(x.mean((2, 3)))


def test_data_free_ranges_reach_pads_and_never_come_from_seeded_inputs(tmp_path):
    """The bug: tensors no BN range reached by value (a PAD of a ReLU output, the logits) kept the range of seeded
    random inputs and clipped real data (ResNet-20 Fashion: 0.786 vs 0.926). Now a PAD takes its input's range
    (with its zero) and the logits' op stays float."""
    torch.manual_seed(0)
    m = PadNet().eval()
    for bn in (m.b1, m.b2):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    specs = [InputSpec("input", [1, 3, 16, 16])]
    ftfl = litert.float_tflite(m, specs, tmp_path)
    ops = litert._ops(ftfl)  # noqa: SLF001
    pads = [(ins[0], outs[0]) for op, ins, outs in ops if op.startswith("PAD")]
    assert pads, [op for op, _, _ in ops]  # the model must exercise the case
    ranges, untrusted = litert.data_free_plan(m, specs, ftfl, tmp_path, 6.0, (-1.0, 1.0))
    for src, dst in pads:
        lo, hi = ranges[src]
        assert ranges[dst] == (min(lo, 0.0), max(hi, 0.0)), (src, dst)
    out_name = litert._interpreter(ftfl).get_output_details()[0]["name"]  # noqa: SLF001
    assert untrusted == [out_name]
    path, rec = litert.build(m, specs, ftfl, tmp_path, "int8", input_range=(-1.0, 1.0))
    assert rec["left_in_float"] == ["FULLY_CONNECTED"]
    x = [(torch.rand(1, 3, 16, 16) * 2 - 1,) for _ in range(8)]  # inputs in the stated range
    res = check.fidelity(m, path, "tflite", x)
    assert res["passed"], res["failed"]


def test_dynamic_range_file_has_int8_weights_float_activations(cnn):
    _, _, _, _, (dyn, rec) = cnn
    det = _details(dyn)
    weights = [d for d in det if np.dtype(d["dtype"]) == np.int8 and d["name"]]  # unnamed: XNNPACK's scratch
    acts = [d for d in det if np.dtype(d["dtype"]) == np.float32 and len(d["shape"]) == 4 and d["shape"][0] == 1]
    assert len(weights) == 5 and acts  # 4 convs + the head in int8; activations stay float (quantized per call)
    assert all(len(d["quantization_parameters"]["scales"]) == d["shape"][d["quantization_parameters"][
        "quantized_dimension"]] for d in weights)  # per channel
    assert rec["calibration"]["method"].startswith("none")


def test_data_free_ranges_are_the_bn_ranges(cnn):
    """Every tensor edgekit identified gets exactly the BN-statistics range of ranges.py (scale = (hi - lo) / 255)."""
    model, work, ftfl, (static, _), _ = cnn
    bn_map = int8.export_float(model, SPECS, work / "check.onnx")
    rng = int8.data_free_ranges(model, work / "check.onnx", bn_map, 6.0, None)
    feeds = {"input": torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)).numpy()}
    matched = litert.match_tensors(ftfl, work / "check.onnx", feeds, set(rng))
    assert len(matched) >= 5
    q = {d["name"]: d["quantization"] for d in _details(static)}
    for tname, oname in matched.items():
        lo, hi = rng[oname]
        assert q[tname][0] == pytest.approx((hi - lo) / 255, rel=1e-3), (tname, oname)


def test_fidelity_within_floor_and_codes_equal(cnn):
    model, _, _, (static, _), (dyn, _) = cnn
    for path in (static, dyn):
        res = check.fidelity(model, path, "tflite", check.validation_inputs(SPECS, None))
        assert res["passed"], res["failed"]
        assert res["outputs"][next(iter(res["outputs"]))]["mean_cosine"] >= 0.99
        wc = litert.check_codes(path, get_codes(model))
        # 8-bit RTN: channel max is ±127, the quantizer's grid; the data-free static file keeps the classifier float
        if path == static:
            assert wc["checked"] == 5 and wc["exact_where_int8"] and wc["not_found"] == ["fc.weight"], wc
        else:
            assert wc["checked"] == 5 and wc["all_exact"], wc
    codes = get_codes(model)
    key = next(k for k in codes if k != "fc.weight")
    codes[key].codes.view(-1)[0] += 1  # a code changed after the fact is reported
    assert not litert.check_codes(static, codes)["exact_where_int8"]


def test_lower_bit_codes_are_reported_not_equal(cnn, tmp_path):
    """4-bit codes (±7): the quantizer's max|w|/127 scale re-rounds them onto its grid; the record says so."""
    _, work, _, _, _ = cnn
    model, _ = rtn.apply(tiny_cnn(1), rtn.Config(bits=4))
    ftfl = litert.float_tflite(model, SPECS, tmp_path)
    path, _ = litert.build(model, SPECS, ftfl, tmp_path, "int8_dynamic")
    wc = litert.check_codes(path, get_codes(model))
    assert not wc["all_exact"] and wc["not_exact"] and "max|w|/127" in wc["note"]
    q = next(np.asarray(litert._interpreter(path).get_tensor(d["index"]))  # noqa: SLF001
             for d in _details(path) if d["shape"].tolist() == [10, 2048])
    np.testing.assert_array_equal(np.abs(q).max(1), 127)  # its grid, not the ±7 codes


def test_a_broken_range_is_rejected(cnn, tmp_path, monkeypatch):
    """Every activation range 1000x too small (saturated codes): the validation must fail."""
    model, work, ftfl, _, _ = cnn
    monkeypatch.setattr(litert, "adjust_ranges", lambda q: {n: {"min": v["min"] / 1000, "max": v["max"] / 1000}
                                                            for n, v in q.items()})
    (tmp_path / "float.tflite").symlink_to(ftfl)
    bad, _ = litert.build(model, SPECS, tmp_path / "float.tflite", tmp_path, "int8")
    res = check.fidelity(model, bad, "tflite", check.validation_inputs(SPECS, None))
    assert not res["passed"] and any("cosine" in f for f in res["failed"]), res


def _entry(root, ftfl):
    (root / "exports" / "tflite").mkdir(parents=True)
    shutil.copy2(ftfl, root / "exports" / "tflite" / "model.tflite")
    return {"file": "exports/tflite/model.tflite", "precision": "fp32", "validation": {"note": "default"}}


def _fake(med):
    return {"median_ms": med, "ratio_to_fp32": {k: v / med["fp32"] for k, v in med.items() if k != "fp32"},
            "runs": 0, "note": "fake timing (test)"}


def test_auto_never_keeps_a_slower_form(cnn, tmp_path):
    model, work, ftfl, _, _ = cnn
    base = {"runs": 2, "threads": 1}
    # both integer forms measured slower than FP32: auto keeps FP32
    e = _entry(tmp_path / "a", ftfl)
    litert.deploy_entry(model, SPECS, tmp_path / "a", e, "auto", None, {}, work.parent,
                        {**base, "timings": _fake({"fp32": 1.0, "int8": 1.3, "int8_dynamic": 1.1})})
    assert e["deploy"]["form"] == "fp32" and e["precision"] == "fp32"
    # static fastest and valid: kept, and the file installed is the full-integer one
    e = _entry(tmp_path / "b", ftfl)
    litert.deploy_entry(model, SPECS, tmp_path / "b", e, "auto", None, {}, work.parent,
                        {**base, "timings": _fake({"fp32": 1.0, "int8": 0.4, "int8_dynamic": 0.7})})
    assert e["deploy"]["form"] == "int8" and e["precision"] == "int8" and e["validation"]["passed"]
    assert {"int8", "int8_dynamic"} <= set(e["deploy"]["forms"])
    assert (tmp_path / "b" / e["file"]).read_bytes() == (work / "int8.tflite").read_bytes()  # the static file


def test_auto_skips_a_rejected_form_and_int8_fails_closed(cnn, tmp_path, monkeypatch):
    model, work, ftfl, _, _ = cnn
    monkeypatch.setattr(litert, "adjust_ranges", lambda q: {n: {"min": v["min"] / 1000, "max": v["max"] / 1000}
                                                            for n, v in q.items()})
    w = tmp_path / "w" / "tflite"
    w.mkdir(parents=True)
    shutil.copy2(ftfl, w / "float.tflite")
    e = _entry(tmp_path / "a", ftfl)
    litert.deploy_entry(model, SPECS, tmp_path / "a", e, "auto", None, {}, tmp_path / "w",
                        {"runs": 2, "timings": _fake({"fp32": 1.0, "int8": 0.3, "int8_dynamic": 0.8})})
    assert e["deploy"]["form"] == "int8_dynamic" and "int8 rejected" in e["deploy"]["why"]
    with pytest.raises(ExportMismatchError, match="failed validation"):
        litert.deploy_entry(model, SPECS, tmp_path / "c", _entry(tmp_path / "c", ftfl), "int8", None, {},
                            tmp_path / "w", {"runs": 2, "timings": _fake({"fp32": 1.0, "int8": 0.3})})


def test_tiny_bert_dynamic_range_int8(tmp_path):
    """No BatchNorm, attention: the dynamic-range form (int8 FC weights); fidelity within the floor; codes equal."""
    pytest.importorskip("transformers")
    model, _ = rtn.apply(TinyEncoder().eval(), rtn.Config(bits=8))
    specs = [InputSpec("input_ids", [1, 16], "int64", high=100), InputSpec("attention_mask", [1, 16], "int64")]
    ftfl = litert.float_tflite(model, specs, tmp_path)
    assert not litert.static_possible(model, None, ftfl)
    path, _ = litert.build(model, specs, ftfl, tmp_path, "int8_dynamic")
    fc = [d for d in _details(path) if np.dtype(d["dtype"]) == np.int8 and len(d["shape"]) == 2]
    assert len(fc) >= 12, len(fc)  # q, k, v, out, ffn in, ffn out per layer
    assert litert.op_names(path).get("FULLY_CONNECTED", 0) >= 12
    res = check.fidelity(model, path, "tflite", check.validation_inputs(specs, None))
    assert res["passed"], res["failed"]
    wc = litert.check_codes(path, get_codes(model))
    assert wc["all_exact"], wc


def test_api_compress_deploy_int8_on_the_rpi5_profile(tmp_path):
    from edgekit import api

    art = api.compress("demo", "rtn", {"bits": 8}, tmp_path / "a", runtimes=["rpi5-litert"], deploy="int8")
    man = json.loads((art / "manifest.json").read_text())
    e = man["exports"]["tflite"]
    assert e["precision"] == "int8" and e["deploy"]["form"] == "int8" and e["validation"]["passed"]
    assert set(e["deploy"]["speed"]["median_ms"]) == {"fp32", "int8"}
    wc = e["deploy"]["forms"]["int8"]["weight_codes"]
    # the stem conv (no input range) and the classifier (no BN range: data_free_plan) stay float
    assert wc["exact_where_int8"] and len(wc["not_found"]) <= 2, wc
    assert litert.op_names(art / e["file"]).get("QUANTIZE") == 1  # float input, quantized after the first layer


def test_cli_input_range_makes_the_data_free_litert_file_full_integer(tmp_path):
    """`compress demo --deploy int8 --target tflite --input-range 0,1`: with the app's input range stated, the
    data-free LiteRT file takes an int8 input (full integer); bad or useless ranges are one-line errors."""
    from typer.testing import CliRunner

    from edgekit.cli import app

    run = CliRunner().invoke
    base = ["compress", "demo", "--method", "rtn", "--deploy", "int8", "--target", "tflite"]
    for extra, needle in ((["--input-range", "1,0"], "LO < HI"), (["--input-range", "a,b"], "two numbers")):
        r = run(app, base + extra + ["-o", str(tmp_path / "bad")])
        assert r.exit_code == 2 and needle in r.output and not (tmp_path / "bad").exists(), r.output
    r = run(app, ["compress", "demo", "--method", "rtn", "--input-range", "0,1", "-o", str(tmp_path / "nd")])
    assert r.exit_code == 2 and "--deploy" in r.output
    r = run(app, base + ["--input-range", "0,1", "-o", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    e = json.loads((tmp_path / "a" / "manifest.json").read_text())["exports"]["tflite"]
    assert e["deploy"]["form"] == "int8", e["deploy"]
    interp = litert._interpreter(tmp_path / "a" / e["file"])  # noqa: SLF001
    assert np.dtype(interp.get_input_details()[0]["dtype"]) == np.int8
