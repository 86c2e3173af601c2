"""Typer CLI: parse, call edgekit.api, print with rich. No logic lives here."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from . import __version__
from .cli_common import STATE, console, parse_sets, user_errors

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Compress PyTorch models, export them to ONNX Runtime / OpenVINO / LiteRT, and measure them.")

ModelArg = Annotated[str, typer.Argument(help="model file (.pt/.pth/.pt2/.safetensors), HF folder, artifact, 'demo' "
                                                 "or a real model: efficientnet-lite0[-features], minilm, smollm2")]
InputShape = Annotated[Optional[str], typer.Option(help="input shape, e.g. 1x3x224x224[:float32]; comma for several")]
Dynamic = Annotated[Optional[list[str]], typer.Option(help="dynamic axes; only 'batch' is supported")]
Arch = Annotated[Optional[str], typer.Option(help="pkg.module:factory that builds the model for a state dict")]
AllowClass = Annotated[Optional[list[str]], typer.Option(help="trust this pickled class (repeatable)")]
TrustPickle = Annotated[bool, typer.Option(help="unpickle with arbitrary code execution (only your own files)")]
Overwrite = Annotated[bool, typer.Option(help="replace an existing output folder")]


def _version(value: bool) -> None:
    if value:
        console.print(f"edgekit {__version__}")
        raise typer.Exit()


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="show tracebacks")] = False,
         version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True)] = False) -> None:
    """edgekit command line."""
    import warnings

    STATE["verbose"] = verbose
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called")  # JAX (via litert-torch) noise


def _steps():
    """A spinner that shows the current step of a long API call."""
    status = console.status("starting", spinner="dots")
    return status, (lambda s: status.update(f"[bold]{s}[/bold]"))


def _validation_table(man: dict) -> Table:
    t = Table(title="exports (validated against PyTorch)")
    for c in ("runtime", "file", "precision", "max abs err", "cosine", "top-1 agree"):
        t.add_column(c)
    for rt, e in man.get("exports", {}).items():
        outs = e["validation"]["outputs"]
        worst_abs = max(o["max_abs"] for o in outs.values())
        cos = min(o["cosine"] for o in outs.values())
        agree = [o["top1_agreement"] for o in outs.values() if "top1_agreement" in o]
        t.add_row(rt, e["file"], e["precision"], f"{worst_abs:.2e}", f"{cos:.6f}", f"{min(agree):.3f}" if agree else "-")
    return t


@app.command()
def compress(model: ModelArg, method: Annotated[str, typer.Option("--method", "-m", help="see `edgekit methods`")],
             out: Annotated[Path, typer.Option("-o", "--out", help="artifact folder to write")],
             set_: Annotated[Optional[list[str]], typer.Option("--set", help="method option key=value")] = None,
             data: Annotated[Optional[Path], typer.Option(help="calibration data file")] = None,
             target: Annotated[Optional[list[str]], typer.Option(help="also export to this runtime/target")] = None,
             input_shape: InputShape = None, dynamic: Dynamic = None, arch: Arch = None,
             allow_class: AllowClass = None, trust_pickle: TrustPickle = False, overwrite: Overwrite = False) -> None:
    """Compress a model with a method and write an artifact (ONNX validated on ONNX Runtime)."""
    from . import api
    from .artifact import read_manifest

    with user_errors():
        src = None
        if data is not None:
            from .data import open_data

            src = open_data(data)
        runtimes = [api.resolve_runtime(t)[0] for t in target or []]
        status, step = _steps()
        with status:
            art = api.compress(model, method, parse_sets(set_), out, input_shape, src, overwrite, runtimes, dynamic,
                               arch, allow_class, trust_pickle, on_step=step)
        man = read_manifest(art)
        rep = man["method"]["report"]
        console.print(f"[green]wrote[/green] {art}  ({method}: params {rep['params_before']:,} -> "
                      f"{rep['params_after']:,}, bits/weight {rep['bits_per_weight']:.2f}, "
                      f"{len(rep['layers_touched'])} layers touched, {len(rep['layers_skipped'])} skipped)")
        if man.get("exports"):
            console.print(_validation_table(man))


@app.command()
def export(model: ModelArg, target: Annotated[str, typer.Option("--target", "-t", help="onnxruntime|openvino|tflite|PROFILE")],
           out: Annotated[Optional[Path], typer.Option("-o", "--out", help="artifact folder (default: the input artifact)")] = None,
           input_shape: InputShape = None, dynamic: Dynamic = None, arch: Arch = None, allow_class: AllowClass = None,
           trust_pickle: TrustPickle = False, overwrite: Overwrite = False,
           fp16: Annotated[bool, typer.Option(help="store OpenVINO weights as fp16")] = False) -> None:
    """Export a model or artifact to a runtime and validate it against PyTorch (fails closed)."""
    from . import api
    from .artifact import read_manifest

    with user_errors():
        status, step = _steps()
        with status:
            art = api.export(model, target, out, input_shape, overwrite, dynamic, arch, allow_class, trust_pickle,
                             fp16, on_step=step)
        console.print(f"[green]wrote[/green] {art}")
        console.print(_validation_table(read_manifest(art)))


@app.command()
def inspect(path: Annotated[Path, typer.Argument(help=".pt/.pt2/.onnx/.xml/.tflite file or artifact")],
            input_shape: InputShape = None, arch: Arch = None,
            as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Parameters, MACs, size, I/O and op histogram of a model file."""
    from .inspect import inspect_path

    with user_errors():
        info = inspect_path(path, input_shape, arch)
        if as_json:
            console.print_json(json.dumps(info, default=str))
            return
        t = Table(title=str(path), show_header=False)
        for k, v in info.items():
            if k == "ops" or k == "modules":
                v = ", ".join(f"{o}x{n}" for o, n in v.items())
            t.add_row(k, f"{v:,}" if isinstance(v, int) else str(v))
        console.print(t)


