//! A scripted agent for the engine's tests: a model that replays canned replies, fake tools
//! that run a step's calls in parallel, the routers of the default agent loop (plain, with
//! approval, with a decision node), a node that never finishes, and checkpointers that
//! record, fail or cancel. Each test binary uses part of it.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use agentmesh_graph::{
    CancellationToken, Checkpoint, Checkpointer, Graph, GraphBuilder, GraphState, Limits, Next, Node, Outcome, Route,
    Step,
};
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{Barrier, Notify};

/// How long a run may take before the test calls it deadlocked (sequential tool calls
/// waiting on each other, a cancel not honoured). Not a speed check: runs take
/// milliseconds.
const DEADLOCK_GUARD: Duration = Duration::from_secs(30);

/// Tokens the scripted model charges per reply.
pub const TOKENS_PER_REPLY: u64 = 100;

/// Tools that need the caller's approval before they run.
const DESTRUCTIVE_TOOLS: [&str; 1] = ["delete_file"];

/// A tool call the model asked for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// Unique in the run: `call-<model turn>-<index>`.
    pub id: String,
    /// The tool's name.
    pub tool: String,
    /// Its one argument.
    pub argument: String,
}

/// The transcript of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Message {
    /// The model's final answer.
    Assistant(String),
    /// The model asked for these calls.
    ToolCalls(Vec<ToolCall>),
    /// A call's result (or its rejection).
    ToolResult { call_id: String, output: String },
    /// Written by a node that is then cancelled; must never be seen.
    HalfWritten,
}

/// The state of the test agent.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    /// Everything said so far.
    pub messages: Vec<Message>,
    /// Calls the model asked for that have not run yet.
    pub pending: Vec<ToolCall>,
    /// Whether the caller approved the pending destructive calls.
    pub approved: bool,
    /// The model's final answer.
    pub answer: Option<String>,
    /// Written by the summarise node.
    pub summary: Option<String>,
    /// Replies consumed: the index of the model's next reply.
    pub model_turns: usize,
    /// The step numbers the model ran at.
    pub model_steps: Vec<u32>,
    /// Tokens charged by the model.
    pub tokens: u64,
}

impl GraphState for AgentState {
    fn tokens_used(&self) -> u64 {
        self.tokens
    }
}

/// Shared by the nodes of a run: lets a test see inside a blocked node.
#[derive(Default)]
pub struct Probe {
    /// Notified when the blocked node has started.
    pub blocked_started: Notify,
    /// Set when the blocked node's future is dropped.
    pub blocked_dropped: AtomicBool,
}

/// Why a test node failed.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum AgentError {
    /// The model was asked for more replies than its script has.
    #[error("the script has no reply {0}")]
    ScriptExhausted(usize),
}

/// The graph type of these tests.
pub type AgentGraph = Graph<AgentState, Probe, AgentError>;

/// One canned model reply.
#[derive(Clone, Debug)]
pub enum Reply {
    /// Asks for these `(tool, argument)` calls, to run at once.
    Calls(Vec<(&'static str, &'static str)>),
    /// The final answer.
    Answer(&'static str),
}

/// A model that replays its replies in order, picking the next by the state (so a resumed
/// run continues the script where the checkpoint left it).
pub struct ScriptedModel {
    replies: Vec<Reply>,
}

impl ScriptedModel {
    /// A model that gives `replies`, in order.
    pub fn new(replies: Vec<Reply>) -> Self {
        Self { replies }
    }
}

#[async_trait]
impl Node<AgentState, Probe, AgentError> for ScriptedModel {
    async fn run(&self, state: &mut AgentState, step: &Step<'_, Probe>) -> Result<(), AgentError> {
        // Tokens are charged and the turn counted before the reply is read, so a failing
        // model step has half-written the state it is given.
        let turn = state.model_turns;
        state.model_turns += 1;
        state.tokens += TOKENS_PER_REPLY;
        state.model_steps.push(step.number);
        match self.replies.get(turn).ok_or(AgentError::ScriptExhausted(turn))? {
            Reply::Calls(calls) => {
                let calls: Vec<ToolCall> = calls
                    .iter()
                    .enumerate()
                    .map(|(index, (tool, argument))| ToolCall {
                        id: format!("call-{turn}-{index}"),
                        tool: (*tool).to_owned(),
                        argument: (*argument).to_owned(),
                    })
                    .collect();
                state.messages.push(Message::ToolCalls(calls.clone()));
                state.pending = calls;
            }
            Reply::Answer(answer) => {
                state.messages.push(Message::Assistant((*answer).to_owned()));
                state.answer = Some((*answer).to_owned());
            }
        }
        Ok(())
    }
}

/// The output a fake tool gives for a call.
pub fn tool_output(tool: &str, argument: &str) -> String {
    format!("{tool}:{argument}")
}

/// Runs the pending calls all at once. Every call waits on one barrier sized to the number
/// of calls, so that calls run one after another would wait forever.
pub struct FakeTools;

#[async_trait]
impl Node<AgentState, Probe, AgentError> for FakeTools {
    async fn run(&self, state: &mut AgentState, _step: &Step<'_, Probe>) -> Result<(), AgentError> {
        let calls = std::mem::take(&mut state.pending);
        let barrier = Barrier::new(calls.len());
        let results = futures::future::join_all(calls.iter().map(|call| async {
            barrier.wait().await;
            Message::ToolResult { call_id: call.id.clone(), output: tool_output(&call.tool, &call.argument) }
        }))
        .await;
        state.messages.extend(results);
        state.approved = false;
        Ok(())
    }
}

/// The decision node: does no work itself; its router reads the state.
pub struct Decide;

#[async_trait]
impl Node<AgentState, Probe, AgentError> for Decide {
    async fn run(&self, _state: &mut AgentState, _step: &Step<'_, Probe>) -> Result<(), AgentError> {
        Ok(())
    }
}

/// Answers longer than this many words are summarised.
const SUMMARY_OVER_WORDS: usize = 3;

/// Summarises the answer (by counting its words).
pub struct Summarise;

#[async_trait]
impl Node<AgentState, Probe, AgentError> for Summarise {
    async fn run(&self, state: &mut AgentState, _step: &Step<'_, Probe>) -> Result<(), AgentError> {
        let words = state.answer.as_deref().map_or(0, |answer| answer.split_whitespace().count());
        state.summary = Some(format!("{words} words"));
        Ok(())
    }
}

/// Sets a flag when dropped.
struct DropFlag<'a>(&'a AtomicBool);

