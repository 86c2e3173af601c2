"""Rules that keep user files safe: which pickled classes may be allowed, which folders may be replaced, one
writer per output folder, and path names that stay where they belong.

- `--allow-class` takes classes only, never from modules that reach the OS, the interpreter or the importer
  (builtins, os, subprocess, importlib, ...): such a name is refused outright, whatever the user asks.
- An output folder is replaced only when it is an edgekit artifact (a manifest.json that edgekit wrote) or
  empty, and never when it is the current directory, an ancestor of it, or holds one of the inputs.
- Two runs writing the same output take a lock (fcntl on a sibling lock file); the second fails at once.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path
from typing import Iterator, Sequence

from .errors import ConfigError, UnsafeModelError

# modules whose callables reach the OS, the interpreter or the importer; never allowed in a pickle or as --arch
DANGEROUS_MODULES = (
    "builtins", "__builtin__", "os", "posix", "nt", "posixpath", "ntpath", "subprocess", "sys", "importlib",
    "runpy", "code", "codeop", "shutil", "pathlib", "io", "_io", "socket", "pickle", "_pickle", "marshal", "types",
    "ctypes", "multiprocessing", "threading", "_thread", "pty", "signal", "webbrowser", "functools", "operator",
    "_operator", "inspect", "pydoc", "tempfile", "glob", "zipimport", "pkgutil", "timeit", "cProfile", "profile",
    "pdb", "bdb", "trace", "ast", "compileall", "py_compile", "asyncio", "concurrent", "urllib", "http", "ftplib",
    "smtplib", "telnetlib", "xmlrpc", "sqlite3", "shelve", "dbm", "copyreg", "gc", "weakref", "atexit", "site",
    "sysconfig", "platform", "resource", "fcntl", "mmap", "select", "selectors", "ssl", "email", "logging",
    "numpy.testing", "numpy.f2py", "numpy.distutils", "torch.hub", "torch.utils.cpp_extension", "torch.package",
    "torch.serialization", "torch.jit", "torch._dynamo", "torch._inductor", "torch.ops", "torch.library",
    "torch.export", "torch.fx", "torch.utils.data", "torch.multiprocessing", "torch.distributed", "yaml", "dill",
    "cloudpickle", "joblib",
)


def is_dangerous(qualname: str) -> bool:
    """True for a name in (or under) a module that can run commands, import code or touch files."""
    mod = qualname.partition(":")[0] if ":" in qualname else qualname.rpartition(".")[0]
    mod = mod or qualname
    return any(mod == m or mod.startswith(m + ".") for m in DANGEROUS_MODULES)


def check_allowed_class(name: str, obj: object | None) -> None:
    """--allow-class accepts classes only (obj None: check the name alone), and none from a dangerous module."""
    if is_dangerous(name):
        raise UnsafeModelError(f"--allow-class {name}: names from modules that can run commands or import code are "
                               "never allowed; this file is not safe to load (re-save the weights as a state dict "
                               "and pass --arch)")
    if obj is not None and not isinstance(obj, type):
        raise UnsafeModelError(f"--allow-class {name} is a {type(obj).__name__}, not a class; only classes can be "
                               "allowed (functions would run when the file is read)")


def safe_component(name: str, what: str) -> str:
    """A single path component made only of safe characters (no '/', '..', or hidden names)."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,99}", name or "") or ".." in name:
        raise ConfigError(f"{what} '{name}' may contain only letters, digits and . _ + - (no path separators); "
                          "rename it")
    return name


def is_edgekit_artifact(path: Path) -> bool:
    """A folder whose manifest.json was written by edgekit (schema_version + files + kind)."""
    p = Path(path) / "manifest.json"
    if not Path(path).is_dir() or Path(path).is_symlink() or not p.is_file() or p.is_symlink():
        return False
    try:
        man = json.loads(p.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(man, dict) and {"schema_version", "files", "kind"} <= set(man)


def _within(a: Path, b: Path) -> bool:
    """True when a is b or lies under b."""
    return a == b or b in a.parents


def check_replaceable(out: Path, protect: Sequence[Path | str] = ()) -> None:
    """Raise unless `out` (which exists) may be replaced: an edgekit artifact or an empty folder, never the
    current directory, its ancestors, or a folder holding one of the inputs."""
    out = Path(out).resolve()
    cwd = Path.cwd().resolve()
    if _within(cwd, out):
        raise ConfigError(f"refusing to replace {out}: it is the current directory or holds it; choose another -o")
    for p in protect:
        if p and Path(p).exists() and _within(Path(p).resolve(), out):
            raise ConfigError(f"refusing to replace {out}: it holds the input {p}; choose another -o")
    if out.is_symlink() or not out.is_dir():
        raise ConfigError(f"refusing to replace {out}: it is not a folder edgekit wrote; choose another -o")
    if not is_edgekit_artifact(out) and any(out.iterdir()):
        raise ConfigError(f"refusing to replace {out}: it is not an edgekit artifact (no edgekit manifest.json) "
                          "and not empty; edgekit never deletes data it did not create; choose another -o")


def check_path_text(path: Path | str, what: str = "-o") -> None:
    """Paths must be valid UTF-8 (a surrogate-escaped name crashes printing and manifests)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{what} {os.fsencode(str(path))!r} is not valid UTF-8; choose a plain name") from None


@contextlib.contextmanager
def output_lock(out: Path) -> Iterator[None]:
    """Hold an exclusive lock for `out` (a hidden sibling lock file); a second writer fails at once."""
    import fcntl

    out = Path(out).resolve()
    if out in _HELD:  # re-entrant within this process (a verb holds it for its whole run, staging takes it again)
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = out.parent / f".{out.name}.lock"
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"another edgekit run is writing {out}; wait for it or choose another -o") from None
        try:  # the holder before us may have removed the file we opened: lock the one on disk
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    _HELD.add(out)
    try:
        yield
    finally:
        _HELD.discard(out)
        with contextlib.suppress(OSError):
            lock.unlink()  # while still holding it, so a waiter sees a fresh file
        os.close(fd)


_HELD: set[Path] = set()


def check_own_file(path: Path | str) -> None:
    """Raise unless `path` is absent or a report/result edgekit wrote (JSON with an edgekit schema first, Markdown
    starting '# edgekit', HTML titled 'edgekit ...'): reports never overwrite a user's file of the same name."""
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        return
    if p.is_symlink() or not p.is_file():
        raise ConfigError(f"refusing to write {p}: it is a link or a folder; choose another output")
    with open(p, "rb") as f:
        head = f.read(4096)
    ours = (re.match(rb'\s*\{\s*"schema"\s*:\s*"edgekit\.', head) is not None or head.startswith(b"# edgekit ")
            or b"<title>edgekit " in head)
    if not ours:
        raise ConfigError(f"refusing to overwrite {p}: edgekit did not write it; choose another output")


def write_own_json(path: Path, doc: object, indent: int = 1) -> None:
    """Write a result JSON atomically (temp file + rename), never over a file edgekit did not write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    check_own_file(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(doc, indent=indent, default=str))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
