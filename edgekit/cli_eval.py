"""`edgekit eval`: task metrics and FP32 fidelity of a model or artifact, printed as a table (and JSON on request)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from .cli_common import console, parse_sets, user_errors

EVAL_HELP = """Evaluate MODEL_OR_ARTIFACT on a task and compare it with the FP32 model.

MODEL_OR_ARTIFACT is an artifact folder (run through its --runtime export: onnxruntime, openvino, tflite, or onnx
for the canonical model.onnx in ONNX Runtime) or a built-in FP32 model run in torch: demo, efficientnet-lite0,
minilm, smollm2. Tasks: digits (demo), fashion-probe (efficientnet-lite0), wordnet10 (minilm), perplexity
(smollm2). Task sizes: --set key=value (e.g. --set px=64 --set n_test=200). FP32 references are cached under
$EDGEKIT_CACHE (default ~/.cache/edgekit)."""


def _table(res: dict[str, Any]) -> Table:
    """Metric | value | FP32 reference."""
    t = Table(title=f"{res['task']} · {res['model']} · {res['runtime']} · {res['samples']} samples "
                    f"· {res['seconds']} s")
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
        task: Annotated[str, typer.Option("--task", "-t", help="digits | fashion-probe | wordnet10 | perplexity")],
        runtime: Annotated[str | None, typer.Option(
            "--runtime", "-r", help="artifact export to run (default onnxruntime, else onnx)")] = None,
        limit: Annotated[int | None, typer.Option("--limit", "-n", help="score only the first N samples")] = None,
        threads: Annotated[int | None, typer.Option("--threads", help="intra-op threads")] = None,
        sets: Annotated[list[str] | None, typer.Option("--set", help="task option key=value (repeatable)")] = None,
        json_out: Annotated[Path | None, typer.Option("--json", help="also write the result as JSON here")] = None,
    ) -> None:
        with user_errors():
            from .eval import evaluate

            res = evaluate(model, task, runtime=runtime, limit=limit, threads=threads, options=parse_sets(sets))
            console.print(_table(res))
            if json_out is not None:
                json_out.parent.mkdir(parents=True, exist_ok=True)
                tmp = json_out.with_name(f".{json_out.name}.tmp")
                tmp.write_text(json.dumps(res, indent=2))
                tmp.replace(json_out)
