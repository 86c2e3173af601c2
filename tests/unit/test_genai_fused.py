"""`--fused-decoder` (edgekit.genai.fused) on a tiny Llama: onnxruntime-genai's model builder lays out the ONNX Runtime
decoder (GroupQueryAttention, SkipSimplifiedLayerNorm, MatMulNBits) and edgekit puts the method's codes in. The file's
MatMulNBits weights are the method's codes exactly (not the builder's own RTN grid), its greedy tokens equal the
compressed torch model's, logits match it, and codes the builder cannot hold are refused before any work."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgekit.cli import app
from edgekit.errors import ConfigError
from edgekit.genai import fused
from edgekit.genai.loop import greedy, open_decoder
from tests.unit._tiny_llm import tiny_llama_folder

pytest.importorskip("onnxruntime_genai")
runner = CliRunner()
PROMPT = "Once upon a time there was"


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    return tiny_llama_folder(tmp_path_factory.mktemp("tinyf") / "llama")


def _rtn(hf_dir: Path, **cfg):
    from edgekit.methods import rtn
    from edgekit.model_io import load_model
    from edgekit.quant import get_codes

    q, _ = rtn.apply(load_model(hf_dir).module, rtn.Config(**cfg))
    return q, get_codes(q)


def _ids(art: Path) -> list[int]:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(art / "tokenizer" / "tokenizer.json")).encode(PROMPT).ids


def _torch_greedy(model, ids: list[int], n: int) -> list[int]:
    x = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n,
                             do_sample=False, pad_token_id=0)
    return out[0, len(ids):].tolist()


@pytest.mark.parametrize("deploy", [None, "int8"])
def test_fused_decoder_holds_the_methods_codes_and_generates_like_torch(hf_dir, tmp_path, deploy):
    import onnx
    from onnx import numpy_helper

    out = tmp_path / "f"
    args = ["compress", str(hf_dir), "--method", "rtn", "--set", "bits=4", "--set", "group_size=32", "--set",
            "head_bits=8", "--kv-cache", "--fused-decoder", "--target", "onnxruntime", "-o", str(out)]
    res = runner.invoke(app, args + (["--deploy", deploy] if deploy else []))
    assert res.exit_code == 0, res.stdout + (res.stderr or "")
    man = json.loads((out / "manifest.json").read_text())
    ex = man["exports"]["onnxruntime"]
    w = ex["weights"]
    assert (w["kind"], w["weights"], w["block_size"]) == ("fused", "edgekit codes", 32), w
    assert w["accuracy_level"] == (4 if deploy else 0)
    assert ex["genai"]["stack"] == "onnxruntime-genai" and ex["genai"]["status"] == "ok", ex["genai"]
    # int8 activations move the logits: the stack must reproduce the numpy loop on the same file, not transformers
    assert ex["genai"]["reference"] == ("the numpy loop on this int8-activation file" if deploy else
                                        "transformers' generate")
    g = onnx.load(str(out / ex["file"])).graph
    ops = [n.op_type for n in g.node]
    assert ops.count("GroupQueryAttention") == 2 and "MatMulNBits" in ops
    assert len(g.node) < 60  # the fused layout, not the ~300-node dynamo export of this model
    q, codes = _rtn(hf_dir, bits=4, group_size=32, head_bits=8)
    # the packed qkv weight of layer 0 is the method's q|k|v codes (+8, two per byte) and scales, exactly
    inits = {i.name: i for i in g.initializer}
    node = next(n for n in g.node if n.op_type == "MatMulNBits" and "layers.0/attn/qkv_proj" in n.name)
    b = numpy_helper.to_array(inits[node.input[1]])
    s = numpy_helper.to_array(inits[node.input[2]]).reshape(b.shape[0], -1)
    got = np.stack([b & 15, b >> 4], -1).reshape(b.shape[0], -1).astype(np.int32) - 8
    key = {k.split("model.layers.0.")[-1]: c for k, c in codes.items() if "model.layers.0.self_attn" in k}
    want = torch.cat([key[f"self_attn.{p}_proj.weight"].codes for p in "qkv"]).numpy().astype(np.int32)
    want_s = torch.cat([key[f"self_attn.{p}_proj.weight"].scale for p in "qkv"]).numpy()
    assert np.array_equal(got, want) and np.array_equal(s, want_s)
    assert want.min() >= -7  # a symmetric [-7, 7] grid: the builder's own RTN would have used -8 too
    head = next(n for n in g.node if n.name.startswith("/lm_head/"))
    assert head.op_type == ("MatMulNBits" if deploy else "MatMul")  # weights-only: the 8-bit head as float (exact)
    if deploy:  # the per-row head scale is stored once per row: one block of K = 64 (the builder wrote blocks of 32)
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in head.attribute}
        hb, hs = numpy_helper.to_array(inits[head.input[1]]), numpy_helper.to_array(inits[head.input[2]])
        hc = next(c for k, c in codes.items() if k.endswith("lm_head.weight"))
        assert attrs["block_size"] == attrs["K"] == 64 and hs.size == attrs["N"], (attrs, hs.shape)
        assert np.array_equal(hb.reshape(attrs["N"], -1).astype(np.int32) - 128, hc.codes.numpy().astype(np.int32))
        assert np.array_equal(hs.reshape(-1), hc.scale.numpy().reshape(-1))
    ids = _ids(out)
    dec = open_decoder(out / ex["file"], "onnxruntime", man["decoder"], config=ex["validation"].get("runtime_config"))
    toks = greedy(dec, ids, 12).tokens
    if deploy is None:
        assert toks == _torch_greedy(q.model, ids, 12)
        dec.reset()
        logits = dec.step(ids, every=True)
        with torch.no_grad():
            ref = q.model(torch.tensor([ids])).logits[0].numpy()
        assert np.abs(logits - ref).max() < 1e-4 * max(1.0, np.abs(ref).max())
    else:
        assert man["exports"]["onnxruntime"]["deploy"]["form"] == "int8 activations"


def test_fused_decoder_float_export_and_refusals(hf_dir, tmp_path):
    """`export DIR --kv-cache --fused-decoder`: the FP32 builder layout, greedy equal to transformers; refused: without
    --kv-cache, codes with different group sizes or an asymmetric grid, and on a decoder artifact (no weights)."""
    from edgekit import api
    from edgekit.quant.codes import WeightCode

    out = tmp_path / "fp"
    api.export(hf_dir, "onnxruntime", out, kv_cache=True, fused_decoder=True)
    man = json.loads((out / "manifest.json").read_text())
    ex = man["exports"]["onnxruntime"]
    assert (ex["weights"]["kind"], ex["weights"]["weights"]) == ("fused", "float")
    from edgekit.model_io import load_model

    ids = _ids(out)
    dec = open_decoder(out / ex["file"], "onnxruntime", man["decoder"])
    assert greedy(dec, ids, 12).tokens == _torch_greedy(load_model(hf_dir).module.model, ids, 12)
    res = runner.invoke(app, ["export", str(hf_dir), "--target", "onnxruntime", "--fused-decoder", "-o",
                              str(tmp_path / "x")])
    assert res.exit_code == 2 and "--kv-cache" in res.output and not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="needs the model's weights"):
        api.export(out, "onnxruntime", kv_cache=True, fused_decoder=True)
    c = lambda g, off=None: WeightCode(torch.zeros(4, 64), torch.ones(4, 64 // g) if g else torch.ones(4), 0, 4,
                                       offset=off, group_size=g)
    with pytest.raises(ConfigError, match="group sizes"):
        fused.plan({"model.layers.0.mlp.up_proj.weight": c(32), "model.layers.1.mlp.up_proj.weight": c(16)})
    with pytest.raises(ConfigError, match="asymmetric"):
        fused.plan({"model.layers.0.mlp.up_proj.weight": c(None, torch.ones(4))})
    with pytest.raises(ConfigError, match="lm_head has none"):
        fused.plan({"model.layers.0.mlp.up_proj.weight": c(None)})
    got = fused.plan({"lm.model.layers.0.mlp.up_proj.weight": c(None), "lm.lm_head.weight": c(None)})
    assert (got["precision"], got["block_size"], got["head_bits"]) == ("int4", 32, 4)


def test_fused_w8a8_reads_a_tied_embedding_from_the_heads_8bit_codes(tmp_path):
    """At int8 precision the builder keeps a tied embedding as a float Gather; edgekit reads it from the 8-bit head's
    codes (GatherBlockQuantized) instead, exactly: the float table is gone, and the file passes the product's own
    int8-activation check against transformers (which a misread embedding fails: every token enters through it)."""
    import onnx
    import transformers
    from onnx import numpy_helper

    from tests.unit._tiny_llm import VOCAB, tiny_tokenizer

    torch.manual_seed(1)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   tie_word_embeddings=True, bos_token_id=0, eos_token_id=0)
    hf = tmp_path / "tied"
    transformers.LlamaForCausalLM(cfg).eval().save_pretrained(str(hf))
    tiny_tokenizer(hf)
    out = tmp_path / "f"
    res = runner.invoke(app, ["compress", str(hf), "--method", "rtn", "--set", "bits=8", "--set", "group_size=32",
                              "--set", "head_bits=8", "--kv-cache", "--fused-decoder", "--deploy", "int8",
                              "--target", "onnxruntime", "-o", str(out)])
    assert res.exit_code == 0, res.stdout + (res.stderr or "")
    man = json.loads((out / "manifest.json").read_text())
    ex = man["exports"]["onnxruntime"]
    assert ex["weights"]["builder_precision"] == "int8" and ex["weights"]["tied_embedding"], ex["weights"]
    g = onnx.load(str(out / ex["file"])).graph
    inits = {i.name: i for i in g.initializer}
    assert not any(i.data_type == onnx.TensorProto.FLOAT and list(i.dims) == [VOCAB, 64] for i in g.initializer)
    gbq = next(n for n in g.node if n.op_type == "GatherBlockQuantized")
    head = next(n for n in g.node if n.op_type == "MatMulNBits" and n.name.startswith("/lm_head/"))
    reshape = next(n for n in g.node if n.output[0] == gbq.input[0])
    assert reshape.input[0] == head.input[1] and gbq.input[2] == head.input[2]  # the head's codes and scales
    a = {x.name: onnx.helper.get_attribute_value(x) for x in gbq.attribute}
    h = {x.name: onnx.helper.get_attribute_value(x) for x in head.attribute}
    assert (a["bits"], a["block_size"], a["gather_axis"], a["quantize_axis"]) == (8, h["block_size"], 0, 1)
    # decoding the table the way GatherBlockQuantized does (uint8 - 128, times the block's scale) gives the codes' weights
    codes = numpy_helper.to_array(inits[head.input[1]]).reshape(VOCAB, -1).astype(np.float32) - 128
    scale = numpy_helper.to_array(inits[head.input[2]]).reshape(VOCAB, -1)
    table = codes * np.repeat(scale, h["block_size"], axis=1)[:, :codes.shape[1]]
    q, c = _rtn(hf, bits=8, group_size=32, head_bits=8)
    assert np.allclose(table, q.model.get_input_embeddings().weight.detach().numpy(), atol=1e-6)
    v = ex["validation"]  # teacher-forced against transformers on the compressed model, the product's floors
    assert v["cosine_min"] >= v["floors"]["cosine_min"] and v["top1_agreement"] >= v["floors"]["top1_agreement"], v
