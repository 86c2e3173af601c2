"""One benchmark row through the product: `edgekit.compress` (what `edgekit compress` runs) and `edgekit.evaluate`
on the artifact's runtime file (what `edgekit eval ART` runs), with the two CLI commands that reproduce it.

Used by the benchmarks whose older figures came from a method's `apply()` on a torch model (optin, structured_ffn,
llm_fp4 on SmolLM2). Public API only.
"""
from __future__ import annotations

import json
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

import edgekit
import edgekit.api
from edgekit.api import SourceOptions, open_data, read_manifest


def _sets(opts: dict[str, Any] | None) -> str:
    """--set k=v pairs as a shell would take them back (non-strings as JSON, which the CLI's YAML parser reads)."""
    return "".join(" --set " + shlex.quote(f"{k}={v if isinstance(v, str) else json.dumps(v)}")
                   for k, v in (opts or {}).items())


def cli_commands(model: str, method: str, opts: dict[str, Any], art: Path, data: Path | None,
                 targets: list[str], task: str, runtime: str, eval_opts: dict[str, Any] | None,
                 limit: int | None, input_shape: str | None, arch: str | None = None,
                 eval_data: Path | None = None, deploy: str | None = None,
                 arch_args: dict[str, Any] | None = None) -> list[str]:
    tg = " ".join(f"--target {t}" for t in targets)
    aa = "".join(f" --arch-args {k}={v}" for k, v in (arch_args or {}).items())
    src = f"{model}" + (f" --arch {arch}{aa}" if arch else "")
    comp = (f"edgekit compress {src} --method {method}{_sets(opts)}" + (f" --data {shlex.quote(str(data))}" if data else "")
            + (f" --input-shape {input_shape}" if input_shape else "") + (f" --deploy {deploy}" if deploy else "")
            + f" {tg} -o {art}")
    ev = (f"edgekit eval {art} --task {task} --runtime {runtime}" + (f" --limit {limit}" if limit else "")
          + (f" --data {shlex.quote(str(eval_data))}" if eval_data else "") + (f" --arch {arch}{aa}" if arch else ""))
    ev += _sets(eval_opts)
    return [" ".join(comp.split()), ev]


def run_row(model: str, method: str, opts: dict[str, Any], art: Path, *, data: Path | None = None,
            targets: tuple[str, ...] = ("onnxruntime",), task: str, runtime: str = "onnxruntime",
            eval_opts: dict[str, Any] | None = None, limit: int | None = None, threads: int = 2,
            input_shape: str | None = None, arch: str | None = None,
            eval_data: Path | None = None, deploy: str | None = None,
            arch_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """Compress, then evaluate the artifact; a failed compress is a result (its one-line error is recorded)."""
    if art.exists():
        shutil.rmtree(art)
    art.parent.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {"method": method, "options": dict(opts), "artifact": str(art),
                            "commands": cli_commands(model, method, opts, art, data, list(targets), task, runtime,
                                                     eval_opts, limit, input_shape, arch, eval_data,
                                                     deploy, arch_args)}
    t0 = time.perf_counter()
    try:
        edgekit.compress(model, method, dict(opts), art, data=open_data(data) if data else None,
                         runtimes=list(targets), input_shape=input_shape, arch=arch, deploy=deploy,
                         arch_args=arch_args)
    except Exception as e:  # noqa: BLE001 - a refused export is a result, recorded as such
        info.update(error=f"{type(e).__name__}: {str(e)[:400]}", compress_s=round(time.perf_counter() - t0, 1))
        return info
    man = read_manifest(art)
    rep = man["method"]["report"]
    macs = (rep.get("macs_before"), rep.get("macs_after"))
    info.update(compress_s=round(time.perf_counter() - t0, 1), params_after=rep.get("params_after"),
                macs_ratio=round(macs[1] / macs[0], 4) if macs[0] and macs[1] else None,
                bits_per_weight=rep.get("bits_per_weight"),
                onnx_mb=round((art / "model.onnx").stat().st_size / 1e6, 2),
                validated_on=sorted(man.get("validation") or {}),
                report_extra={k: v for k, v in (rep.get("extra") or {}).items()
                              if isinstance(v, (int, float, str, list)) and len(str(v)) < 400})
    t1 = time.perf_counter()
    res = edgekit.evaluate(art, task, runtime=runtime, limit=limit, threads=threads, options=eval_opts,
                           data=eval_data, source=SourceOptions(arch=arch, arch_args=dict(arch_args or {})) if arch else None)
    info.update(metrics={k: round(v, 5) for k, v in res["metrics"].items()}, reference=res.get("reference"),
                samples=res.get("samples"), runtime=res.get("runtime"), eval_s=round(time.perf_counter() - t1, 1))
    return info


def artifact_of(row: dict[str, Any]) -> Path:
    """The artifact folder of a run_row result (rows written before the key existed: from its compress command)."""
    return Path(row.get("artifact") or row["commands"][0].split(" -o ")[1])


def profile_vs_fp32(model: str, arts: list[Path], targets: list[str], rounds: int,
                    input_shape: str | None = None, arch: str | None = None,
                    arch_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """`edgekit profile MODEL ART... --target T... --rounds N`: the source's FP32 export (made by the profile) and the
    artifacts, interleaved, ratios to FP32. An artifact without an export for a target's runtime first gets one
    (`edgekit export ART --target RUNTIME`, from its model.onnx). Returns the command(s) and the profile result."""
    pre = []
    for a in arts:
        for rt in {edgekit.api.load_target(t).runtime for t in targets}:
            if not (a / "exports" / rt).is_dir():
                edgekit.api.export(a, rt)
                pre.append(f"edgekit export {a} --target {rt}")
    cmd = (f"edgekit profile {model} {' '.join(map(str, arts))} " + " ".join(f"--target {t}" for t in targets)
           + f" --rounds {rounds}" + (f" --input-shape {input_shape}" if input_shape else "")
           + (f" --arch {arch}" if arch else "") + "".join(f" --arch-args {k}={v}" for k, v in (arch_args or {}).items()))
    print(cmd, flush=True)
    src = SourceOptions(input_shape=input_shape, arch=arch, arch_args=dict(arch_args or {}))
    return {"command": cmd, "exports": pre,
            "result": edgekit.api.profile([model, *map(str, arts)], targets, source=src, rounds=rounds)}
