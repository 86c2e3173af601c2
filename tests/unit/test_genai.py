"""LLM generation with a KV cache (edgekit.genai) on a tiny Llama + tiny BPE tokenizer built in code: the ONNX
decoder's greedy tokens in ONNX Runtime and OpenVINO (numpy loop and the runtimes' own generation packages) equal
transformers' generate token for token; decode steps feed 1 token on the cache; the example app and
`edgekit generate` run; RTN int8 weights survive the KV-cache export; bad input is one line."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from edgekit import api
from edgekit.cli import app
from edgekit.errors import ConfigError
from edgekit.genai.loop import OV_CONFIG, PastIO, greedy, open_decoder
from tests.unit._tiny_llm import tiny_llama, tiny_llama_folder

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "Once upon a time there was"
runner = CliRunner()


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    return tiny_llama_folder(tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture(scope="module")
def art(hf_dir, tmp_path_factory) -> Path:
    """FP32 decoder artifact: `export DIR --kv-cache --target onnxruntime`, then `export ART --target openvino`."""
    out = tmp_path_factory.mktemp("art") / "a"
    api.export(hf_dir, "onnxruntime", out, kv_cache=True)
    api.export(out, "openvino")
    return out


def _prompt_ids(art: Path, text: str = PROMPT) -> list[int]:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(art / "tokenizer" / "tokenizer.json")).encode(text).ids


def _hf_greedy(ids: list[int], n: int, model=None) -> list[int]:
    """transformers' own greedy generate, eos ignored (random weights may emit it anywhere)."""
    m = model or tiny_llama()
    x = torch.tensor([ids])
    with torch.no_grad():
        out = m.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                         pad_token_id=0)
    return out[0, len(ids):].tolist()


def test_manifest_records_decoder_tokenizer_and_validation(art):
    man = json.loads((art / "manifest.json").read_text())
    d = man["decoder"]
    assert (d["layers"], d["heads"], d["kv_heads"], d["head_dim"], d["vocab"]) == (2, 4, 2, 16, 320)
    assert d["inputs"][:3] == ["input_ids", "attention_mask", "position_ids"]
    assert d["inputs"][3:] == [f"past_key_values.{i}.{k}" for i in range(2) for k in ("key", "value")]
    assert d["outputs"][1:] == [f"present.{i}.{k}" for i in range(2) for k in ("key", "value")]
    assert "tokenizer/tokenizer.json" in man["files"] and "exports/onnxruntime/genai_config.json" in man["files"]
    assert {"exports/openvino/openvino_model.xml", "exports/openvino/openvino_tokenizer.xml"} <= set(man["files"])
    assert len(man["generation"]["tokens"]) == 20
    for rt in ("onnxruntime", "openvino"):
        v = man["exports"][rt]["validation"]
        assert v["greedy_match"] and v["steps_compared"] == 20 and v["cache"]["ok"]
        assert v["outputs"]["logits"]["max_abs_scaled"] < 1e-4
        assert man["exports"][rt]["genai"]["status"] == "ok", man["exports"][rt]["genai"]
    import onnx

    g = onnx.load(str(art / "model.onnx")).graph
    dims = {i.name: [x.dim_param or x.dim_value for x in i.type.tensor_type.shape.dim] for i in g.input}
    assert dims["past_key_values.0.key"] == ["batch", 2, "past_sequence_length", 16]
    assert dims["attention_mask"] == ["batch", "total_sequence_length"]


@pytest.mark.parametrize("runtime,file", [("onnxruntime", "exports/onnxruntime/model.onnx"),
                                          ("openvino", "exports/openvino/openvino_model.xml"),
                                          ("openvino", "model.onnx")])
