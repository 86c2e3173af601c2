"""Sweeps on a Ray cluster: a bench's variant x target matrix (and a recipe) as Ray tasks.

`edgekit bench ... --executor ray [--address HOST:PORT | ray://HOST:PORT]` and `edgekit run RECIPE --executor ray`:

- build: one CPU task per variant (1 CPU each) compresses it, exports it per target and runs the target runtimes on
  the fidelity inputs (the same `_build` and `_outputs` as the local bench, in a temporary folder on the worker);
  the artifacts come back by content hash (below) and land under OUT/artifacts/ exactly where a local bench puts them.
- profile: per (variant, target), on a node that *is* that target: nodes advertise targets as Ray custom resources
  (`ray start --address ... --resources '{"target:rpi5-litert": 1}'`), and the profile task asks for one unit of
  `target:NAME` (and no CPU, so a device node started with `--num-cpus 0` takes only profiles). A target that no
  live node advertises is measured on the driver host, in the driver process, after the Ray tasks (the host plus
  the target's roofline estimate, as a local bench does). Each row's `placement` says which: mode "device" or
  "fallback", node id, hostname, and the artifact's content hash.
- artifacts travel as {relative path: bytes} with the content hash = sha256 of manifest.json (which lists the
  sha256 and size of every other file): on arrival the manifest hash, then every file against the manifest, then
  the whole folder (edgekit.artifact.verify_artifact) are checked; a folder is only ever placed through
  edgekit.artifact.staging (atomic; never over a file edgekit did not write).
- failures: a task whose worker process dies is retried by Ray (max_retries, bounded); a task that still fails, or
  runs past `timeout_s` (counted from submission; at most as many tasks are in flight as there are CPU slots, and
  one profile per target, so that is about its run time), is cancelled and becomes a failed row with its reason.
  Ctrl-C (KeyboardInterrupt, SIGTERM in the CLI) cancels every pending task; artifacts are placed atomically, so
  none is left half-written. A Ray instance started here (no address) is shut down on the way out.

Paths in the model source, --data, target YAML files and the recipe are resolved on the workers from the driver's working directory
when that folder exists there (a local cluster, or a shared filesystem); built-in models (demo, minilm, ...) need
nothing. Without `--executor ray` none of this is imported.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .errors import ArtifactError, ConfigError, EdgekitError, MissingDependencyError

EXECUTORS = ("local", "ray")
RESOURCE_PREFIX = "target:"
RETRIES = 2  # a task whose worker died runs at most 1 + RETRIES times
TIMEOUT_S = 3600.0


def check_executor(executor: str, address: str | None = None, workers: int | None = None) -> None:
    """One-line errors before any work: an unknown executor, Ray options without Ray, Ray not installed."""
    if executor not in EXECUTORS:
        raise ConfigError(f"--executor {executor!r}: choose one of {', '.join(EXECUTORS)}")
    if executor == "local":
        if address is not None or workers is not None:
            raise ConfigError("--address/--workers need --executor ray; add it or drop them")
        return
    if workers is not None and (workers < 1 or address is not None):
        raise ConfigError("--workers N (N >= 1) sizes a local Ray instance; with --address the cluster's own "
                          "nodes decide, so drop one of them")
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        raise MissingDependencyError("ray", "ray")


def resource(target_name: str) -> str:
    """The Ray custom resource a node advertises to say it is this target."""
    return RESOURCE_PREFIX + target_name


@contextlib.contextmanager
def cluster(address: str | None = None, workers: int | None = None) -> Iterator[dict[str, Any]]:
    """Connect to `address`, or start a local Ray instance (`workers` CPU slots) that is shut down on exit.
    Yields a description of the cluster (for the bench JSON)."""
    import logging

    import ray

    started = False
    if not ray.is_initialized():
        kw: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING, "configure_logging": False}
        if address is None:
            kw.update(include_dashboard=False, num_cpus=workers)
        else:
            _probe(address)
        try:
            ray.init(address=address, **kw)
        except (ConnectionError, RuntimeError, ValueError) as e:
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ConfigError(f"--address {address}: cannot join the Ray cluster ({msg}); start one with "
                              "`ray start --head` or drop --address for a local instance") from None
        started = True
    try:
        yield {"address": address or "local instance", "started_here": started, "nodes": nodes()}
    finally:
        if started:
            ray.shutdown()


def _probe(address: str, timeout_s: float = 10.0) -> None:
    """A quick TCP connect to HOST:PORT first: ray.init retries an address where nothing listens for minutes."""
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if address == "auto" or not port.isdigit():
        return
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise ConfigError(f"--address {address}: nothing answers there ({e.strerror or e}); start the head with "
                          "`ray start --head --port PORT` or fix the address") from None


def nodes() -> list[dict[str, Any]]:
    """Live nodes: id, hostname, CPUs and the targets they advertise."""
    import ray

    out = []
    for n in ray.nodes():
        if not n.get("Alive"):
            continue
        res = n.get("Resources", {})
        out.append({"node_id": n["NodeID"], "hostname": n.get("NodeManagerHostname"),
                    "cpus": res.get("CPU", 0.0),
                    "targets": sorted(k[len(RESOURCE_PREFIX):] for k, v in res.items()
                                      if k.startswith(RESOURCE_PREFIX) and v > 0)})
    return out


def _where(mode: str, **extra: Any) -> dict[str, Any]:
    """Where this code runs: node id (None outside a Ray node), hostname, pid."""
    node = None
    with contextlib.suppress(Exception):
        import ray

        if ray.is_initialized():
            node = ray.get_runtime_context().get_node_id()
    return {"mode": mode, "node_id": node, "hostname": socket.gethostname(), "pid": os.getpid(), **extra}


# ---- artifacts by content hash ---------------------------------------------------------------------------------

def pack(art: Path) -> dict[str, Any]:
    """A verified artifact as {"sha256": sha256 of manifest.json, "files": {relative path: bytes}}: the manifest
    lists every other file's sha256, so its hash names the whole content."""
    from .artifact import MANIFEST, verify_artifact

    res = verify_artifact(art)
    files = {rel: (Path(art) / rel).read_bytes() for rel in res["manifest"]["files"]}
    man = (Path(art) / MANIFEST).read_bytes()
    files[MANIFEST] = man
    return {"sha256": hashlib.sha256(man).hexdigest(), "files": files}


