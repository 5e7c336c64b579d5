#!/usr/bin/env bash
# Installs the local cloud secret stores that secrets-broker's provider tests talk to
# (services/secrets-broker/tests/aws.rs), once, under ~/.cache/agentmesh-tools; later runs
# find them and print nothing.
#
# - moto/: a venv with moto's server (PyPI `moto[server]`), a local AWS Secrets Manager
#   speaking the real JSON protocol; the tests run `moto/bin/moto_server -H 127.0.0.1 -p PORT`
#   (or $MOTO_SERVER, or a moto_server on PATH).
#
# Needs python3 (with venv).
set -euo pipefail

tools="${AGENTMESH_TOOLS_DIR:-$HOME/.cache/agentmesh-tools}"
moto="$tools/moto"
moto_requirement='moto[server]>=5.1,<6'

log() { printf 'cloud install: %s\n' "$*" >&2; }

if [ ! -x "$moto/bin/moto_server" ] || ! "$moto/bin/python" -c 'import moto.server' 2>/dev/null; then
    log "installing $moto_requirement into $moto"
    python3 -m venv "$moto"
    "$moto/bin/pip" install --quiet --disable-pip-version-check "$moto_requirement"
    log "moto_server: $moto/bin/moto_server ($("$moto/bin/python" -c 'import importlib.metadata as m; print("moto", m.version("moto"))'))"
fi