def test_numpy_loop_matches_transformers_and_uses_the_cache(art, runtime, file):
    """A prompt other than the validation one, 20 new tokens, eos ignored: same tokens as transformers."""
    ids = _prompt_ids(art)
    man = json.loads((art / "manifest.json").read_text())
    dec = open_decoder(art / file, runtime, man["decoder"], config=OV_CONFIG if runtime == "openvino" else None)
    seen = []
    if isinstance(dec, PastIO):  # record what the graph is fed
        run = dec._run
        dec._run = lambda feeds: (seen.append((feeds["input_ids"].shape, feeds["past_key_values.1.value"].shape)),
                                  run(feeds))[1]
    got = greedy(dec, ids, 20)
    assert got.tokens == _hf_greedy(ids, 20)
    assert dec.calls[0] == (len(ids), 0) and dec.calls[1:] == [(1, len(ids) + k) for k in range(19)]
    if seen:  # prefill: the whole prompt on an empty cache; decode: 1 token, past length = all earlier positions
        assert seen[0] == ((1, len(ids)), (1, 2, 0, 16))
        assert all(s == ((1, 1), (1, 2, len(ids) + k, 16)) for k, s in enumerate(seen[1:]))
    else:  # OpenVINO stateful IR: the cache lives in the request's variables
        shapes = {tuple(s.state.shape) for s in dec.req.query_state()}
        assert shapes == {(1, 2, len(ids) + 19, 16)}


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_runtime_generation_stack_matches_transformers(art, runtime):
    """onnxruntime-genai / openvino-genai LLMPipeline on the artifact's folders."""
    from edgekit.genai import stacks

    pytest.importorskip("onnxruntime_genai" if runtime == "onnxruntime" else "openvino_genai")
    ids = _prompt_ids(art)
    folder = art / "exports" / runtime
    run = stacks.ort_genai if runtime == "onnxruntime" else stacks.ov_genai
    assert run(folder, ids, 16, ignore_eos=True).tokens == _hf_greedy(ids, 16)


def test_example_app_runs_with_only_the_runtime(art):
    """examples/generate_app.py with torch, transformers and edgekit made unimportable."""
    code = ("import runpy, sys\nfor m in ('torch', 'transformers', 'edgekit'):\n    sys.modules[m] = None\n"
            f"sys.argv = ['generate_app.py', {str(art)!r}, '--prompt', {PROMPT!r}, '--max-new-tokens', '12']\n"
            f"runpy.run_path({str(ROOT / 'examples' / 'generate_app.py')!r}, run_name='__main__')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    ids = _prompt_ids(art)
    ref = _hf_greedy(ids, 12)
    eos = ref.index(0) + 1 if 0 in ref else 12  # the app stops at end of text
    assert res["tokens"] == ref[:eos] and res["prompt_tokens"] == len(ids) and res["decode_tokens_per_s"] > 0


def test_example_app_refuses_tampered_artifact(art, tmp_path):
    bad = tmp_path / "t"
    shutil.copytree(art, bad)
    with open(bad / "tokenizer" / "tokenizer.json", "ab") as f:
        f.write(b" ")
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "generate_app.py"), str(bad)], capture_output=True,
                         text=True)
    assert out.returncode != 0 and "checksum mismatch" in out.stderr


@pytest.mark.parametrize("extra", [["--runtime", "onnxruntime", "--stack", "numpy"], ["--runtime", "openvino"],
                                   ["--target", "x86-avx2-ort"]])
def test_cli_generate_prints_text_and_speed_line(art, extra):
    from tokenizers import Tokenizer

    res = runner.invoke(app, ["generate", str(art), "--prompt", PROMPT, "--max-new-tokens", "8", "--ignore-eos",
                              *extra])
    assert res.exit_code == 0, res.stdout + (res.stderr or "")
    text = Tokenizer.from_file(str(art / "tokenizer" / "tokenizer.json")).decode(_hf_greedy(_prompt_ids(art), 8))
    assert (PROMPT + text) in res.stdout
    line = res.stdout.strip().splitlines()[-1]
    assert re.search(r"8 new; time to first token [\d.]+ ms, decode [\d.]+ tokens/s, peak RSS \d+ MB", line), line


