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
