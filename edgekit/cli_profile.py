"""CLI for targets, profile, bench and report: parse, call the Python API, print rich tables (no logic here)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .cli_common import (AddressOpt, AllowClassOpt, ArchArgsOpt, ArchOpt, ExecutorOpt, InputShapeOpt, TaskTimeoutOpt,
                         TrustPickleOpt, WorkersOpt, console, parse_sets, source_options, user_errors)

targets_app = typer.Typer(help="Hardware target profiles (bundled YAML, or your own .yaml path).",
                          no_args_is_help=True)


def _split(s: str | None) -> list[str]:
    """'a,b , c' -> ['a', 'b', 'c']."""
    return [x.strip() for x in (s or "").split(",") if x.strip()]


def _table(head: list[str], rows: list[list[str]], title: str) -> Table:
    """A rich table from string rows."""
    tab = Table(title=title, show_lines=False)
    for i, h in enumerate(head):
        tab.add_column(h, overflow="fold", no_wrap=i == 0)
    for r in rows:
        tab.add_row(*[c if not c.startswith(("error", "EXCEEDS")) else f"[red]{c}[/red]" for c in r])
    return tab


@targets_app.command("list")
def targets_list() -> None:
    """List the bundled target profiles."""
    from . import api

    with user_errors():
        tab = Table(title="targets")
        tab.add_column("name", no_wrap=True)
        for h in ("runtime", "device", "threads", "precisions", "budget MB", "description"):
            tab.add_column(h, overflow="fold")
        for t in api.list_targets():
            dev = t.device + (f" (fallback {t.fallback})" if t.fallback else "")
            tab.add_row(t.name, t.runtime, dev, str(t.threads), ",".join(t.precisions), f"{t.memory_budget_mb:g}",
                        t.description)
        console.print(tab)


@targets_app.command("show")
def targets_show(name: str = typer.Argument(..., help="bundled name or .yaml path")) -> None:
    """Show every field of one target profile."""
    import yaml

    from . import api

    with user_errors():
        t = api.load_target(name)
        console.print(yaml.safe_dump(t.model_dump(), sort_keys=False), highlight=False)


def _print_profile(doc: dict) -> None:
    """Profile (or compare) table plus per-target notes."""
    from .profile.report import compare_rows, decode_rows, notes, profile_rows

    if doc.get("kind") == "decode":
        head, rows = decode_rows(doc)
        console.print(_table(head, rows, f"decode ({doc['prompt_tokens']}-token prompt, {doc['new_tokens']} new "
                                         "tokens, interleaved; floor = weight bytes / host copy bandwidth)"))
        for n in notes(doc):
            console.print(n, highlight=False)
        return
    if doc.get("kind") == "compare":
        head, rows = compare_rows(doc)
        title = "compare (timed interleaved on this host; ratios to the first artifact)"
    else:
        head, rows = profile_rows(doc)
        title = "profile (measured on this host; (est.) = estimate for the device)"
    console.print(_table(head, rows, title))
    for n in notes(doc):
        console.print(n, highlight=False)


def profile_cmd(artifacts: list[str] = typer.Argument(..., metavar="SOURCE...", help="artifact folder(s) or any "
                                                       "model source compress takes (exported to FP32 for this run, "
                                                       "not kept); with two or more they are timed interleaved and "
                                                       "compared with the first"),
                target: list[str] = typer.Option(..., "--target", "-t", help="target name or .yaml (repeatable)"),
                out: Optional[Path] = typer.Option(None, "-o", "--out",
                                                   help="folder for profile.json/.md/.html"),
                rounds: Optional[int] = typer.Option(None, "--rounds", help="2+ artifacts: timed rounds per target "
                                                     "(default: the target's protocol.min_runs)"),
                input_shape: InputShapeOpt = None, arch: ArchOpt = None, arch_args: ArchArgsOpt = None,
                allow_class: AllowClassOpt = None, trust_pickle: TrustPickleOpt = False) -> None:
    """Measure one artifact or model source on targets (latency, memory, ops; a subprocess each), or compare 2+:
    one interleaved loop per target, ratios to the first with their spread. A source that is not an artifact is
    exported to FP32 (validated) for the run; `edgekit export` keeps one."""
    from . import api
    from .profile.report import write_reports

    with user_errors():
        src = source_options(arch, arch_args, allow_class, trust_pickle, input_shape)
        status = console.status("starting", spinner="dots")
        with status:
            doc = api.profile(artifacts, target, src, rounds=rounds,
                                  on_step=lambda s: status.update(f"[bold]{s}[/bold]"))
        for s in doc.get("sources", []):
            if s["exported_fp32"]:
                console.print(f"{s['source']}: profiled its FP32 export, made for this run and not kept "
                              "(`edgekit export SOURCE --target T -o DIR` keeps one)", highlight=False)
        _print_profile(doc)
        if out is not None:
            paths = write_reports(doc, out, "profile")
            console.print(f"wrote {', '.join(str(p) for p in paths)}", highlight=False)
    if any(r.get("status") != "ok" for r in doc["results"]):
        raise typer.Exit(1)


def bench_cmd(model: str = typer.Argument(..., help="model source, as compress takes it: .pt/.pth/.pt2/.safetensors "
                                                    "(+ --arch), pkg.module:factory, path/to/file.py:factory, HF "
                                                    "folder, artifact, demo"),
              target: Optional[list[str]] = typer.Option(None, "--target", "-t",
                                                         help="target name or .yaml (repeatable)"),
              targets: Optional[str] = typer.Option(None, "--targets", help="comma-separated target names"),
              methods: str = typer.Option("", "--methods", help="comma-separated methods (fp32 is always run)"),
              sets: Optional[list[str]] = typer.Option(None, "--set", help="method option METHOD.key=value, or "
                                                       "key=value for every method that has it (repeatable)"),
              data: Optional[Path] = typer.Option(None, "--data", help="calibration data file for the methods"),
              input_shape: InputShapeOpt = None, arch: ArchOpt = None, arch_args: ArchArgsOpt = None,
              allow_class: AllowClassOpt = None, trust_pickle: TrustPickleOpt = False,
              deploy: Optional[str] = typer.Option(None, "--deploy", help="int8 | auto: lower each compressed "
                                                   "variant to the target runtime's INT8 kernels (see compress)"),
              deploy_floor: Optional[list[str]] = typer.Option(None, "--deploy-floor", help="KEY=VALUE: a floor of "
                                                               "--deploy's INT8 validation, as compress takes it "
                                                               "(repeatable)"),
              out: Path = typer.Option(..., "-o", "--out", help="output folder"),
              executor: ExecutorOpt = "local", address: AddressOpt = None, workers: WorkersOpt = None,
              task_timeout: TaskTimeoutOpt = None) -> None:
    """Variants x targets: status, size, fidelity vs fp32, p50, speed-up, peak memory; flags slow-downs."""
    from . import api
    from .profile.report import bench_rows, notes

    with user_errors():
        src = source_options(arch, arch_args, allow_class, trust_pickle, input_shape)
        doc = api.bench(model, list(target or []) + _split(targets), _split(methods), out, source=src, data=data,
                    sets=parse_sets(sets), deploy=deploy, executor=executor, address=address, workers=workers,
                    timeout_s=task_timeout, deploy_floors=parse_sets(deploy_floor, "--deploy-floor") or None)
        head, rows = bench_rows(doc)
        console.print(_table(head, rows, "bench"))
        for n in notes(doc):
            console.print(n, highlight=False)
        console.print(f"wrote {out / 'bench.json'}, bench.md, bench.html", highlight=False)


def report_cmd(path: Path = typer.Argument(..., help="folder with bench.json/profile.json, or the JSON file")) -> None:
    """Rebuild the Markdown and HTML reports from saved JSON."""
    from .profile.report import report

    with user_errors():
        for p in report(path):
            console.print(f"wrote {p}", highlight=False)


def register(app: typer.Typer) -> None:
    """Attach `targets`, `profile`, `bench` and `report` to the main app."""
    app.add_typer(targets_app, name="targets")
    app.command("profile")(profile_cmd)
    app.command("bench")(bench_cmd)
    app.command("report")(report_cmd)
