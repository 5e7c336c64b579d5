#!/usr/bin/env bash
# Installs the real MCP servers that mcp-broker's tests talk to (services/mcp-broker/tests),
# once, under ~/.cache/agentmesh-tools; later runs find them and do nothing.
#
# - mcp-everything/: the npm reference server `@modelcontextprotocol/server-everything`,
#   run with `node mcp-everything/node_modules/@modelcontextprotocol/server-everything/dist/index.js
#   stdio|streamableHttp`;
# - mcp-python-venv/: a venv with the official Python SDK pinned below 2 (the 1.x `FastMCP`
#   API, which 2.x removed), for tests/mcp/fastmcp_server.py.
#
# Needs node/npm and python3 (with venv). Prints where the servers are.
set -euo pipefail

tools="${AGENTMESH_TOOLS_DIR:-$HOME/.cache/agentmesh-tools}"
everything="$tools/mcp-everything"
everything_version="2026.8.31"
venv="$tools/mcp-python-venv"
python_sdk='mcp>=1.20,<2'

log() { printf 'mcp install: %s\n' "$*" >&2; }

entry="$everything/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
installed_version=""
if [ -f "$everything/node_modules/@modelcontextprotocol/server-everything/package.json" ]; then
    installed_version="$(node -p "require('$everything/node_modules/@modelcontextprotocol/server-everything/package.json').version")"
fi
if [ ! -f "$entry" ] || [ "$installed_version" != "$everything_version" ]; then
    log "installing @modelcontextprotocol/server-everything@$everything_version into $everything"
    mkdir -p "$everything"
    npm install --silent --no-audit --no-fund --prefix "$everything" \
        "@modelcontextprotocol/server-everything@$everything_version" >/dev/null
fi

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import mcp.server.fastmcp' 2>/dev/null; then
    log "installing the MCP Python SDK ($python_sdk) into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$python_sdk"
fi

log "reference server: $entry"
log "python: $venv/bin/python ($("$venv/bin/python" -c 'import importlib.metadata as m; print("mcp", m.version("mcp"))'))"
