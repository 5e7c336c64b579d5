#!/usr/bin/env bash
# What PostgreSQL alone can do of the agent-run benchmark's work on this machine: pgbench
# (C, prepared statements, no mesh) runs the fewest writes a one-step run needs
# (pg_floor/run.sql: four commits) and the same writes as one transaction
# (pg_floor/one_transaction.sql), with 1 and 8 clients, against a database of its own that
# it drops at the end. docs/benchmarks.md compares these with agent_runs' PostgreSQL runs.
#
#   bash tests/benches/pg_floor.sh
#
# AGENTMESH_TEST_DATABASE_URL picks the server (default: the local one, without TLS);
# BENCH_SECONDS (10) is each load's length.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
base="${AGENTMESH_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/test?sslmode=disable}"
seconds="${BENCH_SECONDS:-10}"

pgbench="$(command -v pgbench || ls /usr/lib/postgresql/*/bin/pgbench 2>/dev/null | sort -V | tail -1 || true)"
if [ -z "$pgbench" ]; then
    echo "pg_floor: pgbench not found (it ships with the PostgreSQL server packages)" >&2
    exit 1
fi

name="pg_floor_$(od -An -N8 -tx8 /dev/urandom | tr -d ' ')"
# The same server and options, another database: the URL's path replaced (or added).
url="$(printf '%s' "$base" | sed -E "s#^(postgres(ql)?://[^/?]*)(/[^?]*)?#\1/$name#")"
case "$url" in
    */"$name"|*/"$name"\?*) ;;
    *) echo "pg_floor: not a postgres:// URL: $base" >&2; exit 1 ;;
esac
psql "$base" -qXc "CREATE DATABASE $name" >/dev/null
trap 'psql "$base" -qXc "DROP DATABASE IF EXISTS $name WITH (FORCE)" >/dev/null' EXIT
psql "$url" -qX -v ON_ERROR_STOP=1 -f "$here/pg_floor/schema.sql" >/dev/null

echo "$(nproc) CPUs; 1-minute load average $(cut -d' ' -f1 /proc/loadavg) before; ${seconds}s per load."
echo "| work | clients | runs/s | mean latency ms |"
echo "|---|---|---|---|"
for script in run one_transaction; do
    # A short warm-up fills the caches and the session's history.
    "$pgbench" -n -M prepared -c 8 -j 2 -T 2 -f "$here/pg_floor/$script.sql" "$url" >/dev/null 2>&1
    for clients in 1 8; do
        out="$("$pgbench" -n -M prepared -c "$clients" -j "$((clients > 1 ? 2 : 1))" -T "$seconds" \
            -f "$here/pg_floor/$script.sql" "$url" 2>&1)"
        tps="$(printf '%s\n' "$out" | sed -nE 's/^tps = ([0-9.]+).*/\1/p')"
        latency="$(printf '%s\n' "$out" | sed -nE 's/^latency average = ([0-9.]+) ms/\1/p')"
        printf '| %s | %s | %.0f | %s |\n' "$script.sql" "$clients" "$tps" "$latency"
    done
done
