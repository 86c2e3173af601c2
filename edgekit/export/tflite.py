"""torch -> .tflite through litert-torch (run with ai_edge_litert's Interpreter; onnx2tf is not used: see README)."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..errors import MissingDependencyError, UnsupportedModelError


def convert(model: nn.Module, inputs: tuple[torch.Tensor, ...], out_dir: Path) -> Path:
    """Write out_dir/model.tflite from the torch module and its example inputs."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from .._fd import captured_fds

    try:
        with warnings.catch_warnings(), captured_fds():
            warnings.simplefilter("ignore")
            import litert_torch
    except ImportError as e:
        raise MissingDependencyError("litert-torch", "tflite") from e
    out_dir.mkdir(parents=True, exist_ok=True)
    if model.training and not isinstance(model, torch.fx.GraphModule):
        model.eval()  # ExportedProgram modules refuse eval() and are already in inference form
    path = out_dir / "model.tflite"
    buf = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf), captured_fds():
            warnings.simplefilter("ignore")
            logging.getLogger("absl").setLevel(logging.ERROR)
            edge = litert_torch.convert(model, inputs)
            edge.export(str(path))
    except Exception as e:
        raise UnsupportedModelError(f"litert-torch could not convert the model: {str(e).strip().splitlines()[0][:300]}") from e
    return path


def quantize_weights(float_path: Path, bits: int, out_path: Path) -> Path:
    """Store weights as int8 (or int4) with float activations through ai-edge-quantizer's weight-only recipe.

    The quantizer picks its own per-channel symmetric scales; for weights already on such a grid (e.g. the RTN
    baseline) that reproduces them exactly, otherwise validation catches the difference and the caller keeps
    the float file.
    """
    from .._fd import captured_fds

    try:
        with warnings.catch_warnings(), captured_fds():
            warnings.simplefilter("ignore")
            from ai_edge_quantizer import quantizer, recipe
    except ImportError as e:
        raise MissingDependencyError("ai-edge-quantizer", "tflite") from e
    rec = recipe.weight_only_wi4_afp32() if bits <= 4 else recipe.weight_only_wi8_afp32()
    buf = io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stdout(buf), captured_fds():
        warnings.simplefilter("ignore")
        q = quantizer.Quantizer(str(float_path))
        q.load_quantization_recipe(rec)
        q.quantize().export_model(str(out_path), overwrite=True)
    return out_path
