//! The default agent graph: `llm` → (`tools` → `llm`)* → end, on `agentmesh_graph`.
//!
//! - **`llm`** persists the turns of the step before (tool results), asks the model through
//!   llm-proxy with the agent's system prompt, the session's history window, the run's
//!   turns and the schemas of the agent's tools, and streams the answer's tokens to the
//!   run's output. The answer's tool calls are announced (`tool_call`, with the arguments
//!   as the model wrote them) only once the answer is complete, so no client ever sees
//!   half-written arguments. When the model fails *after* it started answering (llm-proxy
//!   does not fall back then: the caller has seen tokens), the step is run again on the
//!   next fallback model, after a `step_restarted` event that tells clients to discard the
//!   step's tokens.
//! - **The router** after `llm` ends the run on an answer without calls, interrupts it
//!   before `tools` when a call needs a human's approval (see [`needs_approval`]), and goes
//!   to `tools` otherwise. An approval or a rejection is recorded in the state as a
//!   [`Decision`] and the run resumes at `tools`, so both take the same path.
//! - **`tools`** persists the assistant turn that asked for the calls, then runs the calls
//!   in parallel through mcp-broker. A call that fails (the server is down, the arguments
//!   are not JSON) becomes an error result the model sees, not a failed run.
//!
//! A decision node (the seed's) is one more `conditional` in [`build`]: the loop itself
//! does not change.

use std::time::{Duration, Instant};

use agentmesh_graph::{Graph, GraphBuilder, GraphError, Node, Route, Step};
use agentmesh_proto::agentmesh::agent::v1::{StepRestarted, ToolCall as CallEvent, ToolResult, run_event::Kind};
use agentmesh_proto::agentmesh::common::v1::content_part::Part;
use agentmesh_proto::agentmesh::common::v1::embedded_resource;
use agentmesh_proto::agentmesh::common::v1::{MessageRole, Usage};
use agentmesh_proto::agentmesh::llm::v1::{
    ChatMessage, ChatRequest, ToolCall as LlmToolCall, ToolDefinition, stream_chat_response,
};
use agentmesh_proto::agentmesh::mcp::v1::{InvokeToolRequest, Tool, invoke_tool_request};
use agentmesh_proto::agentmesh::session::v1::{CreateMessageRequest, ToolCall as SessionToolCall};
use agentmesh_proto::json::object_to_struct;
use async_trait::async_trait;
use futures::StreamExt;
use serde_json::{Value, json};
use tonic::Status;
use uuid::Uuid;

use super::output::OutputWriter;
use super::peers::{ActingFor, Peers};
use super::state::{AgentState, CallOutcome, CallRequest, Decision, PlannedCall, Speaker, Turn};
use crate::store::{AgentDefinition, RunUsage};

/// The node that calls the model.
pub const LLM: &str = "llm";
/// The node that runs tool calls.
pub const TOOLS: &str = "tools";

/// What a failed step failed at.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The model could not answer (every model tried failed).
    #[error("model call failed: {}", .0.message())]
    Model(Status),
    /// session-store refused or failed a write or read.
    #[error("session-store: {}", .0.message())]
    Session(Status),
}

impl StepError {
    /// The status the failure carries.
    pub fn status(&self) -> &Status {
        match self {
            Self::Model(status) | Self::Session(status) => status,
        }
    }
}

/// What every node of one run shares.
pub struct RunContext {
    /// The peers, acting for the run's user.
    pub peers: Peers,
    /// Who the run acts for.
    pub acting: ActingFor,
    /// The run's id.
    pub run_id: Uuid,
    /// The session.
    pub session_id: Uuid,
    /// The agent as it was when the run started.
    pub agent: AgentDefinition,
    /// The agent's tools (enabled ones), as mcp-broker describes them.
    pub tools: Vec<Tool>,
    /// Where the run's events go.
    pub output: OutputWriter,
    /// Time limit of one tool call.
    pub tool_timeout: Duration,
}

