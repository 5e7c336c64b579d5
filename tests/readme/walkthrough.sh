#!/usr/bin/env bash
# Runs the README's walkthrough (the block between `<!-- walkthrough:begin -->` and
# `<!-- walkthrough:end -->`) as a user would (in a temporary directory), against the binary the test command built,
# and checks what it printed: the streamed answer, the session's messages, and a chat
# turn. Differences from a user's run, and nothing else: the gateway's port is a free one
# (`PORT`, which `agentmesh up` reads, and `localhost:8080` rewritten to it), the build
# line uses the test command's debug binary instead of a release build, and the chat
# gets one line on stdin and then end of input.
#
# Environment (optional): AGENTMESH_BIN (default $CARGO_TARGET_DIR/debug/agentmesh).
set -euo pipefail
cd "$(dirname "$0")/../.."

target="${CARGO_TARGET_DIR:-$HOME/.cache/agentmesh-target}"
bin="${AGENTMESH_BIN:-$target/debug/agentmesh}"
[ -x "$bin" ] || { echo "walkthrough: no binary at $bin: run 'cargo build -p agentmesh' first" >&2; exit 2; }
command -v jq > /dev/null || { echo "walkthrough: jq is needed (apt-get install jq), as the README says" >&2; exit 2; }

block="$(awk '/<!-- walkthrough:begin -->/{on=1; next} /<!-- walkthrough:end -->/{on=0} on' README.md \
    | sed '/^```/d')"
[ -n "$block" ] || { echo "walkthrough: no walkthrough block in README.md" >&2; exit 1; }
build_line='cargo build --release -p agentmesh && export PATH="$PWD/target/release:$PATH"'
grep -qxF "$build_line" <<< "$block" || { echo "walkthrough: the build line changed; update this script" >&2; exit 1; }

work="$(mktemp -d)"
trap 'kill $(jobs -p) 2> /dev/null || true; rm -rf "$work"' EXIT
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
{
    echo 'set -euo pipefail'
    # The mesh the block starts in the background goes when the block ends.
    echo "trap 'kill \$(jobs -p) 2> /dev/null || true' EXIT"
    echo "export PATH=\"$(dirname "$bin"):\$PATH\""
    grep -vxF "$build_line" <<< "$block" | sed "s/localhost:8080/localhost:$port/g"
} > "$work/walkthrough.sh"

# In a directory of its own, where the block's `agentmesh.log` goes.
cd "$work"
printf 'How are you?\n' | env -i PATH="$PATH" HOME="$HOME" PORT="$port" \
    timeout 120 bash "$work/walkthrough.sh" > "$work/out.txt" 2> "$work/err.txt" || {
    echo "walkthrough: the README's block failed; its output:" >&2
    cat "$work/out.txt" "$work/err.txt" >&2
    exit 1
}

fail() {
    echo "walkthrough: $1; the block printed:" >&2
    cat "$work/out.txt" >&2
    exit 1
}
grep -q '^event: run_completed' "$work/out.txt" || fail "the streamed run did not complete"
grep -q '^event: token' "$work/out.txt" || fail "no token was streamed"
grep -qx 'user: Hello!' "$work/out.txt" || fail "the session does not hold the user's message"
grep -q '^assistant: ' "$work/out.txt" || fail "the session does not hold the agent's answer"
grep -q 'You said: How are you?' "$work/out.txt" || fail "the chat did not answer the line typed"
echo "walkthrough: every command of the README's walkthrough ran (port $port)"
