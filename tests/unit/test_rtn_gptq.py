"""RTN's gptq option (edgekit.quant.gptq, methods/rtn/gptq_run.py): the algorithm's defining properties on random
layers, and the block-by-block calibration on the tiny Llama through the product (codes on RTN's grid, less output
error than RTN on every layer, data required, deterministic, exported with the codes exact)."""
from __future__ import annotations

import json

import pytest
import torch

from edgekit.errors import ConfigError
from edgekit.quant.codes import get_codes, symmetric_per_channel, symmetric_per_group
from edgekit.quant.gptq import gptq_quantize, hessian, output_error


def _layer(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(48, 128, generator=g)
    mix = torch.randn(128, 128, generator=g)
    x = torch.randn(1024, 128, generator=g) @ mix * 0.2 + torch.randn(1024, 128, generator=g)  # correlated inputs
    return w, hessian(x)


@pytest.mark.parametrize("group", [None, 32])
def test_gptq_lowers_the_output_error_and_equals_rtn_when_inputs_are_uncorrelated(group):
    """With H = I no column's error can be absorbed by another, so GPTQ must pick RTN's codes and scales exactly; with
    correlated inputs its output error tr((W-Q)H(W-Q)^T) must be clearly below RTN's. Codes stay on the grid."""
    w, h = _layer()
    rtn = symmetric_per_group(w, 4, group) if group else symmetric_per_channel(w, 4)
    q = gptq_quantize(w, h, 4, group)
    assert q.codes.abs().max() <= 7 and q.codes.dtype == torch.int16 and q.group_size == group
    assert tuple(q.scale.shape) == tuple(rtn.scale.shape)
    assert output_error(w, q.dequantize(), h) < 0.9 * output_error(w, rtn.dequantize(), h)
    same = gptq_quantize(w, torch.eye(128, dtype=torch.float64), 4, group)
    assert torch.equal(same.codes, rtn.codes) and torch.allclose(same.scale, rtn.scale)


def test_gptq_zeroes_dead_inputs_and_rejects_bad_shapes():
    w, h = _layer(1)
    h[5, :] = 0
    h[:, 5] = 0  # input 5 never fires
    q = gptq_quantize(w, h, 4, 32)
    assert (q.codes[:, 5] == 0).all()
    with pytest.raises(ValueError, match="multiple of group_size"):
        gptq_quantize(w, hessian(torch.randn(10, 128)), 4, 48)
    with pytest.raises(ValueError, match="Hessian"):
        gptq_quantize(w, torch.eye(64, dtype=torch.float64), 4)


def test_rtn_gptq_on_the_tiny_llama_through_the_product(tmp_path):
    from edgekit import api
    from edgekit.methods import rtn
    from edgekit.methods.llm_fp4.calib import calibration_calls, capture
    from tests.unit._tiny_llm import TEXT, tiny_llama_folder

    folder = tiny_llama_folder(tmp_path / "hf")
    calib = tmp_path / "calib.txt"
    calib.write_text("\n\n".join(TEXT * 4))
    data = api.open_data(calib)
    with pytest.raises(ConfigError, match="needs calibration data"):
        api.compress(folder, "rtn", {"bits": 4, "gptq": True}, tmp_path / "x")
    opts = {"bits": 4, "group_size": 32, "gptq": True, "n_seqs": 4, "seq_len": 32, "progress": False}

    def quantized(o):
        m = api.load_model(folder).module
        cfg = rtn.Config(**o)
        m, rep = rtn.apply(m, cfg, data)
        return m, rep, get_codes(m)

    m1, rep, codes = quantized(opts)
    _, _, again = quantized(opts)
    assert all(torch.equal(codes[k].codes, again[k].codes) for k in codes)  # deterministic
    g = rep.extra["gptq"]
    assert g["layers"] == 14 and g["blocks"].endswith("(2)")  # 7 Linear layers per block; lm_head stays RTN
    assert g["output_error_vs_rtn"]["max"] < 1.0, g  # every layer's output error below RTN's on its inputs
    params = dict(m1.named_parameters())
    for n, c in codes.items():
        assert c.codes.abs().max() <= 7
        w = params[n]
        assert torch.equal(w.data, c.dequantize())  # the weight is exactly its codes
    # against plain RTN: the quantized model's block outputs stay closer to the float model's on calibration data
    ref = api.load_model(folder).module
    m0, _, _ = quantized({k: v for k, v in opts.items() if k not in ("gptq", "n_seqs", "seq_len", "progress")})
    calls = calibration_calls(ref, rtn.Config(**opts), data)
    name = next(n for n in codes if n.endswith("layers.1.mlp.down_proj.weight"))[:-len(".weight")]

    def inp(model):
        return capture(model, calls, {name: dict(model.named_modules())[name]})[name]

    x_ref = inp(ref)
    assert (inp(m1) - x_ref).norm() < (inp(m0) - x_ref).norm()
    # through the CLI path: the artifact's ONNX holds the GPTQ codes exactly (validated export, int4 initializers)
    art = api.compress(folder, "rtn", opts, tmp_path / "art", data=data)
    man = json.loads((art / "manifest.json").read_text())
    assert man["method"]["report"]["extra"]["gptq"]["layers"] == 14
    import onnx

    int4 = [t for t in onnx.load(str(art / "model.onnx")).graph.initializer if t.data_type == onnx.TensorProto.INT4]
    assert len(int4) >= 14, len(int4)  # every GPTQ layer stored as int4 codes (the export checks them equal)


def test_block_inputs_carry_no_kv_cache_so_re_runs_agree():
    """A raw HF causal LM called without use_cache=False hands its layers a KV cache; kept as is, every re-run of a
    block would append to it and attend to stale keys. The kept inputs drop it, and two runs of a block agree."""
    from edgekit.methods.rtn.gptq_run import _first_block_inputs, _run_block, repeated_blocks
    from tests.unit._tiny_llm import tiny_llama

    m = tiny_llama()
    ids = torch.randint(0, 300, (1, 12), generator=torch.Generator().manual_seed(0))
    name, blocks = repeated_blocks(m)
    assert name.endswith("layers") and len(blocks) == 2
    seen = {}
    h = blocks[0].register_forward_pre_hook(lambda _m, _a, kw: seen.update(kw), with_kwargs=True)
    m(input_ids=ids, use_cache=True)
    h.remove()
    assert any(type(v).__name__.endswith("Cache") for v in seen.values())  # the layer is handed a cache
    kept = _first_block_inputs(m, blocks[0], [((), {"input_ids": ids, "use_cache": True})])
    assert not any(type(v).__name__.endswith("Cache") for v in kept[0][1].values()), kept[0][1]
    a, b = _run_block(blocks[0], kept), _run_block(blocks[0], kept)
    assert torch.equal(a[0][0][0], b[0][0][0])
