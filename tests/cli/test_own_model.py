"""Your own model, end to end (issue 21): a CNN from a state dict whose factory takes arguments, loaded by file path,
through compress (rtn, udfc), export, eval against *its own* FP32 (npz, image-folder) and bench on two targets; a
tiny BERT folder through compress and text-embed; built-in tasks refuse foreign models; no silent collapse."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.torch import save_file
from typer.testing import CliRunner

from edgekit.cli import app
from tests.cli.own_cnn import trained

runner = CliRunner()
ARCH = f"{os.path.relpath(Path(__file__).with_name('own_cnn.py'))}:build"  # tests/cli/own_cnn.py:build from the root
SHAPE = "1x3x16x16"


def _ok(res) -> str:
    text = (res.stdout or "") + (res.stderr or "")
    assert res.exit_code == 0, text[-3000:]
    assert "Traceback" not in text
    return text


def _one_line_error(res, needle: str) -> str:
    text = ((res.stderr or "") + (res.stdout or "")).strip()
    assert res.exit_code == 2, text[-3000:]
    assert "Traceback" not in text and text.startswith("error:") and needle in text, text
    return text


@pytest.fixture(scope="module")
def own(tmp_path_factory) -> dict[str, Path]:
    """State dict of the width-8 CNN, a .npz of inputs, an ImageFolder with two classes, quick target YAMLs."""
    from PIL import Image

    from edgekit.targets import load_target

    d = tmp_path_factory.mktemp("own")
    save_file(trained(8).state_dict(), str(d / "own.safetensors"))
    rng = np.random.default_rng(0)
    np.savez(d / "inputs.npz", input=rng.standard_normal((24, 3, 16, 16)).astype(np.float32))
    for c in ("cat", "dog"):
        (d / "imgs" / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(d / "imgs" / c / f"{i}.png")
    for base, name in (("x86-avx2-ort", "quick-ort"), ("intel-cpu-openvino", "quick-ov")):
        q = load_target(base).model_dump()
        q.update(name=name, threads=1, protocol={"warmup": 1, "min_runs": 3, "min_seconds": 0.0, "max_repeats": 0,
                                                 "profile_runs": 0})
        (d / f"{name}.yaml").write_text(yaml.safe_dump(q))
    return {"dir": d, "sd": d / "own.safetensors", "npz": d / "inputs.npz", "imgs": d / "imgs"}


def _src(own) -> list[str]:
    return [str(own["sd"]), "--arch", ARCH, "--arch-args", "width=8", "--input-shape", SHAPE]


@pytest.fixture(scope="module")
def rtn_art(own) -> Path:
    out = own["dir"] / "rtn"
    text = _ok(runner.invoke(app, ["compress", *_src(own), "-m", "rtn", "--data", str(own["npz"]), "-o", str(out)]))
    assert "fidelity vs source (last 24 samples of" in text
    return out


def test_factory_without_its_arguments_is_one_line(own, tmp_path) -> None:
    res = runner.invoke(app, ["compress", str(own["sd"]), "--arch", ARCH, "--input-shape", SHAPE, "-m", "rtn",
                              "-o", str(tmp_path / "x")])
    _one_line_error(res, "--arch-args width=VALUE")
    assert not (tmp_path / "x").exists()


def test_manifest_records_how_to_reload_the_source(own, rtn_art) -> None:
    man = json.loads((rtn_art / "manifest.json").read_text())
    src = man["source"]
    assert src["kind"] == "state_dict" and src["arch"] == ARCH and src["arch_args"] == {"width": 8}
    assert src["abs_path"] == str(own["sd"].resolve()) and len(src["sha256"]) == 64
    fid = man["fidelity"]
    assert fid["samples"] == 24 and fid["metric"] == "top1_agreement" and fid["value"] >= 0.9
    assert fid["below_threshold"] == []


def test_udfc_and_export_and_eval_against_own_fp32(own, rtn_art, tmp_path) -> None:
    _ok(runner.invoke(app, ["compress", *_src(own), "-m", "udfc", "-o", str(tmp_path / "udfc")]))
    fp32 = tmp_path / "fp32"
    _ok(runner.invoke(app, ["export", *_src(own), "--target", "openvino", "-o", str(fp32)]))
    # the exact FP32 export against its own source: identical up to float noise (a built-in model would not be)
    res = runner.invoke(app, ["eval", str(fp32), "--task", "npz", "--data", str(own["npz"]), "--runtime", "openvino",
                              "--arch", ARCH, "--json", str(tmp_path / "fp32.json")])
    _ok(res)
    r = json.loads((tmp_path / "fp32.json").read_text())
    assert r["metrics"]["cosine_min"] > 0.99999 and r["metrics"]["top1_agreement"] == 1.0
    assert r["fp32_source"] == str(own["sd"].resolve()) and r["samples"] == 24
    for task, data in (("npz", own["npz"]), ("image-folder", own["imgs"])):
        out = tmp_path / f"{task}.json"
        _ok(runner.invoke(app, ["eval", str(rtn_art), "--task", task, "--data", str(data), "--arch", ARCH,
                                "--json", str(out)]))
        m = json.loads(out.read_text())
        assert m["metrics"]["top1_agreement"] >= 0.75 and m["metrics"]["cosine"] > 0.99, m
    assert "accuracy" in m["metrics"] and m["samples"] == 8 and "accuracy" in m["reference"]  # labelled folders


def test_npz_with_a_label_array_scores_accuracy(own, tmp_path) -> None:
    """A .npz with inputs + one integer label per sample (the layout compress --data trains on) adds accuracy of the
    model and of its FP32 source; labels = FP32's own top-1 with 6 of 24 flipped give exactly 0.75 for FP32."""
    import torch

    x = np.load(own["npz"])["input"]
    with torch.no_grad():
        top1 = trained(8)(torch.from_numpy(x)).argmax(1).numpy()
    y = top1.copy()
    y[:6] = (y[:6] + 1) % 10
    data = tmp_path / "labelled.npz"
    np.savez(data, input=x, labels=y.astype(np.int64))
    fp32 = tmp_path / "fp32"
    _ok(runner.invoke(app, ["export", *_src(own), "--target", "onnxruntime", "-o", str(fp32)]))
    out = tmp_path / "acc.json"
    _ok(runner.invoke(app, ["eval", str(fp32), "--task", "npz", "--data", str(data), "--arch", ARCH,
                            "--json", str(out)]))
    r = json.loads(out.read_text())
    assert r["reference"]["accuracy"] == pytest.approx(0.75) and r["metrics"]["accuracy"] == pytest.approx(0.75)
    np.savez(data, input=x, labels=np.full(24, 99, np.int64))
    _one_line_error(runner.invoke(app, ["eval", str(fp32), "--task", "npz", "--data", str(data), "--arch", ARCH]),
                    "outside the model's 10 classes")


