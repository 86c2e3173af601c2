"""edgekit.eval on the bundled demo model: metrics, FP32 agreement, caching, artifacts through ONNX Runtime."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekit.artifact import write_manifest
from edgekit.errors import ConfigError
from edgekit.eval import evaluate
from edgekit.eval._common import Predictor
from edgekit.models.digits_cnn import load_demo_model


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own cache, so references are really built."""
    d = tmp_path / "cache"
    monkeypatch.setenv("EDGEKIT_CACHE", str(d))
    return d


def _artifact(root: Path, model: torch.nn.Module, batch: int) -> Path:
    """A minimal artifact folder: model.onnx from the dynamo exporter + manifest with a static input shape."""
    root.mkdir()
    x = torch.zeros(batch, 1, 8, 8)
    torch.onnx.export(model.eval(), (x,), str(root / "model.onnx"), dynamo=True, input_names=["input"],
                      output_names=["logits"])
    write_manifest(root, {"model": "model.onnx", "exports": {},
                          "inputs": [{"name": "input", "shape": [batch, 1, 8, 8], "dtype": "float32"}]})
    return root


def test_digits_fp32_is_accurate_and_agrees_with_itself(_cache: Path) -> None:
    res = evaluate(load_demo_model(), "digits")
    assert res["samples"] == 450 and res["runtime"] == "torch"
    assert res["metrics"]["accuracy"] > 0.9
    assert res["metrics"]["agreement"] == 1.0
    assert res["metrics"]["accuracy"] == res["reference"]["accuracy"]
    assert len(list((_cache / "eval").glob("digits-*.npz"))) == 1
    json.dumps(res)  # the CLI writes it as JSON


def test_digits_damaged_model_loses_agreement() -> None:
    m = copy.deepcopy(load_demo_model())
    with torch.no_grad():
        m.fc.weight.mul_(torch.randn_like(m.fc.weight, generator=torch.Generator().manual_seed(0)))
    res = evaluate(m, "digits")
    ref = evaluate(load_demo_model(), "digits")
    assert res["metrics"]["agreement"] < 0.9
    assert res["metrics"]["accuracy"] < ref["metrics"]["accuracy"]
    assert res["reference"] == ref["reference"]  # the reference is the FP32 model's, whatever is evaluated


def test_limit_scores_first_samples() -> None:
    res = evaluate("demo", "digits", limit=17)
    assert res["samples"] == 17
    assert res["metrics"]["accuracy"] * 17 == pytest.approx(round(res["metrics"]["accuracy"] * 17))


@pytest.mark.parametrize("batch", [1, 4])
def test_onnx_artifact_matches_torch(tmp_path: Path, batch: int) -> None:
    art = _artifact(tmp_path / "art", load_demo_model(), batch)  # 450 % 4 != 0: exercises batch padding
    via_ort = evaluate(art, "digits")
    via_torch = evaluate(load_demo_model(), "digits")
    assert via_ort["runtime"] == "onnxruntime"
    assert via_ort["metrics"] == via_torch["metrics"]
    assert via_ort["samples"] == 450


