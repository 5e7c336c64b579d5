"""A stdio "MCP server" scripting protocol edge cases and faults for mcp-broker's tests.

    python3 misbehaving_server.py MODE PIDFILE

writes its own process id (and, in `hang` and `spawner` modes, its child's) to PIDFILE, one
per line, so the test can check that they are gone afterwards. Modes:

- `garbage`: answers every request with a line that is not JSON-RPC;
- `bad-after-init`: answers `initialize` properly, then every other request with garbage;
- `paged`: answers `initialize`, and `tools/list` in two pages (`nextCursor`);
- `hang`: never answers, ignores SIGTERM and stdin closing, and starts a child (`sleep`)
  in its process group — only killing the whole group ends it.
- `spawner`: answers `initialize`, `tools/list` (one tool, `noop`) and `ping`, and starts a
  child (`sleep`) in its process group; it ignores SIGTERM and stays when its stdin
  closes, so that only a signal it cannot ignore ends it (and its child, only the group).
- `crash-loop`: appends its process id to PIDFILE; the first process answers `initialize`
  and `tools/list`, then exits; each later one exits as soon as `initialize` is done.

Standard library only.
"""

import json
import signal
import subprocess
import sys
import time


def reply(message, result) -> None:
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}) + "\n")
    sys.stdout.flush()


def initialized(message) -> dict:
    return {
        "protocolVersion": message["params"]["protocolVersion"],
        "capabilities": {"tools": {}},
        "serverInfo": {"name": "misbehaving", "version": "0"},
    }


def serve_then_linger() -> None:
    """`spawner`: a well-behaved server until its stdin closes, then it stays."""
    for line in sys.stdin:
        message = json.loads(line) if line.strip() else {}
        method = message.get("method")
        if "id" not in message:
            continue
        if method == "initialize":
            reply(message, initialized(message))
        elif method == "tools/list":
            reply(message, {"tools": [{"name": "noop", "inputSchema": {"type": "object"}}]})
        else:
            reply(message, {})
    while True:
        time.sleep(60)


def crash_loop(pidfile) -> None:
    with open(pidfile, "a+", encoding="utf-8") as out:
        out.seek(0)
        first = not out.read().strip()
        out.write(f"{subprocess.os.getpid()}\n")
    for line in sys.stdin:
        message = json.loads(line) if line.strip() else {}
        method = message.get("method")
        if method == "notifications/initialized" and not first:
            return
        if method == "initialize":
            reply(message, initialized(message))
        elif method == "tools/list":
            reply(message, {"tools": [{"name": "noop", "inputSchema": {"type": "object"}}]})
            return


def main() -> None:
    mode, pidfile = sys.argv[1], sys.argv[2]
    if mode == "crash-loop":
        crash_loop(pidfile)
        return
    pids = [str(subprocess.os.getpid())]
    if mode in ("hang", "spawner"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        sleeper = subprocess.Popen(["sleep", "600"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        pids.append(str(sleeper.pid))
    with open(pidfile, "w", encoding="utf-8") as out:
        out.write("\n".join(pids) + "\n")
    if mode == "hang":
        while True:
            time.sleep(60)
    if mode == "spawner":
        serve_then_linger()
        return
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        message = json.loads(line)
        if "id" not in message:
            continue
        method = message.get("method")
        if mode in ("bad-after-init", "paged") and method == "initialize":
            reply(message, initialized(message))
        elif mode == "paged" and method == "tools/list":
            cursor = (message.get("params") or {}).get("cursor")
            schema = {"type": "object", "properties": {}}
            if cursor is None:
                reply(message, {"tools": [{"name": "first", "inputSchema": schema}], "nextCursor": "page-2"})
            else:
                reply(message, {"tools": [{"name": "second", "inputSchema": schema}]})
        else:
            sys.stdout.write("this is not JSON-RPC {\n")
            sys.stdout.flush()

if __name__ == "__main__":
    main()
