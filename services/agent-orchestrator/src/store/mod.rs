//! Where agents, runs and checkpoints live: one trait, one module per backend.
//!
//! [`OrchestratorStore`] is the whole storage contract of agent-orchestrator. Both backends —
//! memory (development) and PostgreSQL (schema `agent_orchestrator`) — implement exactly the
//! same behaviour, checked by one conformance suite (`tests/conformance`). The service layer
//! validates input; a store answers for consistency:
//!
//! - **Ownership.** Agents and runs belong to a user. Every read and write takes the owner,
//!   and another user's record is [`StoreError::NotFound`], as if it did not exist.
//! - **Names.** An agent's name is unique among its owner's agents ([`StoreError::NameTaken`]).
//! - **One writer per session.** At most one run *holds* a session (is `running` or
//!   `requires_action`, or `queued` as the next to run). [`OrchestratorStore::admit_run`]
//!   admits a new run by the session's [`Admission`] policy, atomically, so two replicas
//!   racing on one session cannot both start a run.
//! - **Idempotency.** A run created with an idempotency key is the only run of its owner
//!   with that key; admitting another returns the first ([`Admitted::Existing`]).
//! - **Leases.** A running run is leased by the replica executing it, which renews the lease
//!   while it works. A run whose lease ran out (its replica died) is claimed by another
//!   replica through [`OrchestratorStore::claim_abandoned_runs`], which resumes it from its
//!   checkpoint or fails it — so no run is left hanging.
//! - **Agent status** is derived from the agent's runs and kept up to date by every run
//!   transition (see `Agent.status` in the contract).
//! - **Events.** Every change emits its domain event (`agent.created/updated/deleted`,
//!   `run.started/completed/failed/cancelled/requires_action`): memory through the
//!   [`EventSink`](crate::events::EventSink) it was built with, PostgreSQL through its
//!   transactional outbox, so an acknowledged write never loses its event.
//! - **Order.** Lists are newest first by id: ids are UUID v7, so id order is creation
//!   order, and the id of a page's last item is the cursor of the next page.
//!
//! What a transition does to a run, and how an agent's status follows from its runs, is
//! written once in [`lifecycle`], which both backends apply.

pub mod lifecycle;
pub mod memory;
pub mod postgres;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// One page of a listing (newest first, by id).
pub use agentmesh_runtime::paging::Page;

/// A JSON object (`metadata`).
pub type JsonObject = Map<String, Value>;

/// An agent's model settings (the contract's `ModelConfig`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ModelSettings {
    /// Model or alias; `None` means llm-proxy's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Longest answer per model call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// Models tried in order after the first fails.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallback_models: Vec<String>,
    /// Most graph steps per run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_steps: Option<u32>,
    /// Most tokens per run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_budget: Option<u64>,
    /// Session messages sent as history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history_messages: Option<u32>,
    /// Nucleus sampling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_p: Option<f64>,
}

/// Which tool calls need approval (the contract's `ApprovalPolicy`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Tools that always need approval.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    /// Tools annotated as destructive need approval too.
    #[serde(default)]
    pub destructive_tools: bool,
}

/// What an execute does while another run holds its session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Concurrency {
    /// 409 `conflict`.
    #[default]
    Reject,
    /// Queue behind the holder.
    Enqueue,
    /// Cancel the holder, then run.
    Interrupt,
}

/// An agent's execution status, derived from its runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum AgentStatus {
    /// No run, or the last one was cancelled.
    #[default]
    Idle,
    /// A run is queued or running.
    Processing,
    /// A run waits for approval.
    Waiting,
    /// The last finished run failed.
    Error,
    /// The last finished run completed.
    Completed,
}

/// An agent's configuration as a client writes it: the whole of it on create and update.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentDefinition {
    /// Unique among the owner's agents.
    pub name: String,
    /// What it is for.
    pub description: Option<String>,
    /// Prepended to every conversation.
    pub system_prompt: Option<String>,
    /// Model settings.
    pub model: ModelSettings,
    /// Tool names it may call.
    pub tools: Vec<String>,
    /// Which calls need approval.
    pub approval: Approval,
    /// Session concurrency policy.
    pub concurrency: Concurrency,
    /// Free-form metadata.
    pub metadata: JsonObject,
}