/// The agent graph.
pub type AgentGraph = Graph<AgentState, RunContext, StepError>;

/// Builds the default agent graph.
pub fn build() -> Result<AgentGraph, GraphError> {
    GraphBuilder::new()
        .node(LLM, ModelNode)
        .node(TOOLS, ToolNode)
        .entry(LLM)
        .conditional(LLM, route)
        .edge(TOOLS, LLM)
        .build()
}

/// Where to go after the model answered.
fn route(state: &AgentState) -> Route {
    if state.pending.is_empty() {
        return Route::End;
    }
    let waiting: Vec<&str> =
        state.pending.iter().filter(|call| call.is_undecided()).map(|call| call.request.id.as_str()).collect();
    if waiting.is_empty() {
        Route::To(TOOLS)
    } else {
        Route::Interrupt { node: TOOLS, reason: json!({ "tool_call_ids": waiting }) }
    }
}

/// Whether the agent's policy asks a human before `name` runs.
pub fn needs_approval(agent: &AgentDefinition, tools: &[Tool], name: &str) -> bool {
    if agent.approval.tools.iter().any(|tool| tool == name) {
        return true;
    }
    agent.approval.destructive_tools
        && tools
            .iter()
            .find(|tool| tool.name == name)
            .and_then(|tool| tool.annotations.as_ref())
            .is_some_and(|hints| hints.destructive_hint == Some(true) && hints.read_only_hint != Some(true))
}

/// Persists the turns not yet in the session, in order, each with a key derived from its
/// place in the run (the same on a replay), and announces each as a `message` event.
pub async fn persist_turns(state: &mut AgentState, context: &RunContext) -> Result<(), StepError> {
    for index in 0..state.turns.len() {
        if state.turns[index].message_id.is_some() {
            continue;
        }
        let parent = state.last_message_id();
        let turn = &state.turns[index];
        let request = CreateMessageRequest {
            session_id: context.session_id.to_string(),
            content: turn.content.clone(),
            role: speaker_role(turn.speaker) as i32,
            metadata: Some(object_to_struct(&serde_json::Map::from_iter([(
                "run_id".to_owned(),
                Value::String(context.run_id.to_string()),
            )]))),
            tool_calls: turn
                .tool_calls
                .iter()
                .map(|call| SessionToolCall {
                    id: call.id.clone(),
                    name: call.name.clone(),
                    arguments: session_arguments(&call.arguments_json),
                })
                .collect(),
            tool_call_id: turn.tool_call_id.clone(),
            parent_message_id: parent.map(|id| id.to_string()),
        };
        let key = format!("run:{}:turn:{index}", context.run_id);
        let message = context.peers.append_message(&context.acting, request, &key).await.map_err(StepError::Session)?;
        state.turns[index].message_id = message.id.parse().ok();
        context.output.event(Kind::Message(message));
    }
    Ok(())
}

/// session-store keeps tool-call arguments as JSON text and refuses text that is not
/// JSON; a model's malformed arguments are kept as a JSON string of that text instead.
fn session_arguments(arguments_json: &str) -> String {
    if serde_json::from_str::<Value>(arguments_json).is_ok() {
        arguments_json.to_owned()
    } else {
        Value::String(arguments_json.to_owned()).to_string()
    }
}

fn speaker_role(speaker: Speaker) -> MessageRole {
    match speaker {
        Speaker::User => MessageRole::User,
        Speaker::Assistant => MessageRole::Assistant,
        Speaker::Tool => MessageRole::Tool,
    }
}

/// The model call.
struct ModelNode;

