"""Third-party noise (torchao 'Failed to load .so', pytree deprecations, onnxscript 'Evaluation failed', HF progress
bars) is off by default and back with -v. Run as a real process: the noise comes at import time."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgekit.cli_common import _QUIET_ENV

NOISE = re.compile(r"Warning|WARNING|Failed to load|Evaluation failed|Loading weights|^[IWE]\d{4} ", re.M)


def _edgekit(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in _QUIET_ENV}  # as a user's shell has it
    code = "import sys; from edgekit.cli import app; sys.exit(app(prog_name='edgekit'))"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_compress_hf_model_is_quiet_unless_verbose(tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    import torch

    torch.manual_seed(0)  # a tiny BERT folder: loading it pulls in transformers (and torchao), exporting runs onnxscript
    transformers.BertModel(transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
                                                   num_attention_heads=2, intermediate_size=64)).eval() \
        .save_pretrained(tmp_path / "bert")
    args = ["compress", "bert", "--method", "rtn", "--input-shape", "1x16:int64,1x16:int64"]
    loud = _edgekit("-v", *args, "-o", "loud", cwd=tmp_path)
    assert loud.returncode == 0, loud.stderr[-2000:]
    if not NOISE.search(loud.stderr):
        pytest.skip("the third-party libraries here print nothing to silence")
    quiet = _edgekit(*args, "-o", "quiet", cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert "wrote" in quiet.stdout
    assert not NOISE.search(quiet.stderr), quiet.stderr[-2000:]