impl Drop for DropFlag<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Writes to its state, says it has started, then never finishes.
pub struct Blocked;

#[async_trait]
impl Node<AgentState, Probe, AgentError> for Blocked {
    async fn run(&self, state: &mut AgentState, step: &Step<'_, Probe>) -> Result<(), AgentError> {
        let _dropped = DropFlag(&step.context.blocked_dropped);
        state.messages.push(Message::HalfWritten);
        step.context.blocked_started.notify_one();
        std::future::pending::<()>().await;
        Ok(())
    }
}

/// After the model: run the calls it asked for, else the run is done.
pub fn after_model(state: &AgentState) -> Route {
    if state.pending.is_empty() { Route::End } else { Route::To("tools") }
}

/// After the model, with approval: destructive calls not yet approved stop the run, to go
/// on at the tools once approved.
pub fn after_model_with_approval(state: &AgentState) -> Route {
    let awaiting: Vec<&str> = state
        .pending
        .iter()
        .filter(|call| DESTRUCTIVE_TOOLS.contains(&call.tool.as_str()))
        .map(|call| call.id.as_str())
        .collect();
    if awaiting.is_empty() || state.approved {
        after_model(state)
    } else {
        Route::Interrupt { node: "tools", reason: json!({ "approve": awaiting }) }
    }
}

/// After the decision node: tools when calls are pending, a summary for a long answer.
pub fn after_decision(state: &AgentState) -> Route {
    let long_answer =
        state.answer.as_deref().is_some_and(|answer| answer.split_whitespace().count() > SUMMARY_OVER_WORDS);
    match after_model(state) {
        Route::End if long_answer => Route::To("summarise"),
        route => route,
    }
}

/// The default agent loop: `llm` → (calls pending) `tools` → `llm` … until an answer, with
/// `router` deciding after the model.
pub fn agent_loop(replies: Vec<Reply>, router: fn(&AgentState) -> Route) -> AgentGraph {
    GraphBuilder::new()
        .node("llm", ScriptedModel::new(replies))
        .node("tools", FakeTools)
        .entry("llm")
        .conditional("llm", router)
        .edge("tools", "llm")
        .build()
        .unwrap()
}

/// The default loop with the decision node after the model, and a summarise node it may
/// route to; the loop itself is as in [`agent_loop`].
pub fn agent_loop_with_decision(replies: Vec<Reply>) -> AgentGraph {
    GraphBuilder::new()
        .node("llm", ScriptedModel::new(replies))
        .node("decide", Decide)
        .node("tools", FakeTools)
        .node("summarise", Summarise)
        .entry("llm")
        .edge("llm", "decide")
        .conditional("decide", after_decision)
        .edge("tools", "llm")
        .end_after("summarise")
        .build()
        .unwrap()
}

