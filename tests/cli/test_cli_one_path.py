"""One path from the CLI (issue 13): a --target's round_to reaches the pruning method, and eval/profile take a
fresh compress artifact (its model.onnx was validated on ONNX Runtime) without a separate export."""
from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from edgekit.cli import app

runner = CliRunner()


def _tiny_cnn(path: Path) -> Path:
    """conv 3->40 -> conv 40->64 -> conv 64->16 (BN+ReLU each) -> pool -> fc, pickled with torch.nn classes only:
    UDFC at ratio 0.3 keeps 28/45/11 channels, none a multiple of 16."""
    g = torch.Generator().manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 40, 3, padding=1, bias=False), nn.BatchNorm2d(40), nn.ReLU(),
                      nn.Conv2d(40, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                      nn.Conv2d(64, 16, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
    for b in m.modules():
        if isinstance(b, nn.BatchNorm2d):
            n = b.num_features
            b.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            b.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            b.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
    torch.save(m.eval(), path)
    return path


def _conv_out_channels(onnx_path: Path) -> list[int]:
    """Output channels of every Conv in the exported graph (weights through DequantizeLinear when quantized)."""
    g = onnx.load(str(onnx_path)).graph
    inits = {i.name: list(i.dims) for i in g.initializer}
    made_by = {o: n for n in g.node for o in n.output}

    def shape(name: str) -> list[int]:
        while name not in inits:  # DequantizeLinear(q, scale) [-> Add(offset)]: follow the first input
            name = made_by[name].input[0]
        return inits[name]

    return [shape(n.input[1])[0] for n in g.node if n.op_type == "Conv"]


def _compress(src: Path, out: Path, *extra: str) -> list[int]:
    res = runner.invoke(app, ["compress", str(src), "--method", "udfc", "--set", "ratio=0.3",
                              "--input-shape", "1x3x8x8", "-o", str(out), *extra])
    assert res.exit_code == 0, res.output
    return _conv_out_channels(out / "model.onnx")


def test_target_round_to_reaches_udfc_from_the_cli(tmp_path: Path) -> None:
    src = _tiny_cnn(tmp_path / "tiny.pt")
    plain = _compress(src, tmp_path / "plain")
    assert plain == [28, 45, 11]  # pruned, and not multiples of 16: the check below can fail
    rounded = _compress(src, tmp_path / "ov", "--target", "intel-cpu-openvino")  # round_to: 16
    assert rounded == [32, 48, 16] and all(c % 16 == 0 for c in rounded)
    man = json.loads((tmp_path / "ov" / "manifest.json").read_text())
    assert man["method"]["config"]["round_to"] == 16 and "openvino" in man["exports"]


def test_explicit_round_to_beats_the_target_hint(tmp_path: Path) -> None:
    src = _tiny_cnn(tmp_path / "tiny.pt")
    assert _compress(src, tmp_path / "a", "--set", "round_to=8", "--target", "intel-cpu-openvino") == [32, 48, 16]
    man = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert man["method"]["config"]["round_to"] == 8


@pytest.fixture(scope="module")
def compressed(tmp_path_factory) -> Path:
    """A fresh `edgekit compress` artifact with no runtime export: only model.onnx, validated on ONNX Runtime."""
    out = tmp_path_factory.mktemp("one_path") / "art"
    res = runner.invoke(app, ["compress", "demo", "--method", "rtn", "-o", str(out)])
    assert res.exit_code == 0, res.output
    man = json.loads((out / "manifest.json").read_text())
    assert man["exports"] == {} and man["validation"]["onnx"]
    return out


def test_export_file_falls_back_to_the_validated_model_onnx(compressed: Path, tmp_path: Path) -> None:
    from edgekit.artifact import export_file
    from edgekit.errors import ConfigError

    assert export_file(compressed, "onnxruntime") == compressed / "model.onnx"
    with pytest.raises(ConfigError, match="no openvino export"):
        export_file(compressed, "openvino")
    other = tmp_path / "ov"  # `edgekit export` artifact: its model.onnx was never run on ONNX Runtime
    assert runner.invoke(app, ["export", "demo", "--target", "openvino", "-o", str(other)]).exit_code == 0
    with pytest.raises(ConfigError, match="no onnxruntime export"):
        export_file(other, "onnxruntime")


def test_eval_takes_a_compress_artifact_on_onnxruntime(compressed: Path) -> None:
    res = runner.invoke(app, ["eval", str(compressed), "--task", "digits", "--runtime", "onnxruntime", "-n", "50"])
    assert res.exit_code == 0, res.output
    assert "accuracy" in res.output and "onnxruntime" in res.output
    res = runner.invoke(app, ["eval", str(compressed), "--task", "digits", "--runtime", "openvino", "-n", "50"])
    assert res.exit_code == 2 and "no openvino export" in res.output


def test_profile_takes_a_compress_artifact(compressed: Path, tmp_path: Path) -> None:
    from edgekit.targets import load_target

    quick = load_target("x86-avx2-ort").model_dump()
    quick.update(name="quick-ort", threads=1,
                 protocol={"warmup": 1, "min_runs": 3, "min_seconds": 0.0, "max_repeats": 0, "profile_runs": 0})
    (tmp_path / "quick.yaml").write_text(yaml.safe_dump(quick))
    res = runner.invoke(app, ["profile", str(compressed), "--target", str(tmp_path / "quick.yaml"),
                              "-o", str(tmp_path / "prof")])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "prof" / "profile.json").read_text())
    assert doc["results"][0]["file"] == "model.onnx" and doc["results"][0]["status"] == "ok"