def test_predictor_pads_static_batch_and_drops_padding() -> None:
    seen = []

    def call(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        seen.append(len(feeds["x"]))
        return [feeds["x"] * 2]

    p = Predictor("onnxruntime", ["x"], {"x": [4, 1]}, call, batch=4)
    out = p({"x": np.arange(10, dtype=np.float32)[:, None]})[0]
    assert seen == [4, 4, 4]
    np.testing.assert_array_equal(out[:, 0], np.arange(10) * 2)


def test_bad_inputs_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown eval task"):
        evaluate("demo", "nope")
    with pytest.raises(ConfigError, match="valid options"):
        evaluate("demo", "digits", options={"px": 3})
    with pytest.raises(ConfigError, match="neither an artifact"):
        evaluate(str(tmp_path / "missing"), "digits")
    with pytest.raises(ConfigError, match="needs an artifact"):
        evaluate("demo", "digits", runtime="openvino")


def test_cli_eval_prints_table_and_writes_json(tmp_path: Path) -> None:
    import typer
    from typer.testing import CliRunner

    from edgekit.cli_eval import register

    app = typer.Typer()
    register(app)
    app.command("noop")(lambda: None)  # a second command keeps `eval` a subcommand
    out = tmp_path / "r.json"
    r = CliRunner().invoke(app, ["eval", "demo", "--task", "digits", "--limit", "50", "--json", str(out)])
    assert r.exit_code == 0, r.output
    assert "accuracy" in r.output and "agreement" in r.output
    assert json.loads(out.read_text())["samples"] == 50
    r = CliRunner().invoke(app, ["eval", "demo", "--task", "digits", "--set", "bogus=1"])
    assert r.exit_code == 2


@pytest.mark.parametrize("runtime", ["openvino", "tflite"])
def test_digits_through_openvino_and_litert_match_torch(tmp_path: Path, runtime: str) -> None:
    """An artifact made by edgekit.api scores the same through every runtime as the torch model does."""
    from edgekit import api

    art = api.compress("demo", "rtn", {"bits": 8}, tmp_path / "a", runtimes=[runtime])
    ref = evaluate("demo", "digits")["metrics"]
    got = evaluate(art, "digits", runtime=runtime)["metrics"]
    assert got["accuracy"] == pytest.approx(ref["accuracy"], abs=0.005)
    assert got["agreement"] >= 0.99


def test_artifact_predictor_treats_declared_dynamic_axes_as_free(tmp_path):
    """A manifest input with `dynamic: {1: seq}` holds the example's size in `shape`; evaluation must not pad or
    truncate to it (a MiniLM artifact read that way was scored on 16-token texts: cosine 0.93 vs FP32)."""
    from edgekit.artifact import read_manifest, update_manifest
    from edgekit.eval._common import artifact_predictor
    from tests.unit._tiny_artifact import cached

    art = cached(tmp_path / "a")
    shape = read_manifest(art)["inputs"][0]["shape"]
    assert artifact_predictor(art, "onnxruntime", 1).static_dim("x", 2) == shape[2]
    update_manifest(art, {"inputs": [{"name": "x", "shape": shape, "dtype": "float32", "dynamic": {2: "h"}}]})
    p = artifact_predictor(art, "onnxruntime", 1)
    assert p.static_dim("x", 2) is None and p.static_dim("x", 3) == shape[3] and p.batch == shape[0]


def test_builtin_task_scores_a_derived_artifact_only_when_the_caller_names_the_reference(tmp_path: Path) -> None:
    """A state dict fine-tuned from the demo model, compressed from that file: refused by the source check, scored
    against the demo's own reference with `reference="demo"`, refused with a reference the task does not use."""
    from safetensors.torch import save_file

    from edgekit import api

    m = copy.deepcopy(load_demo_model())
    with torch.no_grad():  # "fine-tuned": other weights than the built-in file's
        m.fc.weight.add_(0.01 * torch.randn_like(m.fc.weight, generator=torch.Generator().manual_seed(1)))
    sd = tmp_path / "derived.safetensors"
    save_file(m.state_dict(), str(sd))
    art = api.compress(sd, "rtn", {"bits": 8}, tmp_path / "art", input_shape="1x1x8x8",
                       arch="edgekit.models.digits_cnn:build", runtimes=["onnxruntime"])
    with pytest.raises(ConfigError, match="scores only the built-in demo"):
        evaluate(art, "digits", runtime="onnxruntime")
    with pytest.raises(ConfigError, match="--reference minilm"):
        evaluate(art, "digits", runtime="onnxruntime", reference="minilm")
    res = evaluate(art, "digits", runtime="onnxruntime", reference="demo")
    ref = evaluate("demo", "digits")
    assert res["derived_from"].startswith("demo") and res["runtime"] == "onnxruntime"
    assert res["reference"] == ref["reference"] and res["samples"] == ref["samples"]
    assert 0.9 < res["metrics"]["agreement"] <= 1.0  # small weight change + 8-bit: close to the demo, not equal


def test_perplexity_offset_skips_whole_windows_of_python_docs_only(monkeypatch):
    """`--set python_docs_offset=K` scores the K-th window on (a held-out split); GPL-3 stays put."""
    import numpy as np

    from edgekit.eval import perplexity as P

    monkeypatch.setattr(P, "load_text", lambda name: name)
    tok = lambda text, add_special_tokens=False: {"input_ids": list(range(100)) if text == "python_docs" else  # noqa: E731
                                                   list(range(1000, 1100))}
    base = P.windows(tok, "python_docs", 8, 3)
    shifted = P.windows(tok, "python_docs", 8, 3, offset=2)
    assert np.array_equal(shifted[0], base[2]) and shifted.shape == (3, 8) and shifted[0, 0] == 16
    assert len(P.windows(tok, "python_docs", 8, 20, offset=10)) == 2  # the text runs out: fewer windows
    cfg = P.Config(python_docs_offset=16)
    assert P._offset(cfg, "python_docs") == 16 and P._offset(cfg, "gpl3") == 0
