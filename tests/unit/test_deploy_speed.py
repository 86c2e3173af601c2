"""deploy.check.interleaved: timed through edgekit.profile.interleaved (one loop, ratios to fp32), and a file
slower than FP32 gets its per-op cause (what `--deploy int8` prints when the user forces a slower form)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from edgekit.deploy import check
from edgekit.model_io import parse_input_shape
from edgekit.export.onnx import to_onnx


class Small(nn.Module):
    def __init__(self, extra: int = 0) -> None:
        super().__init__()
        self.fc = nn.Linear(256, 256)
        self.extra = nn.ModuleList(nn.Linear(256, 256) for _ in range(extra))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc(x)
        for m in self.extra:  # the slow file does much more MatMul work for the same output shape
            y = y + 1e-3 * m(x)
        return y


def _onnx(m: nn.Module, path: Path) -> Path:
    specs = parse_input_shape("64x256")
    to_onnx(m.eval(), (torch.randn(64, 256),), specs, path)
    return path


def test_slower_file_gets_ratio_interval_and_per_op_cause(tmp_path: Path) -> None:
    torch.manual_seed(0)
    fast, slow = _onnx(Small(0), tmp_path / "fast.onnx"), _onnx(Small(24), tmp_path / "slow.onnx")
    res = check.interleaved({"fp32": fast, "int8": slow}, "onnxruntime", (torch.randn(64, 256),), threads=1,
                            warmup=2, runs=12)
    r = res["ratio_to_fp32"]["int8"]
    lo, hi = res["ratio_ci95"]["int8"]
    assert r > 3 and lo <= r <= hi, res  # 25x the MatMul work: clearly slower, inside its own interval
    assert res["median_ms"]["int8"] > res["median_ms"]["fp32"] > 0
    note = res["slower"]["int8"]
    assert "slower" in note["summary"] and ("MatMul" in note["summary"] or "Gemm" in note["summary"]), note


def test_a_fast_model_is_timed_for_min_seconds_not_just_runs(tmp_path: Path) -> None:
    """20 rounds of a sub-millisecond model give a ratio that moves between runs; the loop keeps going until it has
    run min_seconds (up to 20 x runs rounds), so such a model gets many more rounds."""
    torch.manual_seed(0)
    a, b = _onnx(Small(0), tmp_path / "a.onnx"), _onnx(Small(0), tmp_path / "b.onnx")
    res = check.interleaved({"fp32": a, "int8": b}, "onnxruntime", (torch.randn(64, 256),), threads=1, warmup=2,
                            runs=10, min_seconds=0.3)
    assert 10 < res["runs"] <= 200 and res["min_seconds"] == 0.3, res["runs"]
    short = check.interleaved({"fp32": a, "int8": b}, "onnxruntime", (torch.randn(64, 256),), threads=1, warmup=2,
                              runs=10, min_seconds=0.0)
    assert short["runs"] == 10