def _write_checked(blob: dict[str, Any], root: Path) -> None:
    """Write a packed artifact into `root` after checking the manifest hash and every file's checksum in memory."""
    import json

    from .artifact import MANIFEST, _inside

    files = blob.get("files") or {}
    man_bytes = files.get(MANIFEST)
    if man_bytes is None or hashlib.sha256(man_bytes).hexdigest() != blob.get("sha256"):
        raise ArtifactError(f"artifact {blob.get('sha256', '?')[:12]} arrived damaged: manifest.json does not "
                            "match its content hash; run the sweep again")
    listed = json.loads(man_bytes.decode("utf-8")).get("files") or {}
    if set(files) - {MANIFEST} != set(listed):
        raise ArtifactError(f"artifact {blob['sha256'][:12]} arrived with files its manifest does not list (or "
                            "without some it lists); run the sweep again")
    for rel, data in files.items():
        if rel != MANIFEST and hashlib.sha256(data).hexdigest() != listed[rel].get("sha256"):
            raise ArtifactError(f"artifact {blob['sha256'][:12]}: {rel} does not match its checksum on arrival; "
                                "run the sweep again")
        p = _inside(root, rel, "file")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)


def unpack(blob: dict[str, Any], dst: Path, protect: Sequence[Any] = (), overwrite: bool = True) -> Path:
    """Place a packed artifact at `dst` (replacing only an edgekit artifact there), verified before it is placed."""
    from .artifact import staging, verify_artifact

    with staging(Path(dst), overwrite=overwrite, protect=protect) as root:
        _write_checked(blob, root)
        verify_artifact(root)
    return Path(dst)


@contextlib.contextmanager
def _scratch(blob: dict[str, Any]) -> Iterator[Path]:
    """A verified private copy of a packed artifact for a task; removed afterwards."""
    from .artifact import verify_artifact

    d = Path(_scratch_dir())
    try:
        _write_checked(blob, d / "art")
        verify_artifact(d / "art")
        yield d / "art"
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _scratch_dir() -> Path:
    """A task's private folder, named with its pid; folders of dead pids (a worker killed mid-task, a forced
    cancel) are removed first, so killed tasks leave nothing behind for long."""
    from .artifact import _pid_dead

    base = Path(tempfile.gettempdir())
    for p in base.glob("edgekit-ray-*"):
        if p.is_dir() and not p.is_symlink() and _pid_dead(p.name, "edgekit-ray-"):
            shutil.rmtree(p, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"edgekit-ray-{os.getpid()}-", dir=base))


