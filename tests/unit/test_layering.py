"""The house's layering (DESIGN.md "Rules"): export/, quant/ and profile/ never import edgekit.methods (the
quantization contract lives in edgekit.quant, below both), and methods never import a runtime."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "edgekit"
RUNTIMES = ("onnxruntime", "openvino", "ai_edge_litert", "tflite_runtime", "tensorflow")


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path = PKG.parent) -> set[str]:
    """Absolute names of every module a file imports, anywhere in it (functions included), relative ones resolved."""
    here = _module_name(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)  # `from .. import methods`
    return out


def _files(sub: str) -> list[Path]:
    return sorted((PKG / sub).rglob("*.py"))


def test_import_resolver_sees_relative_and_nested_imports(tmp_path: Path) -> None:
    """The checker itself: a relative import inside a function resolves to edgekit.methods."""
    f = tmp_path / "edgekit" / "export" / "probe.py"
    f.parent.mkdir(parents=True)
    f.write_text("import torch\ndef f():\n    from ..methods.llm_fp4 import x\n    from .. import methods\n")
    mods = imported_modules(f, tmp_path)
    assert "edgekit.methods.llm_fp4" in mods and "edgekit.methods" in mods


@pytest.mark.parametrize("sub", ["export", "quant", "profile"])
def test_lower_layers_never_import_methods(sub: str) -> None:
    files = _files(sub)
    assert files, f"edgekit/{sub}/ has no modules"
    bad = {}
    for f in files:
        hits = sorted(m for m in imported_modules(f) if m == "edgekit.methods" or m.startswith("edgekit.methods."))
        if hits:
            bad[str(f.relative_to(PKG))] = hits
    assert not bad, f"edgekit/{sub}/ imports edgekit.methods (move the shared part to edgekit/quant/): {bad}"


def test_methods_never_import_a_runtime() -> None:
    bad = {}
    for f in _files("methods"):
        hits = sorted(m for m in imported_modules(f) if m.split(".")[0] in RUNTIMES)
        if hits:
            bad[str(f.relative_to(PKG))] = hits
    assert not bad, bad


# the ground floor: imported by everything above, importing nothing of edgekit but these
GROUND = {"errors", "_fd", "safety", "safe_pt2", "specs", "runtimes"}


@pytest.mark.parametrize("name", ["specs", "runtimes", "safety", "safe_pt2"])
def test_ground_floor_imports_only_the_ground_floor(name: str) -> None:
    mods = {m for m in imported_modules(PKG / f"{name}.py") if m.startswith("edgekit.")}
    above = sorted(m for m in mods if m.split(".")[1] not in GROUND)
    assert not above, f"edgekit/{name}.py imports {above}: it is the ground floor (DESIGN.md), keep it below"


def test_hf_and_model_io_do_not_import_each_other_for_types() -> None:
    """hf.py gets InputSpec/LoadedModel from specs.py; only model_io (the loader) calls into hf."""
    assert not {m for m in imported_modules(PKG / "hf.py") if m.startswith("edgekit.model_io")}



# what a CLI module may import from edgekit besides the front door: itself, errors, and presentation helpers
CLI_ALLOWED = {"edgekit", "edgekit.__version__", "edgekit.api", "edgekit.errors", "edgekit.cli_common",
               "edgekit.cli_generate", "edgekit.profile.report", "edgekit.fidelity"}


def cli_violations(path: Path, root: Path = PKG.parent) -> list[str]:
    """edgekit modules a CLI file imports outside CLI_ALLOWED (and their members)."""
    mods = {m for m in imported_modules(path, root) if m.startswith("edgekit")}
    prefixes = tuple(a + "." for a in CLI_ALLOWED if a != "edgekit")
    return sorted(m for m in mods if m not in CLI_ALLOWED and not m.startswith(prefixes))


@pytest.mark.parametrize("path", sorted(PKG.glob("cli*.py")), ids=lambda p: p.name)
def test_cli_verbs_do_their_work_through_the_api(path: Path) -> None:
    """One front door: every CLI verb calls edgekit.api for its work (the CLI only parses and prints); only
    presentation helpers (report tables, the fidelity summary line) are imported directly."""
    bad = cli_violations(path)
    assert not bad, f"{path.name} imports {bad}: add the work to edgekit.api and call it there"


def test_cli_check_sees_a_direct_import(tmp_path: Path) -> None:
    f = tmp_path / "edgekit" / "cli_x.py"
    f.parent.mkdir(parents=True)
    f.write_text("from . import __version__\ndef f():\n    from .bench import bench\n    from . import api\n"
                 "    from .profile.report import notes\n")
    assert cli_violations(f, tmp_path) == ["edgekit.bench", "edgekit.bench.bench"]