def test_bench_deploy_auto_runs_the_deploy_step_per_target(tmp_path: Path) -> None:
    """`edgekit bench ... --deploy auto` (real compress, export and deploy; nothing stubbed): every compressed row
    carries the form the deploy step kept for its runtime and why; the fp32 row has none; the JSON records it."""
    out = tmp_path / "b"
    res = runner.invoke(app, ["bench", "demo", "--methods", "rtn", "--target", "x86-avx2-ort", "--target",
                              "intel-cpu-openvino", "--deploy", "auto", "-o", str(out)])
    assert res.exit_code in (0, 1), res.output  # 1: some cell slower/failed is reported, not a crash
    doc = json.loads((out / "bench.json").read_text())
    assert doc["deploy"] == "auto"
    rows = {(r["variant"], r["runtime"]): r for r in doc["rows"]}
    for rt in ("onnxruntime", "openvino"):
        assert rows["fp32", rt]["deploy"] is None
        dep = rows["rtn", rt]["deploy"]
        assert dep["requested"] == "auto" and dep["form"] in ("int8-qdq", "int8-dynamic", "default", "fp32",
                                                              "openvino-dynamic-quantization")
        assert dep["why"], dep
        man = json.loads((Path(rows["rtn", rt]["artifact"]) / "manifest.json").read_text())
        assert man["exports"][rt]["deploy"]["form"] == dep["form"]
    assert "rtn -> " in (out / "bench.md").read_text()



def test_bench_deploy_floor_reaches_the_deploy_step(tmp_path: Path) -> None:
    """`edgekit bench --deploy-floor` is compress's: checked before any work (unknown key, no --deploy: exit 2, no
    folder), recorded in bench.json, and applied: an unmeetable floor makes `--deploy int8` fail that variant with
    the validation's reason while the fp32 row is still measured."""
    base = ["bench", "demo", "--methods", "rtn", "--target", "x86-avx2-ort"]
    for extra, msg in ((["--deploy", "int8", "--deploy-floor", "top1=0.5"], "not a deploy floor"),
                       (["--deploy-floor", "cosine=0.9"], "add --deploy")):
        res = runner.invoke(app, base + extra + ["-o", str(tmp_path / "bad")])
        assert res.exit_code == 2 and msg in res.output and not (tmp_path / "bad").exists(), res.output
    out = tmp_path / "b"
    res = runner.invoke(app, base + ["--deploy", "int8", "--deploy-floor", "mean_cosine=1.0", "-o", str(out)])
    assert res.exit_code in (0, 1), res.output
    doc = json.loads((out / "bench.json").read_text())
    assert doc["deploy_floors"] == {"mean_cosine": 1.0}
    rows = {r["variant"]: r for r in doc["rows"]}
    assert rows["fp32"]["status"] == "passed" and rows["fp32"]["p50_ms"], rows["fp32"]
    assert rows["rtn"]["status"] != "passed" and "mean cosine" in rows["rtn"]["reason"], rows["rtn"]


def test_plain_integer_weight_export_says_it_was_not_timed(tmp_path: Path) -> None:
    """Compressed means faster, or we say so: a plain export of integer weights (float activations, no deploy step,
    nothing timed it) gets a note pointing to --deploy auto / profile; a deployed or float export gets none."""
    from edgekit.cli import weight_only_runtimes

    r = runner.invoke(app, ["compress", "demo", "--method", "rtn", "--set", "bits=8", "--target", "onnxruntime",
                            "-o", str(tmp_path / "plain")])
    assert r.exit_code == 0, r.output
    assert "not timed against FP32" in r.output and "--deploy auto" in r.output, r.output
    man = json.loads((tmp_path / "plain" / "manifest.json").read_text())
    assert weight_only_runtimes(man) == ["onnxruntime"]
    r = runner.invoke(app, ["compress", "demo", "--method", "rtn", "--set", "bits=8", "--target", "onnxruntime",
                            "--deploy", "int8", "-o", str(tmp_path / "dep")])
    assert r.exit_code == 0 and "not timed against FP32" not in r.output, r.output
    # float weights (magnitude pruning keeps fp32 storage): nothing to say
    r = runner.invoke(app, ["compress", "demo", "--method", "magnitude", "--target", "onnxruntime",
                            "-o", str(tmp_path / "mag")])
    assert r.exit_code == 0 and "not timed against FP32" not in r.output, r.output
    assert weight_only_runtimes({"exports": {"tflite": {"precision": "fp32", "weight_storage": {"weights": "int4 (x)"}}}}) == ["tflite"]