def _enter(cwd: str | None) -> None:
    """Resolve the driver's relative paths the same way on a worker that shares its filesystem."""
    if cwd and Path(cwd).is_dir():
        os.chdir(cwd)


# ---- tasks (run on workers) ------------------------------------------------------------------------------------

def build_task(model_src: Any, variant: str, tgts: list, specs: list, source: Any, options: dict, data: Any,
               deploy: str | None, cwd: str | None, n_fidelity: int,
               deploy_floors: dict[str, float] | None = None) -> dict[str, Any]:
    """Compress one variant, export it per target, run each export on the fidelity inputs; pack what was made.
    `options` is {variant: its method options}, as edgekit.bench._build takes them."""
    from .bench import _build, _outputs, _runtime_file
    from .artifact import read_manifest

    _enter(cwd)
    where = _where("cpu")
    tmp = Path(_scratch_dir())
    try:
        cells = _build(model_src, [variant], tgts, specs, tmp, source, options, data, deploy, deploy_floors)
        out: dict[str, Any] = {"cells": {}, "blobs": {}, "outputs": {}, "placement": where}
        for t in tgts:
            c = cells[variant, t.name]
            rel, sha = None, None
            if c["art"] is not None:
                rel = str(Path(c["art"]).relative_to(tmp))
                blob = pack(Path(c["art"]))
                sha = blob["sha256"]
                out["blobs"].setdefault(rel, blob)
                try:
                    f = _runtime_file(Path(c["art"]), t.runtime)
                    out["outputs"][t.name] = _outputs(f, t, read_manifest(Path(c["art"])).get("inputs"), n_fidelity,
                                                      data)
                except Exception as e:  # noqa: BLE001 - shown in the row, as in a local bench
                    out["outputs"][t.name] = {"error": (str(e).strip().splitlines() or [type(e).__name__])[0]}
            out["cells"][t.name] = {"status": c["status"], "reason": c["reason"], "rel": rel, "sha256": sha}
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def profile_task(blob: dict[str, Any], target: Any, cwd: str | None, argv: list[str]) -> dict[str, Any]:
    """Profile a packed artifact on this node (the node that advertises the target)."""
    from .profile import profile_artifact

    _enter(cwd)
    with _scratch(blob) as art:
        res = profile_artifact(art, [target], argv=argv)["results"][0]
    return {"result": res, "placement": _where("device", artifact_sha256=blob["sha256"])}


def recipe_task(path: str, cwd: str | None) -> dict[str, Any]:
    """Run a recipe into a temporary folder on a worker; pack the artifact and return the gates."""
    from . import api

    _enter(cwd)
    where = _where("cpu")
    tmp = Path(_scratch_dir())
    try:
        art, gates = api.run_recipe(Path(path), tmp / "art")
        return {"blob": pack(art), "gates": gates, "placement": where}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- driver ----------------------------------------------------------------------------------------------------

def _reason(e: BaseException, retries: int) -> str:
    """One line for a failed task."""
    import ray.exceptions as rx

    if isinstance(e, (rx.WorkerCrashedError, rx.NodeDiedError, rx.OutOfMemoryError)):
        return f"Ray worker died ({type(e).__name__}) in all {retries + 1} attempts"
    if isinstance(e, rx.TaskCancelledError):
        return "Ray task cancelled"
    if isinstance(e, rx.RayTaskError) and e.cause is not None:
        e = e.cause
    return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:300]}"


Job = tuple[Any, str, Callable[[], Any]]  # (key, group, submit() -> ObjectRef)


def run_jobs(jobs: Sequence[Job], limits: dict[str, int], timeout_s: float, retries: int,
             on_done: Callable[[Any, bool, Any], None]) -> None:
    """Submit jobs in order, at most limits[group] in flight per group; on_done(key, ok, value | reason) as each
    ends. A job past `timeout_s` since submission is cancelled (failed); any exception, Ctrl-C included, cancels
    every pending task before it propagates."""
    import ray

    queue = list(jobs)
    pending: dict[Any, tuple[Any, str, float]] = {}
    try:
        while queue or pending:
            busy = {g: sum(1 for _, gg, _ in pending.values() if gg == g) for g in limits}
            for job in list(queue):
                key, group, submit = job
                if busy.get(group, 0) < limits.get(group, 1):
                    queue.remove(job)
                    pending[submit()] = (key, group, time.monotonic())
                    busy[group] = busy.get(group, 0) + 1
            if not pending:
                continue
            now = time.monotonic()
            wait = max(0.05, min(t0 + timeout_s - now for _, _, t0 in pending.values()))
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=min(wait, 5.0))
            for ref in ready:
                key, _, _ = pending.pop(ref)
                try:
                    value = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - a failed task is a failed row with its reason
                    on_done(key, False, _reason(e, retries))
                else:
                    on_done(key, True, value)
            now = time.monotonic()
            for ref, (key, _, t0) in list(pending.items()):
                if now - t0 > timeout_s:
                    ray.cancel(ref, force=True)
                    pending.pop(ref)
                    on_done(key, False, f"timed out after {timeout_s:g} s (task cancelled)")
    except BaseException:
        cancel_all(list(pending))
        raise


