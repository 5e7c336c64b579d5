// Example of the generated TypeScript client over grpc-web, as a browser would call the
// gateway (Node 20's fetch stands in for the browser's): creates an agent and a session,
// executes the agent with streaming (printing tokens as they arrive), then reads the
// session's messages. Exits non-zero when no token was streamed, the run did not complete,
// or the messages are not what the run produced.
//
//   AGENTMESH_URL=http://127.0.0.1:8080 AGENTMESH_API_KEY=sk-… node dist/example.js
import { create } from "@bufbuild/protobuf";
import { createClient, ConnectError, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { AgentService } from "./gen/agentmesh/agent/v1/agent_service_pb.js";
import { ModelConfigSchema } from "./gen/agentmesh/agent/v1/agent_pb.js";
import { RunStatus } from "./gen/agentmesh/agent/v1/run_pb.js";
import { MessageRole } from "./gen/agentmesh/common/v1/enums_pb.js";
import { ErrorCode } from "./gen/agentmesh/common/v1/errors_pb.js";
import { SessionService } from "./gen/agentmesh/session/v1/session_service_pb.js";

function fail(why: string): never {
  console.error(`example failed: ${why}`);
  process.exit(1);
}

const baseUrl = process.env.AGENTMESH_URL ?? "http://127.0.0.1:8080";
const apiKey = process.env.AGENTMESH_API_KEY ?? fail("set AGENTMESH_API_KEY");
const model = process.env.AGENTMESH_MODEL ?? "scripted/echo";

// Every call carries the API key (a JWT from /api/v1/auth/token works the same way).
const withKey: Interceptor = (next) => (req) => {
  req.header.set("authorization", `Bearer ${apiKey}`);
  return next(req);
};
const transport = createGrpcWebTransport({ baseUrl, interceptors: [withKey] });
const agents = createClient(AgentService, transport);
const sessions = createClient(SessionService, transport);

async function main(): Promise<void> {
  const { agent } = await agents.createAgent({
    name: `ts-example-${crypto.randomUUID().slice(0, 8)}`,
    systemPrompt: "You are a helpful assistant.",
    modelConfig: create(ModelConfigSchema, { model }),
  });
  if (!agent) fail("CreateAgent returned no agent");
  console.log(`agent ${agent.name} (${agent.id})`);

  const { session } = await sessions.createSession({ title: "TypeScript example" });
  if (!session) fail("CreateSession returned no session");
  console.log(`session ${session.id}`);

  const question = "Hello from TypeScript over grpc-web";
  let streamed = "";
  let tokens = 0;
  let completed = false;
  process.stdout.write("answer: ");
  for await (const { event } of agents.executeAgentStream({
    agentId: agent.id,
    execution: { sessionId: session.id, message: question },
  })) {
    switch (event?.kind.case) {
      case "token":
        tokens += 1;
        streamed += event.kind.value.text;
        process.stdout.write(event.kind.value.text);
        break;
      case "stepRestarted":
        streamed = "";
        break;
      case "error":
        console.error(`\nrun error: ${ErrorCode[event.kind.value.code]}: ${event.kind.value.message}`);
        break;
      case "runCompleted":
        completed = event.kind.value.status === RunStatus.COMPLETED;
        process.stdout.write(`\nrun ${event.runId}: ${RunStatus[event.kind.value.status]}\n`);
        break;
    }
  }
  if (tokens === 0) fail("no token was streamed");
  if (!completed) fail("the run did not complete");

  const { messages } = await sessions.listMessages({ sessionId: session.id });
  for (const m of messages) console.log(`${MessageRole[m.role]}: ${m.content}`);
  if (!messages.some((m) => m.role === MessageRole.USER && m.content === question)) {
    fail("the user's message is missing from the session");
  }
  if (!messages.some((m) => m.role === MessageRole.ASSISTANT && m.content === streamed)) {
    fail("no assistant message holds the streamed answer");
  }
  console.log(`ok: ${tokens} tokens streamed, ${messages.length} messages read`);
}

main().catch((err: unknown) => {
  fail(err instanceof ConnectError ? `${err.code} ${err.rawMessage}` : String(err));
});
