#!/usr/bin/env bash
# Property-based API tests of the real gateway against its own OpenAPI document.
#
# Starts the `agentmesh up` binary on a free loopback port with a development API key,
# waits for liveness, checks that /openapi.json is a valid OpenAPI 3.1 document, then runs
# schemathesis 4.x (examples, coverage, fuzzing and stateful phases) on the operations of
# the services implemented so far, authenticated, bounded in examples and time. Fails when
# the gateway answers 5xx, or any status, content type, header or body does not match the
# document. The server is stopped on exit, whatever happens.
#
# Needs the binary built first (`cargo build -p agentmesh`, as .ci/test does) and python3.
# The venv is created once under ~/.cache/agentmesh-tools and reused.
#
# Environment (all optional):
#   SCHEMATHESIS_MAX_TIME      seconds of testing (default 150); the whole run is capped
#                              at this plus 90 s
#   SCHEMATHESIS_MAX_EXAMPLES  test cases per operation and phase (default 20)
#   SCHEMATHESIS_TAGS          regex of the tags (services) to test (default
#                              '^(session|health|auth)$': agent and mcp answer 501
#                              not_implemented until their services land)
#   SCHEMATHESIS_CHECKS        comma-separated schemathesis checks (default: see below)
#   SCHEMATHESIS_SEED          reproduce an earlier run
#   SCHEMATHESIS_REPORT_DIR    where the JUnit report and server log go (default: a temp dir)
#   AGENTMESH_BIN              the binary (default $CARGO_TARGET_DIR/debug/agentmesh)
set -euo pipefail
cd "$(dirname "$0")/../.."

target="${CARGO_TARGET_DIR:-$HOME/.cache/agentmesh-target}"
bin="${AGENTMESH_BIN:-$target/debug/agentmesh}"
venv="$HOME/.cache/agentmesh-tools/schemathesis-venv"
max_time="${SCHEMATHESIS_MAX_TIME:-150}"
max_examples="${SCHEMATHESIS_MAX_EXAMPLES:-20}"
tags="${SCHEMATHESIS_TAGS:-^(session|health|auth)\$}"
# Server errors; status codes, content types, headers and bodies as documented; 405 for
# methods a path does not serve, with the right `Allow`. Left out: negative_data_rejection (the gateway replaces an
# invalid X-Correlation-ID instead of refusing it, by design) and positive_data_acceptance
# (cross-field and data rules, such as `offset` with `page_token` or a `parent_message_id`
# from another session, cannot be expressed in the document).
checks="${SCHEMATHESIS_CHECKS:-not_a_server_error,status_code_conformance,content_type_conformance,\
response_headers_conformance,response_schema_conformance,unsupported_method,allow_header_conformance}"
report_dir="${SCHEMATHESIS_REPORT_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/schemathesis.XXXXXX")}"
mkdir -p "$report_dir"

log() { printf 'schemathesis: %s\n' "$*" >&2; }

if [ ! -x "$bin" ]; then
    log "no binary at $bin: run 'cargo build -p agentmesh' first"
    exit 2
fi

if [ ! -x "$venv/bin/schemathesis" ] || [ ! -x "$venv/bin/openapi-spec-validator" ]; then
    log "installing schemathesis 4.x into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'schemathesis>=4,<5' 'openapi-spec-validator>=0.7,<1'
fi

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
base="http://127.0.0.1:$port"
# A fresh development key per run: `sk-` and 48 random characters.
key="sk-$(python3 -c 'import secrets; print(secrets.token_hex(24))')"

# Session creation is limited to 10 a minute by default; lift the limits so the stateful
# phase can build on created sessions (the rate limiter has its own tests).
SECURITY_API_KEYS="$key=schemathesis:premium" \
    OBSERVABILITY_LOG_LEVEL="${OBSERVABILITY_LOG_LEVEL:-INFO}" \
    RATE_LIMIT_API_PREMIUM_LIMIT=1000000 \
    RATE_LIMIT_CREATE_SESSION_LIMIT=1000000 \
    "$bin" up --http "127.0.0.1:$port" >"$report_dir/agentmesh.log" 2>&1 &
server=$!

stop() {
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
}
trap stop EXIT
trap 'exit 130' INT TERM

for _ in $(seq 1 60); do
    if curl -fsS -o /dev/null "$base/api/v1/health"; then break; fi
    if ! kill -0 "$server" 2>/dev/null; then
        log "agentmesh exited during start-up:"
        tail -n 40 "$report_dir/agentmesh.log" >&2
        exit 1
    fi
    sleep 0.5
done
curl -fsS -o "$report_dir/openapi.json" "$base/openapi.json"
"$venv/bin/openapi-spec-validator" "$report_dir/openapi.json"

# Without a working key every protected operation would only ever answer 401: no test.
auth_status="$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $key" "$base/api/v1/sessions")"
if [ "$auth_status" != 200 ]; then
    log "the gateway answers $auth_status to the SECURITY_API_KEYS key on GET /api/v1/sessions"
    exit 1
fi

args=(
    run "$base/openapi.json"
    --header "Authorization: Bearer $key"
    --checks "$checks"
    --include-tag-regex "$tags"
    --max-examples "$max_examples"
    --max-time "$max_time"
    --workers 2
    --request-timeout 10
    --report junit
    --report-junit-path "$report_dir/junit.xml"
)
if [ -n "${SCHEMATHESIS_SEED:-}" ]; then args+=(--seed "$SCHEMATHESIS_SEED"); fi

status=0
# schemathesis keeps its state (.schemathesis/) in the working directory: not in the repo.
cd "$report_dir"
NO_COLOR=1 timeout --kill-after=10 "$((max_time + 90))" "$venv/bin/schemathesis" "${args[@]}" || status=$?
if [ "$status" -ne 0 ]; then
    log "failed (exit $status); server log: $report_dir/agentmesh.log"
    if [ "$status" -eq 124 ]; then log "the run exceeded its time cap"; fi
fi
exit "$status"