def cancel_all(refs: list, grace_s: float = 10.0) -> None:
    """Force-cancel tasks and make sure it took: a cancel that reaches a task while Ray is still handing it to a
    worker that is starting up can be lost (seen on a loaded 2-core box: the task then ran on), so the ones not yet
    finished are cancelled again every half second until all are done or `grace_s` has passed."""
    import ray

    left, deadline = list(refs), time.monotonic() + grace_s
    while left:
        for ref in left:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        if time.monotonic() > deadline:
            return
        try:
            _, left = ray.wait(left, num_returns=len(left), timeout=0.5)
        except Exception:  # noqa: BLE001 - Ray itself is gone (shutdown, lost cluster): nothing left to cancel
            return


def ray_matrix(model_src: Any, variants: list[str], tgts: list, specs: Sequence[Any], root: Path, source: Any,
               options: dict[str, dict], data: Any, deploy: str | None, address: str | None = None,
               workers: int | None = None, retries: int = RETRIES, timeout_s: float = TIMEOUT_S,
               n_fidelity: int = 16, argv: Sequence[str] | None = None,
               deploy_floors: dict[str, float] | None = None) -> tuple[list, dict, dict]:
    """The bench matrix on Ray -> (rows, outputs[(variant, target)], executor info for the bench JSON).
    Rows are edgekit.bench._row rows plus `placement`; outputs feed the same fidelity code as a local bench."""
    import sys

    import ray

    from .bench import COMPRESS_FAILED, EXPORT_FAILED, _row
    from .profile import profile_artifact

    argv = [str(a) for a in (sys.argv if argv is None else argv)]
    cwd = os.getcwd()
    protect = [model_src] if isinstance(model_src, (str, Path)) else []
    cells: dict[tuple[str, str], dict[str, Any]] = {}
    outputs: dict[tuple[str, str], Any] = {}
    blobs: dict[tuple[str, str], Any] = {}
    build_where: dict[str, Any] = {}
    sec: dict[str, float] = {}
    t0 = time.perf_counter()
    with cluster(address, workers) as info:
        sec["start"] = time.perf_counter() - t0
        build = ray.remote(build_task).options(num_cpus=1, max_retries=retries, retry_exceptions=False)
        data_ref = ray.put(data) if data is not None else None
        tgt_refs = ray.put(list(tgts))

        def built(v: str, ok: bool, val: Any) -> None:
            if not ok:
                for t in tgts:
                    cells[v, t.name] = {"status": COMPRESS_FAILED, "reason": val, "art": None}
                return
            build_where[v] = val["placement"]
            placed: dict[str, tuple] = {}
            for rel, blob in val["blobs"].items():
                try:  # checked on arrival; a damaged transfer is that cell's failure, not the sweep's
                    placed[rel] = (unpack(blob, root / rel, protect), ray.put(blob), None)
                except EdgekitError as e:
                    placed[rel] = (None, None, str(e))
            for t in tgts:
                c = val["cells"][t.name]
                art, ref, bad = placed.get(c["rel"], (None, None, None)) if c["rel"] else (None, None, None)
                cells[v, t.name] = {"status": EXPORT_FAILED if bad else c["status"], "reason": bad or c["reason"],
                                    "art": art}
                blobs[v, t.name] = ref
                outputs[v, t.name] = val["outputs"].get(t.name)

        cpus = max(1, int(sum(n["cpus"] for n in info["nodes"])))
        run_jobs([(v, "cpu", lambda v=v: build.remote(model_src, v, tgt_refs, list(specs), source, {
            v: options.get(v, {})}, data_ref, deploy, cwd, n_fidelity, deploy_floors)) for v in variants],
            {"cpu": cpus}, timeout_s, retries, built)
        sec["build"] = time.perf_counter() - t0 - sum(sec.values())

        advertised = {name for n in nodes() for name in n["targets"]}
        prof = ray.remote(profile_task)
        results: dict[tuple[str, str], Any] = {}
        where: dict[tuple[str, str], Any] = {}

        def profiled(key: tuple[str, str], ok: bool, val: Any) -> None:
            results[key] = val["result"] if ok else {"status": "error", "error": val}
            where[key] = val["placement"] if ok else {"mode": "device", "node_id": None, "hostname": None,
                                                      "error": val}

        jobs = [((v, t.name), t.name, lambda v=v, t=t: prof.options(
                    num_cpus=0, resources={resource(t.name): 1}, max_retries=retries, retry_exceptions=False).remote(
                    blobs[v, t.name], t, cwd, argv))
                for t in tgts if t.name in advertised for v in variants if blobs.get((v, t.name)) is not None]
        run_jobs(jobs, {t.name: 1 for t in tgts}, timeout_s, retries, profiled)
        sec["device_profiles"] = time.perf_counter() - t0 - sum(sec.values())
        driver = _where("fallback")
        for t in tgts:  # no node is this target: this host, variants back to back, after the Ray tasks
            if t.name in advertised:
                continue
            for v in variants:
                if cells[v, t.name]["art"] is not None:
                    results[v, t.name] = profile_artifact(cells[v, t.name]["art"], [t], argv=argv)["results"][0]
                    where[v, t.name] = {**driver, "reason": f"no live node advertises {resource(t.name)}; measured "
                                        "on the driver host (see the estimate for the device)"}
        sec["fallback_profiles"] = time.perf_counter() - t0 - sum(sec.values())
    sec["stop"] = time.perf_counter() - t0 - sum(sec.values())
    rows = []
    for t in tgts:
        for v in variants:
            r = _row(v, t, cells[v, t.name], results.get((v, t.name)))
            pl = where.get((v, t.name))
            if pl is not None and cells[v, t.name]["art"] is not None:
                from .artifact import MANIFEST

                pl.setdefault("artifact_sha256", hashlib.sha256(
                    (Path(cells[v, t.name]["art"]) / MANIFEST).read_bytes()).hexdigest())
            r["placement"] = {"profile": pl, "build": build_where.get(v)}
            rows.append(r)
    exe = {"kind": "ray", "address": info["address"], "started_here": info["started_here"], "nodes": info["nodes"],
           "retries": retries, "timeout_s": timeout_s, "device_targets": sorted(advertised & {t.name for t in tgts}),
           "fallback_targets": [t.name for t in tgts if t.name not in advertised], "build_tasks": len(variants),
           "profile_tasks": len(jobs), "seconds": {k: round(v, 2) for k, v in sec.items()}}
    return rows, outputs, exe


