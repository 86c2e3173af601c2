"""Safe by construction: one test per attack class, each with a real payload (issue "Safe by construction").

Classes: code from .pt2 files and artifacts; --allow-class abuse and constructor bombs; deleting user data; NaN/Inf
passing validation; trusting artifacts (symlinks, paths, checksums); concurrency and interruption.
"""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgekit import api
from edgekit.artifact import check_output, staging, verify_artifact
from edgekit.errors import ArtifactError, ConfigError, ExportMismatchError, ModelLoadError, UnsafeModelError
from edgekit.model_io import load_model
from edgekit.safety import output_lock
from tests.conftest import tiny_net


class Shell:
    """Unpickling this runs a shell command that creates a marker file: the attack."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class LinearBomb:
    """A 1 KB pickle that asks an allowed torch.nn constructor for 20000 x 20000 weights (1.6 GB)."""

    def __reduce__(self):
        return (nn.Linear, (20000, 20000))


@pytest.fixture(scope="module")
def pt2(tmp_path_factory) -> Path:
    """A plain torch.export archive of the tiny net (what edgekit itself writes)."""
    p = tmp_path_factory.mktemp("pt2") / "net.pt2"
    m = tiny_net()
    torch.export.save(torch.export.export(m, (torch.randn(1, 3, 8, 8),)), str(p))
    return p


def _rewrite(src: Path, dst: Path, edit) -> Path:
    """Copy a zip archive member by member; edit(rel, data) returns new bytes, None to drop, or a dict to add."""
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(dst, "w") as zo:
        root = zi.namelist()[0].split("/", 1)[0]
        for name in zi.namelist():
            rel = name[len(root) + 1:]
            data = edit(rel, zi.read(name))
            if isinstance(data, dict):
                zo.writestr(name, zi.read(name))
                for k, v in data.items():
                    zo.writestr(f"{root}/{k}", v)
            elif data is not None:
                zo.writestr(name, data)
    return dst


def _payload_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _edit_json(rel: str, data: bytes, change) -> bytes:
    if rel.startswith("models/") and rel.endswith(".json"):
        d = json.loads(data)
        change(d)
        return json.dumps(d).encode()
    return data


def _first_node(d: dict) -> dict:
    return d["graph_module"]["graph"]["nodes"][0]


# ---- 1. code execution from .pt2 files and artifacts ------------------------------------------------------------

def test_plain_pt2_loads_and_runs(pt2):
    m = load_model(pt2).module
    x = torch.randn(1, 3, 8, 8)
    assert torch.allclose(m(x), tiny_net()(x), atol=1e-6)
    m.eval()  # torch's exported module refuses eval(); edgekit's wrapper must not


@pytest.mark.parametrize("attack", ["sample_inputs", "target", "guards", "expr", "member", "pickled_weight"])
def test_crafted_pt2_never_runs_code(pt2, tmp_path, attack):
    marker = tmp_path / "pwned"
    evil = _payload_bytes(Shell(marker))

    def edit(rel: str, data: bytes):
        if attack == "sample_inputs" and rel.startswith("data/sample_inputs/"):
            return evil  # torch.export.load falls back to torch.load(weights_only=False) on this
        if attack == "target":
            return _edit_json(rel, data, lambda d: _first_node(d).update(target="torch.os.system"))
        if attack == "guards":
            return _edit_json(rel, data, lambda d: d.update(guards_code=[f"__import__('os').system('touch {marker}')"]))
        if attack == "expr":
            def change(d):
                d["graph_module"]["graph"]["sym_int_values"] = {
                    "s0": {"as_expr": {"expr_str": f"__import__('os').system('touch {marker}')", "hint": None}}}
            return _edit_json(rel, data, change)
        if attack == "member" and rel == "archive_format":
            return {"data/aotinductor/model/model.so": b"\x7fELF", "extra/evil.pkl": evil}
        if attack == "pickled_weight" and rel.endswith("_weights_config.json"):
            d = json.loads(data)
            next(iter(d["config"].values()))["use_pickle"] = True
            return json.dumps(d).encode()
        return data

    bad = _rewrite(pt2, tmp_path / "evil.pt2", edit)
    with pytest.raises(UnsafeModelError, match="--trust-pickle"):
        load_model(bad)
    assert not marker.exists()


def test_artifact_pt2_is_checked_even_with_matching_checksums(tmp_path):
    """An attacker can rewrite manifest.json with fresh checksums: the program itself must still be refused."""
    from edgekit.artifact import write_manifest

    art = api.export("demo", "onnxruntime", tmp_path / "a")
    marker = tmp_path / "pwned"
    good = art / "model.pt2"
    tmp = tmp_path / "evil.pt2"
    _rewrite(good, tmp, lambda rel, d: _payload_bytes(Shell(marker)) if rel.startswith("data/sample_inputs/") else d)
    tmp.replace(good)
    man = json.loads((art / "manifest.json").read_text())
    write_manifest(art, man)  # checksums now match the tampered file
    verify_artifact(art)
    with pytest.raises(UnsafeModelError):
        api.export(art, "openvino")
    assert not marker.exists()


# ---- 2. --allow-class and constructor bombs ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["builtins.eval", "subprocess.Popen", "os.system", "importlib.import_module"])
def test_allow_class_refuses_dangerous_names(tmp_path, name):
    f = tmp_path / "m.pt"
    torch.save(nn.Linear(2, 2), f)
    with pytest.raises(UnsafeModelError, match="never allowed"):
        load_model(f, allow_class=[name])


def test_allow_class_refuses_functions(tmp_path):
    f = tmp_path / "m.pt"
    torch.save(nn.Linear(2, 2), f)
    with pytest.raises(UnsafeModelError, match="not a class"):
        load_model(f, allow_class=["torch.nn.functional.relu"])


def test_shell_pickle_is_refused_without_suggesting_the_names(tmp_path):
    marker = tmp_path / "pwned"
    f = tmp_path / "evil.pt"
    torch.save(Shell(marker), f)
    with pytest.raises(UnsafeModelError) as e:
        load_model(f)
    assert "--allow-class" not in str(e.value) and "system" in str(e.value)
    assert not marker.exists()


def test_constructor_bomb_allocates_nothing(tmp_path):
    f = tmp_path / "bomb.pt"
    torch.save(LinearBomb(), f)
    assert f.stat().st_size < 4096
    code = ("import resource, sys\nfrom edgekit.model_io import load_model\nfrom edgekit.errors import UnsafeModelError\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            f"try:\n    load_model({str(f)!r})\n    sys.exit(1)\nexcept UnsafeModelError:\n    pass\n"
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert int(res.stdout.strip().splitlines()[-1]) < 400  # MB; the bomb would take 1,600


def test_legacy_state_dict_loads(tmp_path):
    ref = tiny_net()
    f = tmp_path / "legacy.pth"
    torch.save(ref.state_dict(), f, _use_new_zipfile_serialization=False)
    m = load_model(f, arch="tests.conftest:tiny_net").module
    x = torch.randn(1, 3, 8, 8)
    assert torch.equal(m(x), ref(x))


# ---- 3. never delete user data ---------------------------------------------------------------------------------

def test_overwrite_refuses_folders_edgekit_did_not_write(tmp_path, monkeypatch):
    user = tmp_path / "photos"
    user.mkdir()
    (user / "cat.jpg").write_bytes(b"meow")
    with pytest.raises(ConfigError, match="not an edgekit artifact"):
        api.compress("demo", "rtn", {}, user, overwrite=True)
    assert (user / "cat.jpg").read_bytes() == b"meow"
    monkeypatch.chdir(user)
    with pytest.raises(ConfigError, match="current directory"):
        check_output(Path("."), overwrite=True)
    with pytest.raises(ConfigError, match="current directory"):
        check_output(tmp_path, overwrite=True)
    assert (user / "cat.jpg").exists()


def test_overwrite_refuses_the_folder_holding_the_input(tmp_path):
    d = tmp_path / "models"
    d.mkdir()
    f = d / "m.pt"
    torch.save(tiny_net(), f)
    (d / "manifest.json").write_text(json.dumps({"schema_version": 1, "files": {}, "kind": "export"}))
    with pytest.raises(ConfigError, match="holds the input"):
        api.compress(f, "rtn", {}, d, overwrite=True, input_shape="1x3x8x8")
    assert f.exists()


def test_overwrite_replaces_an_artifact_and_an_empty_folder(tmp_path):
    a = api.compress("demo", "rtn", {}, tmp_path / "a")
    api.compress("demo", "rtn", {"bits": 4}, a, overwrite=True)
    assert json.loads((a / "manifest.json").read_text())["method"]["config"]["bits"] == 4
    (tmp_path / "empty").mkdir()
    api.compress("demo", "rtn", {}, tmp_path / "empty", overwrite=True)


def test_target_name_cannot_escape(tmp_path):
    from edgekit.config import load_yaml_model
    from edgekit.targets import TargetProfile, load_target

    import yaml

    y = tmp_path / "t.yaml"
    base = load_target("x86-avx2-ort").model_dump()
    base["name"] = "../../victim"
    y.write_text(yaml.safe_dump(base))
    with pytest.raises(ConfigError, match="name"):
        load_yaml_model(y, TargetProfile)


def test_demo_checks_the_method_before_touching_disk(tmp_path):
    from edgekit.demo import run_demo

    keep = tmp_path / "fp32"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError):
        run_demo(tmp_path, "no-such-method")
    assert (keep / "notes.txt").read_text() == "mine"


# ---- 4. NaN / Inf never pass ------------------------------------------------------------------------------------

def test_inf_weight_fails_validation(tmp_path):
    m = tiny_net()
    with torch.no_grad():
        m.fc.weight[0, 0] = float("inf")
    f = tmp_path / "inf.pt"
    torch.save(m, f)
    with pytest.raises(ExportMismatchError, match="NaN/Inf"):
        api.export(f, "onnxruntime", tmp_path / "a", input_shape="1x3x8x8", allow_class=["tests.conftest.TinyNet"])
    assert not (tmp_path / "a").exists()


def test_nan_figure_or_tampered_weight_fails_verification(tmp_path):
    art = api.export("demo", "onnxruntime", tmp_path / "a")
    man = json.loads((art / "manifest.json").read_text())
    onnx_file = art / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[-10] ^= 0xFF
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="checksum"):
        verify_artifact(art)
    with pytest.raises(ArtifactError):
        api.export(art, "openvino")
    art2 = api.export("demo", "onnxruntime", tmp_path / "b")
    man = json.loads((art2 / "manifest.json").read_text())
    next(iter(man["exports"]["onnxruntime"]["validation"]["outputs"].values()))["cosine"] = float("nan")
    (art2 / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ArtifactError, match="NaN"):
        verify_artifact(art2)


def test_recipe_gates_refuse_nan_thresholds(tmp_path):
    from edgekit.config import Recipe, load_yaml_model

    r = tmp_path / "r.yaml"
    r.write_text("model: demo\nsteps: [{method: rtn}]\ngates: {min_cosine: .nan}\n")
    with pytest.raises(ConfigError, match="min_cosine"):
        load_yaml_model(r, Recipe)
    r.write_text("model: demo\nsteps: [{method: rtn}]\ngates: {samples: 0}\n")
    with pytest.raises(ConfigError, match="samples"):
        load_yaml_model(r, Recipe)


# ---- 5. artifacts are verified before use ------------------------------------------------------------------------

def test_symlink_in_artifact_is_refused(tmp_path):
    art = api.export("demo", "onnxruntime", tmp_path / "a")
    secret = tmp_path / "secret.txt"
    secret.write_text("private key")
    (art / "exports" / "leak.txt").symlink_to(secret)
    with pytest.raises(ArtifactError, match="symbolic link"):
        api.export(art, "openvino")
    with pytest.raises(ArtifactError, match="symbolic link"):
        load_model(art)


def test_manifest_paths_cannot_leave_the_artifact(tmp_path):
    art = api.export("demo", "onnxruntime", tmp_path / "a")
    outside = tmp_path / "other.onnx"
    outside.write_bytes((art / "model.onnx").read_bytes())
    man = json.loads((art / "manifest.json").read_text())
    man["exports"]["onnxruntime"]["file"] = "../other.onnx"
    (art / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ArtifactError, match="leaves the artifact"):
        verify_artifact(art)
    man["exports"]["onnxruntime"]["file"] = "unlisted.onnx"
    (art / "unlisted.onnx").write_bytes(b"x")
    (art / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ArtifactError, match="does not list"):
        verify_artifact(art)


def test_example_app_refuses_a_symlinked_artifact(tmp_path):
    art = api.export("demo", "onnxruntime", tmp_path / "a")
    app = Path(__file__).resolve().parents[2] / "examples" / "embed_app.py"
    ok = subprocess.run([sys.executable, str(app), str(art)], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr[-2000:]
    (art / "x").symlink_to("/etc/hostname")
    bad = subprocess.run([sys.executable, str(app), str(art)], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "symbolic link" in bad.stderr


# ---- 6. concurrency and interruption -----------------------------------------------------------------------------

def test_second_writer_fails_at_once(tmp_path):
    out = tmp_path / "a"
    holder = subprocess.Popen([sys.executable, "-c",
                               "import time\nfrom edgekit.safety import output_lock\n"
                               f"with output_lock({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(30)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match="another edgekit run"):
            with staging(out):
                pass
    finally:
        holder.kill()
        holder.wait()
    with output_lock(out):  # re-entrant in one process: a verb holds it and staging takes it again
        with staging(out) as root:
            (root / "f").write_text("x")
    assert (out / "f").exists()
    with pytest.raises(ConfigError, match="not an edgekit artifact"):  # lock free again; the folder is not ours
        with staging(out, overwrite=True):
            pass


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_kill_between_renames_recovers_the_old_artifact(tmp_path):
    art = api.export("demo", "onnxruntime", tmp_path / "a")
    hidden = tmp_path / f".a.old-{_dead_pid()}"
    os.replace(art, hidden)  # the state a SIGKILL between the two renames leaves
    with pytest.raises(RuntimeError):
        with staging(tmp_path / "b"):  # another output: no recovery of a
            raise RuntimeError
    assert hidden.exists()
    with pytest.raises(ConfigError, match="exists"):
        with staging(art):  # the next run into a: recovered first, so it now exists
            pass
    assert (art / "manifest.json").exists() and not hidden.exists()
    verify_artifact(art)


def test_worker_dies_with_its_parent(tmp_path):
    """A SIGKILL/SIGTERM to `edgekit profile` must not orphan its measuring worker: the worker itself asks for
    PR_SET_PDEATHSIG at start (no preexec_fn: Python between fork and exec can deadlock under a threaded parent),
    and exits at once when the parent it was started for is already gone."""
    child_code = ("from edgekit.profile.measure import die_with_parent\ndie_with_parent()\nimport time\n"
                  "print('up', flush=True)\ntime.sleep(60)")
    code = ("import subprocess, sys, time\nfrom edgekit.profile.measure import worker_env\n"
            f"p = subprocess.Popen([sys.executable, '-c', {child_code!r}], env=worker_env(), stdout=subprocess.PIPE,"
            " text=True)\nassert p.stdout.readline() == 'up\\n'\nprint(p.pid, flush=True)\ntime.sleep(60)")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    import time

    for _ in range(50):
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        os.kill(child, 9)
        pytest.fail("the worker outlived its parent")
    # started for a parent that is not its parent (it died before the worker ran): the worker exits at once
    env = {**os.environ, "EDGEKIT_WORKER_PARENT": "0"}  # never the real parent pid
    r = subprocess.run([sys.executable, "-c", child_code], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "up" not in r.stdout


def test_validation_figures_are_finite_on_a_good_export(tmp_path):
    art = api.export("demo", "onnxruntime", tmp_path / "a")
    figs = json.loads((art / "manifest.json").read_text())["exports"]["onnxruntime"]["validation"]["outputs"]
    assert all(np.isfinite(v) for o in figs.values() for v in o.values() if isinstance(v, float))


def test_concurrent_compress_into_the_same_output_fails_the_second(tmp_path):
    """Two real processes: the second run into the same -o fails at once with one line while the first holds it."""
    out = tmp_path / "a"
    holder = subprocess.Popen([sys.executable, "-c",
                               "import sys, time\nfrom edgekit.safety import output_lock\n"
                               f"with output_lock({str(out)!r}):\n    print('held', flush=True)\n    time.sleep(30)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        res = subprocess.run([sys.executable, "-m", "edgekit.cli", "compress", "demo", "--method", "rtn", "-o",
                              str(out)], capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and "another edgekit run" in res.stderr and not out.exists()
    finally:
        holder.kill()
        holder.wait()


def test_reports_never_overwrite_a_users_file(tmp_path):
    from edgekit.profile.report import write_reports

    doc = {"schema": "edgekit.profile/1", "kind": "profile", "created": "now", "results": []}
    (tmp_path / "profile.md").write_text("my notes")
    with pytest.raises(ConfigError, match="did not write"):
        write_reports(doc, tmp_path, "profile")
    assert (tmp_path / "profile.md").read_text() == "my notes" and not (tmp_path / "profile.json").exists()
    (tmp_path / "profile.md").unlink()
    write_reports(doc, tmp_path, "profile")
    write_reports(doc, tmp_path, "profile")  # our own files are replaced


@pytest.mark.parametrize("edit,field", [
    (lambda m: m.pop("files"), "files"),
    (lambda m: m["inputs"][0].update(shape=[1, -3]), "inputs.0.shape.1"),
    (lambda m: m["inputs"][0].update(shape="1x3"), "inputs.0.shape"),
    (lambda m: m["exports"]["onnxruntime"].pop("file"), "exports.onnxruntime.file"),
    (lambda m: m["files"]["model.onnx"].update(sha256="not-a-digest"), "files.model.onnx.sha256"),
    (lambda m: m.update(kind=""), "kind"),
])
def test_manifest_type_names_the_bad_field_on_read_and_on_write(tmp_path, edit, field):
    """One Manifest type: a manifest that does not fit it is refused when read (naming the field), and edgekit's own
    writers refuse to write one (update_manifest validates before its atomic write)."""
    from edgekit.artifact import Manifest, update_manifest

    art = api.export("demo", "onnxruntime", tmp_path / "a")
    good = json.loads((art / "manifest.json").read_text())
    Manifest.model_validate(good)
    bad = json.loads(json.dumps(good))
    edit(bad)
    (art / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(ArtifactError, match=f"field '{re.escape(field)}'"):
        verify_artifact(art)
    (art / "manifest.json").write_text(json.dumps(good))
    with pytest.raises(ArtifactError, match="field 'inputs"):
        update_manifest(art, {"inputs": [{"name": "x", "shape": [0]}]})
    assert json.loads((art / "manifest.json").read_text()) == good  # nothing written


def test_openvino_telemetry_stays_off_in_edgekit_processes(tmp_path):
    """No usage event leaves an edgekit process (OpenVINO/NNCF fall back to their no-op stubs), and OpenVINO's
    conversion still works; EDGEKIT_ALLOW_TELEMETRY=1 leaves the package importable."""
    import subprocess
    import sys

    code = ("import edgekit, sys\n"
            "try:\n    import openvino_telemetry\n    print('imported')\nexcept ImportError:\n    print('blocked')\n"
            "from openvino.tools.ovc import telemetry_utils\n"
            "print(telemetry_utils.tm.__name__)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**__import__("os").environ, "EDGEKIT_ALLOW_TELEMETRY": "0"})
    assert out.stdout.split() == ["blocked", "openvino.tools.ovc.telemetry_stub"], out.stdout + out.stderr
    out = subprocess.run([sys.executable, "-c", code.split("from openvino")[0]], capture_output=True, text=True,
                         timeout=120, env={**__import__("os").environ, "EDGEKIT_ALLOW_TELEMETRY": "1"})
    assert out.stdout.split() == ["imported"], out.stdout + out.stderr
