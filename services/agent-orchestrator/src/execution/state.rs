//! What a run knows between steps: the graph state that every checkpoint saves.
//!
//! The state holds the conversation the model sees (the session's history window and the
//! run's own turns), the tool calls waiting to run (with a human's decision, when the agent
//! asks for one), usage, and which turns are already in the session. Turns are persisted
//! *after* the checkpoint that holds them, by the next step (or at the run's end), with an
//! idempotency key derived from the run and the turn's index: a step replayed after a crash
//! sends the same message with the same key, so the session never holds a duplicate, and a
//! turn that was never checkpointed was never persisted, so it holds no orphan either.

use agentmesh_graph::GraphState;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::store::RunUsage;

/// Who wrote a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Speaker {
    /// The user.
    User,
    /// The model.
    Assistant,
    /// A tool's result.
    Tool,
}

/// A tool call as the model made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRequest {
    /// The model's id for the call.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments exactly as the model wrote them.
    pub arguments_json: String,
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    /// Who wrote it.
    pub speaker: Speaker,
    /// Its text.
    pub content: String,
    /// The calls an assistant turn asks for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<CallRequest>,
    /// The call a tool turn answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// A tool turn reporting a failure.
    #[serde(default)]
    pub is_error: bool,
    /// The session message holding it, once persisted (history turns always have one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<Uuid>,
}

impl Turn {
    /// A turn of `speaker` saying `content`.
    pub fn new(speaker: Speaker, content: impl Into<String>) -> Self {
        Self {
            speaker,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
            is_error: false,
            message_id: None,
        }
    }
}

/// A human's decision on a call that needed approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "decision")]
pub enum Decision {
    /// Run it, with these arguments.
    Approved {
        /// The arguments to call with (the model's, or a human's edit).
        arguments_json: String,
    },
    /// Do not run it; tell the model this instead.
    Rejected {
        /// What the model is told.
        message: String,
    },
}

/// A tool call the tool node is to run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedCall {
    /// The call.
    pub request: CallRequest,
    /// The step that asked for it.
    pub step: u32,
    /// Whether it waits for a human's decision.
    pub needs_approval: bool,
    /// The decision, once made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
}

impl PlannedCall {
    /// Whether it still waits for a human.
    pub fn is_undecided(&self) -> bool {
        self.needs_approval && self.decision.is_none()
    }
}

/// A finished tool call, for the execution response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallOutcome {
    /// The call as run.
    pub request: CallRequest,
    /// Its result text.
    pub result: String,
    /// Whether it failed (or was rejected).
    pub is_error: bool,
}

/// The state of one run's graph.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    /// The session's recent messages, as loaded when the run started (the user message
    /// that started the run is the last one).
    pub history: Vec<Turn>,
    /// What the run added: assistant and tool turns.
    pub turns: Vec<Turn>,
    /// The calls of the last assistant turn still to run.
    pub pending: Vec<PlannedCall>,
    /// Every call made so far, with its result.
    pub calls: Vec<CallOutcome>,
    /// Tokens spent so far.
    pub usage: RunUsage,
    /// The model and provider of the last answer, for the response metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answered_by: Option<String>,
}

impl AgentState {
    /// The last session message the run wrote or read: the parent of the next one.
    pub fn last_message_id(&self) -> Option<Uuid> {
        self.history.iter().chain(self.turns.iter()).rev().find_map(|turn| turn.message_id)
    }

    /// The final answer: the last assistant turn, when it asks for no call.
    pub fn answer(&self) -> Option<&Turn> {
        self.turns.last().filter(|turn| turn.speaker == Speaker::Assistant && turn.tool_calls.is_empty())
    }
}

impl GraphState for AgentState {
    fn tokens_used(&self) -> u64 {
        self.usage.total()
    }
}
