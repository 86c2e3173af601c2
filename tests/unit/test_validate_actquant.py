"""Validation of exports with quantized activations: judged against a float64 twin, with an input-dependent bound."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgekit.errors import ExportMismatchError
from edgekit.export import validate as V
from edgekit.export.validate import ACT_QUANT_CAP, act_quant_limit, validate
from edgekit.model_io import InputSpec


class Stepped(nn.Module):
    """Linear layers with a coarse rounding of every activation: tiny float differences flip whole steps."""

    def __init__(self, depth: int = 6, width: int = 32, step: float = 0.05):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        for lin in self.layers:
            nn.init.normal_(lin.weight, std=width ** -0.5, generator=g)
        self.step = step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for lin in self.layers:
            x = torch.round(torch.tanh(lin(x)) / self.step) * self.step
        return x


def _export(m: nn.Module, path: Path, shape: tuple[int, int] = (4, 32)) -> Path:
    torch.onnx.export(m, (torch.zeros(*shape),), str(path), dynamo=True, input_names=["x"], verbose=False,
                      report=False)
    return path


def test_act_quant_passes_an_exact_export_with_rounding_cascades(tmp_path: Path) -> None:
    """24 layers, 512 wide, fine steps: float32 accumulation order flips roundings, and the flips compound, so the
    same ops in ONNX Runtime land > 1% (rel L2) from torch float32 on some input; torch float32 is as far from the
    exact float64 answer itself. The fixed rule rejects this correct export; the act_quant rule accepts it."""
    m = Stepped(depth=24, width=512, step=0.004).eval()
    specs = [InputSpec("x", [8, 512])]
    path = _export(m, tmp_path / "m.onnx", (8, 512))
    with pytest.raises(ExportMismatchError):
        validate(m, specs, path, "onnxruntime", "int")  # the cascade is real
    res = validate(m, specs, path, "onnxruntime", "act_quant")
    out = next(iter(res["outputs"].values()))
    assert out["torch_float32_mean_rel_l2"] > 0 and "rule" in res["tolerance"]
    assert out["mean_rel_l2"] <= act_quant_limit(out["torch_float32_mean_rel_l2"])


def test_act_quant_still_rejects_a_wrong_export(tmp_path: Path) -> None:
    m = Stepped().eval()
    wrong = Stepped().eval()
    with torch.no_grad():
        wrong.layers[2].weight.mul_(1.2)  # a real mistake, not a rounding flip
    with pytest.raises(ExportMismatchError, match="float64"):
        validate(m, [InputSpec("x", [4, 32])], _export(wrong, tmp_path / "w.onnx"), "onnxruntime", "act_quant")


def test_act_quant_limit_is_capped():
    assert act_quant_limit(0.0) == 2e-2 and act_quant_limit(0.05) == pytest.approx(0.15)
    assert act_quant_limit(0.1) == ACT_QUANT_CAP == 0.25  # 3x alone would allow 0.3


def test_act_quant_rejects_a_25_percent_wrong_export_when_torch_itself_is_far(tmp_path: Path, monkeypatch) -> None:
    """Where torch float32 itself lands ~15% from the exact answer (MiniLM W4A4's regime, simulated by a twin that
    is 15% off), 3x torch's distance would accept a 25%-wrong export; the cap rejects it, and the right export (as
    far from the twin as torch is) still passes."""
    m = Stepped(depth=2, width=64, step=1e-4).eval()

    def far_twin(model):
        import copy

        t = copy.deepcopy(model).double().eval()
        with torch.no_grad():
            t.layers[1].weight.mul_(1.25)
        return t

    monkeypatch.setattr(V, "_float64_twin", far_twin)
    specs = [InputSpec("x", [4, 64])]
    res = validate(m, specs, _export(m, tmp_path / "right.onnx", (4, 64)), "onnxruntime", "act_quant")
    out = next(iter(res["outputs"].values()))
    assert 0.08 < out["torch_float32_mean_rel_l2"] < ACT_QUANT_CAP  # torch itself is far from the twin
    wrong = Stepped(depth=2, width=64, step=1e-4).eval()
    with torch.no_grad():
        wrong.layers[1].weight.mul_(0.8)  # 25% further from the twin's 1.25 than the model
    with pytest.raises(ExportMismatchError, match="float64") as e:
        validate(m, specs, _export(wrong, tmp_path / "wrong.onnx", (4, 64)), "onnxruntime", "act_quant")
    got = float(str(e.value).split("mean rel_l2 ")[1].split()[0])
    assert ACT_QUANT_CAP < got < 3 * out["torch_float32_mean_rel_l2"]  # what 3x alone would have let through


class _Noisy(nn.Module):
    """float32 forward carries deterministic 'summation noise' of 1e-3 (float64 forward is exact), as a deep LLM's
    logits do at a smaller scale."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(16, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.lin(x)
        return y + 1e-3 * torch.sin(1000 * y) if y.dtype == torch.float32 else y


def test_fp32_fallback_accepts_float32_noise_and_rejects_a_wrong_export() -> None:
    from edgekit.export.validate import TOLERANCES, _float64_fallback, compare

    m = _Noisy().eval()
    x = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        exact = m.double()(x.double()).numpy()
        m.float()
        ref = m(x).numpy()
    for got, ok in ((exact + 1e-3 * np.cos(1000 * exact), True), (exact * 1.05, False)):
        f = compare(ref, got.astype(np.float32))
        assert f["max_abs_scaled"] > 1e-4  # the fixed rule alone would refuse both
        worst = {"y": f}
        tol = _float64_fallback(m, [((x,), [got.astype(np.float32)])], ["y"], ["y"], worst, dict(TOLERANCES["fp32"]))
        assert worst["y"]["within_float32_noise"] is ok, worst["y"]
        assert "fallback" in tol