/// A stored agent.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentRecord {
    /// UUID v7, generated by the store.
    pub id: Uuid,
    /// The owner.
    pub user_id: String,
    /// The configuration.
    pub definition: AgentDefinition,
    /// Derived from its runs.
    pub status: AgentStatus,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last configuration change (status changes do not count).
    pub updated_at: DateTime<Utc>,
}

/// Filters and page of a list of agents (most recently created first: by id, descending).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AgentQuery {
    /// Only this status.
    pub status: Option<AgentStatus>,
    /// Name or description contains this, case-insensitively.
    pub search: Option<String>,
    /// Page size.
    pub limit: u32,
    /// Rows to skip (ignored when `after` is set).
    pub offset: u64,
    /// Keyset cursor: only agents after this one in list order.
    pub after: Option<Uuid>,
}

/// A run's lifecycle status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Waiting for the session (enqueue policy) or for a worker.
    Queued,
    /// Executing.
    Running,
    /// Waiting for approval.
    RequiresAction,
    /// Final: answered.
    Completed,
    /// Final: failed.
    Failed,
    /// Final: cancelled.
    Cancelled,
}

impl RunStatus {
    /// Whether the run has reached a final status.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// Every status.
    pub const ALL: [RunStatus; 6] = [
        RunStatus::Queued,
        RunStatus::Running,
        RunStatus::RequiresAction,
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::Cancelled,
    ];

    /// The contract's lowercase name, also the stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::RequiresAction => "requires_action",
            RunStatus::Completed => "completed",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
        }
    }

    /// Parses the stored form.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// Token usage summed over a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunUsage {
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Prompt tokens read from a provider cache.
    pub cached_tokens: u64,
    /// Reasoning tokens.
    pub reasoning_tokens: u64,
}

impl RunUsage {
    /// Prompt plus completion tokens.
    pub fn total(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
}

/// Why a run failed or was cancelled: the contract's `ErrorDetail`, by its REST code.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunError {
    /// The seed's error code, e.g. `external_service_error`.
    pub code: String,
    /// For people.
    pub message: String,
    /// Structured details.
    #[serde(default)]
    pub details: JsonObject,
}

/// A tool call waiting for approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingToolCall {
    /// The model's call id.
    pub id: String,
    /// Tool name.
    pub name: String,
    /// Arguments as the model wrote them.
    pub arguments_json: String,
    /// The step that made the call.
    pub step: u32,
}

/// Who a run acts for: enough to mint the user's principal again after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunPrincipal {
    /// The user.
    pub user_id: String,
    /// The user's tenant.
    #[serde(default)]
    pub tenant: Option<String>,
    /// The user's tier.
    pub tier: String,
    /// The user's scopes when the run started.
    pub scopes: Vec<String>,
}

/// What the execute asked for, kept so a replica can run or resume it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRequest {
    /// The user's message.
    pub message: String,
    /// Cancel when the streaming client goes away.
    pub cancel_on_disconnect: bool,
}

/// A new run, before admission.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    /// Generated by the caller (UUID v7), so it can be named before it is stored.
    pub id: Uuid,
    /// The agent (which must exist and belong to the owner).
    pub agent_id: Uuid,
    /// The session.
    pub session_id: Uuid,
    /// The owner and the principal to act with.
    pub principal: RunPrincipal,
    /// The request.
    pub request: RunRequest,
    /// The client's idempotency key.
    pub idempotency_key: Option<String>,
    /// Free-form metadata from the request.
    pub metadata: JsonObject,
    /// Who starts the run when it may start at once. Set: such a run is stored `running`,
    /// leased to the starter (as [`RunTransition::Start`] would leave it) with its
    /// `run.started` event, by the admission itself. Unset: it is stored `queued`, for the
    /// caller to start.
    pub starter: Option<Starter>,
}

/// The replica that starts an admitted run, and how long its lease lasts unless renewed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Starter {
    /// The replica.
    pub owner: String,
    /// The lease.
    pub lease: Duration,
}

