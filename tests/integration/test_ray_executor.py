"""edgekit bench --executor ray on a real local Ray cluster: a head node advertising target:ray-a and a second node
process advertising target:ray-b (ray.cluster_utils.Cluster starts real raylets; the fixture shuts down only the
processes it started). Checks where each profile ran, a worker killed mid-task and retried, a target no node has
falling back to this host, failed/timed-out/interrupted tasks, and artifacts checked on arrival."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'edgekit[ray]')")

from tests.integration._ray import ray_default_dir  # noqa: E402
from edgekit.bench import PASSED, bench  # noqa: E402
from edgekit.errors import ArtifactError, ConfigError  # noqa: E402
from edgekit.ray_executor import check_executor, pack, run_jobs, unpack  # noqa: E402
from edgekit.targets import MeasureProtocol, load_target  # noqa: E402

TINY = MeasureProtocol(warmup=2, min_runs=5, min_seconds=0.05, max_cv=0.9, max_repeats=0, profile_runs=2)
NET = '''
import os, pathlib
import torch
from torch import nn

HERE = pathlib.Path(__file__).parent


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(144, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def build():
    """Dies (the whole worker process) the first time it runs outside the test process: a killed worker."""
    if os.getpid() != int((HERE / "driver.pid").read_text()) and not (HERE / "died").exists():
        (HERE / "died").write_text(str(os.getpid()))
        os._exit(1)
    torch.manual_seed(0)
    return Net().eval()
'''


def _target(name: str):
    return load_target("x86-avx2-ort").model_copy(update={"name": name, "protocol": TINY, "threads": 1})


@pytest.fixture(scope="module")
def cluster():
    """Head (1 CPU, target:ray-a) + a second node process (1 CPU, target:ray-b), this host only, own temp dir."""
    from ray.cluster_utils import Cluster

    tmp = tempfile.mkdtemp(prefix="ekray", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    ray_default_dir()  # Cluster() writes the head's address into Ray's default temp dir, which it does not create
    c = None
    try:
        c = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "resources": {"target:ray-a": 1}, "include_dashboard": False, "temp_dir": tmp,
            "object_store_memory": 80 * 2**20})
        c.add_node(num_cpus=1, resources={"target:ray-b": 1}, object_store_memory=80 * 2**20)
        c.wait_for_nodes()
        yield c
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if c is not None:
            c.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture()
def joined(cluster):
    """A driver connection for the run_jobs tests (bench opens and closes its own)."""
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()


def _node_of(cluster, resource: str) -> str:
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        return next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get(resource))
    finally:
        ray.shutdown()


def test_targets_land_on_their_nodes_a_missing_one_falls_back_a_killed_worker_is_retried(cluster, tmp_path):
    node_a, node_b = _node_of(cluster, "target:ray-a"), _node_of(cluster, "target:ray-b")
    assert node_a != node_b
    d = tmp_path / "m"
    d.mkdir()
    (d / "net.py").write_text(NET)  # its factory kills the first worker that builds it
    (d / "driver.pid").write_text(str(os.getpid()))
    doc = bench(f"{d / 'net.py'}:build", [_target("ray-a"), _target("ray-b"), _target("ray-none")], [],
                tmp_path / "b", input_shape="1x1x8x8", executor="ray", address=cluster.address)
    rows = {r["target"]: r for r in doc["rows"]}
    assert all(r["status"] == PASSED and r["p50_ms"] > 0 for r in rows.values()), rows
    died = int((d / "died").read_text())  # the first attempt's worker process exited mid-task ...
    assert rows["ray-a"]["placement"]["build"]["pid"] != died  # ... and a new worker ran the retry
    pa, pb, pn = (rows[t]["placement"]["profile"] for t in ("ray-a", "ray-b", "ray-none"))
    assert (pa["mode"], pa["node_id"]) == ("device", node_a)
    assert (pb["mode"], pb["node_id"]) == ("device", node_b)
    assert pn["mode"] == "fallback" and pn["pid"] == os.getpid() and "target:ray-none" in pn["reason"]
    assert "estimate" in rows["ray-none"]["profile"]  # fallback: this host plus the device estimate
    assert doc["executor"]["device_targets"] == ["ray-a", "ray-b"] and doc["executor"]["fallback_targets"] == [
        "ray-none"]
    for r in rows.values():  # the artifact that was profiled is the one that landed here, checksums verified
        art = Path(r["artifact"])
        assert art.parent.parent == tmp_path / "b" / "artifacts"
        assert r["placement"]["profile"]["artifact_sha256"] == pack(art)["sha256"]
        assert r["placement"]["build"]["mode"] == "cpu" and r["fidelity"]["value"] == 1.0
    assert (tmp_path / "b" / "bench.json").is_file() and "ran on" in (tmp_path / "b" / "bench.md").read_text()
    assert not ray.is_initialized()  # bench joined the cluster and left it


def test_worker_that_always_dies_is_a_failed_row_not_a_hang(joined):
    """run_jobs is what bench drives: a task whose worker dies in every attempt ends, failed, with its reason."""
    @ray.remote(max_retries=1)
    def die():
        os._exit(1)

    got = {}
    t0 = time.monotonic()
    run_jobs([("x", "cpu", lambda: die.remote())], {"cpu": 1}, 60, 1, lambda k, ok, v: got.update({k: (ok, v)}))
    assert got["x"][0] is False and "worker died" in got["x"][1] and "2 attempts" in got["x"][1]
    assert time.monotonic() - t0 < 60


def test_timeout_and_interrupt_cancel_tasks(joined):
    @ray.remote(max_retries=0)
    def sleep(s):
        time.sleep(s)
        return s

    got = {}
    run_jobs([("slow", "cpu", lambda: sleep.remote(60))], {"cpu": 1}, 1.0, 0, lambda k, ok, v: got.update({k: (ok, v)}))
    assert got["slow"][0] is False and "timed out after 1 s" in got["slow"][1]

    refs = []

    def submit(s):
        refs.append(sleep.remote(s))
        return refs[-1]

    def interrupted(k, ok, v):
        raise KeyboardInterrupt  # Ctrl-C while another task is still running

    with pytest.raises(KeyboardInterrupt):
        run_jobs([("quick", "a", lambda: submit(0)), ("long", "b", lambda: submit(300))], {"a": 1, "b": 1}, 30, 0,
                 interrupted)
    with pytest.raises((ray.exceptions.TaskCancelledError, ray.exceptions.WorkerCrashedError)):
        ray.get(refs[1], timeout=120)  # cancelled, not left running (it would sleep 300 s)


def test_artifact_is_checked_on_arrival(tmp_path):
    from edgekit.artifact import write_manifest

    base = tmp_path / "base"
    (base / "exports" / "onnxruntime").mkdir(parents=True)
    (base / "model.onnx").write_bytes(os.urandom(2048))
    (base / "exports" / "onnxruntime" / "model.onnx").write_bytes((base / "model.onnx").read_bytes())
    write_manifest(base, {"kind": "export", "model": "model.onnx", "inputs": [{"name": "x", "shape": [1, 4]}],
                          "exports": {"onnxruntime": {"file": "exports/onnxruntime/model.onnx"}}})
    blob = pack(base)
    assert unpack(blob, tmp_path / "ok").is_dir()
    bad = {"sha256": blob["sha256"], "files": dict(blob["files"])}
    rel = next(k for k in bad["files"] if k.endswith(".onnx"))
    bad["files"][rel] = bad["files"][rel][:-1] + bytes([bad["files"][rel][-1] ^ 1])
    with pytest.raises(ArtifactError, match="checksum on arrival"):
        unpack(bad, tmp_path / "bad")
    assert not (tmp_path / "bad").exists() and not list(tmp_path.glob(".bad.tmp-*"))  # nothing half-written
    with pytest.raises(ArtifactError, match="content hash"):
        unpack({**blob, "sha256": "0" * 64}, tmp_path / "bad")


def test_bad_executor_options_are_one_line_errors():
    with pytest.raises(ConfigError, match="choose one of local, ray"):
        check_executor("dask")
    with pytest.raises(ConfigError, match="need --executor ray"):
        check_executor("local", address="127.0.0.1:1")


def test_cli_one_line_errors(tmp_path):
    """Exit 2 and one line, before any work or any output folder: an unknown executor, an address nobody answers."""
    from typer.testing import CliRunner

    from edgekit.cli import app

    for extra, msg in ((["--executor", "dask"], "choose one of local, ray"),
                       (["--executor", "ray", "--address", "127.0.0.1:9"], "nothing answers there")):
        res = CliRunner().invoke(app, ["bench", "demo", "--target", "x86-avx2-ort", "-o", str(tmp_path / "o"),
                                       *extra])
        assert res.exit_code == 2 and msg in res.output and "Traceback" not in res.output, res.output
        assert not (tmp_path / "o").exists()


def test_build_task_keeps_method_options_and_packs_verified_exports():
    """The worker side of a build, called in-process: --set options reach the method, outputs come back per target."""
    import json

    from edgekit.model_io import SourceOptions
    from edgekit.ray_executor import build_task

    t = _target("ray-a")
    got = build_task("demo", "rtn", [t], ["x86-avx2-ort"], SourceOptions(), {"rtn": {"bits": 4}}, None, None, None, 2)
    cell = got["cells"]["ray-a"]
    assert cell["status"] == PASSED and cell["rel"] == "rtn/ray-a"
    blob = got["blobs"][cell["rel"]]
    man = json.loads(blob["files"]["manifest.json"])
    assert man["method"]["config"]["bits"] == 4 and blob["sha256"] == cell["sha256"]
    res = got["outputs"]["ray-a"]
    outs = res["outputs"]
    assert res["inputs"] == "random"  # no --data: seeded random inputs, as the local bench
    assert len(outs) == 2 and outs[0].shape == (1, 10) and not (outs[0] == outs[1]).all()
    from edgekit.data import DataSource
    from edgekit.models.digits_cnn import digits_split

    x = digits_split()[0][:8]  # with --data the build task judges on the data's last samples, as the local bench
    got = build_task("demo", "rtn", [t], ["x86-avx2-ort"], SourceOptions(), {"rtn": {"bits": 4}}, DataSource([x]),
                     None, None, 2)
    assert got["outputs"]["ray-a"]["inputs"] == "data" and len(got["outputs"]["ray-a"]["outputs"]) == 2


def test_a_lost_cancel_is_sent_again(monkeypatch):
    """A force-cancel that reaches a task while Ray is still starting its worker can be lost; cancel_all re-sends it
    until the task has ended (a fake Ray whose first cancel of each task is dropped), and gives up when Ray is gone."""
    import sys
    import types

    from edgekit.ray_executor import cancel_all

    calls: dict[str, int] = {}
    fake = types.SimpleNamespace()
    fake.cancel = lambda ref, force: calls.__setitem__(ref, calls.get(ref, 0) + 1)
    fake.wait = lambda refs, num_returns, timeout: ([r for r in refs if calls.get(r, 0) >= 2],
                                                    [r for r in refs if calls.get(r, 0) < 2])
    monkeypatch.setitem(sys.modules, "ray", fake)
    cancel_all(["a", "b"], grace_s=5)
    assert calls == {"a": 2, "b": 2}

    def gone(*a, **k):
        raise RuntimeError("Ray has not been started yet")
    fake.wait = gone
    t0 = time.monotonic()
    cancel_all(["c"], grace_s=5)
    assert time.monotonic() - t0 < 1 and calls["c"] == 1
