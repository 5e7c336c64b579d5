#!/usr/bin/env bash
# Property-based API tests of the real gateway against its own OpenAPI document, once per
# session-store backend: memory, then PostgreSQL.
#
# For each backend: starts the `agentmesh up` binary on a free loopback port with a
# development API key, waits for liveness, checks that /openapi.json is a valid OpenAPI 3.1
# document, then runs schemathesis 4.x (examples, coverage, fuzzing and stateful phases) on
# the operations of the services implemented so far, authenticated, bounded in examples
# and time. Fails when the gateway answers 5xx, or any status, content type, header or
# body does not match the document. The PostgreSQL run gets a database of its own
# (`CREATE DATABASE` with a unique name), dropped afterwards; the server is stopped on
# exit, whatever happens.
#
# Needs the binary built first (`cargo build -p agentmesh`, as .ci/test does), python3,
# and for the PostgreSQL run psql and a PostgreSQL server whose user may create databases.
# The venv is created once under ~/.cache/agentmesh-tools and reused.
#
# Environment (all optional):
#   SCHEMATHESIS_BACKENDS      backends to test, in order (default "memory postgres")
#   SCHEMATHESIS_MAX_TIME      seconds of testing in all (default 150), split evenly across
#                              the backends; each run is capped at its share plus 90 s
#   SCHEMATHESIS_MAX_EXAMPLES  test cases per operation and phase, per backend (default 12)
#   SCHEMATHESIS_PG_URL        PostgreSQL server for the postgres run, as a URL whose
#                              database the test database is created from (default
#                              $AGENTMESH_TEST_DATABASE_URL, else
#                              postgres://postgres@127.0.0.1:5432/test)
#   SCHEMATHESIS_TAGS          regex of the tags (services) to test (default
#                              '^(session|health|auth|mcp|agent)$': every service the
#                              gateway exposes)
#   SCHEMATHESIS_EXCLUDE_OPERATIONS  space-separated operation ids left out (default
#                              'refreshMcpServer': it connects to whatever endpoint a
#                              generated server names, which is not this test's to reach)
#   SCHEMATHESIS_CHECKS        comma-separated schemathesis checks (default: see below)
#   SCHEMATHESIS_SEED          reproduce an earlier run
#   SCHEMATHESIS_REPORT_DIR    where the JUnit reports and server logs go, one
#                              subdirectory per backend (default: a temp dir)
#   AGENTMESH_BIN              the binary (default $CARGO_TARGET_DIR/debug/agentmesh)
set -euo pipefail
cd "$(dirname "$0")/../.."

target="${CARGO_TARGET_DIR:-$HOME/.cache/agentmesh-target}"
bin="${AGENTMESH_BIN:-$target/debug/agentmesh}"
venv="$HOME/.cache/agentmesh-tools/schemathesis-venv"
max_time="${SCHEMATHESIS_MAX_TIME:-150}"
max_examples="${SCHEMATHESIS_MAX_EXAMPLES:-12}"
tags="${SCHEMATHESIS_TAGS:-^(session|health|auth|mcp|agent)\$}"
exclude_operations="${SCHEMATHESIS_EXCLUDE_OPERATIONS-refreshMcpServer}"
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
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'schemathesis>=4,<5' \
        'openapi-spec-validator>=0.7,<1'
fi
# hypothesis names the lambdas in its strategies' descriptions by parsing their source; deep
# inside schemathesis' recursion CPython 3.11 refuses that now and then ("AST constructor
# recursion depth mismatch", a SystemError) and the operation is reported as an error. A
# description is all that is lost, so such a lambda is described as `lambda: <unknown>`.
"$venv/bin/python" - <<'PY'
import pathlib, sysconfig
hook = pathlib.Path(sysconfig.get_paths()["purelib"]) / "agentmesh_lambda_descriptions.pth"
hook.write_text("import agentmesh_lambda_descriptions\n")
(hook.parent / "agentmesh_lambda_descriptions.py").write_text('''"""Describes a lambda hypothesis cannot parse instead of failing the test (tests/schemathesis/run.sh)."""
import hypothesis.internal.lambda_sources as sources

_describe = sources._lambda_description


def _lambda_description(f, *args, **kwargs):
    try:
        return _describe(f, *args, **kwargs)
    except SystemError:
        return "lambda: <unknown>"


sources._lambda_description = _lambda_description
''')
PY