/// A stored run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRecord {
    /// UUID v7.
    pub id: Uuid,
    /// The agent executed.
    pub agent_id: Uuid,
    /// The session.
    pub session_id: Uuid,
    /// Owner and principal.
    pub principal: RunPrincipal,
    /// The request.
    pub request: RunRequest,
    /// Lifecycle status.
    pub status: RunStatus,
    /// The persisted user message, once appended.
    pub user_message_id: Option<Uuid>,
    /// The final assistant message.
    pub response_message_id: Option<Uuid>,
    /// Usage so far.
    pub usage: RunUsage,
    /// Why it failed or was cancelled.
    pub error: Option<RunError>,
    /// Graph steps done.
    pub step_count: u32,
    /// Calls waiting for approval (only while `requires_action`).
    pub pending_tool_calls: Vec<PendingToolCall>,
    /// The client's idempotency key.
    pub idempotency_key: Option<String>,
    /// Sequence of the last event published to the run's output.
    pub last_sequence: u64,
    /// Free-form metadata.
    pub metadata: JsonObject,
    /// Accepted.
    pub created_at: DateTime<Utc>,
    /// First started executing.
    pub started_at: Option<DateTime<Utc>>,
    /// Reached a final status.
    pub completed_at: Option<DateTime<Utc>>,
    /// The replica executing it, while running.
    pub lease_owner: Option<String>,
    /// When that lease runs out unless renewed.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Whether the run holds its session: the one running or waiting for approval, or the
    /// queued run next in line. False for runs queued behind it, for final runs, and for a
    /// run another run took the session from ([`Admission::Interrupt`]) until it is
    /// cancelled.
    pub holds_session: bool,
}

/// How [`OrchestratorStore::admit_run`] treats a session another run holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Refuse: [`StoreError::SessionBusy`] with the holder.
    Reject,
    /// Store the run `queued` behind the holder (and the other queued runs).
    Enqueue,
    /// Take the session from the holder, which is returned for the caller to cancel.
    Interrupt,
}

impl From<Concurrency> for Admission {
    fn from(concurrency: Concurrency) -> Self {
        match concurrency {
            Concurrency::Reject => Admission::Reject,
            Concurrency::Enqueue => Admission::Enqueue,
            Concurrency::Interrupt => Admission::Interrupt,
        }
    }
}

/// What admitting a run did.
#[derive(Debug, Clone, PartialEq)]
pub enum Admitted {
    /// The run was stored. `ready` is true when it holds the session and may start now
    /// (false: queued behind another run). `preempted` is the run it took the session from
    /// (interrupt policy), still in its old status, for the caller to cancel.
    Created {
        /// The stored run: `queued`, or `running` when it was ready and had a starter.
        run: RunRecord,
        /// Its agent's definition, as the admission read it.
        agent: Box<AgentDefinition>,
        /// Whether it holds the session and may start now.
        ready: bool,
        /// The run it took the session from (interrupt policy).
        preempted: Option<Box<RunRecord>>,
    },
    /// The owner already has a run with this idempotency key: that run, unchanged.
    Existing(RunRecord),
}

/// A change to a run, applied atomically with its agent's derived status and its event.
#[derive(Debug, Clone, PartialEq)]
pub enum RunTransition {
    /// queued → running (leased by `owner` for `lease`).
    Start {
        /// The replica executing it.
        owner: String,
        /// How long the lease lasts unless renewed.
        lease: Duration,
    },
    /// The user message was appended to the session.
    UserMessage {
        /// The persisted message.
        message_id: Uuid,
    },
    /// A step finished: progress that a crash must not lose (with the checkpoint, which
    /// is saved separately). `last_sequence` is the output published so far.
    Progress {
        /// Graph steps done.
        step_count: u32,
        /// Usage so far.
        usage: RunUsage,
        /// Sequence of the last event published.
        last_sequence: u64,
    },
    /// running → requires_action.
    RequireAction {
        /// The calls waiting for approval.
        pending: Vec<PendingToolCall>,
        /// Sequence of the last event published.
        last_sequence: u64,
    },
    /// requires_action → running (approved or rejected) under `owner`'s lease.
    Resume {
        /// The replica executing it.
        owner: String,
        /// How long the lease lasts unless renewed.
        lease: Duration,
    },
    /// → completed.
    Complete {
        /// The final assistant message.
        response_message_id: Option<Uuid>,
        /// Usage over the run.
        usage: RunUsage,
        /// Graph steps done.
        step_count: u32,
        /// Sequence of the last event published.
        last_sequence: u64,
    },
    /// → failed.
    Fail {
        /// Why.
        error: RunError,
        /// Sequence of the last event published.
        last_sequence: u64,
    },
    /// → cancelled (from any non-final status); `reason` goes to metadata `cancel_reason`.
    Cancel {
        /// Why, as the cancel request said.
        reason: Option<String>,
        /// Sequence of the last event published.
        last_sequence: u64,
    },
}