def test_eval_needs_the_arch_again_and_checks_the_source(own, rtn_art, tmp_path) -> None:
    args = ["eval", str(rtn_art), "--task", "npz", "--data", str(own["npz"])]
    _one_line_error(runner.invoke(app, args), f"pass --arch {ARCH}")
    moved = tmp_path / "moved.safetensors"
    shutil.copy(own["sd"], moved)
    own["sd"].rename(own["sd"].with_suffix(".bak"))
    try:
        _one_line_error(runner.invoke(app, [*args, "--arch", ARCH]), "is gone")
        _ok(runner.invoke(app, [*args, "--arch", ARCH, "--reference", str(moved)]))
        other = tmp_path / "other.safetensors"
        save_file(trained(8, seed=1).state_dict(), str(other))
        _one_line_error(runner.invoke(app, [*args, "--arch", ARCH, "--reference", str(other)]),
                        "changed since the artifact was made")
    finally:
        own["sd"].with_suffix(".bak").rename(own["sd"])


def test_builtin_task_refuses_a_foreign_model(rtn_art) -> None:
    _one_line_error(runner.invoke(app, ["eval", str(rtn_art), "--task", "fashion-probe"]),
                    "scores only the built-in efficientnet-lite0")


def test_bench_factory_source_on_two_targets(own, tmp_path) -> None:
    d = own["dir"]
    factory = ARCH.replace(":build", ":trained")
    res = runner.invoke(app, ["bench", factory, "--arch-args", "width=8", "--input-shape", SHAPE,
                              "--target", str(d / "quick-ort.yaml"), "--target", str(d / "quick-ov.yaml"),
                              "--methods", "rtn", "--set", "rtn.bits=6", "--data", str(own["npz"]),
                              "-o", str(tmp_path / "bench")])
    _ok(res)
    doc = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert {(r["variant"], r["target"]) for r in doc["rows"]} == {(v, t) for v in ("fp32", "rtn")
                                                                  for t in ("quick-ort", "quick-ov")}
    assert all(r["status"] == "passed" for r in doc["rows"]), [r["reason"] for r in doc["rows"]]
    assert doc["method_options"] == {"rtn": {"bits": 6}}


