"""Fan-out of a method's long single-model step over Ray workers (OPTIN's unit scoring, LLM-FP4's layer search).

Options (fields of the method's Config, set with `--set executor=ray` etc.; see each method's docstring for what it
splits and why the results stay equal):

- `executor`: "local" (default: nothing changes, Ray is never imported) or "ray".
- `workers`: Ray CPU slots. Without `ray_address` a local Ray instance with this many CPU slots starts and stops
  around the step (default: all cores); with `ray_address` the cluster's own CPUs run the tasks and `workers` only
  sizes how finely the work is split (default: the cluster's CPU count). Needs executor=ray.
- `ray_address`: join a running cluster (HOST:PORT or ray://HOST:PORT, as `edgekit bench --address`) instead of
  starting a local instance. Needs executor=ray.

Each task takes 1 CPU (scheduling strategy SPREAD, so every node gets work), runs torch with 1 thread
(`torch.set_num_threads(1)`) and is retried by Ray when its worker
process dies (ray_executor.RETRIES); an exception in a task, or Ctrl-C, cancels every pending task. Data shared by
all tasks (OPTIN: the scorer, i.e. the model plus its reference activations) goes into the object store once
(`ray.put`) and is deserialized once per worker process (`Shared`). Results come back by task index and are merged
by the caller in the local run's order. Ray itself comes from edgekit.ray_executor (`cluster`), so a step run
inside a bench's Ray task joins that cluster instead of starting another one.
"""
from __future__ import annotations

import contextlib
import importlib.util
from typing import Any, Callable, Iterator

from ..errors import ConfigError, EdgekitError

EXECUTORS = ("local", "ray")
FIELDS = ("executor", "workers", "ray_address")
_CACHE: dict[str, Any] = {}  # worker side: deserialized Shared objects, by object id (the last two)


def check(method: str, cfg: Any, device: str = "cpu") -> bool:
    """One-line ConfigErrors before any work; True when the step fans out over Ray."""
    ex, workers, address = cfg.executor, cfg.workers, cfg.ray_address
    if ex not in EXECUTORS:
        raise ConfigError(f"{method}: executor={ex!r}; choose one of {', '.join(EXECUTORS)}")
    if ex == "local":
        if workers is not None or address is not None:
            raise ConfigError(f"{method}: workers/ray_address need executor=ray; add --set executor=ray or drop them")
        return False
    if workers is not None and workers < 1:
        raise ConfigError(f"{method}: workers={workers}; use 1 or more")
    if str(device) != "cpu":
        raise ConfigError(f"{method}: executor=ray runs on CPU workers, but device={device}; use device=cpu or "
                          "executor=local")
    if importlib.util.find_spec("ray") is None:
        raise ConfigError(f"{method}: executor=ray needs Ray, which is not installed; install it with: "
                          "pip install 'edgekit[ray]'")
    return True


class Shared:
    """An object put into the Ray object store once; a task argument that resolves it once per worker process."""

    def __init__(self, ref: Any):
        self.ref = [ref]  # inside a list: Ray passes it as a reference instead of resolving it per task

    def get(self) -> Any:
        key = self.ref[0].hex()
        if key not in _CACHE:
            import ray

            while len(_CACHE) >= 2:
                _CACHE.pop(next(iter(_CACHE)))
            _CACHE[key] = ray.get(self.ref[0])
        return _CACHE[key]


def _task(fn: Callable[..., Any], args: tuple) -> tuple[Any, dict[str, Any]]:
    """Runs on a worker: 1 torch thread, Shared arguments resolved; returns (fn's result, where it ran)."""
    import os

    import ray
    import torch

    torch.set_num_threads(1)
    args = tuple(a.get() if isinstance(a, Shared) else a for a in args)
    with torch.no_grad():
        out = fn(*args)
    return out, {"node_id": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}


class Pool:
    """Tasks of one step on a Ray cluster: `put` shared data, `submit` tasks, `results` in submission order."""

    def __init__(self, method: str, info: dict[str, Any], workers: int | None, retries: int):
        import ray

        self.method, self.info = method, info
        self.slots = int(workers or max(1, sum(n["cpus"] for n in info["nodes"])))
        # SPREAD: Ray's default packs short tasks onto the driver's node while it has room, which left a second node
        # idle (seen in a test run: 16 LLM-FP4 tasks, all on the head); a fan-out is meant to use every node
        self._remote = ray.remote(_task).options(num_cpus=1, max_retries=retries, retry_exceptions=False,
                                                 scheduling_strategy="SPREAD")
        self._refs: list[Any] = []
        self._where: list[dict[str, Any]] = []

    def put(self, obj: Any) -> Shared:
        import ray

        return Shared(ray.put(obj))

    def submit(self, fn: Callable[..., Any], *args: Any) -> int:
        """Start fn(*args) on a worker (Shared args resolved there); returns the task's index."""
        self._refs.append(self._remote.remote(fn, args))
        return len(self._refs) - 1

    def results(self, on_done: Callable[[int, Any], None] | None = None) -> list[Any]:
        """Wait for every task; on_done(index, result) as each ends (any order); results by index."""
        import ray

        from ..ray_executor import _reason

        index = {r.hex(): i for i, r in enumerate(self._refs)}
        out: list[Any] = [None] * len(self._refs)
        where: list[Any] = [None] * len(self._refs)
        pending = list(self._refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            for ref in ready:
                i = index[ref.hex()]
                try:
                    out[i], where[i] = ray.get(ref)
                except Exception as e:  # noqa: BLE001 - one line with the task's own reason
                    raise EdgekitError(f"{self.method}: a Ray task failed: {_reason(e, 0)}") from None
                if on_done:
                    on_done(i, out[i])
        self._where = where
        return out

    def cancel(self) -> None:
        import ray

        for ref in self._refs:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)

    def report(self) -> dict[str, Any]:
        """What ran where, for the method's report."""
        return {"executor": "ray", "address": self.info["address"], "started_here": self.info["started_here"],
                "slots": self.slots, "tasks": len(self._refs),
                "nodes": len({w["node_id"] for w in self._where if w}),
                "worker_pids": sorted({w["pid"] for w in self._where if w}), "torch_threads_per_task": 1}


@contextlib.contextmanager
def pool(method: str, cfg: Any) -> Iterator[Pool]:
    """Join cfg.ray_address or start a local instance (cfg.workers CPU slots; stopped on exit); any exception,
    Ctrl-C included, cancels the pending tasks before it propagates."""
    from ..ray_executor import RETRIES, cluster

    with cluster(cfg.ray_address, cfg.workers if cfg.ray_address is None else None) as info:
        p = Pool(method, info, cfg.workers, RETRIES)
        try:
            yield p
        except BaseException:
            p.cancel()
            raise


def split(n: int, slots: int, per_slot: int = 4) -> list[list[int]]:
    """Indices 0..n-1 dealt round-robin into min(n, per_slot*slots) disjoint tasks (costs that vary with the index,
    e.g. by layer, spread evenly; several tasks per slot balance the rest)."""
    k = max(1, min(n, per_slot * max(1, slots)))
    return [list(range(i, n, k)) for i in range(k)] if n else []


__all__ = ["EXECUTORS", "FIELDS", "Pool", "Shared", "check", "pool", "split"]