/// What a transition did. A transition into a final status releases the session: the
/// next queued run of the session (oldest first), if any, now holds it and is returned to
/// be started.
#[derive(Debug, Clone, PartialEq)]
pub struct Transitioned {
    /// The run after the transition.
    pub run: RunRecord,
    /// The queued run that now holds the session.
    pub next: Option<RunRecord>,
}

/// A finished step as [`OrchestratorStore::save_step`] records it.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedStep {
    /// Graph steps done (the checkpoint's step).
    pub step_count: u32,
    /// Usage so far.
    pub usage: RunUsage,
    /// Sequence of the last event published.
    pub last_sequence: u64,
    /// The engine's checkpoint after the step, as JSON text.
    pub checkpoint: String,
}

impl SavedStep {
    /// The progress it records.
    pub fn progress(&self) -> RunTransition {
        RunTransition::Progress { step_count: self.step_count, usage: self.usage, last_sequence: self.last_sequence }
    }
}

/// The latest checkpoint of a run: the graph engine's serialised checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCheckpoint {
    /// The last completed step.
    pub step: u32,
    /// The engine's checkpoint (`agentmesh_graph::Checkpoint<AgentState>`) as JSON text:
    /// written and read whole, so kept as text rather than as a tree of values.
    pub checkpoint: String,
    /// When it was saved.
    pub saved_at: DateTime<Utc>,
}

/// Filters and page of a session's runs (newest first: by id, descending).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunQuery {
    /// Page size.
    pub limit: u32,
    /// Rows to skip (ignored when `after` is set).
    pub offset: u64,
    /// Keyset cursor: only runs after this one in list order.
    pub after: Option<Uuid>,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such record (or it belongs to another user).
    #[error("not found")]
    NotFound,
    /// The owner already has an agent with this name.
    #[error("name {0:?} is taken")]
    NameTaken(String),
    /// Another run holds the session (reject policy).
    #[error("session is busy with run {}", .0.id)]
    SessionBusy(Box<RunRecord>),
    /// The transition does not apply to the run's status (e.g. approving a running run,
    /// completing a cancelled one); carries the run as it is.
    #[error("run {} is {:?}", .0.id, .0.status)]
    InvalidTransition(Box<RunRecord>),
    /// The backend cannot be reached.
    #[error("storage unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Anything else.
    #[error("storage failure: {0}")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The storage contract of agent-orchestrator.