/// Two rounds of tool calls (three, then two at once), then a final answer: five steps.
pub fn two_rounds_then_answer() -> Vec<Reply> {
    vec![
        Reply::Calls(vec![("read", "a"), ("read", "b"), ("read", "c")]),
        Reply::Calls(vec![("search", "x"), ("search", "y")]),
        Reply::Answer("the answer is forty two"),
    ]
}

/// A model that asks for one more tool call forever (as far as a test goes).
pub fn endless_tool_calls() -> Vec<Reply> {
    vec![Reply::Calls(vec![("read", "again")]); 20]
}

/// `max_steps` steps, no token budget.
pub fn max_steps(max_steps: u32) -> Limits {
    Limits { max_steps, ..Limits::default() }
}

/// Runs `run` to its end, failing the test if it takes so long that it must be deadlocked.
pub async fn guarded<F: Future>(run: F) -> F::Output {
    tokio::time::timeout(DEADLOCK_GUARD, run).await.expect("the run deadlocked")
}

/// A run of `graph` from an empty state, checkpointed into `checkpoints`.
pub async fn run_agent(graph: &AgentGraph, limits: &Limits, checkpoints: &Recorder) -> Outcome<AgentState, AgentError> {
    guarded(graph.run(AgentState::default(), &Probe::default(), limits, &CancellationToken::new(), checkpoints)).await
}

/// A resume of `graph` from `checkpoint`, checkpointed into `checkpoints`.
pub async fn resume_agent(
    graph: &AgentGraph,
    checkpoint: Checkpoint<AgentState>,
    continue_at: Option<&str>,
    limits: &Limits,
    checkpoints: &Recorder,
) -> Outcome<AgentState, AgentError> {
    let cancel = CancellationToken::new();
    guarded(graph.resume(checkpoint, continue_at, &Probe::default(), limits, &cancel, checkpoints)).await
}

/// A checkpoint store that is down.
#[derive(Debug, thiserror::Error)]
#[error("checkpoint store unavailable at step {0}")]
pub struct StoreDown(pub u32);

/// Records every checkpoint as JSON, as a store would; can fail from a step on, or cancel
/// the run once a step is saved.
#[derive(Default)]
pub struct Recorder {
    /// The checkpoints saved, in order, serialised.
    saved: Mutex<Vec<String>>,
    /// Saves of this step and later fail.
    fail_from: Option<u32>,
    /// Once this step is saved, the token is cancelled.
    cancel_after: Option<(u32, CancellationToken)>,
}

impl Recorder {
    /// Saves everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Fails to save step `step` and any later one (a crash after step `step - 1`).
    pub fn failing_from(step: u32) -> Self {
        Self { fail_from: Some(step), ..Self::default() }
    }

    /// Cancels `cancel` once step `step` is saved.
    pub fn cancelling_after(step: u32, cancel: CancellationToken) -> Self {
        Self { cancel_after: Some((step, cancel)), ..Self::default() }
    }

    /// The checkpoints saved, read back from their JSON.
    pub fn saved(&self) -> Vec<Checkpoint<AgentState>> {
        self.saved.lock().unwrap().iter().map(|text| serde_json::from_str(text).unwrap()).collect()
    }

    /// The last checkpoint saved.
    pub fn last(&self) -> Checkpoint<AgentState> {
        self.saved().pop().expect("no checkpoint was saved")
    }

    /// The step numbers saved, in order.
    pub fn steps(&self) -> Vec<u32> {
        self.saved().iter().map(|checkpoint| checkpoint.step).collect()
    }

    /// What came next at each checkpoint, in order.
    pub fn nexts(&self) -> Vec<Next> {
        self.saved().into_iter().map(|checkpoint| checkpoint.next).collect()
    }
}

#[async_trait]
impl Checkpointer<AgentState> for Recorder {
    type Error = StoreDown;

    async fn save(&self, checkpoint: &Checkpoint<AgentState>) -> Result<(), StoreDown> {
        if self.fail_from.is_some_and(|step| checkpoint.step >= step) {
            return Err(StoreDown(checkpoint.step));
        }
        self.saved.lock().unwrap().push(serde_json::to_string(checkpoint).unwrap());
        if let Some((step, cancel)) = &self.cancel_after
            && *step == checkpoint.step
        {
            cancel.cancel();
        }
        Ok(())
    }
}

/// The reference: the state and step count of `replies` run through [`agent_loop`] with
/// nothing in the way.
pub async fn uninterrupted(replies: Vec<Reply>) -> (AgentState, u32) {
    match run_agent(&agent_loop(replies, after_model), &Limits::default(), &Recorder::new()).await {
        Outcome::Finished { state, steps } => (state, steps),
        other => panic!("the reference run did not finish: {other:?}"),
    }
}
