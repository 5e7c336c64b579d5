"""Example of the generated Python client over native gRPC (through the gateway's
passthrough): creates an agent and a session, executes the agent with streaming (printing
tokens as they arrive), then reads the session's messages. Exits non-zero when no token was
streamed, the run did not complete, or the messages are not what the run produced.

    AGENTMESH_GRPC=127.0.0.1:8080 AGENTMESH_API_KEY=sk-... python example.py
"""

import asyncio
import os
import sys
import uuid
from typing import NoReturn

import betterproto2
from grpclib.client import Channel
from grpclib.exceptions import GRPCError

from agentmesh_client.agentmesh.agent.v1 import (
    AgentExecutionRequest,
    AgentServiceStub,
    CreateAgentRequest,
    ExecuteAgentStreamRequest,
    ModelConfig,
    RunStatus,
)
from agentmesh_client.agentmesh.common.v1 import MessageRole
from agentmesh_client.agentmesh.session.v1 import (
    CreateSessionRequest,
    ListMessagesRequest,
    SessionServiceStub,
)


def fail(why: str) -> NoReturn:
    print(f"example failed: {why}", file=sys.stderr)
    sys.exit(1)


async def main() -> None:
    host, _, port = os.environ.get("AGENTMESH_GRPC", "127.0.0.1:8080").rpartition(":")
    api_key = os.environ.get("AGENTMESH_API_KEY") or fail("set AGENTMESH_API_KEY")
    model = os.environ.get("AGENTMESH_MODEL", "scripted/echo")
    # Every call carries the API key (`x-api-key: KEY` works too, and so does a JWT).
    metadata = {"authorization": f"Bearer {api_key}"}

    async with Channel(host, int(port)) as channel:
        agents = AgentServiceStub(channel, metadata=metadata, timeout=60)
        sessions = SessionServiceStub(channel, metadata=metadata, timeout=60)

        created = await agents.create_agent(
            CreateAgentRequest(
                name=f"py-example-{uuid.uuid4().hex[:8]}",
                system_prompt="You are a helpful assistant.",
                model_config=ModelConfig(model=model),
            )
        )
        agent = created.agent or fail("CreateAgent returned no agent")
        print(f"agent {agent.name} ({agent.id})")

        session = (await sessions.create_session(CreateSessionRequest(title="Python example"))).session
        session = session or fail("CreateSession returned no session")
        print(f"session {session.id}")

        question = "Hello from Python over gRPC"
        streamed, tokens, completed = "", 0, False
        print("answer: ", end="", flush=True)
        request = ExecuteAgentStreamRequest(
            agent_id=agent.id,
            execution=AgentExecutionRequest(session_id=session.id, message=question),
        )
        async for response in agents.execute_agent_stream(request):
            kind, value = betterproto2.which_one_of(response.event, "kind")
            if kind == "token":
                tokens += 1
                streamed += value.text
                print(value.text, end="", flush=True)
            elif kind == "step_restarted":
                streamed = ""
            elif kind == "error":
                print(f"\nrun error: {value.code.name}: {value.message}", file=sys.stderr)
            elif kind == "run_completed":
                completed = value.status == RunStatus.COMPLETED
                print(f"\nrun {response.event.run_id}: {value.status.name}")
        if tokens == 0:
            fail("no token was streamed")
        if not completed:
            fail("the run did not complete")

        messages = (await sessions.list_messages(ListMessagesRequest(session_id=session.id))).messages
        for message in messages:
            print(f"{message.role.name}: {message.content}")
        if not any(m.role == MessageRole.USER and m.content == question for m in messages):
            fail("the user's message is missing from the session")
        if not any(m.role == MessageRole.ASSISTANT and m.content == streamed for m in messages):
            fail("no assistant message holds the streamed answer")
        print(f"ok: {tokens} tokens streamed, {len(messages)} messages read")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except GRPCError as err:
        fail(f"{err.status.name} {err.message}")
