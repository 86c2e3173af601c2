"""benchmarks/ reach edgekit only through its public API (issue 13): no private module or name, in any spelling.

Checked in two ways, so neither an alias nor a string hides a use: the source text (`edgekit.x._y` anywhere,
including `importlib.import_module("edgekit.x._y")` strings) and the syntax tree (`from edgekit.x import a, _y`,
`from edgekit import x` then `x._y`). Dunder names (`edgekit.__version__`) are public.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
_TEXT = re.compile(r"\bedgekit(?:\.[A-Za-z0-9_]+)*\.(_[A-Za-z0-9]\w*)")


def _private(name: str) -> bool:
    """A leading underscore, except dunders."""
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_uses(source: str, filename: str = "<src>") -> list[str]:
    """'file:line: what' for every private edgekit module or attribute the source uses."""
    hits = [f"{filename}:{source.count(chr(10), 0, m.start()) + 1}: {m.group(0)}"
            for m in _TEXT.finditer(source) if _private(m.group(1))]
    tree = ast.parse(source, filename)
    bound: set[str] = set()  # local names bound to edgekit modules or objects
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "edgekit":
                    bound.add(a.asname or "edgekit")
                    if any(_private(p) for p in a.name.split(".")):
                        hits.append(f"{filename}:{node.lineno}: import {a.name}")
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "edgekit" and not node.level:
            if any(_private(p) for p in node.module.split(".")):
                hits.append(f"{filename}:{node.lineno}: from {node.module} import ...")
            for a in node.names:
                bound.add(a.asname or a.name)
                if _private(a.name):
                    hits.append(f"{filename}:{node.lineno}: from {node.module} import {a.name}")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            root = node.value
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in bound:
                hits.append(f"{filename}:{node.lineno}: {ast.unparse(node)}")
    return sorted(set(hits))


def test_the_checker_catches_every_spelling():
    bad = {
        "from edgekit.export.onnx import OPSET, _quiet, save_onnx": "_quiet",
        "from edgekit.methods import _heads as H": "_heads",
        "from edgekit.methods._device import resolve": "_device",
        "import edgekit._fd": "_fd",
        "import edgekit.api as api\napi._plan(1)": "_plan",
        "from edgekit import api\nx = api._tflite_int_weights": "_tflite_int_weights",
        "import importlib\nimportlib.import_module('edgekit.methods._quant')": "_quant",
        "import edgekit\nedgekit.models.real._smollm2_cache()": "_smollm2_cache",
    }
    for src, name in bad.items():
        hits = private_uses(src)
        assert hits and all(name in h or "import ..." in h for h in hits[:1]), (src, hits)
    good = ("import _baselines_build as B\nB._helper()\nfrom edgekit.profile import interleaved\n"
            "import edgekit\nprint(edgekit.__version__)\nx._private = 1\nfrom edgekit.quant import get_codes")
    assert private_uses(good) == []


def test_benchmarks_use_no_private_edgekit_names():
    files = sorted(BENCH.rglob("*.py"))
    assert files, f"no benchmark scripts under {BENCH}"
    hits = [h for f in files for h in private_uses(f.read_text(), str(f.relative_to(BENCH.parent)))]
    assert not hits, "private edgekit uses in benchmarks/ (use or add a public function):\n" + "\n".join(hits)


def test_no_undefined_names_in_benchmarks_scripts_or_package():
    """Every name a benchmark script or edgekit module uses is defined (pyflakes): a script whose part calls a
    function removed by a cleanup fails here, not months later on the GPU host."""
    from pyflakes import api as flakes
    from pyflakes import messages as msg
    from pyflakes.reporter import Reporter

    class Collect(Reporter):
        def __init__(self):
            self.found: list[str] = []

        def flake(self, m):
            if isinstance(m, (msg.UndefinedName, msg.UndefinedLocal, msg.UndefinedExport)):
                self.found.append(str(m))

        def unexpectedError(self, filename, problem):
            self.found.append(f"{filename}: {problem}")

        def syntaxError(self, filename, message, lineno, offset, text):
            self.found.append(f"{filename}:{lineno}: {message}")

    rep = Collect()
    files = sorted(BENCH.rglob("*.py")) + sorted((BENCH.parent / "edgekit").rglob("*.py"))
    for f in files:
        flakes.check(f.read_text(), str(f), rep)
    assert len(files) > 50 and not rep.found, "\n".join(rep.found)
    bad = Collect()
    flakes.check("def f():\n    return g()\n", "probe.py", bad)
    assert bad.found, "the check must catch an undefined name"