def test_bench_comma_input_shape_is_one_line(tmp_path) -> None:
    res = runner.invoke(app, ["bench", "demo", "--target", "x86-avx2-ort", "--input-shape", "1,1,8,8",
                              "-o", str(tmp_path / "b")])
    _one_line_error(res, "write 1x1x8x8")


def test_collapse_warns_and_min_fidelity_fails(own, tmp_path) -> None:
    args = ["compress", *_src(own), "-m", "magnitude", "--set", "sparsity=0.99"]
    text = _ok(runner.invoke(app, [*args, "-o", str(tmp_path / "a")]))
    assert "WARNING: the compressed model departs from its source" in text
    res = runner.invoke(app, [*args, "--min-fidelity", "0.9", "-o", str(tmp_path / "b")])
    assert res.exit_code == 1 and "Traceback" not in res.output and "fidelity failed" in res.output
    man = json.loads((tmp_path / "b" / "manifest.json").read_text())  # the artifact is kept
    assert man["fidelity"]["failed"] is True and man["fidelity"]["value"] < 0.9
    ok = runner.invoke(app, ["compress", *_src(own), "-m", "rtn", "--min-fidelity", "0.9", "-o", str(tmp_path / "c")])
    assert "WARNING" not in _ok(ok)


def test_bert_folder_compress_and_text_embed(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    import torch

    words = "the a cat dog sat on mat ran fast red blue car road sky sun house tree big small".split()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    torch.manual_seed(0)
    bert = tmp_path / "bert"
    transformers.BertModel(transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                                   num_attention_heads=2, intermediate_size=64,
                                                   max_position_embeddings=64)).eval().save_pretrained(bert)
    transformers.BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(bert)
    sents = tmp_path / "sents.txt"
    sents.write_text("the cat sat on the mat\nthe dog ran fast\na red car on the road\nthe sun in the blue sky\n"
                     "a big house\na small tree\n")
    art = tmp_path / "art"
    _ok(runner.invoke(app, ["compress", str(bert), "-m", "rtn", "--input-shape", "1x16:int64,1x16:int64",
                            "-o", str(art)]))
    _ok(runner.invoke(app, ["eval", str(art), "--task", "text-embed", "--data", str(sents), "--json",
                            str(tmp_path / "r.json")]))
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["samples"] == 6 and r["metrics"]["cosine"] > 0.99 and r["fp32_source"] == str(bert.resolve())
    assert 0 <= r["metrics"]["retrieval_top1_agreement"] <= 1
    _one_line_error(runner.invoke(app, ["eval", str(art), "--task", "wordnet10"]), "scores only the built-in minilm")


def test_factory_source_compress_then_eval_against_it(own, tmp_path) -> None:
    """A factory on its own is the source; its weights' checksum is taken before the method changes them, so eval
    can re-build and verify it (with the same --arch and the recorded --arch-args)."""
    factory = ARCH.replace(":build", ":trained")
    art = tmp_path / "art"
    _ok(runner.invoke(app, ["compress", factory, "--arch-args", "width=8", "--input-shape", SHAPE, "-m", "rtn",
                            "-o", str(art)]))
    src = json.loads((art / "manifest.json").read_text())["source"]
    assert src["kind"] == "factory" and src["arch_args"] == {"width": 8} and len(src["state_dict_sha256"]) == 64
    out = tmp_path / "r.json"
    _ok(runner.invoke(app, ["eval", str(art), "--task", "npz", "--data", str(own["npz"]), "--arch", factory,
                            "--json", str(out)]))
    assert json.loads(out.read_text())["metrics"]["cosine"] > 0.999


