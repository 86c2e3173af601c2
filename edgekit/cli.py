"""Typer CLI: parse, call edgekit.api, print with rich. No logic lives here."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from . import __version__
from .cli_common import (STATE, AddressOpt, AllowClassOpt, ArchArgsOpt, ArchOpt, ExecutorOpt, InputShapeOpt,
                         TaskTimeoutOpt, TrustPickleOpt, WorkersOpt, console, install_signal_handlers, parse_sets,
                         quiet_third_party, user_errors)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Compress PyTorch models, export them to ONNX Runtime / OpenVINO / LiteRT, and measure them.")

ModelArg = Annotated[str, typer.Argument(help="model file (.pt/.pth/.pt2/.safetensors), HF folder, artifact, 'demo', "
                                                 "pkg.module:factory, path/to/file.py:factory, or a real model: "
                                                 "efficientnet-lite0[-features], minilm, smollm2")]
InputShape, Arch, AllowClass, TrustPickle = InputShapeOpt, ArchOpt, AllowClassOpt, TrustPickleOpt  # cli_common
Dynamic = Annotated[Optional[list[str]], typer.Option(help="dynamic axes; only 'batch' is supported")]
Overwrite = Annotated[bool, typer.Option(help="replace an existing output folder")]
KvCache = Annotated[bool, typer.Option("--kv-cache", help="causal LM: export a decoder with a KV cache for "
                                                           "`edgekit generate` (onnxruntime/openvino)")]
FusedDecoder = Annotated[bool, typer.Option("--fused-decoder", help="with --kv-cache: lay the onnxruntime export out "
                                            "with onnxruntime-genai's model builder (fused attention, rotary, norms), "
                                            "holding the method's exact codes")]


def _version(value: bool) -> None:
    if value:
        console.print(f"edgekit {__version__}")
        raise typer.Exit()


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="tracebacks, third-party warnings")] = False,
         version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True)] = False) -> None:
    """edgekit command line."""
    import warnings

    STATE["verbose"] = verbose
    install_signal_handlers()
    quiet_third_party(verbose)  # third-party warnings/log noise off unless -v; our own progress stays
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
             input_shape: InputShape = None, dynamic: Dynamic = None, arch: Arch = None, arch_args: ArchArgsOpt = None,
             allow_class: AllowClass = None, trust_pickle: TrustPickle = False, overwrite: Overwrite = False,
             min_fidelity: Annotated[Optional[float], typer.Option(
                 help="fail (exit 1, artifact kept) when fidelity vs the source (top-1 agreement, or cosine) is "
                      "below this (a causal LM on --data text: perplexity ratio above 1/this)")] = None,
             fidelity_metric: Annotated[str, typer.Option(
                 help="auto | top1 | cosine: how the fidelity headline reads outputs; auto = top-1 agreement for "
                      "[batch, classes] outputs except Hugging Face encoders' (embeddings: cosine), perplexity "
                      "ratio for causal LMs on --data text; cosine for your own embedding model")] = "auto",
             deploy: Annotated[Optional[str], typer.Option(help="int8: static INT8 (integer activations) for the "
                                                           "ORT/OpenVINO/LiteRT targets; auto: the fastest validated form "
                                                           "(FP32, default, INT8), measured")] = None,
             deploy_data: Annotated[Optional[Path], typer.Option(
                 help="calibration data of --deploy when it is not --data (e.g. --data trains the method on 28 px "
                      "images, --deploy-data holds inputs of the model's own shape)")] = None,
             deploy_floor: Annotated[Optional[list[str]], typer.Option(
                 help="KEY=VALUE: a floor of --deploy's INT8 validation (mean_cosine 0.99, cosine 0.95, "
                      "response_cosine 0.5, top1_agreement 0.9 by default), e.g. mean_cosine=0.98 for an embedding "
                      "model whose task tolerates it; repeatable, recorded in the manifest")] = None,
             kv_cache: KvCache = False, fused_decoder: FusedDecoder = False,
             keep_program: Annotated[bool, typer.Option(
                 "--keep-program", help="also keep model.pt2 (the compressed model as a float torch program, as "
                 "large as FP32) for a later LiteRT export or chained compress")] = False,
             input_range: Annotated[Optional[str], typer.Option(
                 help="LO,HI: the range of the input values your app feeds (e.g. 0,1); with --deploy and no --data "
                      "the first layer's input is quantized too (LiteRT full-integer)")] = None) -> None:
    """Compress a model with a method and write an artifact (ONNX validated on ONNX Runtime)."""
    from . import api

    with user_errors():
        src = api.open_data(data) if data is not None else None
        runtimes = [api.resolve_target(t) for t in target or []]  # profiles travel whole (round_to, ...)
        status, step = _steps()
        with status:
            art = api.compress(model, method, parse_sets(set_), out, input_shape, src, overwrite, runtimes, dynamic,
                               arch, allow_class, trust_pickle, on_step=step, deploy=deploy,
                               arch_args=parse_sets(arch_args, "--arch-args"), min_fidelity=min_fidelity,
                               kv_cache=kv_cache, keep_program=keep_program, fidelity_metric=fidelity_metric,
                               input_range=input_range.split(",") if input_range is not None else None,
                               deploy_data=api.open_data(deploy_data) if deploy_data is not None else None,
                               fused_decoder=fused_decoder,
                               deploy_floors=parse_sets(deploy_floor, "--deploy-floor") or None)
        man = api.read_manifest(art)
        rep = man["method"]["report"]
        console.print(f"[green]wrote[/green] {art}  ({method}: params {rep['params_before']:,} -> "
                      f"{rep['params_after']:,}, bits/weight {rep['bits_per_weight']:.2f}, "
                      f"{len(rep['layers_touched'])} layers touched, {len(rep['layers_skipped'])} skipped)")
        if man.get("exports"):
            console.print(_validation_table(man))
        _print_generation(man)
        _print_deploy(man)
        _print_weight_only_note(man)
        if _print_fidelity(man):
            raise typer.Exit(1)


def _print_weight_storage(man: dict) -> None:
    """Say on the console when an export fell back to float weights (LiteRT integer weights did not validate)."""
    for rt, e in man.get("exports", {}).items():
        ws = e.get("weight_storage") or {}
        if ws.get("weights") == "float":
            console.print(f"[yellow]warning:[/yellow] {rt}: the file keeps float weights (integer weights were tried "
                          f"and dropped, so it is not smaller): {ws.get('reason', '')}", highlight=False)


def _print_fidelity(man: dict) -> bool:
    """The fidelity line, a loud warning below the default thresholds, float-weight fallbacks; True = failed."""
    from .fidelity import summary

    _print_weight_storage(man)
    fid = man.get("fidelity")
    if not fid:
        return False
    console.print(summary(fid), highlight=False)
    if fid.get("below_threshold"):
        th = fid["thresholds"]
        ppl = f", perplexity ratio above {th['perplexity_ratio']}" if "perplexity_ratio" in th else ""
        console.print(f"[bold yellow]WARNING: the compressed model departs from its source: "
                      f"{'; '.join(fid['below_threshold'])} (warned below top-1 agreement {th['top1_agreement']} or "
                      f"cosine {th['cosine']}{ppl}); check it on your data (edgekit eval) before using it"
                      "[/bold yellow]",
                      highlight=False, soft_wrap=True)
    if fid.get("failed"):
        what = (fid["metric"] or "fidelity").replace("_", " ")
        cmp = f"> 1/{fid['min_fidelity']}" if fid["metric"] == "perplexity_ratio" else "<"
        console.print(f"[red]fidelity failed:[/red] {what} {fid['value']} {cmp} --min-fidelity {fid['min_fidelity']} "
                      "(the artifact is kept; its manifest records the figures)", highlight=False)
        return True
    return False


def _print_generation(man: dict) -> None:
    """Decoder artifacts (--kv-cache): greedy tokens vs transformers, per runtime and generation stack."""
    if man.get("decoder"):
        from .cli_generate import print_generation

        print_generation(man)


def weight_only_runtimes(man: dict) -> list[str]:
    """Runtimes whose export stores integer weights but computes in float and had no deploy step (nothing timed it
    against FP32)."""
    onnx_int = bool((man.get("integer_weights") or {}).get("integer_weights"))
    out = []
    for rt, e in man.get("exports", {}).items():
        if e.get("deploy") or e.get("precision") not in ("fp32", None):
            continue
        ws = str((e.get("weight_storage") or {}).get("weights", ""))
        if (rt == "tflite" and ws.startswith("int")) or (rt != "tflite" and onnx_int and not man.get("decoder")):
            out.append(rt)
    return out


def _print_weight_only_note(man: dict) -> None:
    """A plain export of integer weights keeps float activations and is not timed: say so, and how to get a faster
    form (measured here: such files ran at 0.9-1.1x FP32's time on ONNX Runtime / OpenVINO, LiteRT int4 files
    3.6-5.3x; README, Deploy)."""
    rts = weight_only_runtimes(man)
    if rts:
        console.print(f"note: {', '.join(rts)}: integer weights with float activations, not timed against FP32 "
                      "(weight-only files are not faster than FP32 here; LiteRT int4 files are slower). Add "
                      "`--deploy auto` to lower to the runtime's integer kernels and keep only a form measured "
                      "faster, or measure this one with `edgekit profile ART --target T`.", highlight=False)


def _print_deploy(man: dict) -> None:
    """One line per runtime: the form --deploy kept, its latency vs FP32, and a warning when it is slower."""
    for rt, e in man.get("exports", {}).items():
        d = e.get("deploy")
        if not d:
            continue
        ratios = (d.get("speed") or {}).get("ratio_to_fp32") or {}  # every candidate timed against FP32
        line = f"{rt}: deploy {d['requested']} -> {d['form']}" + (
            ", latency vs FP32: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()) if ratios else "")
        console.print(line + f" ({d['why']})", highlight=False)
        if d.get("warning"):
            console.print(f"[yellow]warning:[/yellow] {rt}: {d['warning']}", highlight=False)


@app.command()
def export(model: ModelArg, target: Annotated[list[str], typer.Option("--target", "-t", help="onnxruntime|openvino|tflite|PROFILE (repeatable: each is added to the one artifact)")],
           out: Annotated[Optional[Path], typer.Option("-o", "--out", help="artifact folder (default: the input artifact)")] = None,
           input_shape: InputShape = None, dynamic: Dynamic = None, arch: Arch = None, arch_args: ArchArgsOpt = None,
           allow_class: AllowClass = None, trust_pickle: TrustPickle = False, overwrite: Overwrite = False,
           fp16: Annotated[bool, typer.Option(help="store OpenVINO weights as fp16")] = False,
           kv_cache: KvCache = False, fused_decoder: FusedDecoder = False) -> None:
    """Export a model or artifact to a runtime and validate it against PyTorch (fails closed)."""
    from . import api

    with user_errors():
        status, step = _steps()
        with status:
            art = api.export(model, target, out, input_shape, overwrite, dynamic, arch, allow_class, trust_pickle,
                             fp16, on_step=step, arch_args=parse_sets(arch_args, "--arch-args"), kv_cache=kv_cache,
                             fused_decoder=fused_decoder)
        console.print(f"[green]wrote[/green] {art}")
        man = api.read_manifest(art)
        console.print(_validation_table(man))
        _print_generation(man)
        _print_weight_storage(man)


@app.command()
def inspect(path: Annotated[Path, typer.Argument(help=".pt/.pt2/.onnx/.xml/.tflite file or artifact")],
            input_shape: InputShape = None, arch: Arch = None, arch_args: ArchArgsOpt = None,
            as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Parameters, MACs, size, I/O and op histogram of a model file."""
    from . import api

    with user_errors():
        info = api.inspect_model(path, input_shape, arch, parse_sets(arch_args, "--arch-args"))
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
def verify(artifact: Annotated[Path, typer.Argument(help="artifact folder")],
           as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False) -> None:
    """Check an artifact before using it: checksums, paths, symlinks, manifest, finite validation figures."""
    from . import api

    with user_errors():
        res = api.verify(artifact)
        man = res["manifest"]
        info = {"artifact": str(artifact), "ok": True, "kind": man["kind"], "files": res["files"],
                "bytes": res["bytes"], "unlisted_files": res["unlisted"],
                "exports": {rt: e.get("precision") for rt, e in man.get("exports", {}).items()},
                "versions": man.get("versions", {})}
        if as_json:
            console.print_json(json.dumps(info, default=str))
            return
        console.print(f"[green]verified[/green] {artifact}: {res['files']} files, {res['bytes'] / 1e6:.1f} MB, "
                      f"checksums match; exports: {', '.join(info['exports']) or 'none'}"
                      + (f"; [yellow]unlisted (not verified, never used): {', '.join(res['unlisted'])}[/yellow]"
                         if res["unlisted"] else ""))


