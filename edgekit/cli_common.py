"""Shared CLI plumbing: user errors become one red line and exit code 2; --verbose shows the traceback."""
from __future__ import annotations

import contextlib
import sys
from typing import TYPE_CHECKING, Annotated, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape

from .errors import EdgekitError

if TYPE_CHECKING:
    from .api import SourceOptions

console = Console(width=None if sys.stdout.isatty() else 160)  # pipes/CI: don't squeeze tables to 80
err_console = Console(stderr=True)
STATE = {"verbose": False}


def _printable(text: str) -> str:
    """One line, encodable: newlines folded, undecodable bytes (surrogate escapes) shown as escapes."""
    return " ".join(text.split()).encode("utf-8", "backslashreplace").decode("utf-8")


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn EdgekitError (and Ctrl-C) into one red line and exit code 2 (130 for Ctrl-C)."""
    try:
        yield
    except EdgekitError as e:
        if STATE["verbose"]:
            err_console.print_exception()
        err_console.print(f"[red]error:[/red] {escape(_printable(str(e)))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/red]; no partial output was kept")
        raise typer.Exit(130) from None
    except (typer.Exit, typer.Abort, SystemExit):
        raise
    except MemoryError:
        err_console.print("[red]error:[/red] out of memory; use smaller inputs or a smaller model", highlight=False)
        raise typer.Exit(2) from None
    except Exception as e:  # a bug or an input we did not foresee: still one line, the traceback with -v
        if STATE["verbose"]:
            err_console.print_exception()
        msg = (str(e).strip().splitlines() or [""])[0][:300]
        err_console.print(f"[red]internal error:[/red] {type(e).__name__}: {escape(_printable(msg))} (edgekit -v shows "
                          "the traceback; please report it with the command)", highlight=False, soft_wrap=True)
        raise typer.Exit(3) from None


def _sigterm(signum: int, frame: object) -> None:
    """SIGTERM ends a run like Ctrl-C: staging folders are removed and worker subprocesses killed."""
    raise KeyboardInterrupt


ExecutorOpt = Annotated[str, typer.Option("--executor", help="local | ray: ray runs the variant x target matrix as "
                                          "Ray tasks (builds on CPU workers, each profile on a node advertising "
                                          "the resource target:NAME, else on this host); needs edgekit[ray]")]
AddressOpt = Annotated[Optional[str], typer.Option("--address", help="--executor ray: the Ray cluster to join "
                                                   "(HOST:PORT or ray://HOST:PORT); default: start a local instance "
                                                   "and stop it at the end")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", help="--executor ray without --address: CPU slots "
                                                   "of the local instance (default: all cores)")]
TaskTimeoutOpt = Annotated[Optional[float], typer.Option("--task-timeout", help="--executor ray: seconds before a "
                                                         "task is cancelled and its row failed (default 3600)")]


def install_signal_handlers() -> None:
    import signal

    signal.signal(signal.SIGTERM, _sigterm)


def parse_sets(items: list[str] | None, flag: str = "--set") -> dict:
    """--set key=value pairs -> dict, values parsed as YAML scalars/lists (ratio=0.3, skip=[a,b]); `flag` names the
    option in errors (--arch-args uses the same syntax)."""
    import yaml

    from .errors import ConfigError

    out = {}
    for it in items or []:
        if "=" not in it:
            raise ConfigError(f"{flag} {it!r} is not key=value; write e.g. {flag} "
                              f"{ {'--arch-args': 'width=8', '--deploy-floor': 'mean_cosine=0.98'}.get(flag, 'ratio=0.3')}")
        k, v = it.split("=", 1)
        try:
            out[k.strip()] = yaml.safe_load(v) if v.strip() else ""
        except (yaml.YAMLError, RecursionError):
            raise ConfigError(f"{flag} {it!r}: the value is not a valid scalar or [list]; write e.g. "
                              f"{flag} skip=[a,b] or quote it") from None
    return out


# Model-source options, declared once for every command that takes a model source (compress, export, bench, eval)
ArchOpt = Annotated[Optional[str], typer.Option(
    "--arch", help="factory that builds the model for a state dict: pkg.module:callable or path/to/file.py:callable")]
ArchArgsOpt = Annotated[Optional[list[str]], typer.Option(
    "--arch-args", help="keyword argument of the --arch factory, key=value (repeatable)")]
AllowClassOpt = Annotated[Optional[list[str]], typer.Option("--allow-class",
                                                            help="trust this pickled class (repeatable)")]
TrustPickleOpt = Annotated[bool, typer.Option("--trust-pickle",
                                              help="unpickle with arbitrary code execution (only your own files)")]
InputShapeOpt = Annotated[Optional[str], typer.Option(
    "--input-shape", help="input shape, e.g. 1x3x224x224[:float32]; comma for several inputs")]


def source_options(arch: str | None = None, arch_args: list[str] | None = None, allow_class: list[str] | None = None,
                   trust_pickle: bool = False, input_shape: str | None = None,
                   dynamic: list[str] | None = None) -> "SourceOptions":
    """The parsed model-source options (edgekit.model_io.SourceOptions) of a command."""
    from .api import SourceOptions

    return SourceOptions(arch, parse_sets(arch_args, "--arch-args"), list(allow_class or []), trust_pickle,
                         input_shape, dynamic)




NOISY_LIBS = ("torch", "torchao", "torchvision", "onnxscript", "onnx_ir", "transformers", "nncf", "litert_torch",
              "ai_edge_torch", "tensorflow", "jax")
NOISY_LOGGERS = ("torch.onnx", "torch.export", "torch.utils._pytree", "torch._export", "onnxscript", "onnx_ir",
                 "torchao", "nncf", "transformers", "absl")
_QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
              "GLOG_minloglevel": "2"}


def quiet_third_party(verbose: bool) -> None:
    """Unless -v: third-party deprecation/user warnings, log chatter and progress bars off (torchao's 'Failed to
    load .so', pytree deprecations, onnxscript's constant-folding 'Evaluation failed'), so that what a user sees is
    ours: our progress, results and errors. Set before the heavy imports (they read some of it at import)."""
    import logging
    import os
    import warnings

    if verbose:
        return
    for k, v in _QUIET_ENV.items():
        os.environ.setdefault(k, v)  # a user's own setting wins
    libs = "|".join(NOISY_LIBS)
    for cat in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=cat, module=rf"({libs})(\.|$)")
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
