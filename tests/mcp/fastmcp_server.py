"""A small MCP server written with the official Python SDK (PyPI `mcp<2`, `FastMCP`).

mcp-broker's tests (services/mcp-broker/tests) talk to it as to any real server:

    python fastmcp_server.py streamable-http PORT   # http://127.0.0.1:PORT/mcp
    python fastmcp_server.py stdio

Tools: `add` (a structured integer result), `slow` (sleeps, to outlast timeouts), `fail`
(raises, which the SDK reports as a tool error) and `register_tool` (adds a tool at run time
and sends `notifications/tools/list_changed`). Installed by tests/mcp/install.sh.
"""

import asyncio
import sys

from mcp.server.fastmcp import Context, FastMCP


def build(port: int) -> FastMCP:
    server = FastMCP("agentmesh-test-fastmcp", host="127.0.0.1", port=port, log_level="WARNING")

    @server.tool(title="Add two integers")
    def add(a: int, b: int) -> int:
        """Adds two integers."""
        return a + b

    @server.tool()
    async def slow(seconds: float) -> str:
        """Sleeps for the given number of seconds, then answers."""
        await asyncio.sleep(seconds)
        return f"slept {seconds} s"

    @server.tool()
    def fail(message: str) -> str:
        """Always raises; the server reports it as a tool error."""
        raise ValueError(message)

    @server.tool()
    async def register_tool(name: str, ctx: Context) -> str:
        """Registers a tool called `name` and tells the client the tool list changed."""

        def added() -> str:
            return f"{name} was added at run time"

        server.add_tool(added, name=name, description="A tool added at run time.")
        await ctx.session.send_tool_list_changed()
        return f"registered {name}"

    return server


def main() -> None:
    transport = sys.argv[1] if len(sys.argv) > 1 else "stdio"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 8000
    build(port).run(transport=transport)


if __name__ == "__main__":
    main()