@app.command()
def methods() -> None:
    """List compression methods and their options."""
    from . import api

    t = Table(title="methods")
    for c in ("name", "needs", "summary", "options (defaults)"):
        t.add_column(c)
    for m in api.methods():
        opts = ", ".join(f"{k}={v!r}" for k, v in m["options"].items())
        need = m["needs"] if m["needs"] == m["needs_at_most"] else \
            f"{m['needs']} by default ({m['needs_at_most']} with steps)"
        t.add_row(m["name"], need, m["summary"], opts)
    console.print(t)


@app.command()
def demo(out: Annotated[Path, typer.Option("-o", "--out")] = Path("out/demo"),
         method: Annotated[str, typer.Option(help="compression method for the demo")] = "rtn",
         set_: Annotated[Optional[list[str]], typer.Option("--set", help="method option key=value")] = None) -> None:
    """Main job on the bundled digits CNN: compress, export to all runtimes, validate, measure, print one table."""
    from . import api

    with user_errors():
        status, step = _steps()
        with status:
            rows = api.demo(out, method, parse_sets(set_), on_step=step)
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
        overwrite: Overwrite = False, executor: ExecutorOpt = "local", address: AddressOpt = None,
        workers: WorkersOpt = None, task_timeout: TaskTimeoutOpt = None) -> None:
    """Run a recipe: methods in order, exports, fidelity gates. Exit 1 when a gate fails (artifact kept)."""
    from . import api

    with user_errors():
        status, step = _steps()
        with status:
            art, gates = api.run_recipe(recipe, out, overwrite, on_step=step, executor=executor, address=address,
                                        workers=workers, timeout_s=task_timeout)
        console.print(f"[green]wrote[/green] {art}")
        man = api.read_manifest(art)
        if man.get("executor"):
            ran = man["executor"]["ran_on"]
            console.print(f"ran on Ray node {ran['node_id'][:8]} ({ran['hostname']}); artifact "
                          f"{man['executor']['artifact_sha256'][:12]} verified on arrival", highlight=False)
        if man.get("exports"):
            console.print(_validation_table(man))
        _print_fidelity(man)  # the recipe's gates decide the exit code
        figs = {k: (round(v, 4) if v is not None else None) for k, v in gates.items() if k != "failed"}
        if gates["failed"]:
            console.print(f"[red]gates failed:[/red] {'; '.join(gates['failed'])} (figures {figs})")
            raise typer.Exit(1)
        if figs:
            console.print(f"[green]gates passed[/green] {figs}")


def _register_optional() -> None:
    """Commands that live in their own modules (profiling, evaluation)."""
    import importlib

    for mod in ("edgekit.cli_profile", "edgekit.cli_eval", "edgekit.cli_generate"):
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