#[async_trait]
pub trait OrchestratorStore: Send + Sync + 'static {
    /// Creates an agent owned by `user_id`.
    async fn create_agent(&self, user_id: &str, agent: AgentDefinition) -> Result<AgentRecord, StoreError>;

    /// The owner's agent.
    async fn get_agent(&self, user_id: &str, id: Uuid) -> Result<AgentRecord, StoreError>;

    /// A page of the owner's agents.
    async fn list_agents(&self, user_id: &str, query: &AgentQuery) -> Result<Page<AgentRecord>, StoreError>;

    /// Replaces the owner's agent's definition.
    async fn update_agent(&self, user_id: &str, id: Uuid, agent: AgentDefinition) -> Result<AgentRecord, StoreError>;

    /// Deletes the owner's agent. Its runs stay (they are history); the service cancels
    /// the agent's unfinished runs before it deletes the agent.
    async fn delete_agent(&self, user_id: &str, id: Uuid) -> Result<AgentRecord, StoreError>;

    /// Stores a run by `admission`, or else by its agent's own concurrency policy (see
    /// [`Admitted`]); `NotFound` when the agent is not the owner's. An admitted run that
    /// holds the session and may start is started by the admission when it names a
    /// [`NewRun::starter`]; otherwise it is stored `queued` too, and the caller starts it
    /// with [`RunTransition::Start`].
    async fn admit_run(&self, run: NewRun, admission: Option<Admission>) -> Result<Admitted, StoreError>;

    /// The owner's run.
    async fn get_run(&self, user_id: &str, id: Uuid) -> Result<RunRecord, StoreError>;

    /// Any run, for the replica executing it (no owner check).
    async fn load_run(&self, id: Uuid) -> Result<RunRecord, StoreError>;

    /// The owner's run started with this idempotency key.
    async fn find_run_by_key(&self, user_id: &str, key: &str) -> Result<Option<RunRecord>, StoreError>;

    /// A page of the owner's runs of one session.
    async fn list_session_runs(
        &self,
        user_id: &str,
        session_id: Uuid,
        query: &RunQuery,
    ) -> Result<Page<RunRecord>, StoreError>;

    /// The owner's agent's runs that have not reached a final status, oldest first (for
    /// the service to cancel before it deletes the agent).
    async fn list_unfinished_runs(&self, user_id: &str, agent_id: Uuid) -> Result<Vec<RunRecord>, StoreError>;

    /// Applies `transition` to the run; [`StoreError::InvalidTransition`] when the run's
    /// status does not allow it (a final run never changes again).
    async fn transition_run(&self, id: Uuid, transition: RunTransition) -> Result<Transitioned, StoreError>;

    /// Renews `owner`'s lease on its running runs; returns the ids it still holds (a run
    /// missing from the answer was taken over or ended elsewhere: stop executing it).
    async fn renew_leases(&self, owner: &str, ids: &[Uuid], lease: Duration) -> Result<Vec<Uuid>, StoreError>;

    /// Takes over up to `limit` running runs whose lease ran out (their replica died), and
    /// queued runs that hold their session but were not started within `lease` of getting
    /// it, leasing them to `owner` (oldest first; see [`lifecycle::is_abandoned`]). A
    /// claimed queued run stays queued: the claimer starts it. Concurrent claimers take
    /// disjoint runs.
    async fn claim_abandoned_runs(
        &self,
        owner: &str,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<RunRecord>, StoreError>;

    /// Saves the run's latest checkpoint (replacing the previous one).
    async fn save_checkpoint(&self, run_id: Uuid, step: u32, checkpoint: String) -> Result<(), StoreError>;

    /// A step finished: saves its checkpoint and the run's [`RunTransition::Progress`]
    /// together (one write, where the backend allows). Like the transition, only a running
    /// run progresses.
    async fn save_step(&self, run_id: Uuid, step: SavedStep) -> Result<(), StoreError>;

    /// The run's latest checkpoint.
    async fn load_checkpoint(&self, run_id: Uuid) -> Result<Option<StoredCheckpoint>, StoreError>;

    /// Whether the backend is reachable (readiness and the dependency probe).
    async fn ping(&self) -> Result<(), StoreError>;
}

impl AgentStatus {
    /// Every status.
    pub const ALL: [AgentStatus; 5] =
        [AgentStatus::Idle, AgentStatus::Processing, AgentStatus::Waiting, AgentStatus::Error, AgentStatus::Completed];

    /// The contract's lowercase name, also the stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentStatus::Idle => "idle",
            AgentStatus::Processing => "processing",
            AgentStatus::Waiting => "waiting",
            AgentStatus::Error => "error",
            AgentStatus::Completed => "completed",
        }
    }

    /// Parses the stored form.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

impl Concurrency {
    /// Every policy.
    pub const ALL: [Concurrency; 3] = [Concurrency::Reject, Concurrency::Enqueue, Concurrency::Interrupt];

    /// The contract's lowercase name, also the stored form.
    pub fn as_str(self) -> &'static str {
        match self {
            Concurrency::Reject => "reject",
            Concurrency::Enqueue => "enqueue",
            Concurrency::Interrupt => "interrupt",
        }
    }

    /// Parses the stored form.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// How [`OrchestratorStore::admit_run`] applies this policy.
    pub fn admission(self) -> Admission {
        match self {
            Concurrency::Reject => Admission::Reject,
            Concurrency::Enqueue => Admission::Enqueue,
            Concurrency::Interrupt => Admission::Interrupt,
        }
    }
}

/// The current time at the microsecond precision every backend stores.
pub fn now() -> DateTime<Utc> {
    agentmesh_postgres::micros(Utc::now())
}

/// The `search` rule every backend follows: `needle` occurs in `haystack`, compared
/// case-insensitively, `%` and `_` taken literally.
pub fn contains_ignoring_case(haystack: &str, needle: &str) -> bool {
    haystack.to_lowercase().contains(&needle.to_lowercase())
}
