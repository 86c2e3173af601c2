"""Build tiny artifacts (ONNX + ORT/OV exports + manifest) for profiling tests until edgekit.api exists."""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import torch
from torch import nn

from edgekit.artifact import write_manifest


class TinyNet(nn.Module):
    """Conv 1->4 (3x3) + ReLU + Linear 144->10 on 1x1x8x8: small, exact MAC count known by hand."""

    def __init__(self, width: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3)
        self.fc = nn.Linear(width * 36, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def build(root: Path, model: nn.Module | None = None, openvino: bool = True, shape=(1, 1, 8, 8)) -> Path:
    """Write root/ as an artifact with model.onnx, exports/onnxruntime and (optionally) exports/openvino."""
    model = (model or TinyNet()).eval()
    root.mkdir(parents=True, exist_ok=True)
    x = torch.randn(*shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(model, (x,), dynamo=True, verbose=False, input_names=["x"], output_names=["logits"])
        prog.save(str(root / "model.onnx"))
    exports = {}
    (root / "exports" / "onnxruntime").mkdir(parents=True)
    shutil.copy(root / "model.onnx", root / "exports" / "onnxruntime" / "model.onnx")
    exports["onnxruntime"] = {"file": "exports/onnxruntime/model.onnx", "precision": "fp32", "validation": {}}
    if openvino:
        import openvino as ov

        (root / "exports" / "openvino").mkdir(parents=True)
        ov.save_model(ov.convert_model(str(root / "model.onnx")), str(root / "exports" / "openvino" / "model.xml"),
                      compress_to_fp16=False)
        exports["openvino"] = {"file": "exports/openvino/model.xml", "precision": "fp32", "validation": {}}
    write_manifest(root, {"model": "model.onnx", "inputs": [{"name": "x", "shape": list(shape), "dtype": "float32"}],
                          "exports": exports})
    return root


_CACHE: dict[str, Path] = {}


def cached(dst: Path) -> Path:
    """Copy of one tiny ORT+OV artifact built once per test process (the export costs seconds)."""
    import atexit
    import tempfile

    if "art" not in _CACHE:
        tmp = Path(tempfile.mkdtemp(prefix="edgekit-tiny-"))
        atexit.register(shutil.rmtree, tmp, True)
        _CACHE["art"] = build(tmp / "art")
    shutil.copytree(_CACHE["art"], dst)
    return dst