def run_recipe_ray(path: Path, out: Path | None, overwrite: bool, on_step: Callable[[str], None],
                   address: str | None = None, workers: int | None = None, retries: int = RETRIES,
                   timeout_s: float = TIMEOUT_S) -> tuple[Path, dict]:
    """`edgekit run RECIPE --executor ray`: the recipe runs on a CPU worker; its artifact comes back by content
    hash and is placed at the recipe's out (checked before any work), with where it ran in the manifest."""
    import ray

    from . import artifact as art
    from .config import Recipe, load_yaml_model

    rec = load_yaml_model(path, Recipe)
    dest = Path(out or rec.out)
    art.check_output(dest, overwrite, protect=[rec.model])
    got: dict[str, Any] = {}
    with cluster(address, workers) as info:
        on_step("recipe on a Ray worker")
        task = ray.remote(recipe_task).options(num_cpus=1, max_retries=retries, retry_exceptions=False)

        def done(_: Any, ok: bool, val: Any) -> None:
            got.update(val if ok else {"error": val})

        run_jobs([("recipe", "cpu", lambda: task.remote(str(Path(path).resolve()), os.getcwd()))], {"cpu": 1},
                 timeout_s, retries, done)
    if "error" in got:
        raise EdgekitError(f"the recipe failed on the Ray cluster: {got['error']}")
    on_step("verify artifact")
    unpack(got["blob"], dest, protect=[rec.model], overwrite=overwrite)
    art.update_manifest(dest, {"executor": {"kind": "ray", "address": info["address"], "ran_on": got["placement"],
                                            "artifact_sha256": got["blob"]["sha256"]}})
    return dest, got["gates"]


__all__ = ["EXECUTORS", "RESOURCE_PREFIX", "check_executor", "cluster", "nodes", "pack", "ray_matrix", "resource",
           "run_jobs", "run_recipe_ray", "unpack"]