#[async_trait]
impl Node<AgentState, RunContext, StepError> for ModelNode {
    async fn run(&self, state: &mut AgentState, step: &Step<'_, RunContext>) -> Result<(), StepError> {
        let context = step.context;
        persist_turns(state, context).await?;
        let models = model_chain(&context.agent);
        let mut request = chat_request(state, context);
        let mut first = 0;
        loop {
            request.model = models[first].clone();
            request.fallback_models = models[first + 1..].to_vec();
            let attempt = stream_answer(&request, step.number, context).await;
            add_usage(&mut state.usage, attempt.usage.as_ref());
            match attempt.result {
                Ok(answer) => {
                    state.answered_by = Some(answer.model.clone()).filter(|model| !model.is_empty());
                    record_answer(state, answer.message, step.number, context);
                    return Ok(());
                }
                Err(failure) if failure.after_tokens => {
                    // Fall back past the model that failed mid-answer, if any is left.
                    let failed = models.iter().position(|model| *model == failure.model).unwrap_or(first);
                    let Some(next) = models.get(failed.max(first) + 1) else {
                        return Err(StepError::Model(failure.status));
                    };
                    context.output.event(Kind::StepRestarted(StepRestarted {
                        step: step.number,
                        reason: format!("the model failed mid-answer: {}", failure.status.message()),
                        model: Some(next.clone()).filter(|model| !model.is_empty()),
                    }));
                    first = failed.max(first) + 1;
                }
                Err(failure) => return Err(StepError::Model(failure.status)),
            }
        }
    }
}

/// The agent's model, then its fallbacks; `""` is llm-proxy's default model.
fn model_chain(agent: &AgentDefinition) -> Vec<String> {
    let mut chain = vec![agent.model.model.clone().unwrap_or_default()];
    chain.extend(agent.model.fallback_models.iter().cloned());
    chain
}

/// The model request: system prompt, history, the run's turns, the tools.
fn chat_request(state: &AgentState, context: &RunContext) -> ChatRequest {
    let agent = &context.agent;
    let mut messages = Vec::with_capacity(state.history.len() + state.turns.len() + 1);
    if let Some(prompt) = agent.system_prompt.as_ref().filter(|prompt| !prompt.is_empty()) {
        messages.push(ChatMessage {
            role: MessageRole::System as i32,
            content: prompt.clone(),
            ..ChatMessage::default()
        });
    }
    // Tool results name their tool, as some providers require.
    let tool_names: std::collections::HashMap<&str, &str> = state
        .history
        .iter()
        .chain(state.turns.iter())
        .flat_map(|turn| turn.tool_calls.iter().map(|call| (call.id.as_str(), call.name.as_str())))
        .collect();
    messages.extend(state.history.iter().chain(state.turns.iter()).map(|turn| {
        ChatMessage {
            name: turn.tool_call_id.as_deref().and_then(|id| tool_names.get(id)).map(|name| (*name).to_owned()),
            role: speaker_role(turn.speaker) as i32,
            content: turn.content.clone(),
            tool_calls: turn
                .tool_calls
                .iter()
                .map(|call| LlmToolCall {
                    id: call.id.clone(),
                    name: call.name.clone(),
                    arguments_json: call.arguments_json.clone(),
                })
                .collect(),
            tool_call_id: turn.tool_call_id.clone(),
            is_error: turn.is_error,
            ..ChatMessage::default()
        }
    }));
    ChatRequest {
        messages,
        tools: context
            .tools
            .iter()
            .map(|tool| ToolDefinition {
                name: tool.name.clone(),
                description: tool.description.clone(),
                parameters: tool.schema.clone(),
            })
            .collect(),
        temperature: agent.model.temperature,
        top_p: agent.model.top_p,
        max_tokens: agent.model.max_tokens.and_then(|tokens| i32::try_from(tokens).ok()),
        metadata: Some(object_to_struct(&serde_json::Map::from_iter([
            ("run_id".to_owned(), Value::String(context.run_id.to_string())),
            ("session_id".to_owned(), Value::String(context.session_id.to_string())),
        ]))),
        ..ChatRequest::default()
    }
}

/// A complete answer of one model call.
struct Answer {
    model: String,
    message: ChatMessage,
}

/// Why a model call gave no complete answer.
struct Failure {
    status: Status,
    /// The model that failed (empty when unknown).
    model: String,
    /// Whether it failed after the answer had started (text or tool-call fragments):
    /// llm-proxy has then committed to that model and does not fall back.
    after_tokens: bool,
}

