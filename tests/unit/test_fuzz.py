"""Property-based fuzzing of every loader and parser: whatever the input, the outcome is a result or one
EdgekitError (the CLI's one red line, exit 2), never another exception, never a file outside -o, never a payload run.

CI runs a deterministic, bounded set (derandomized; EDGEKIT_FUZZ_EXAMPLES, default 40 per property). A longer run:
    EDGEKIT_FUZZ_EXAMPLES=2000 bash scripts/dev.sh test tests/unit/test_fuzz.py
"""
from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from edgekit.errors import EdgekitError

N = int(os.environ.get("EDGEKIT_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=N, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
MARKER = Path("/tmp/edgekit-fuzz-pwned")


def _only_edgekit_errors(fn, *args, **kwargs):
    """Call fn; a non-Edgekit exception is a finding."""
    try:
        return fn(*args, **kwargs)
    except EdgekitError as e:
        assert "\n" not in str(e).strip(), f"multi-line error: {e!r}"
        return None


shape_text = st.one_of(
    st.text(max_size=40),
    st.lists(st.integers(-3, 10**6), min_size=0, max_size=9).map(lambda d: "x".join(map(str, d))),
    st.tuples(st.lists(st.integers(1, 64), min_size=1, max_size=5),
              st.sampled_from(["", ":float32", ":bool", ":int64", ":uint8", ":complex", ":"]))
    .map(lambda t: "x".join(map(str, t[0])) + t[1]),
)


@FUZZ
@given(shape_text)
def test_input_shape_parser(text):
    from edgekit.model_io import example_inputs, parse_input_shape

    specs = _only_edgekit_errors(parse_input_shape, text)
    if specs:
        assert sum(torch.Size(s.shape).numel() for s in specs) <= 9 * (1 << 27)
        if sum(torch.Size(s.shape).numel() for s in specs) < 10**6:
            example_inputs(specs)


@FUZZ
@given(st.lists(st.text(max_size=30), max_size=4))
def test_set_parser(items):
    from edgekit.cli_common import parse_sets

    _only_edgekit_errors(parse_sets, items)


yaml_values = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=10)),
                           lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=8), c,
                                                                                        max_size=3)), max_leaves=12)


@FUZZ
@given(st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode),
                 st.dictionaries(st.sampled_from(["model", "steps", "gates", "targets", "out", "data", "arch",
                                                  "input_shape", "name", "runtime", "threads", "protocol",
                                                  "hardware", "precisions", "memory_budget_mb"]), yaml_values,
                                 max_size=6).map(lambda d: json.dumps(d).encode())))
def test_recipe_and_target_yaml(tmp_path_factory, raw):
    from edgekit.config import Recipe, load_yaml_model
    from edgekit.targets import TargetProfile

    p = tmp_path_factory.mktemp("y") / "x.yaml"
    p.write_bytes(raw)
    _only_edgekit_errors(load_yaml_model, p, Recipe)
    _only_edgekit_errors(load_yaml_model, p, TargetProfile)


@pytest.fixture(scope="module")
def good_artifact(tmp_path_factory) -> Path:
    from edgekit import api

    return api.export("demo", "onnxruntime", tmp_path_factory.mktemp("a") / "art")


def _mutate(obj, path, value):
    cur = obj
    for k in path[:-1]:
        if isinstance(cur, dict) and k in cur:
            cur = cur[k]
        else:
            return obj
    if isinstance(cur, dict):
        cur[path[-1]] = value
    return obj


@FUZZ
@given(st.sampled_from([("inputs",), ("files",), ("kind",), ("schema_version",), ("exports",), ("model",),
                        ("exports", "onnxruntime", "file"), ("exports", "onnxruntime", "validation"),
                        ("torch_program",), ("inputs", 0)]),
       yaml_values)
