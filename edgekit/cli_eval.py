"""`edgekit eval`: task metrics and FP32 fidelity of a model or artifact, printed as a table (and JSON on request)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from .cli_common import (AllowClassOpt, ArchArgsOpt, ArchOpt, InputShapeOpt, TrustPickleOpt, console, parse_sets,
                         source_options, user_errors)

EVAL_HELP = """Evaluate MODEL_OR_ARTIFACT on a task and compare it with its FP32 source.

MODEL_OR_ARTIFACT is an artifact folder (run through its --runtime export: onnxruntime, openvino, tflite, or onnx
for the canonical model.onnx in ONNX Runtime), a built-in FP32 model run in torch (demo, efficientnet-lite0,
minilm, smollm2), or for the generic tasks any model source compress takes (with --arch, --arch-args, ...).

Generic tasks on your data, compared with the artifact's own FP32 source (re-loaded from the path its manifest
records and checked against its checksum; --reference PATH if it moved; a source built by --arch needs that --arch
again): image-folder --data DIR (ImageFolder layout, labels optional), text-embed --data FILE (a sentence per
line), perplexity-file --data FILE (causal LMs), npz --data FILE.npz (input arrays). Built-in tasks score only
their built-in model: digits (demo), fashion-probe (efficientnet-lite0), wordnet10 (minilm), perplexity
(smollm2); a model derived from one (fine-tuned, then compressed from a state dict) is scored with --reference
NAME (e.g. --reference efficientnet-lite0). Task options: --set key=value (e.g. --set px=64, --set mean=[0.5]). FP32 references of built-in tasks
are cached under $EDGEKIT_CACHE (default ~/.cache/edgekit)."""


def _table(res: dict[str, Any]) -> Table:
    """Metric | value | FP32 reference."""
    t = Table(title=f"{res['task']} · {res['model']} · {res['runtime']} · {res['samples']} samples "
                    f"· {res['seconds']} s",
              caption=f"FP32 = {res['fp32_source']}" if res.get("fp32_source") else None)
    t.add_column("metric")
    t.add_column("value", justify="right")
    t.add_column("FP32", justify="right")
    for k, v in res["metrics"].items():
        ref = res.get("reference", {}).get(k)
        t.add_row(k, f"{v:.4f}", "" if ref is None else f"{ref:.4f}")
    return t


def register(app: typer.Typer) -> None:
    """Add the `eval` command to the edgekit app."""

    @app.command("eval", help=EVAL_HELP)
    def eval_cmd(
        model: Annotated[str, typer.Argument(metavar="MODEL_OR_ARTIFACT", help="artifact folder or built-in name")],
        task: Annotated[str, typer.Option("--task", "-t", help="image-folder | text-embed | perplexity-file | npz "
                                                              "(your --data); digits | fashion-probe | wordnet10 | "
                                                              "perplexity (built-in models)")],
        runtime: Annotated[str | None, typer.Option(
            "--runtime", "-r", help="artifact export to run (default onnxruntime, else onnx)")] = None,
        limit: Annotated[int | None, typer.Option("--limit", "-n", help="score only the first N samples")] = None,
        threads: Annotated[int | None, typer.Option("--threads", help="intra-op threads")] = None,
        sets: Annotated[list[str] | None, typer.Option("--set", help="task option key=value (repeatable)")] = None,
        json_out: Annotated[Path | None, typer.Option("--json", help="also write the result as JSON here")] = None,
        data: Annotated[Path | None, typer.Option("--data", help="your data, for the generic tasks")] = None,
        reference: Annotated[str | None, typer.Option(
            "--reference", help="FP32 source to compare with, when the recorded one moved (checksum checked); for a "
            "built-in task, the built-in model the scored one derives from")] = None,
        input_shape: InputShapeOpt = None, arch: ArchOpt = None, arch_args: ArchArgsOpt = None,
        allow_class: AllowClassOpt = None, trust_pickle: TrustPickleOpt = False,
    ) -> None:
        with user_errors():
            from . import api

            res = api.evaluate(model, task, runtime=runtime, limit=limit, threads=threads, options=parse_sets(sets),
                           data=data, source=source_options(arch, arch_args, allow_class, trust_pickle, input_shape),
                           reference=reference)
            console.print(_table(res))
            if json_out is not None:
                json_out.parent.mkdir(parents=True, exist_ok=True)
                api.check_own_file(json_out)
                tmp = json_out.with_name(f".{json_out.name}.tmp")
                tmp.write_text(json.dumps({"schema": "edgekit.eval/1", **res}, indent=2))
                tmp.replace(json_out)