def test_compress_rtn4_kv_cache_runs_matmulnbits_and_matches(hf_dir, tmp_path):
    """`compress DIR --method rtn --set bits=4 --kv-cache`: int4 weights + DequantizeLinear in the KV graph, run as
    MatMulNBits by the ONNX Runtime export; greedy tokens equal to the compressed torch model's generate."""
    import onnx

    from edgekit.model_io import load_model

    out = tmp_path / "q"
    res = runner.invoke(app, ["compress", str(hf_dir), "--method", "rtn", "--set", "bits=4", "--kv-cache", "-o",
                              str(out)])
    assert res.exit_code == 0, res.stdout + (res.stderr or "")
    assert "greedy tokens match transformers" in res.stdout
    man = json.loads((out / "manifest.json").read_text())
    assert man["integer_weights"]["integer_weights"] == 15 and not man["integer_weights"]["unmatched"]
    ops = [n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node]
    assert ops.count("DequantizeLinear") == 15
    q = load_model(hf_dir).module
    from edgekit.methods import rtn as baseline_rtn

    q, _ = baseline_rtn.apply(q, baseline_rtn.Config(bits=4))
    lm = q.model
    ids = _prompt_ids(out)
    dec = open_decoder(out / "exports/onnxruntime/model.onnx", "onnxruntime", man["decoder"],
                       config=man["exports"]["onnxruntime"]["validation"]["runtime_config"])
    assert greedy(dec, ids, 12).tokens == _hf_greedy(ids, 12, lm)
    assert man["exports"]["onnxruntime"]["validation"]["runtime_config"] == {"session.disable_quant_qdq": "1"}
    w = man["exports"]["onnxruntime"]["weights"]  # the ORT export runs them as MatMulNBits (4-bit, fp32 compute)
    assert (w["kind"], w["layers"], w["bits"]) == ("MatMulNBits", 15, [4]), w
    g = onnx.load(str(out / "exports/onnxruntime/model.onnx")).graph
    dq_out = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear"}
    assert sum(n.op_type == "MatMulNBits" for n in g.node) == 15
    assert not [n.name for n in g.node if n.op_type == "MatMul" and n.input[1] in dq_out]  # only attention MatMuls


def test_compress_rtn4_group_kv_cache_runs_block_matmulnbits(hf_dir, tmp_path):
    """RTN W4 with group_size=32: blocked DequantizeLinear in model.onnx, MatMulNBits with block_size 32 (the group
    scales, not a repeated per-channel scale) in the ORT export, greedy tokens equal to the compressed torch model's."""
    import onnx

    from edgekit.methods import rtn as baseline_rtn
    from edgekit.model_io import load_model

    out = tmp_path / "g"
    res = runner.invoke(app, ["compress", str(hf_dir), "--method", "rtn", "--set", "bits=4", "--set", "group_size=32",
                              "--kv-cache", "-o", str(out)])
    assert res.exit_code == 0, res.stdout + (res.stderr or "")
    man = json.loads((out / "manifest.json").read_text())
    assert man["method"]["report"]["extra"]["group_size"] == 32
    w = man["exports"]["onnxruntime"]["weights"]
    assert (w["kind"], w["layers"], w["bits"], w["block_sizes"]) == ("MatMulNBits", 15, [4], [32]), w
    g = onnx.load(str(out / "exports/onnxruntime/model.onnx")).graph
    nb = [n for n in g.node if n.op_type == "MatMulNBits"]
    inits = {i.name: i for i in g.initializer}
    q, _ = baseline_rtn.apply(load_model(hf_dir).module, baseline_rtn.Config(bits=4, group_size=32))
    from edgekit.quant import get_codes

    codes = get_codes(q)
    code = codes[next(k for k in codes if k.endswith("layers.0.mlp.down_proj.weight"))]  # [64, 128]: 4 groups/row
    scales = {tuple(onnx.numpy_helper.to_array(inits[n.input[2]]).shape) for n in nb}
    assert (64 * 4,) in scales  # N * blocks scales of the down projection
    assert any(np.array_equal(onnx.numpy_helper.to_array(inits[n.input[2]]), code.scale.numpy().reshape(-1))
               for n in nb)
    ids = _prompt_ids(out)
    dec = open_decoder(out / "exports/onnxruntime/model.onnx", "onnxruntime", man["decoder"],
                       config=man["exports"]["onnxruntime"]["validation"]["runtime_config"])
    assert greedy(dec, ids, 12).tokens == _hf_greedy(ids, 12, q.model)


@pytest.mark.parametrize("bits,k,block,tied", [(4, 48, 32, False), (8, 64, None, False), (4, 576, None, False),
                                               (8, 64, None, True)])
