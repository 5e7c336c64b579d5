#!/usr/bin/env bash
# Tests the generated clients (buf.gen.yaml) against the real `agentmesh up` binary:
#
# 1. installs the plugins and runtimes, once, under ~/.cache/agentmesh-tools (later runs
#    find them and print nothing): a venv with clients/python/requirements.txt in
#    clients-python/, and clients/typescript's locked npm packages (buf, protoc-gen-es,
#    tsc, Connect) in clients-typescript/;
# 2. runs `buf generate` (local plugins only) into a temp dir and checks that it writes
#    exactly the committed clients/python/agentmesh_client and clients/typescript/src/gen;
# 3. type-checks and compiles the TypeScript example (tsc, strict);
# 4. starts `agentmesh up` on a free loopback port with a static API key, then runs the
#    Python example over native gRPC and the TypeScript example over grpc-web, both through
#    the gateway; each checks its own results (streamed tokens, a completed run, the
#    session's messages) and exits non-zero otherwise;
# 5. stops the server and removes the temp dir, whatever happens.
#
# Needs python3 (with venv), node 20+ and npm, and the binary built first
# (`cargo build -p agentmesh`, as .ci/test does).
#
# Environment (all optional):
#   AGENTMESH_BIN        the binary (default $CARGO_TARGET_DIR/debug/agentmesh)
#   AGENTMESH_TOOLS_DIR  where the tools go (default ~/.cache/agentmesh-tools)
#   CLIENTS_KEEP_DIR     keep the temp dir (server log, generated code) and print where
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"

target="${CARGO_TARGET_DIR:-$HOME/.cache/agentmesh-target}"
bin="${AGENTMESH_BIN:-$target/debug/agentmesh}"
tools="${AGENTMESH_TOOLS_DIR:-$HOME/.cache/agentmesh-tools}"
venv="$tools/clients-python"
npm_dir="$tools/clients-typescript"
buf="$npm_dir/node_modules/.bin/buf"

log() { printf 'clients: %s\n' "$*" >&2; }

if [ ! -x "$bin" ]; then
    log "no binary at $bin: run 'cargo build -p agentmesh' first"
    exit 2
fi

# 1. Tools, reinstalled only when their pins change.
requirements="$repo/clients/python/requirements.txt"
stamp="$(sha256sum "$requirements" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.requirements.sha256" 2>/dev/null)" != "$stamp" ]; then
    log "installing clients/python/requirements.txt into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
    echo "$stamp" >"$venv/.requirements.sha256"
fi
# (.installed-lock is written last: an install that failed half-way is redone next time.)
lock="$repo/clients/typescript/package-lock.json"
if ! cmp -s "$lock" "$npm_dir/.installed-lock"; then
    log "installing clients/typescript's packages (npm ci) into $npm_dir"
    rm -rf "$npm_dir"
    mkdir -p "$npm_dir"
    cp "$repo/clients/typescript/package.json" "$lock" "$npm_dir/"
    npm ci --silent --no-audit --no-fund --prefix "$npm_dir" >/dev/null
    cp "$lock" "$npm_dir/.installed-lock"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/agentmesh-clients.XXXXXX")"
server=""
cleanup() {
    if [ -n "$server" ]; then
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
    fi
    if [ -n "${CLIENTS_KEEP_DIR:-}" ]; then log "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 2. The committed code is what the pinned plugins generate from proto/.
log "buf generate (protoc-gen-python_betterproto2, protoc-gen-es)"
# (betterproto2's compiler names every file it writes on stderr: only the rest is shown.)
if ! PATH="$venv/bin:$npm_dir/node_modules/.bin:$PATH" "$buf" generate -o "$work/generated" \
    2>"$work/generate.log"; then
    cat "$work/generate.log" >&2
    exit 1
fi
grep -v '^Writing ' "$work/generate.log" >&2 || true
for dir in clients/python/agentmesh_client clients/typescript/src/gen; do
    if ! diff -r -x __pycache__ "$dir" "$work/generated/$dir" >"$work/generated.diff"; then
        head -n 40 "$work/generated.diff" >&2
        log "$dir differs from what buf generate writes: run buf generate (see clients/README.md) and commit"
        exit 1
    fi
done

# 3. The TypeScript example, compiled against the installed packages.
mkdir -p "$work/ts"
cp -r clients/typescript/src clients/typescript/tsconfig.json clients/typescript/package.json "$work/ts/"
ln -s "$npm_dir/node_modules" "$work/ts/node_modules"
"$npm_dir/node_modules/.bin/tsc" -p "$work/ts"

# 4. The examples against a real gateway.
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
key="sk-$(python3 -c 'import secrets; print(secrets.token_hex(24))')"
SECURITY_API_KEYS="$key=clients-example:premium" \
    MCP_STDIO_ENABLED=false \
    "$bin" up --http "127.0.0.1:$port" >"$work/agentmesh.log" 2>&1 &
server=$!
ready=""
for _ in $(seq 1 60); do
    if curl -fs -o /dev/null "http://127.0.0.1:$port/api/v1/health"; then
        ready=1
        break
    fi
    if ! kill -0 "$server" 2>/dev/null; then break; fi
    sleep 0.5
done
if [ -z "$ready" ]; then
    log "agentmesh did not become live on 127.0.0.1:$port; its log ends with:"
    tail -n 40 "$work/agentmesh.log" >&2
    exit 1
fi

status=0
log "Python example (native gRPC, grpclib)"
PYTHONPATH="$repo/clients/python" PYTHONDONTWRITEBYTECODE=1 \
    AGENTMESH_GRPC="127.0.0.1:$port" AGENTMESH_API_KEY="$key" \
    "$venv/bin/python" clients/python/example.py || status=1
log "TypeScript example (grpc-web, @connectrpc/connect-web on Node's fetch)"
AGENTMESH_URL="http://127.0.0.1:$port" AGENTMESH_API_KEY="$key" \
    node "$work/ts/dist/example.js" || status=1

if [ "$status" -ne 0 ]; then
    log "an example failed; the server's log ends with:"
    tail -n 40 "$work/agentmesh.log" >&2
fi
exit "$status"
