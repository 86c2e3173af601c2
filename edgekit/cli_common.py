"""Shared CLI plumbing: user errors become one red line and exit code 2; --verbose shows the traceback."""
from __future__ import annotations

import contextlib
import sys
from typing import Iterator

import typer
from rich.console import Console

from .errors import EdgekitError

console = Console(width=None if sys.stdout.isatty() else 160)  # pipes/CI: don't squeeze tables to 80
err_console = Console(stderr=True)
STATE = {"verbose": False}


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn EdgekitError (and Ctrl-C) into one red line and exit code 2 (130 for Ctrl-C)."""
    try:
        yield
    except EdgekitError as e:
        if STATE["verbose"]:
            err_console.print_exception()
        err_console.print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/red]; no partial output was kept")
        raise typer.Exit(130) from None


def parse_sets(items: list[str] | None) -> dict:
    """--set key=value pairs -> dict, values parsed as YAML scalars/lists (ratio=0.3, skip=[a,b])."""
    import yaml

    from .errors import ConfigError

    out = {}
    for it in items or []:
        if "=" not in it:
            raise ConfigError(f"--set '{it}' is not key=value; write e.g. --set ratio=0.3")
        k, v = it.split("=", 1)
        out[k.strip()] = yaml.safe_load(v) if v.strip() else ""
    return out