def test_matmulnbits_pack_is_exact(tmp_path, bits, k, block, tied):
    """DequantizeLinear(int codes, per-channel scale) + MatMul == MatMulNBits (accuracy level 0), padding included;
    a tied head (DequantizeLinear axis 0 -> Transpose -> MatMul, the embedding also read by a Gather) too; accuracy
    level 4 (int8 activations) is close but not equal."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgekit.export.qdq import _int_tensor
    from edgekit.genai.nbits import to_matmulnbits

    rng = np.random.default_rng(bits)
    half = 1 << (bits - 1)
    codes = rng.integers(-half + 1, half, size=(k, 24))
    scale = (rng.random(24) * 0.1 + 0.01).astype(np.float32)
    if tied:  # weight stored [N, K] (an embedding), per-row scale, used transposed by the head
        nodes = [helper.make_node("DequantizeLinear", ["q", "s"], ["e"], axis=0),
                 helper.make_node("Transpose", ["e"], ["w"], perm=[1, 0]), helper.make_node("MatMul", ["a", "w"], ["y"]),
                 helper.make_node("Gather", ["e", "i"], ["z"], axis=0)]
        q = _int_tensor("q", codes.T, bits)
    else:
        nodes = [helper.make_node("DequantizeLinear", ["q", "s"], ["w"], axis=1), helper.make_node("MatMul", ["a", "w"],
                                                                                                    ["y"])]
        q = _int_tensor("q", codes, bits)
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 24])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, k])]
                          + ([helper.make_tensor_value_info("i", TensorProto.INT64, [2])] if tied else []),
                          outs + ([helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, k])] if tied else []),
                          [q, numpy_helper.from_array(scale, "s")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)]), str(tmp_path / "dq.onnx"))
    a = rng.standard_normal((3, k)).astype(np.float32)
    ref = a.astype(np.float64) @ (codes * scale[None].astype(np.float64))
    for level, tol in ((0, 1e-5), (4, 5e-2)):
        rep = to_matmulnbits(tmp_path / "dq.onnx", tmp_path / "nb.onnx", block, level)
        assert rep["layers"] == 1 and rep["bits"] == [bits]
        m = onnx.load(str(tmp_path / "nb.onnx"))
        ops = sorted(n.op_type for n in m.graph.node)
        assert ops == (["DequantizeLinear", "Gather", "MatMulNBits"] if tied else ["MatMulNBits"]), ops
        feeds = {"a": a, **({"i": np.array([3, 5])} if tied else {})}
        res = ort.InferenceSession(str(tmp_path / "nb.onnx"), providers=["CPUExecutionProvider"]).run(None, feeds)
        y = res[0]
        if tied:  # the embedding rows still dequantize exactly
            assert np.allclose(res[1], (codes.T * scale[:, None])[[3, 5]], rtol=1e-6)
        err = np.abs(y - ref).max() / np.abs(ref).max()
        assert err < tol and (level == 0 or err > 1e-6), (level, err)
    if bits == 8:  # what the artifact's ORT export does: 8-bit weights stay DequantizeLinear
        rep = to_matmulnbits(tmp_path / "dq.onnx", tmp_path / "nb.onnx", bits=(4,))
        assert rep["layers"] == 0 and "8-bit weights not requested" in str(rep["kept"])


@pytest.mark.parametrize("args,needle", [
    (["generate", "{art}", "--prompt", "x", "--runtime", "tflite"], "onnxruntime or openvino"),
    (["generate", "{art}", "--prompt", "x", "--max-new-tokens", "0"], "max-new-tokens"),
    (["generate", "{art}", "--prompt", "x", "--stack", "bogus"], "--stack"),
    (["generate", "{art}", "--prompt", "x", "--runtime", "openvino", "--target", "x86-avx2-ort"], "not both"),
    (["generate", "{demo}", "--prompt", "x"], "not a decoder artifact"),
    (["export", "demo", "--target", "onnxruntime", "--kv-cache", "-o", "{tmp}/d"], "causal LM"),
    (["export", "{hf}", "--target", "tflite", "--kv-cache", "-o", "{tmp}/t"], "LiteRT generation"),
])
def test_bad_input_is_one_line(art, hf_dir, tmp_path, args, needle):
    demo = tmp_path / "demo"
    if "{demo}" in args:
        api.export("demo", "onnxruntime", demo)
    args = [a.format(art=art, demo=demo, tmp=tmp_path, hf=hf_dir) for a in args]
    res = runner.invoke(app, args)
    text = " ".join(ln for ln in ((res.stderr or "") + res.stdout).splitlines() if ln.strip())
    assert res.exit_code == 2, text
    assert needle in text and text.startswith("error:") and "Traceback" not in text


def test_decoder_info_refuses_non_llama_layouts():
    from edgekit.errors import UnsupportedModelError
    from edgekit.genai.decoder import decoder_info, find_causal_lm

    with pytest.raises(UnsupportedModelError, match="causal LM"):
        find_causal_lm(torch.nn.Linear(2, 2))
    m = tiny_llama()
    m.config.layer_types = ["sliding_attention", "full_attention"]
    with pytest.raises(UnsupportedModelError, match="sliding-window"):
        decoder_info(m)
    assert np.isfinite(decoder_info(tiny_llama()).head_dim)


def test_rtn4_group_with_an_8bit_head_keeps_the_head_at_8_bits(hf_dir, tmp_path):
    """`--set head_bits=8`: lm_head (tied to the embedding in SmolLM2) gets per-channel 8-bit codes while every other
    linear keeps 4-bit group codes; bits/weight counts both; the KV-cache export still generates the compressed torch
    model's greedy tokens; a head_pattern that matches nothing is a one-line error."""
    from edgekit.methods import rtn as baseline_rtn
    from edgekit.model_io import load_model
    from edgekit.quant import get_codes

    m = load_model(hf_dir).module
    q, rep = baseline_rtn.apply(m, baseline_rtn.Config(bits=4, group_size=32, head_bits=8))
    codes = get_codes(q)
    head = [k for k in codes if k.endswith("lm_head.weight")]
    assert len(head) == 1 and codes[head[0]].bits == 8 and codes[head[0]].group_size is None
    assert all(c.bits == 4 and c.group_size == 32 for k, c in codes.items() if k not in head)
    assert list(rep.extra["head_layers"].values()) == [8]
    _, plain = baseline_rtn.apply(load_model(hf_dir).module, baseline_rtn.Config(bits=4, group_size=32))
    hw = codes[head[0]].codes.numel()
    n = plain.params_after
    expected = plain.bits_per_weight + (hw * 8 - hw * 4 - hw * 32 / 32) / n  # head: 8-bit codes, no group scales
    assert abs(rep.bits_per_weight - expected) < 1e-6
    out = tmp_path / "h8"
    res = runner.invoke(app, ["compress", str(hf_dir), "--method", "rtn", "--set", "bits=4", "--set", "group_size=32",
                              "--set", "head_bits=8", "--kv-cache", "-o", str(out)])
    assert res.exit_code == 0, res.stdout + (res.stderr or "")
    man = json.loads((out / "manifest.json").read_text())
    ids = _prompt_ids(out)
    dec = open_decoder(out / "exports/onnxruntime/model.onnx", "onnxruntime", man["decoder"],
                       config=man["exports"]["onnxruntime"]["validation"]["runtime_config"])
    assert greedy(dec, ids, 12).tokens == _hf_greedy(ids, 12, q.model)
    with pytest.raises(ConfigError, match="head_pattern"):
        baseline_rtn.apply(load_model(hf_dir).module, baseline_rtn.Config(bits=4, head_bits=8, head_pattern="nothere"))