@app.command()
def methods() -> None:
    """List compression methods and their options."""
    from .methods import METHODS, get_method

    t = Table(title="methods")
    for c in ("name", "needs", "summary", "options (defaults)"):
        t.add_column(c)
    for name in METHODS:
        try:
            mod = get_method(name)
        except ImportError:
            continue
        opts = ", ".join(f"{k}={f.get_default(call_default_factory=True)!r}" for k, f in mod.Config.model_fields.items())
        t.add_row(name, mod.NEEDS, mod.SUMMARY, opts)
    console.print(t)


@app.command()
def demo(out: Annotated[Path, typer.Option("-o", "--out")] = Path("out/demo"),
         method: Annotated[str, typer.Option(help="compression method for the demo")] = "rtn",
         set_: Annotated[Optional[list[str]], typer.Option("--set", help="method option key=value")] = None) -> None:
    """Main job on the bundled digits CNN: compress, export to all runtimes, validate, measure, print one table."""
    from .demo import run_demo

    with user_errors():
        status, step = _steps()
        with status:
            rows = run_demo(out, method, parse_sets(set_), on_step=step)
        t = Table(title=f"edgekit demo: digits CNN, fp32 vs {method} -> {out}",
                  caption="measured on this host with each target's runtime; err = max abs error vs PyTorch; "
                          "acc = digits test accuracy through the runtime; MB = peak RSS over the runtime baseline; "
                          "est ms = estimate for the real target device; ~ = noisy (unstable) timing. "
                          f"Reports: {out}/*/profile.html")
        for c in rows[0]:
            t.add_column(c, no_wrap=True)
        for r in rows:
            t.add_row(*[str(v) for v in r.values()])
        console.print(t)


@app.command()
def run(recipe: Annotated[Path, typer.Argument(help="recipe YAML (see recipes/)")],
        out: Annotated[Optional[Path], typer.Option("-o", "--out", help="override the recipe's out")] = None,
        overwrite: Overwrite = False) -> None:
    """Run a recipe: methods in order, exports, fidelity gates. Exit 1 when a gate fails (artifact kept)."""
    from . import api
    from .artifact import read_manifest

    with user_errors():
        status, step = _steps()
        with status:
            art, gates = api.run_recipe(recipe, out, overwrite, on_step=step)
        console.print(f"[green]wrote[/green] {art}")
        man = read_manifest(art)
        if man.get("exports"):
            console.print(_validation_table(man))
        figs = {k: round(v, 4) for k, v in gates.items() if k != "failed"}
        if gates["failed"]:
            console.print(f"[red]gates failed:[/red] {'; '.join(gates['failed'])} (figures {figs})")
            raise typer.Exit(1)
        if figs:
            console.print(f"[green]gates passed[/green] {figs}")


def _register_optional() -> None:
    """Commands that live in their own modules (profiling, evaluation)."""
    import importlib

    for mod in ("edgekit.cli_profile", "edgekit.cli_eval"):
        try:
            m = importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name != mod:
                raise
            continue
        m.register(app)


_register_optional()

if __name__ == "__main__":
    app()