backends="${SCHEMATHESIS_BACKENDS:-memory postgres}"
read -r -a backend_list <<<"$backends"
share=$((max_time / ${#backend_list[@]}))
pg_url="${SCHEMATHESIS_PG_URL:-${AGENTMESH_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test}}"
# A fresh development key per run: `sk-` and 48 random characters.
key="sk-$(python3 -c 'import secrets; print(secrets.token_hex(24))')"

server=""
database=""
stop_server() {
    if [ -n "$server" ]; then
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
        server=""
    fi
}
drop_database() {
    if [ -n "$database" ]; then
        psql "$pg_url" -qAtc "DROP DATABASE IF EXISTS \"$database\" WITH (FORCE)" >/dev/null || \
            log "could not drop database $database"
        database=""
    fi
}
cleanup() {
    stop_server
    drop_database
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Runs schemathesis against one backend; $1 names it, the rest are extra environment
# variables of the server (NAME=value).
run_backend() {
    local name="$1"
    shift
    local dir="$report_dir/$name"
    mkdir -p "$dir"
    local port
    port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')" ||
        return 1
    local base="http://127.0.0.1:$port"

    # Session creation is limited to 10 a minute and agent execution to a few a minute by
    # default; lift the limits so the stateful phase can build on created sessions and runs
    # reach the orchestrator instead of a 429 (the rate limiter has its own tests).
    # The static key has every scope, mcp_servers:admin included, so schemathesis may register
    # stdio MCP servers with generated commands: MCP_STDIO_ENABLED=false keeps mcp-broker from
    # ever starting them (they stay registered; discovery and calls answer an error).
    env "$@" \
        SECURITY_API_KEYS="$key=schemathesis:premium" \
        MCP_STDIO_ENABLED=false \
        OBSERVABILITY_LOG_LEVEL="${OBSERVABILITY_LOG_LEVEL:-INFO}" \
        RATE_LIMIT_API_PREMIUM_LIMIT=1000000 \
        RATE_LIMIT_CREATE_SESSION_LIMIT=1000000 \
        RATE_LIMIT_EXECUTE_AGENT_LIMIT=1000000 \
        "$bin" up --http "127.0.0.1:$port" >"$dir/agentmesh.log" 2>&1 &
    server=$!

    for _ in $(seq 1 60); do
        if curl -fsS -o /dev/null "$base/api/v1/health"; then break; fi
        if ! kill -0 "$server" 2>/dev/null; then
            log "$name: agentmesh exited during start-up:"
            tail -n 40 "$dir/agentmesh.log" >&2
            return 1
        fi
        sleep 0.5
    done
    # Called as `run_backend ... || ...`, so `set -e` does not apply here: check each step.
    curl -fsS -o "$dir/openapi.json" "$base/openapi.json" || return 1
    "$venv/bin/openapi-spec-validator" "$dir/openapi.json" || return 1

    # Without a working key every protected operation would only ever answer 401: no test.
    local auth_status
    auth_status="$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $key" "$base/api/v1/sessions")"
    if [ "$auth_status" != 200 ]; then
        log "$name: the gateway answers $auth_status to the SECURITY_API_KEYS key on GET /api/v1/sessions"
        return 1
    fi

    local args=(
        run "$base/openapi.json"
        --header "Authorization: Bearer $key"
        --checks "$checks"
        --include-tag-regex "$tags"
        --max-examples "$max_examples"
        --max-time "$share"
        --workers 2
        --request-timeout 10
        --report junit
        --report-junit-path "$dir/junit.xml"
    )
    local operation
    for operation in $exclude_operations; do args+=(--exclude-operation-id "$operation"); done
    if [ -n "${SCHEMATHESIS_SEED:-}" ]; then args+=(--seed "$SCHEMATHESIS_SEED"); fi

    local status=0
    log "$name: testing for at most ${share}s"
    # schemathesis keeps its state (.schemathesis/) in the working directory: not in the repo.
    (cd "$dir" && NO_COLOR=1 timeout --kill-after=10 "$((share + 90))" "$venv/bin/schemathesis" "${args[@]}") ||
        status=$?
    stop_server
    if [ "$status" -ne 0 ]; then
        log "$name: failed (exit $status); server log: $dir/agentmesh.log"
        if [ "$status" -eq 124 ]; then log "$name: the run exceeded its time cap"; fi
    fi
    return "$status"
}

overall=0
for backend in "${backend_list[@]}"; do
    case "$backend" in
    memory)
        run_backend memory || overall=1
        ;;
    postgres)
        # A database of the run's own: the service's schema name is fixed, and a shared
        # database would mix this run's data (and migrations) with others'.
        database="schemathesis_$(date +%s)_$$"
        psql "$pg_url" -qAtc "CREATE DATABASE \"$database\"" >/dev/null
        pg_base="${pg_url%%\?*}"
        run_backend postgres USE_DATABASE=true DB_URL="${pg_base%/*}/$database${pg_url#"$pg_base"}" || overall=1
        drop_database
        ;;
    *)
        log "unknown backend $backend (use memory and/or postgres)"
        exit 2
        ;;
    esac
done
exit "$overall"