/// One streamed model call and the usage it reported (spent even when it failed).
struct Attempt {
    result: Result<Answer, Failure>,
    usage: Option<Usage>,
}

async fn stream_answer(request: &ChatRequest, step: u32, context: &RunContext) -> Attempt {
    let mut usage = None;
    let mut stream = match context.peers.stream_chat(&context.acting, request.clone()).await {
        Ok(stream) => stream,
        Err(status) => {
            return Attempt {
                result: Err(Failure { status, model: request.model.clone(), after_tokens: false }),
                usage,
            };
        }
    };
    let mut model = request.model.clone();
    let mut after_tokens = false;
    loop {
        match stream.next().await {
            Some(Ok(event)) => {
                if !event.model.is_empty() {
                    model.clone_from(&event.model);
                }
                match event.event {
                    Some(stream_chat_response::Event::Content(delta)) => {
                        after_tokens |= !delta.text.is_empty();
                        context.output.token(step, storable(delta.text));
                    }
                    Some(stream_chat_response::Event::Usage(reported)) => usage = Some(reported),
                    Some(stream_chat_response::Event::Finish(finish)) => {
                        let result = match (finish.error, finish.message) {
                            (Some(error), _) => Err(Failure {
                                status: agentmesh_runtime::ApiError::from_detail(&error).into(),
                                model,
                                after_tokens,
                            }),
                            (None, Some(message)) => Ok(Answer { model, message }),
                            (None, None) => Err(Failure {
                                status: Status::internal("llm-proxy finished without a message"),
                                model,
                                after_tokens,
                            }),
                        };
                        return Attempt { result, usage };
                    }
                    // Not announced until the answer is complete, but the answer has
                    // started: llm-proxy no longer falls back.
                    Some(stream_chat_response::Event::ToolCall(_)) => after_tokens = true,
                    None => {}
                }
            }
            Some(Err(status)) => return Attempt { result: Err(Failure { status, model, after_tokens }), usage },
            None => {
                let status = Status::unavailable("the model stream ended without finishing");
                return Attempt { result: Err(Failure { status, model, after_tokens }), usage };
            }
        }
    }
}

fn add_usage(total: &mut RunUsage, usage: Option<&Usage>) {
    let Some(usage) = usage else { return };
    let count = |tokens: i64| u64::try_from(tokens).unwrap_or(0);
    total.prompt_tokens += count(usage.prompt_tokens);
    total.completion_tokens += count(usage.completion_tokens);
    total.cached_tokens += count(usage.cached_prompt_tokens);
    total.reasoning_tokens += count(usage.reasoning_tokens);
}

/// Records the model's answer as a turn, plans its calls and announces them.
fn record_answer(state: &mut AgentState, message: ChatMessage, step: u32, context: &RunContext) {
    let calls: Vec<CallRequest> = message
        .tool_calls
        .into_iter()
        .map(|call| CallRequest { id: call.id, name: call.name, arguments_json: storable(call.arguments_json) })
        .collect();
    state.pending = calls
        .iter()
        .map(|request| PlannedCall {
            request: request.clone(),
            step,
            needs_approval: needs_approval(&context.agent, &context.tools, &request.name),
            decision: None,
        })
        .collect();
    for call in &state.pending {
        context.output.event(Kind::ToolCall(CallEvent {
            id: call.request.id.clone(),
            name: call.request.name.clone(),
            step,
            arguments_json: call.request.arguments_json.clone(),
            requires_approval: call.needs_approval,
        }));
    }
    state.turns.push(Turn { tool_calls: calls, ..Turn::new(Speaker::Assistant, storable(message.content)) });
}

/// A model's (or a tool's) text as the run can keep it: NUL characters, which
/// session-store refuses and PostgreSQL cannot hold in text or JSON, become U+FFFD (the
/// replacement character), in the streamed events as in the stored messages, so both say
/// the same.
fn storable(text: String) -> String {
    if text.contains('\0') { text.replace('\0', "\u{FFFD}") } else { text }
}

