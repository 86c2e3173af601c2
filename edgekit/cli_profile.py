"""CLI for targets, profile, bench and report: parse, call the Python API, print rich tables (no logic here)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .cli_common import console, user_errors

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
    from .targets import list_targets

    with user_errors():
        tab = Table(title="targets")
        tab.add_column("name", no_wrap=True)
        for h in ("runtime", "device", "threads", "precisions", "budget MB", "description"):
            tab.add_column(h, overflow="fold")
        for t in list_targets():
            dev = t.device + (f" (fallback {t.fallback})" if t.fallback else "")
            tab.add_row(t.name, t.runtime, dev, str(t.threads), ",".join(t.precisions), f"{t.memory_budget_mb:g}",
                        t.description)
        console.print(tab)


@targets_app.command("show")
def targets_show(name: str = typer.Argument(..., help="bundled name or .yaml path")) -> None:
    """Show every field of one target profile."""
    import yaml

    from .targets import load_target

    with user_errors():
        t = load_target(name)
        console.print(yaml.safe_dump(t.model_dump(), sort_keys=False), highlight=False)


def _print_profile(doc: dict) -> None:
    """Profile table plus per-target notes."""
    from .profile.report import notes, profile_rows

    head, rows = profile_rows(doc)
    console.print(_table(head, rows, "profile (measured on this host; (est.) = estimate for the device)"))
    for n in notes(doc):
        console.print(n, highlight=False)


def profile_cmd(artifact: Path = typer.Argument(..., help="artifact folder"),
                target: list[str] = typer.Option(..., "--target", "-t", help="target name or .yaml (repeatable)"),
                out: Optional[Path] = typer.Option(None, "-o", "--out",
                                                   help="folder for profile.json/.md/.html")) -> None:
    """Measure an artifact on one or more targets (each run in its own subprocess)."""
    from .profile import profile_artifact
    from .profile.report import write_reports

    with user_errors():
        doc = profile_artifact(artifact, target)
        _print_profile(doc)
        if out is not None:
            paths = write_reports(doc, out, "profile")
            console.print(f"wrote {', '.join(str(p) for p in paths)}", highlight=False)
    if any(r.get("status") != "ok" for r in doc["results"]):
        raise typer.Exit(1)


def bench_cmd(model: str = typer.Argument(..., help="model source (.pt/.pt2/module:factory/HF folder)"),
              targets: str = typer.Option(..., "--targets", help="comma-separated target names"),
              methods: str = typer.Option("", "--methods", help="comma-separated methods (fp32 is always run)"),
              input_shape: Optional[str] = typer.Option(None, "--input-shape", help="e.g. 1,3,224,224"),
              out: Path = typer.Option(..., "-o", "--out", help="output folder")) -> None:
    """Variants x targets: status, size, fidelity vs fp32, p50, speed-up, peak memory; flags slow-downs."""
    from .bench import bench
    from .profile.report import bench_rows, notes

    with user_errors():
        doc = bench(model, _split(targets), _split(methods), out, input_shape=input_shape)
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
