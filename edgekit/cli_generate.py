"""CLI for text generation from a decoder artifact (`edgekit generate`): parse, call edgekit.genai, print."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from .cli_common import console, user_errors


def print_generation(man: dict) -> None:
    """One line per runtime: greedy tokens vs transformers (numpy loop, cache use) and the runtime's own stack."""
    gen = man.get("generation") or {}
    for rt, e in man.get("exports", {}).items():
        v, g = e.get("validation") or {}, e.get("genai") or {}
        if "greedy_match" not in v:
            continue
        stack = (f"{g.get('stack')}: {'tokens match' if g.get('status') == 'ok' else g.get('status')}"
                 + (f" ({g['reason']})" if g.get("status") != "ok" and g.get("reason") else ""))
        console.print(f"{rt}: greedy tokens match transformers' generate for {v['new_tokens']} new tokens of "
                      f"{gen.get('prompt')!r} (numpy loop, decode steps of 1 token on the cache); {stack}",
                      highlight=False)


def generate(artifact: Annotated[Path, typer.Argument(help="decoder artifact (written with --kv-cache)")],
             prompt: Annotated[str, typer.Option("--prompt", "-p", help="text to complete")],
             target: Annotated[Optional[str], typer.Option(help="target profile: its runtime and threads")] = None,
             runtime: Annotated[Optional[str], typer.Option(help="onnxruntime|openvino (default onnxruntime)")] = None,
             max_new_tokens: Annotated[int, typer.Option(help="tokens to generate at most")] = 32,
             threads: Annotated[Optional[int], typer.Option(help="override the target's thread count")] = None,
             stack: Annotated[str, typer.Option(help="auto: the runtime's own generation package if it validated "
                                                     "and is installed; genai: require it; numpy: the plain loop")]
             = "auto",
             ignore_eos: Annotated[bool, typer.Option(help="keep generating past an end-of-text token")] = False,
             as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Complete a prompt greedily with a decoder artifact; prints the text and one speed line."""
    from . import api

    with user_errors():
        g = api.generate(artifact, prompt, max_new_tokens, runtime, target, threads, stack, stop_at_eos=not ignore_eos)
        if as_json:
            console.print_json(json.dumps(g.to_dict()))
            return
        console.print(prompt + g.text, highlight=False, markup=False)
        if g.note:
            console.print(f"[yellow]note:[/yellow] {g.note}", highlight=False)
        console.print(g.summary(), highlight=False, markup=False)


def register(app: typer.Typer) -> None:
    """Add `generate` to the main app."""
    app.command("generate")(generate)