/// The tool calls.
struct ToolNode;

#[async_trait]
impl Node<AgentState, RunContext, StepError> for ToolNode {
    async fn run(&self, state: &mut AgentState, step: &Step<'_, RunContext>) -> Result<(), StepError> {
        let context = step.context;
        persist_turns(state, context).await?;
        let calls = std::mem::take(&mut state.pending);
        let results = futures::future::join_all(calls.iter().map(|call| run_call(call, context))).await;
        for (call, (request, result, is_error)) in calls.iter().zip(results) {
            let mut turn = Turn::new(Speaker::Tool, result.clone());
            turn.tool_call_id = Some(call.request.id.clone());
            turn.is_error = is_error;
            state.turns.push(turn);
            state.calls.push(CallOutcome { request, result, is_error });
        }
        Ok(())
    }
}

/// Runs one call (or reports its rejection): the call as run, its result text and whether
/// it failed.
async fn run_call(call: &PlannedCall, context: &RunContext) -> (CallRequest, String, bool) {
    let started = Instant::now();
    let mut request = call.request.clone();
    let (content, structured, is_error) = match &call.decision {
        Some(Decision::Rejected { message }) => (message.clone(), None, true),
        Some(Decision::Approved { arguments_json }) => {
            request.arguments_json.clone_from(arguments_json);
            invoke(&request, context).await
        }
        None => invoke(&request, context).await,
    };
    context.output.event(Kind::ToolResult(ToolResult {
        tool_call_id: request.id.clone(),
        name: request.name.clone(),
        content: content.clone(),
        structured_content: structured,
        is_error,
        duration_ms: i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX),
    }));
    (request, content, is_error)
}

/// Calls the tool through mcp-broker: the result's text, its structured content, and
/// whether it is an error.
async fn invoke(call: &CallRequest, context: &RunContext) -> (String, Option<prost_types::Struct>, bool) {
    let arguments = match serde_json::from_str::<Value>(&call.arguments_json) {
        Ok(Value::Object(arguments)) => arguments,
        Ok(_) => return ("The arguments must be a JSON object.".to_owned(), None, true),
        Err(error) => return (format!("The arguments are not valid JSON: {error}."), None, true),
    };
    let request = InvokeToolRequest {
        tool: Some(invoke_tool_request::Tool::ToolName(call.name.clone())),
        arguments: Some(object_to_struct(&arguments)),
        session_id: Some(context.session_id.to_string()),
        run_id: Some(context.run_id.to_string()),
        timeout_ms: i64::try_from(context.tool_timeout.as_millis()).ok(),
    };
    match context.peers.invoke_tool(&context.acting, request).await {
        Ok(response) => (storable(result_text(&response.content)), response.structured_content, response.is_error),
        Err(status) => (format!("The tool {} failed: {}", call.name, status.message()), None, true),
    }
}

/// The text a model gets for a tool's content: text parts as they are, other parts named.
fn result_text(content: &[agentmesh_proto::agentmesh::common::v1::ContentPart]) -> String {
    let parts: Vec<String> = content
        .iter()
        .filter_map(|part| match part.part.as_ref()? {
            Part::Text(text) => Some(text.clone()),
            Part::Image(image) => Some(format!("[image: {}]", image.mime_type)),
            Part::Audio(audio) => Some(format!("[audio: {}]", audio.mime_type)),
            Part::ResourceLink(link) => Some(format!("[resource link: {}]", link.uri)),
            Part::Resource(resource) => match &resource.contents {
                Some(embedded_resource::Contents::Text(text)) => Some(text.clone()),
                _ => Some(format!("[resource: {}]", resource.uri)),
            },
        })
        .collect();
    parts.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_characters_become_replacement_characters_and_other_text_stays() {
        assert_eq!(storable("a\0b\0".to_owned()), "a\u{FFFD}b\u{FFFD}");
        assert_eq!(storable("plain ünïcode".to_owned()), "plain ünïcode");
    }
}
