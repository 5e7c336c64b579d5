"""A stdio "MCP server" scripting protocol edge cases and faults for mcp-broker's tests.

    python3 misbehaving_server.py MODE PIDFILE

writes its own process id (and, in `hang` mode, its child's) to PIDFILE, one per line, so
the test can check that they are gone afterwards. Modes:

- `garbage`: answers every request with a line that is not JSON-RPC;
- `bad-after-init`: answers `initialize` properly, then every other request with garbage;
- `paged`: answers `initialize`, and `tools/list` in two pages (`nextCursor`);
- `hang`: never answers, ignores SIGTERM and stdin closing, and starts a child (`sleep`)
  in its process group — only killing the whole group ends it.

Standard library only.
"""

import json
import signal
import subprocess
import sys
import time


def main() -> None:
    mode, pidfile = sys.argv[1], sys.argv[2]
    pids = [str(subprocess.os.getpid())]
    if mode == "hang":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        pids.append(str(subprocess.Popen(["sleep", "300"]).pid))
    with open(pidfile, "w", encoding="utf-8") as out:
        out.write("\n".join(pids) + "\n")
    if mode == "hang":
        while True:
            time.sleep(60)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        message = json.loads(line)
        if "id" not in message:
            continue
        method = message.get("method")
        if mode in ("bad-after-init", "paged") and method == "initialize":
            result = {
                "protocolVersion": message["params"]["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "misbehaving", "version": "0"},
            }
            reply = json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result})
        elif mode == "paged" and method == "tools/list":
            cursor = (message.get("params") or {}).get("cursor")
            schema = {"type": "object", "properties": {}}
            if cursor is None:
                result = {"tools": [{"name": "first", "inputSchema": schema}], "nextCursor": "page-2"}
            else:
                result = {"tools": [{"name": "second", "inputSchema": schema}]}
            reply = json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result})
        else:
            reply = "this is not JSON-RPC {"
        sys.stdout.write(reply + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