def test_manifest_mutations(good_artifact, tmp_path_factory, path, value):
    """A manifest with any field replaced is either still valid or refused with one line."""
    import shutil

    from edgekit.artifact import verify_artifact
    from edgekit.model_io import load_model

    art = tmp_path_factory.mktemp("m") / "art"
    shutil.copytree(good_artifact, art)
    man = json.loads((art / "manifest.json").read_text())
    if path == ("inputs", 0):
        man["inputs"][0] = value
    else:
        _mutate(man, list(path), value)
    (art / "manifest.json").write_text(json.dumps(man))
    _only_edgekit_errors(verify_artifact, art)
    _only_edgekit_errors(load_model, art)


@FUZZ
@given(st.sampled_from([".pt", ".pth", ".bin", ".pt2", ".safetensors", ".onnx"]),
       st.one_of(st.binary(max_size=300), st.just(b"PK\x03\x04" + b"\x00" * 40)))
def test_model_files_of_every_format(tmp_path_factory, suffix, raw):
    from edgekit import api
    from edgekit.model_io import load_model

    d = tmp_path_factory.mktemp("f")
    p = d / f"m{suffix}"
    p.write_bytes(raw)
    if suffix == ".onnx":
        _only_edgekit_errors(api.export, p, "onnxruntime", d / "out")
    else:
        _only_edgekit_errors(load_model, p)
        _only_edgekit_errors(load_model, p, arch="tests.conftest:tiny_net")
    assert not MARKER.exists()


@pytest.fixture(scope="module")
def pt2_bytes(tmp_path_factory) -> bytes:
    from tests.conftest import tiny_net

    p = tmp_path_factory.mktemp("p") / "m.pt2"
    torch.export.save(torch.export.export(tiny_net(), (torch.randn(1, 3, 8, 8),)), str(p))
    return p.read_bytes()


@FUZZ
@given(st.data())
def test_pt2_archive_mutations(pt2_bytes, data):
    """Flip bytes inside any member, or replace a JSON value, of a good .pt2: checked or refused, never crashing."""
    from edgekit.safe_pt2 import check_archive

    zi = zipfile.ZipFile(io.BytesIO(pt2_bytes))
    names = zi.namelist()
    victim = data.draw(st.sampled_from(names))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zo:
        for n in names:
            raw = zi.read(n)
            if n == victim:
                if n.endswith(".json"):
                    raw = data.draw(st.one_of(st.binary(max_size=50),
                                              yaml_values.map(lambda v: json.dumps(v).encode())))
                elif raw:
                    i = data.draw(st.integers(0, len(raw) - 1))
                    raw = raw[:i] + bytes([raw[i] ^ 0xFF]) + raw[i + 1:]
            zo.writestr(n, raw)
    _only_edgekit_errors(check_archive, Path("fuzz.pt2"), buf.getvalue())


@settings(max_examples=max(8, N // 4), deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(["--input-shape", "--set", "--target", "--arch", "--data", "-o", "--method"]),
                min_size=1, max_size=3),
       st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12),
                min_size=3, max_size=3))
def test_cli_compress_arguments(tmp_path_factory, flags, values):
    """Random option values through the real CLI: exit 0 or 2 with one line; nothing written outside -o."""
    from edgekit.cli import app

    work = tmp_path_factory.mktemp("cli")
    out = work / "out"
    argv = ["compress", "demo", "--method", "rtn", "-o", str(out)]
    for f, v in zip(flags, values):
        argv += [f, v]
    before = set(os.listdir(work))
    cwd = os.getcwd()
    os.chdir(work)
    try:
        res = CliRunner().invoke(app, argv)
    finally:
        os.chdir(cwd)
    text = (res.stdout or "") + (res.stderr or "")
    assert res.exit_code in (0, 2), (argv, res.exit_code, text[-1500:])
    assert "Traceback" not in text
    allowed = {"out"} | {Path(v).parts[0] for f, v in zip(flags, values) if f == "-o" and Path(v).parts}
    assert set(os.listdir(work)) - before <= allowed, (argv, set(os.listdir(work)) - before)