def test_profile_decoder_artifacts_reports_decode_metrics(art, hf_dir, tmp_path):
    """`edgekit profile FP32_ART RTN4_ART --target host --target intel-cpu-openvino`: decoder artifacts get generation
    metrics (TTFT, decode tokens/s, ms/token against the weight-read floor), interleaved, ratios to the first; the ORT
    decode step's op profile sees MatMulNBits in the 4-bit export and not in FP32; its weights (and so its floor) are
    smaller; mixing a decoder with a plain artifact is a one-line error."""
    q = tmp_path / "q4"
    api.compress(hf_dir, "rtn", {"bits": 4}, q, runtimes=["onnxruntime", "openvino"], kv_cache=True)
    res = runner.invoke(app, ["profile", str(art), str(q), "--target", "host", "--target", "intel-cpu-openvino",
                              "--rounds", "2", "-o", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.stdout + (res.stderr or "")
    # the printed table shows each file's top-3 decode-step ops; which three depends on timing noise on a tiny model
    # (and rich may shorten the cell), so MatMulNBits is checked in the JSON's full op profile below
    assert "decode (128-token prompt, 128 new tokens" in res.stdout
    doc = json.loads((tmp_path / "rep" / "profile.json").read_text())
    assert doc["kind"] == "decode" and [r["runtime"] for r in doc["results"]] == ["onnxruntime", "openvino"]
    for r in doc["results"]:
        fp, q4 = r["files"]
        assert fp["decode_ratio"]["p50"] == 1.0 and fp["greedy_tokens_equal_to_first"] == "128/128"
        for f in (fp, q4):
            assert f["ttft_ms"] > 0 and f["decode_tokens_per_s"] > 0
            assert abs(f["ms_per_token"] * f["decode_tokens_per_s"] - 1e3) < 1e-6
            assert 0 < f["floor_ms_per_token"] and np.isfinite(f["decode_ratio"]["p50"])
        assert q4["weights_mb"] < 0.8 * fp["weights_mb"] and q4["floor_ms_per_token"] < fp["floor_ms_per_token"]
        lo, hi = q4["decode_ratio"]["range"]
        assert lo <= q4["decode_ratio"]["p50"] <= hi
    ort_fp, ort_q = (f["decode_step_ops"]["by_type"] for f in doc["results"][0]["files"])
    assert "MatMulNBits" in ort_q and "MatMulNBits" not in ort_fp and "MatMul" in ort_fp
    assert "decode_step_ops" not in doc["results"][1]["files"][0]  # OpenVINO: no ORT profiler
    demo = tmp_path / "demo"
    api.export("demo", "onnxruntime", demo)
    bad = runner.invoke(app, ["profile", str(art), str(demo), "--target", "host"])
    text = " ".join(ln for ln in ((bad.stderr or "") + bad.stdout).splitlines() if ln.strip())
    assert bad.exit_code == 2 and text.startswith("error:") and "apart from other sources" in text, text


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_eval_scores_a_kv_cache_artifact_through_its_decoder(art, hf_dir, tmp_path, runtime):
    """`edgekit eval ART --task perplexity-file` on a KV-cache decoder artifact (it failed with an internal error on
    the past_key_values inputs): each window is one prefill through the decoder graph, so the FP32 decoder's
    perplexity equals its torch source's and a perturbed decoder's does not."""
    from tests.unit._tiny_llm import TEXT

    text = tmp_path / "t.txt"
    text.write_text(" ".join(TEXT * 6))
    out = tmp_path / "e.json"
    res = runner.invoke(app, ["eval", str(art), "--task", "perplexity-file", "--data", str(text), "--runtime",
                              runtime, "--set", "window=32", "--json", str(out)])
    assert res.exit_code == 0, res.stdout + (res.stderr or "")
    doc = json.loads(out.read_text())
    m = doc["metrics"]
    assert doc["samples"] >= 3 and doc["window"] == 32
    assert m["perplexity"] == pytest.approx(doc["reference"]["perplexity"], rel=1e-4)
    assert m["next_token_agreement"] > 0.99
    # the same scoring on a decoder whose weights moved (RTN int4): a different figure, the decoder's own
    q = tmp_path / "q"
    res = runner.invoke(app, ["compress", str(hf_dir), "--method", "rtn", "--set", "bits=4", "--kv-cache", "--target",
                              runtime, "-o", str(q)])
    assert res.exit_code == 0, res.stdout + (res.stderr or "")
    res = runner.invoke(app, ["eval", str(q), "--task", "perplexity-file", "--data", str(text), "--runtime",
                              runtime, "--set", "window=32", "--json", str(out)])
    assert res.exit_code == 0, res.stdout + (res.stderr or "")
    qm = json.loads(out.read_text())
    assert qm["reference"]["perplexity"] == pytest.approx(doc["reference"]["perplexity"], rel=1e-6)
    assert abs(qm["metrics"]["perplexity_ratio"] - 1) > 1e-3, qm["metrics"]


def test_deploy_int8_decoder_runs_int8_activations_checked_teacher_forced(hf_dir, tmp_path, monkeypatch):
    """`compress DIR --method rtn --kv-cache --deploy int8`: the ONNX Runtime file runs every integer weight as
    MatMulNBits with accuracy_level 4 and OpenVINO runs with dynamic quantization; both are judged teacher-forced on
    transformers' tokens against stated floors (the logits really moved: it is not the weights-only file), the
    canonical model.onnx keeps its weights-only greedy match; a form below the floors writes nothing; a model without
    integer weights and --deploy auto are refused in one line."""
    import onnx

    from edgekit.errors import ExportMismatchError
    from edgekit.genai import check

    from edgekit.genai import stacks

    opened = []  # openvino-genai's pipeline must run the int8-activation settings the file was validated with
    real_pipeline = stacks.ov_pipeline
    monkeypatch.setattr(stacks, "ov_pipeline", lambda folder, threads=None, config=None: (
        opened.append(dict(config or {})), real_pipeline(folder, threads, config))[1])
    out = tmp_path / "a8"
    res = runner.invoke(app, ["compress", str(hf_dir), "--method", "rtn", "--set", "bits=4", "--kv-cache", "--deploy",
                              "int8", "--target", "onnxruntime", "--target", "openvino", "-o", str(out)])
    assert res.exit_code == 0, res.stdout + (res.stderr or "")
    assert "deploy int8 -> int8 activations" in res.stdout
    man = json.loads((out / "manifest.json").read_text())
    for rt in ("onnxruntime", "openvino"):  # each stack is checked against the numpy loop on the same file
        g8 = man["exports"][rt]["genai"]
        assert g8["status"] != "ok" or g8["reference"] == "the numpy loop on this int8-activation file", (rt, g8)
    ov_status = man["exports"]["openvino"]["genai"]["status"]
    if ov_status != "unavailable":
        assert opened and all(c.get("DYNAMIC_QUANTIZATION_GROUP_SIZE") == "32" for c in opened), opened
    if ov_status == "ok":
        r = runner.invoke(app, ["generate", str(out), "--runtime", "openvino", "--stack", "genai", "--prompt", "a b",
                                "--max-new-tokens", "3"])
        assert r.exit_code == 0, r.stdout + (r.stderr or "")
        assert opened[-1].get("DYNAMIC_QUANTIZATION_GROUP_SIZE") == "32", opened
    assert man["validation"]["onnx"]["greedy_match"]
    for rt in ("onnxruntime", "openvino"):
        e = man["exports"][rt]
        v = e["validation"]
        assert e["deploy"]["form"] == "int8 activations" and v["cache"]["ok"] and v["steps_compared"] == 20
        assert v["top1_agreement"] >= check.ACT8_FLOORS["top1_agreement"]
        assert check.ACT8_FLOORS["cosine_min"] <= v["cosine_min"] < 1 - 1e-9, v  # moved, but within the floor
    assert man["exports"]["openvino"]["validation"]["runtime_config"]["DYNAMIC_QUANTIZATION_GROUP_SIZE"] == "32"
    assert man["exports"]["onnxruntime"]["validation"]["runtime_config"] == {"session.disable_quant_qdq": "1"}
    g = onnx.load(str(out / "exports/onnxruntime/model.onnx")).graph
    nb = [n for n in g.node if n.op_type == "MatMulNBits"]
    assert len(nb) == 15 and all(a.i == 4 for n in nb for a in n.attribute if a.name == "accuracy_level")
    # the eval and profile paths open the file with the recorded settings: the FP32-source perplexity check runs
    text = tmp_path / "t.txt"
    from tests.unit._tiny_llm import TEXT

    text.write_text(" ".join(TEXT * 6))
    r = runner.invoke(app, ["eval", str(out), "--task", "perplexity-file", "--data", str(text), "--runtime",
                            "openvino", "--set", "window=32"])
    assert r.exit_code == 0, r.stdout + (r.stderr or "")
    # floors that no int8 form can meet: refused, nothing written
    monkeypatch.setitem(check.ACT8_FLOORS, "cosine_min", 1.0)
    with pytest.raises(ExportMismatchError, match="cosine_min"):
        api.compress(hf_dir, "rtn", {"bits": 4}, tmp_path / "no", runtimes=["onnxruntime"], kv_cache=True,
                     deploy="int8")
    assert not (tmp_path / "no").exists()
    for args, needle in [(["--method", "magnitude", "--deploy", "int8"], "integer weights"),
                         (["--method", "rtn", "--deploy", "auto"], "--deploy int8")]:
        r = runner.invoke(app, ["compress", str(hf_dir), *args, "--kv-cache", "--target", "onnxruntime", "-o",
                                str(tmp_path / "bad")])
        text_out = " ".join(ln for ln in ((r.stderr or "") + r.stdout).splitlines() if ln.strip())
        assert r.exit_code == 2 and needle in text_out and "Traceback" not in text_out, text_out
        assert not (tmp_path / "bad").exists()