def test_profile_takes_any_source(own, rtn_art, tmp_path) -> None:
    """`profile` on a state dict + --arch (exported to FP32 for the run, nothing left behind), and interleaved
    against an artifact: the report names the source, not a temporary folder."""
    import tempfile

    d = own["dir"]
    before = set(Path(tempfile.gettempdir()).glob("edgekit-profile-*"))
    text = _ok(runner.invoke(app, ["profile", *_src(own), "--target", str(d / "quick-ort.yaml"),
                                   "--target", str(d / "quick-ov.yaml"), "-o", str(tmp_path / "p1")]))
    assert "profiled its FP32 export, made for this run and not kept" in text
    doc = json.loads((tmp_path / "p1" / "profile.json").read_text())
    assert doc["artifact"] == str(own["sd"]) and doc["sources"] == [{"source": str(own["sd"]), "exported_fp32": True}]
    assert [r["status"] for r in doc["results"]] == ["ok", "ok"] and "edgekit-profile-" not in json.dumps(doc)
    _ok(runner.invoke(app, ["profile", *_src(own), str(rtn_art), "--target", str(d / "quick-ort.yaml"),
                            "--rounds", "3", "-o", str(tmp_path / "p2")]))
    cmp = json.loads((tmp_path / "p2" / "profile.json").read_text())
    assert cmp["kind"] == "compare" and cmp["artifacts"] == [str(own["sd"]), str(rtn_art)]
    assert cmp["results"][0]["files"][1]["ratio"]["p50"] > 0
    assert set(Path(tempfile.gettempdir()).glob("edgekit-profile-*")) == before
    _one_line_error(runner.invoke(app, ["profile", str(own["sd"]), "--target", str(d / "quick-ort.yaml")]),
                    "--arch")


def test_recipe_allow_class_and_trust_pickle(tmp_path) -> None:
    """A pickled module of the user's own class: refused without allow_class (one line), loaded with it or with
    trust_pickle in the recipe."""
    import torch

    from tests.cli.own_cnn import trained

    pt = tmp_path / "whole.pt"
    torch.save(trained(4), pt)
    base = f"model: {pt}\ninput_shape: {SHAPE}\nsteps: [{{method: rtn}}]\ngates: {{samples: 2}}\n"
    r = tmp_path / "r.yaml"
    r.write_text(base + f"out: {tmp_path / 'a'}\n")
    _one_line_error(runner.invoke(app, ["run", str(r)]), "tests.cli.own_cnn.OwnCNN")
    r.write_text(base + f"allow_class: [tests.cli.own_cnn.OwnCNN]\nout: {tmp_path / 'b'}\n")
    _ok(runner.invoke(app, ["run", str(r)]))
    man = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert man["source"]["allow_class"] == ["tests.cli.own_cnn.OwnCNN"] and man["recipe"]["gates"]["cosine"] > 0.99
    r.write_text(base + f"trust_pickle: true\nout: {tmp_path / 'c'}\n")
    _ok(runner.invoke(app, ["run", str(r)]))
    assert json.loads((tmp_path / "c" / "manifest.json").read_text())["source"]["trust_pickle"] is True
    r.write_text(base + f"allow_class: tests.cli.own_cnn.OwnCNN\nout: {tmp_path / 'd'}\n")
    _one_line_error(runner.invoke(app, ["run", str(r)]), "allow_class")


def test_causal_lm_compress_reports_perplexity_ratio(tmp_path) -> None:
    """compress a causal LM with --data text: the fidelity headline is the perplexity ratio on held-out windows."""
    pytest.importorskip("transformers")
    from tests.unit._tiny_llm import TEXT, tiny_llama_folder

    folder = tiny_llama_folder(tmp_path / "llama")
    txt = tmp_path / "notes.txt"
    txt.write_text("\n\n".join(TEXT * 6))
    text = _ok(runner.invoke(app, ["compress", str(folder), "-m", "rtn", "--set", "bits=8", "--input-shape",
                                   "1x16:int64,1x16:int64", "--data", str(txt), "-o", str(tmp_path / "a")]))
    assert "perplexity ratio" in text and "token windows of" in text
    fid = json.loads((tmp_path / "a" / "manifest.json").read_text())["fidelity"]
    assert fid["metric"] == "perplexity_ratio" and fid["role"] == "causal_lm" and 0.98 < fid["value"] < 1.05
    assert fid["below_threshold"] == [] and fid["outputs"]["output"]["perplexity_source"] > 1


def test_fidelity_metric_option_marks_an_embedding_model(own, tmp_path) -> None:
    """--fidelity-metric cosine: the user's own model judged as an embedding model (cosine headline, no argmax)."""
    _ok(runner.invoke(app, ["compress", *_src(own), "-m", "rtn", "--fidelity-metric", "cosine",
                            "-o", str(tmp_path / "a")]))
    fid = json.loads((tmp_path / "a" / "manifest.json").read_text())["fidelity"]
    assert fid["metric"] == "cosine" and fid["role"] == "embedding" and fid["value"] > 0.99
    assert "top1_agreement" not in fid["outputs"]["output"]
