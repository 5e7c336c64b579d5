//! Runs from admission to their final status, on whichever replica holds them.
//!
//! [`Runs`] admits a run (the session's concurrency policy and the idempotency key are
//! the store's to decide atomically), then executes it on a task of its own, detached from
//! the request: a run goes on when its client goes away. The task
//! 1. starts the run (a lease on it for this replica) and appends the user message
//!    (idempotently: a restarted run appends it again with the same key);
//! 2. loads the agent's tools and the session's history window, and runs the agent graph
//!    ([`agent_graph`](super::agent_graph)), checkpointing after every step;
//! 3. closes the conversation so the session stays consistent whatever happened: a call
//!    the model asked for that never ran gets a result saying so;
//! 4. records the final status, and starts the session's next queued run, if any.
//!
//! Durability: every replica renews the leases of its runs; a replica that dies loses
//! them when their leases run out, and the others (or itself, restarted) take them over
//! with [`Runs::recover`]: a run resumes from its last checkpoint with a `step_restarted`
//! event for the step in flight, and one that cannot (its agent is gone, its time is up)
//! is failed with the reason. Cancelling stops the run's task at once: the graph engine
//! drops the step in flight, which ends its model stream and tool calls.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use agentmesh_graph::{Checkpoint, Checkpointer, Limits, Next, Outcome};
use agentmesh_proto::agentmesh::agent::v1::{Interrupt, RunCompleted, RunStarted, StepRestarted, run_event::Kind};
use agentmesh_proto::agentmesh::common::v1::MessageRole;
use agentmesh_proto::agentmesh::session::v1::{CreateMessageRequest, Message};
use agentmesh_proto::json::object_to_struct;
use agentmesh_runtime::auth::{Principal, Tier};
use agentmesh_runtime::{ApiError, ErrorCode};
use async_trait::async_trait;
use chrono::Utc;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::agent_graph::{self, AgentGraph, RunContext, StepError};
use super::output::{OutputWriter, RunOutputs};
use super::peers::{ActingFor, Peers};
use super::state::{AgentState, Decision, Speaker, Turn};
use crate::agents::store_error;
use crate::settings::RunSettings;
use crate::store::lifecycle::{CANCEL_REASON_KEY, lease_until};
use crate::store::{
    Admission, Admitted, AgentDefinition, Concurrency, NewRun, OrchestratorStore, RunError, RunPrincipal, RunRecord,
    RunRequest, RunStatus, RunTransition, RunUsage, SavedStep, Starter, StoreError,
};

/// Runs abandoned by a dead replica taken over per pass.
const CLAIM_BATCH: u32 = 32;

/// How long runs took, accepted to final status, by status.
pub const RUN_DURATION_HISTOGRAM: &str = "agentmesh_run_duration_seconds";
/// What a rejected call's result says when the human gave no message.
const DEFAULT_REJECTION: &str = "The user rejected this tool call.";

/// What an execute asks for.
#[derive(Debug, Clone)]
pub struct ExecuteRequest {
    /// The agent.
    pub agent_id: Uuid,
    /// The session.
    pub session_id: Uuid,
    /// The user's message.
    pub message: String,
    /// Free-form metadata.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The client's `Idempotency-Key`.
    pub idempotency_key: Option<String>,
    /// The request's concurrency override.
    pub concurrency: Option<Concurrency>,
    /// Cancel the run when its streaming client goes away.
    pub cancel_on_disconnect: bool,
}

/// A run an execute started or attached to.
#[derive(Debug)]
pub struct Started {
    /// The run as it is now.
    pub run: RunRecord,
    /// Whether the execute attached to an existing run (same idempotency key).
    pub attached: bool,
    /// How the run settles, when this execute started it on this replica: the unary
    /// execute answers from it without reading the run back. `None` for a run attached
    /// to or queued behind another (follow its output and record instead).
    pub settled: Option<oneshot::Receiver<Settled>>,
}

/// A run executed on this replica, once its end (or its wait for approval) is recorded.
#[derive(Debug)]
pub struct Settled {
    /// The record, as the final transition left it.
    pub run: RunRecord,
    /// The graph's last state, when the graph ran.
    pub state: Option<AgentState>,
}

/// Where a run's execution starts.
enum Start {
    /// From the beginning: a new run (with its agent's definition, which the admission
    /// just read), or a queued one whose turn came.
    Fresh(Option<Box<AgentDefinition>>),
    /// Taken over after its replica died: from its last checkpoint, or from the
    /// beginning when it had none (the step in flight is announced as restarted).
    Recover(Option<Checkpoint<AgentState>>),
    /// After a human's decision, at the named node of the run's checkpoint.
    Decided(Checkpoint<AgentState>, &'static str),
}

/// A run executing on this replica.
struct ActiveRun {
    /// Cancels the run.
    cancel: CancellationToken,
    /// Cancelled once the run's task has recorded how the run ended.
    finished: CancellationToken,
    /// Why it is being cancelled, for the record.
    reason: Arc<Mutex<Option<String>>>,
    /// Whether this replica holds the run's lease yet: a queued run is leased only once
    /// its task has started it, and until then it has no lease to renew (or to lose).
    leased: Arc<AtomicBool>,
}

/// How long [`Runs::settled`] polls the record of a run another replica executes.
const SETTLE_WAIT: Duration = Duration::from_secs(2);

/// How long a cancel waits for the run's task to record the cancellation.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// The runs of this replica, and the way to start, stop and resume any run.
pub struct Runs {
    store: Arc<dyn OrchestratorStore>,
    peers: Peers,
    outputs: Arc<RunOutputs>,
    graph: Arc<AgentGraph>,
    settings: RunSettings,
    /// This replica's lease-owner name.
    replica: String,
    active: Mutex<HashMap<Uuid, ActiveRun>>,
    tasks: TaskTracker,
}

impl Runs {
    /// Runs over `store`, calling `peers`, publishing through `outputs`.
    pub fn new(
        store: Arc<dyn OrchestratorStore>,
        peers: Peers,
        outputs: Arc<RunOutputs>,
        graph: AgentGraph,
        settings: RunSettings,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            peers,
            outputs,
            graph: Arc::new(graph),
            settings,
            replica: format!("orchestrator-{}", Uuid::new_v4()),
            active: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
        })
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn OrchestratorStore> {
        &self.store
    }

    /// The run outputs.
    pub fn outputs(&self) -> &Arc<RunOutputs> {
        &self.outputs
    }

    /// The settings.
    pub fn settings(&self) -> &RunSettings {
        &self.settings
    }

    /// Admits a run for `principal` (or finds the one its idempotency key started) and
    /// starts it when it may run now.
    pub async fn execute(
        self: &Arc<Self>,
        principal: &Principal,
        correlation_id: &str,
        request: ExecuteRequest,
    ) -> Result<Started, ApiError> {
        if let Some(key) = &request.idempotency_key
            && let Some(run) = self.store.find_run_by_key(&principal.user_id, key).await.map_err(store_error("Run"))?
        {
            return Ok(Started { run, attached: true, settled: None });
        }
        let mut metadata = request.metadata;
        metadata.insert("correlation_id".into(), correlation_id.into());
        let new_run = NewRun {
            id: Uuid::now_v7(),
            agent_id: request.agent_id,
            session_id: request.session_id,
            principal: RunPrincipal {
                user_id: principal.user_id.clone(),
                tenant: Some(principal.tenant_id.clone()).filter(|tenant| !tenant.is_empty()),
                tier: principal.tier.as_str().to_owned(),
                scopes: principal.scopes.clone(),
            },
            request: RunRequest { message: request.message, cancel_on_disconnect: request.cancel_on_disconnect },
            idempotency_key: request.idempotency_key,
            metadata,
            starter: Some(Starter { owner: self.replica.clone(), lease: self.settings.lease }),
        };
        match self.store.admit_run(new_run, request.concurrency.map(Admission::from)).await {
            Ok(Admitted::Existing(run)) => Ok(Started { run, attached: true, settled: None }),
            Ok(Admitted::Created { run, agent, ready, preempted }) => {
                if let Some(preempted) = preempted {
                    self.stop(&preempted, Some("interrupted by a newer run on the session".into())).await?;
                }
                let settled = ready.then(|| {
                    let (settle, settled) = oneshot::channel();
                    self.spawn(run.clone(), Start::Fresh(Some(agent)), Some(settle));
                    settled
                });
                Ok(Started { run, attached: false, settled })
            }
            Err(StoreError::SessionBusy(holder)) => Err(ApiError::new(
                ErrorCode::Conflict,
                format!(
                    "the session is busy with run {}; retry when it ends, or ask to enqueue or interrupt",
                    holder.id
                ),
            )
            .with_detail("run_id", holder.id.to_string())),
            Err(error) => Err(store_error("Agent")(error)),
        }
    }

    /// The owner's run once it has settled — final, or waiting for approval — after its
    /// stream said so: the stream's last event is written just before the record.
    pub async fn settled(&self, user_id: &str, run_id: Uuid) -> Result<RunRecord, ApiError> {
        let finished =
            self.active.lock().unwrap_or_else(PoisonError::into_inner).get(&run_id).map(|run| run.finished.clone());
        if let Some(finished) = finished {
            finished.cancelled().await;
        }
        let mut wait = Duration::from_millis(2);
        loop {
            let run = self.store.get_run(user_id, run_id).await.map_err(store_error("Run"))?;
            if run.status.is_final() || run.status == RunStatus::RequiresAction || wait > SETTLE_WAIT {
                return Ok(run);
            }
            // Executed by another replica, which records the end right after its stream.
            tokio::time::sleep(wait).await;
            wait *= 2;
        }
    }

    /// Cancels the owner's run; a final run is returned unchanged.
    pub async fn cancel(
        self: &Arc<Self>,
        user_id: &str,
        run_id: Uuid,
        reason: Option<String>,
    ) -> Result<RunRecord, ApiError> {
        let run = self.store.get_run(user_id, run_id).await.map_err(store_error("Run"))?;
        if run.status.is_final() {
            return Ok(run);
        }
        self.stop(&run, reason).await?;
        self.store.get_run(user_id, run_id).await.map_err(store_error("Run"))
    }

    /// Stops `run`: on this replica its task is cancelled and records the cancellation
    /// itself; a run running elsewhere is cancelled in the store (its replica loses the
    /// lease at its next renewal, stops, and ends the run's stream); a run that nobody
    /// executes (queued, or waiting for approval) is ended here, stream included.
    async fn stop(self: &Arc<Self>, run: &RunRecord, reason: Option<String>) -> Result<(), ApiError> {
        let local = {
            let active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
            active.get(&run.id).map(|active| {
                *active.reason.lock().unwrap_or_else(PoisonError::into_inner) = reason.clone();
                (active.cancel.clone(), active.finished.clone())
            })
        };
        if let Some((cancel, finished)) = local {
            cancel.cancel();
            // The task records the cancellation; wait for it (bounded) so the caller sees it.
            if tokio::time::timeout(CANCEL_WAIT, finished.cancelled()).await.is_err() {
                tracing::warn!(run_id = %run.id, "cancelled run still stopping");
            }
            return Ok(());
        }
        if run.status == RunStatus::Running {
            let cancel = RunTransition::Cancel { reason, last_sequence: run.last_sequence };
            return match self.store.transition_run(run.id, cancel).await {
                Ok(done) => {
                    self.start_next(done.next);
                    Ok(())
                }
                Err(StoreError::InvalidTransition(_)) => Ok(()),
                Err(error) => Err(store_error("Run")(error)),
            };
        }
        let writer = self.outputs.resumed_writer(run.id, run.last_sequence).await.map_err(|error| {
            tracing::warn!(%error, run_id = %run.id, "run output unreadable");
            ApiError::external_service("run output", "event_bus", true)
        })?;
        let error = cancelled_error(reason.as_deref());
        let completed = RunCompleted {
            status: agentmesh_proto::agentmesh::agent::v1::RunStatus::Cancelled as i32,
            error: Some(to_api_error(&error).to_detail()),
            ..RunCompleted::default()
        };
        writer.event(Kind::RunCompleted(completed));
        let last_sequence = writer.flush().await;
        match self.store.transition_run(run.id, RunTransition::Cancel { reason, last_sequence }).await {
            Ok(done) => {
                self.start_next(done.next);
                Ok(())
            }
            Err(StoreError::InvalidTransition(_)) => Ok(()),
            Err(error) => Err(store_error("Run")(error)),
        }
    }

    /// Ends the stream of a final `run` that never got its `run_completed`: a run cancelled
    /// in the store while the replica executing it was down. A live replica ends the
    /// stream itself once its next lease renewal finds the run ended, so this waits one
    /// lease after the run's end before it writes the event, from the run's record.
    pub async fn end_unended_stream(self: Arc<Self>, run: RunRecord) {
        let Some(completed_at) = run.completed_at.filter(|_| run.status.is_final()) else { return };
        if self.is_stream_ended(run.id).await {
            return;
        }
        let owner_gone = lease_until(completed_at, self.settings.lease);
        if let Ok(wait) = (owner_gone - Utc::now()).to_std() {
            tokio::time::sleep(wait).await;
            if self.is_stream_ended(run.id).await {
                return;
            }
        }
        let writer = match self.outputs.resumed_writer(run.id, run.last_sequence).await {
            Ok(writer) => writer,
            Err(error) => {
                tracing::warn!(%error, run_id = %run.id, "run output unreadable");
                return;
            }
        };
        tracing::info!(run_id = %run.id, status = ?run.status, "ending the stream of a run whose replica did not");
        writer.event(Kind::RunCompleted(RunCompleted {
            status: crate::convert::run_status_to_proto(run.status) as i32,
            response_message_id: run.response_message_id.map(|id| id.to_string()),
            execution_time_ms: crate::convert::execution_time_ms(&run, completed_at),
            usage: Some(crate::convert::usage_to_proto(&run.usage)),
            error: ended_error(&run).map(|error| to_api_error(&error).to_detail()),
        }));
        writer.flush().await;
    }

    /// Whether the run's output ends with its `run_completed`; an unreadable output counts
    /// as ended, since nothing can be added to it either.
    async fn is_stream_ended(&self, run_id: Uuid) -> bool {
        self.outputs.is_ended(run_id).await.unwrap_or_else(|error| {
            tracing::warn!(%error, %run_id, "run output unreadable");
            true
        })
    }

    /// Approves the owner's run's pending calls (with `edits`: call id → arguments) and
    /// resumes it.
    pub async fn approve(
        self: &Arc<Self>,
        user_id: &str,
        run_id: Uuid,
        edits: HashMap<String, String>,
    ) -> Result<RunRecord, ApiError> {
        self.decide(user_id, run_id, |call_id, arguments| Decision::Approved {
            arguments_json: edits.get(call_id).cloned().unwrap_or_else(|| arguments.to_owned()),
        })
        .await
    }

    /// Rejects the owner's run's pending calls and resumes it.
    pub async fn reject(
        self: &Arc<Self>,
        user_id: &str,
        run_id: Uuid,
        message: Option<String>,
    ) -> Result<RunRecord, ApiError> {
        let message = message.filter(|message| !message.trim().is_empty()).unwrap_or_else(|| DEFAULT_REJECTION.into());
        self.decide(user_id, run_id, |_, _| Decision::Rejected { message: message.clone() }).await
    }

    async fn decide(
        self: &Arc<Self>,
        user_id: &str,
        run_id: Uuid,
        decide: impl Fn(&str, &str) -> Decision,
    ) -> Result<RunRecord, ApiError> {
        let run = self.store.get_run(user_id, run_id).await.map_err(store_error("Run"))?;
        if run.status != RunStatus::RequiresAction {
            return Err(not_waiting(&run));
        }
        let stored = self
            .store
            .load_checkpoint(run_id)
            .await
            .map_err(store_error("Run"))?
            .ok_or_else(|| ApiError::internal().with_detail("run_id", run_id.to_string()))?;
        let mut checkpoint: Checkpoint<AgentState> =
            serde_json::from_str(&stored.checkpoint).map_err(|_| ApiError::internal())?;
        for call in &mut checkpoint.state.pending {
            if call.is_undecided() {
                call.decision = Some(decide(&call.request.id, &call.request.arguments_json));
            }
        }
        let resumed = match self
            .store
            .transition_run(run_id, RunTransition::Resume { owner: self.replica.clone(), lease: self.settings.lease })
            .await
        {
            Ok(done) => done.run,
            Err(StoreError::InvalidTransition(run)) => return Err(not_waiting(&run)),
            Err(error) => return Err(store_error("Run")(error)),
        };
        self.spawn(resumed.clone(), Start::Decided(checkpoint, agent_graph::TOOLS), None);
        Ok(resumed)
    }

    /// Takes over the runs dead replicas left (and queued runs nobody started), and
    /// resumes each or fails it with the reason. Returns how many it took.
    pub async fn recover(self: &Arc<Self>) -> Result<usize, StoreError> {
        let runs = self.store.claim_abandoned_runs(&self.replica, self.settings.lease, CLAIM_BATCH).await?;
        let count = runs.len();
        for run in runs {
            // Its lease ran out while this replica still executes it (renewals failed for
            // a while): the claim renewed it, and a second task would double its output.
            if self.active.lock().unwrap_or_else(PoisonError::into_inner).contains_key(&run.id) {
                continue;
            }
            if run.status == RunStatus::Queued {
                self.spawn(run, Start::Fresh(None), None);
                continue;
            }
            match self.store.load_checkpoint(run.id).await? {
                Some(stored) => match serde_json::from_str::<Checkpoint<AgentState>>(&stored.checkpoint) {
                    Ok(checkpoint) => self.spawn(run, Start::Recover(Some(checkpoint)), None),
                    Err(error) => {
                        let reason = format!("its checkpoint could not be read: {error}");
                        self.fail_unresumable(run, reason).await;
                    }
                },
                // No step was checkpointed: run it again from the start (appending the user
                // message again is idempotent).
                None => self.spawn(run, Start::Recover(None), None),
            }
        }
        Ok(count)
    }

    /// Renews the leases of this replica's runs; a run whose lease was lost (cancelled or
    /// taken over elsewhere) is stopped here.
    pub async fn renew_leases(&self) -> Result<(), StoreError> {
        let ids: Vec<Uuid> = self
            .active
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|(_, run)| run.leased.load(Ordering::Acquire))
            .map(|(id, _)| *id)
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let held = self.store.renew_leases(&self.replica, &ids, self.settings.lease).await?;
        let active = self.active.lock().unwrap_or_else(PoisonError::into_inner);
        for id in ids.iter().filter(|id| !held.contains(id)) {
            if let Some(run) = active.get(id) {
                run.cancel.cancel();
            }
        }
        Ok(())
    }

    /// Keeps leases renewed and abandoned runs recovered until `shutdown`.
    pub async fn maintain(self: Arc<Self>, shutdown: CancellationToken) {
        let mut renew = tokio::time::interval(self.settings.lease / 3);
        let mut claim = tokio::time::interval(self.settings.lease);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = renew.tick() => {
                    if let Err(error) = self.renew_leases().await {
                        tracing::warn!(%error, "run leases not renewed");
                    }
                }
                _ = claim.tick() => {
                    match self.recover().await {
                        Ok(0) => {}
                        Ok(count) => tracing::info!(count, "took over abandoned runs"),
                        Err(error) => tracing::warn!(%error, "abandoned runs not claimed"),
                    }
                }
            }
        }
    }

    /// Waits up to `within` for this replica's runs to end. A run still executing then is
    /// left as it is, leased: when the process exits its lease runs out and another
    /// replica (or this one, restarted) resumes it. Shutting down fails no run.
    pub async fn drain(&self, within: Duration) {
        self.tasks.close();
        if tokio::time::timeout(within, self.tasks.wait()).await.is_err() {
            tracing::warn!("runs still executing at shutdown; they will be resumed elsewhere");
        }
    }

    fn start_next(self: &Arc<Self>, next: Option<RunRecord>) {
        if let Some(next) = next {
            self.spawn(next, Start::Fresh(None), None);
        }
    }

    /// Executes `run` on a task of its own, from `start`. Its output can be read at once;
    /// `settle` hears how it settled.
    fn spawn(self: &Arc<Self>, run: RunRecord, start: Start, settle: Option<oneshot::Sender<Settled>>) {
        let cancel = CancellationToken::new();
        let finished = CancellationToken::new();
        let reason = Arc::new(Mutex::new(None));
        let leased = Arc::new(AtomicBool::new(run.status != RunStatus::Queued));
        let active = ActiveRun {
            cancel: cancel.clone(),
            finished: finished.clone(),
            reason: reason.clone(),
            leased: leased.clone(),
        };
        self.active.lock().unwrap_or_else(PoisonError::into_inner).insert(run.id, active);
        // Only a run taken over may have published past what its record says; any other
        // run's output starts now, so that a reader arriving next finds it.
        let writer = (!matches!(start, Start::Recover(_))).then(|| self.outputs.writer(run.id, run.last_sequence));
        let runs = self.clone();
        self.tasks.spawn(async move {
            let run_id = run.id;
            let settled = runs.drive(run, start, writer, cancel, reason, leased).await;
            if let (Some(settle), Some(settled)) = (settle, settled) {
                // The execute that waited for it may have gone; the run is recorded anyway.
                let _ = settle.send(settled);
            }
            runs.active.lock().unwrap_or_else(PoisonError::into_inner).remove(&run_id);
            finished.cancel();
        });
    }

    async fn drive(
        self: &Arc<Self>,
        run: RunRecord,
        start: Start,
        writer: Option<OutputWriter>,
        cancel: CancellationToken,
        reason: Arc<Mutex<Option<String>>>,
        leased: Arc<AtomicBool>,
    ) -> Option<Settled> {
        let recovering = matches!(start, Start::Recover(_));
        let writer = match writer {
            Some(writer) => writer,
            None => match self.outputs.resumed_writer(run.id, run.last_sequence).await {
                Ok(writer) => writer,
                Err(error) => {
                    // Numbering cannot go on safely without the last published sequence:
                    // the lease runs out and the run is taken over again later.
                    tracing::warn!(%error, run_id = %run.id, "run output unreadable; the run waits for recovery");
                    return None;
                }
            },
        };
        let run_id = run.id;
        let restarted_step = run.step_count + 1;
        let created_at = run.created_at;
        let (from, agent) = match start {
            Start::Fresh(agent) => (None, agent),
            Start::Recover(None) => (None, None),
            Start::Recover(Some(checkpoint)) => (Some((checkpoint, None)), None),
            Start::Decided(checkpoint, node) => (Some((checkpoint, Some(node))), None),
        };
        let ending = match self.prepare(run, agent, from.is_some(), &writer, &leased).await {
            Ok(prepared) => {
                // Announced only once the step can run again: a run that cannot go on
                // ends with its error instead.
                if recovering {
                    writer.event(Kind::StepRestarted(StepRestarted {
                        step: restarted_step,
                        reason: "the orchestrator executing the run stopped; the step runs again".into(),
                        model: None,
                    }));
                }
                self.execute_graph(prepared, from, &writer, &cancel).await
            }
            Err(error) => Ending::Failed(error, None),
        };
        let cancel_reason = reason.lock().unwrap_or_else(PoisonError::into_inner).clone();
        self.finish(run_id, created_at, ending, cancel_reason, &writer).await
    }

    /// Starts the run (unless it is being resumed, or its admission started it), which
    /// leases it (`leased`), and builds what its graph needs; `agent` is the run's agent's
    /// definition when the caller has just read it.
    async fn prepare(
        &self,
        run: RunRecord,
        agent: Option<Box<AgentDefinition>>,
        resuming: bool,
        writer: &OutputWriter,
        leased: &AtomicBool,
    ) -> Result<Prepared, RunError> {
        let mut run = run;
        if run.status == RunStatus::Queued {
            run = self
                .store
                .transition_run(
                    run.id,
                    RunTransition::Start { owner: self.replica.clone(), lease: self.settings.lease },
                )
                .await
                .map_err(|error| run_error(&store_error("Run")(error)))?
                .run;
            leased.store(true, Ordering::Release);
        }
        let principal = principal_of(&run.principal);
        let deadline = run
            .created_at
            .checked_add_signed(chrono::Duration::from_std(self.settings.max_duration).unwrap_or(chrono::Duration::MAX))
            .map_or(SystemTime::UNIX_EPOCH, SystemTime::from);
        if deadline <= SystemTime::now() {
            return Err(RunError {
                code: ErrorCode::Timeout.as_str().into(),
                message: format!("the run exceeded its maximum duration ({:?})", self.settings.max_duration),
                details: Default::default(),
            });
        }
        let acting = ActingFor {
            principal,
            run_id: run.id.to_string(),
            deadline,
            correlation_id: run
                .metadata
                .get("correlation_id")
                .and_then(serde_json::Value::as_str)
                .map_or_else(agentmesh_runtime::context::new_correlation_id, str::to_owned),
        };
        let agent = match agent {
            Some(agent) => *agent,
            None => match self.store.get_agent(&run.principal.user_id, run.agent_id).await {
                Ok(agent) => agent.definition,
                Err(StoreError::NotFound) => {
                    return Err(RunError {
                        code: ErrorCode::NotFound.as_str().into(),
                        message: format!("the run's agent {} was deleted", run.agent_id),
                        details: serde_json::Map::from_iter([(
                            "agent_id".to_owned(),
                            serde_json::Value::String(run.agent_id.to_string()),
                        )]),
                    });
                }
                Err(error) => return Err(run_error(&store_error("Agent")(error))),
            },
        };
        let window = agent.model.history_messages.unwrap_or(self.settings.default_history_messages);
        // The user's message, the tools and the history window are independent calls, made
        // together. The history listed may or may not hold the new message yet; it is
        // dropped there and added last, so the window is the same either way.
        let (history, tools) = if resuming {
            let tools = self.peers.tools(&acting, &agent.tools).await;
            (Vec::new(), tools.map_err(|status| run_error(&ApiError::from_status(&status)))?)
        } else {
            let session_id = run.session_id.to_string();
            let (message, earlier, tools) = tokio::join!(
                self.append_user_message(&run, &acting, writer),
                self.peers.recent_messages(&acting, &session_id, window.max(1)),
                self.peers.tools(&acting, &agent.tools),
            );
            let message = message?;
            let mut history: Vec<Message> = earlier
                .map_err(|status| run_error(&ApiError::from_status(&status)))?
                .into_iter()
                .filter(|earlier| earlier.id != message.id)
                .collect();
            let keep = usize::try_from(window.saturating_sub(1)).unwrap_or(usize::MAX);
            history.drain(..history.len().saturating_sub(keep));
            history.push(message);
            (history, tools.map_err(|status| run_error(&ApiError::from_status(&status)))?)
        };
        let limits = Limits {
            max_steps: agent.model.max_steps.unwrap_or(self.settings.default_max_steps),
            token_budget: agent.model.token_budget,
        };
        let context = RunContext {
            peers: self.peers.clone(),
            acting,
            run_id: run.id,
            session_id: run.session_id,
            agent,
            tools,
            output: writer.clone(),
            tool_timeout: self.settings.tool_timeout,
        };
        Ok(Prepared { context, limits, history: history_turns(history) })
    }

    /// Appends the run's user message (idempotently: a run started again appends it with
    /// the same key) and, the first time, announces the run and records the message.
    async fn append_user_message(
        &self,
        run: &RunRecord,
        acting: &ActingFor,
        writer: &OutputWriter,
    ) -> Result<Message, RunError> {
        let request = CreateMessageRequest {
            session_id: run.session_id.to_string(),
            content: run.request.message.clone(),
            role: MessageRole::User as i32,
            metadata: Some(object_to_struct(&serde_json::Map::from_iter([(
                "run_id".to_owned(),
                serde_json::Value::String(run.id.to_string()),
            )]))),
            ..CreateMessageRequest::default()
        };
        let message = self
            .peers
            .append_message(acting, request, &format!("run:{}:user", run.id))
            .await
            .map_err(|status| run_error(&ApiError::from_status(&status)))?;
        if run.user_message_id.is_none() {
            writer.event(Kind::RunStarted(RunStarted {
                agent_id: run.agent_id.to_string(),
                session_id: run.session_id.to_string(),
                user_message_id: message.id.clone(),
            }));
            if let Ok(message_id) = message.id.parse() {
                self.store
                    .transition_run(run.id, RunTransition::UserMessage { message_id })
                    .await
                    .map_err(|error| run_error(&store_error("Run")(error)))?;
            }
            writer.event(Kind::Message(message.clone()));
        }
        Ok(message)
    }

    async fn execute_graph(
        &self,
        prepared: Prepared,
        from: Option<(Checkpoint<AgentState>, Option<&'static str>)>,
        writer: &OutputWriter,
        cancel: &CancellationToken,
    ) -> Ending {
        let Prepared { context, limits, history } = prepared;
        let checkpoints =
            StoreCheckpoints { store: self.store.clone(), run_id: context.run_id, writer: writer.clone() };
        let outcome = match from {
            None => {
                let state = AgentState { history, ..AgentState::default() };
                self.graph.run(state, &context, &limits, cancel, &checkpoints).await
            }
            Some((checkpoint, continue_at)) => {
                self.graph.resume(checkpoint, continue_at, &context, &limits, cancel, &checkpoints).await
            }
        };
        Ending::from_outcome(outcome, context, &limits)
    }

    /// Records how the run ended, with a consistent session and a `run_completed` event;
    /// returns the recorded end (`None` when it could not be recorded here).
    async fn finish(
        self: &Arc<Self>,
        run_id: Uuid,
        created_at: chrono::DateTime<chrono::Utc>,
        ending: Ending,
        cancel_reason: Option<String>,
        writer: &OutputWriter,
    ) -> Option<Settled> {
        let mut last_state = None;
        let completed = |status, usage: &RunUsage, response_message_id, error: Option<&RunError>| {
            let elapsed = chrono::Utc::now().signed_duration_since(created_at).num_milliseconds().max(0);
            completed_event(writer, status, usage, elapsed, response_message_id, error);
        };
        let transition = match ending {
            Ending::Completed(mut state, context, steps) => {
                match agent_graph::persist_turns(&mut state, &context).await {
                    Ok(()) => {
                        let response_message_id = state.answer().and_then(|turn| turn.message_id);
                        completed(RunStatusOut::Completed, &state.usage, response_message_id, None);
                        let usage = state.usage;
                        last_state = Some(state);
                        RunTransition::Complete {
                            response_message_id,
                            usage,
                            step_count: steps,
                            last_sequence: writer.flush().await,
                        }
                    }
                    Err(error) => {
                        let error = run_error(&ApiError::from_status(error.status()));
                        completed(RunStatusOut::Failed, &state.usage, None, Some(&error));
                        RunTransition::Fail { error, last_sequence: writer.flush().await }
                    }
                }
            }
            Ending::Interrupted(mut state, context, mut checkpoint) => {
                let persisted = match agent_graph::persist_turns(&mut state, &context).await {
                    // The checkpoint to resume from records what is now in the session.
                    Ok(()) => {
                        checkpoint.state = state.clone();
                        save_checkpoint(self.store.as_ref(), run_id, &checkpoint)
                            .await
                            .map_err(|error| run_error(&store_error("Run")(error)))
                    }
                    Err(error) => Err(run_error(&ApiError::from_status(error.status()))),
                };
                if let Err(error) = persisted {
                    completed(RunStatusOut::Failed, &state.usage, None, Some(&error));
                    RunTransition::Fail { error, last_sequence: writer.flush().await }
                } else {
                    let pending: Vec<_> = state
                        .pending
                        .iter()
                        .filter(|call| call.is_undecided())
                        .map(|call| crate::store::PendingToolCall {
                            id: call.request.id.clone(),
                            name: call.request.name.clone(),
                            arguments_json: call.request.arguments_json.clone(),
                            step: call.step,
                        })
                        .collect();
                    writer.event(Kind::Interrupt(Interrupt {
                        tool_calls: pending.iter().map(crate::convert::pending_call_to_proto).collect(),
                        reason: "the agent's policy asks for approval of these tool calls".into(),
                    }));
                    last_state = Some(state);
                    RunTransition::RequireAction { pending, last_sequence: writer.flush().await }
                }
            }
            Ending::Cancelled(state) => {
                let mut usage = RunUsage::default();
                if let Some((mut state, context)) = state {
                    close_conversation(&mut state, "The run was cancelled before this tool call ran.");
                    if let Err(error) = agent_graph::persist_turns(&mut state, &context).await {
                        tracing::warn!(%error, %run_id, "cancelled run's messages not all persisted");
                    }
                    usage = state.usage;
                }
                let error = cancelled_error(cancel_reason.as_deref());
                completed(RunStatusOut::Cancelled, &usage, None, Some(&error));
                RunTransition::Cancel { reason: cancel_reason, last_sequence: writer.flush().await }
            }
            Ending::Failed(error, state) => {
                let mut usage = RunUsage::default();
                if let Some((mut state, context)) = state {
                    close_conversation(&mut state, "The run failed before this tool call ran.");
                    if let Err(error) = agent_graph::persist_turns(&mut state, &context).await {
                        tracing::warn!(%error, %run_id, "failed run's messages not all persisted");
                    }
                    usage = state.usage;
                }
                writer.event(Kind::Error(to_api_error(&error).to_detail()));
                completed(RunStatusOut::Failed, &usage, None, Some(&error));
                RunTransition::Fail { error, last_sequence: writer.flush().await }
            }
        };
        match self.store.transition_run(run_id, transition).await {
            Ok(done) => {
                record_run_duration(&done.run);
                self.start_next(done.next);
                Some(Settled { run: done.run, state: last_state })
            }
            Err(StoreError::InvalidTransition(run)) => {
                tracing::info!(%run_id, status = ?run.status, "run ended elsewhere meanwhile");
                None
            }
            Err(error) => {
                tracing::error!(%error, %run_id, "run's end not recorded; it will be recovered");
                None
            }
        }
    }

    async fn fail_unresumable(self: &Arc<Self>, run: RunRecord, reason: String) {
        let Ok(writer) = self.outputs.resumed_writer(run.id, run.last_sequence).await else { return };
        let error =
            RunError { code: ErrorCode::Internal.as_str().into(), message: reason, details: Default::default() };
        self.finish(run.id, run.created_at, Ending::Failed(error, None), None, &writer).await;
    }
}

/// What a run's graph needs, once prepared.
struct Prepared {
    context: RunContext,
    limits: Limits,
    history: Vec<Turn>,
}

/// How a run's execution ended.
enum Ending {
    /// A final answer, after this many steps.
    Completed(AgentState, RunContext, u32),
    /// Waiting for approval: the state, and the checkpoint to resume from.
    Interrupted(AgentState, RunContext, Checkpoint<AgentState>),
    /// Cancelled (with the state, when the graph ran).
    Cancelled(Option<(AgentState, RunContext)>),
    /// Failed (with the state, when the graph ran).
    Failed(RunError, Option<(AgentState, RunContext)>),
}

impl Ending {
    fn from_outcome(outcome: Outcome<AgentState, StepError>, context: RunContext, limits: &Limits) -> Self {
        match outcome {
            Outcome::Finished { state, steps } => Ending::Completed(state, context, steps),
            Outcome::Interrupted { state, steps, node, reason } => {
                let checkpoint =
                    Checkpoint { step: steps, next: Next::Interrupted { node, reason }, state: state.clone() };
                Ending::Interrupted(state, context, checkpoint)
            }
            Outcome::Cancelled { state, .. } => Ending::Cancelled(Some((state, context))),
            Outcome::StepLimit { state, steps } => Ending::Failed(
                RunError {
                    code: ErrorCode::Timeout.as_str().into(),
                    message: format!("the run reached its limit of {} steps without a final answer", limits.max_steps),
                    details: serde_json::Map::from_iter([("steps".to_owned(), steps.into())]),
                },
                Some((state, context)),
            ),
            Outcome::TokenBudget { state, .. } => Ending::Failed(
                RunError {
                    code: ErrorCode::RateLimit.as_str().into(),
                    message: format!(
                        "the run reached its token budget of {} tokens without a final answer",
                        limits.token_budget.unwrap_or_default()
                    ),
                    details: Default::default(),
                },
                Some((state, context)),
            ),
            Outcome::Failed { state, error, .. } => {
                let error = match &error {
                    agentmesh_graph::NodeFailure::Node(step) => run_error(&ApiError::from_status(step.status())),
                    other => RunError {
                        code: ErrorCode::Internal.as_str().into(),
                        message: format!("the run could not go on: {other}"),
                        details: Default::default(),
                    },
                };
                Ending::Failed(error, Some((state, context)))
            }
        }
    }
}

/// Saves each checkpoint and the run's progress with it.
struct StoreCheckpoints {
    store: Arc<dyn OrchestratorStore>,
    run_id: Uuid,
    writer: OutputWriter,
}

#[async_trait]
impl Checkpointer<AgentState> for StoreCheckpoints {
    type Error = StoreError;

    async fn save(&self, checkpoint: &Checkpoint<AgentState>) -> Result<(), StoreError> {
        let step = SavedStep {
            step_count: checkpoint.step,
            usage: checkpoint.state.usage,
            last_sequence: self.writer.flush().await,
            checkpoint: step_text(checkpoint)?,
        };
        self.store.save_step(self.run_id, step).await
    }
}

/// A step's checkpoint as the store keeps it. The checkpoint of a run's last step keeps
/// only the last turn of the history window: after the end nothing reads the window again
/// (resuming there goes straight to persisting the run's turns, which only need the
/// message they reply to), and most runs are one step, so most checkpoints would
/// otherwise copy the whole window once more.
fn step_text(checkpoint: &Checkpoint<AgentState>) -> Result<String, StoreError> {
    let state = &checkpoint.state;
    let text = if checkpoint.next == Next::End && state.history.len() > 1 {
        let last = Checkpoint {
            step: checkpoint.step,
            next: Next::End,
            state: AgentState {
                history: state.history[state.history.len() - 1..].to_vec(),
                turns: state.turns.clone(),
                pending: state.pending.clone(),
                calls: state.calls.clone(),
                usage: state.usage,
                answered_by: state.answered_by.clone(),
            },
        };
        serde_json::to_string(&last)
    } else {
        serde_json::to_string(checkpoint)
    };
    text.map_err(|error| StoreError::Internal(Box::new(error)))
}

/// Stores `checkpoint` as the run's latest.
async fn save_checkpoint(
    store: &dyn OrchestratorStore,
    run_id: Uuid,
    checkpoint: &Checkpoint<AgentState>,
) -> Result<(), StoreError> {
    let text = serde_json::to_string(checkpoint).map_err(|error| StoreError::Internal(Box::new(error)))?;
    store.save_checkpoint(run_id, checkpoint.step, text).await
}

/// The final status as the stream shows it.
#[derive(Clone, Copy)]
enum RunStatusOut {
    Completed,
    Failed,
    Cancelled,
}

/// The run's closing events: its usage, then `run_completed`.
fn completed_event(
    writer: &OutputWriter,
    status: RunStatusOut,
    usage: &RunUsage,
    execution_time_ms: i64,
    response_message_id: Option<Uuid>,
    error: Option<&RunError>,
) {
    use agentmesh_proto::agentmesh::agent::v1::RunStatus as Out;
    let status = match status {
        RunStatusOut::Completed => Out::Completed,
        RunStatusOut::Failed => Out::Failed,
        RunStatusOut::Cancelled => Out::Cancelled,
    };
    writer.event(Kind::Usage(crate::convert::usage_to_proto(usage)));
    writer.event(Kind::RunCompleted(RunCompleted {
        status: status as i32,
        response_message_id: response_message_id.map(|id| id.to_string()),
        execution_time_ms,
        usage: Some(crate::convert::usage_to_proto(usage)),
        error: error.map(|error| to_api_error(error).to_detail()),
    }));
}

/// The error a cancelled run's `run_completed` carries: the cancel's reason, if it gave one.
fn cancelled_error(reason: Option<&str>) -> RunError {
    RunError {
        code: ErrorCode::Conflict.as_str().into(),
        message: reason.unwrap_or("the run was cancelled").to_owned(),
        details: Default::default(),
    }
}

/// The error of a final `run`'s `run_completed`, from its record: its failure, or its
/// cancellation with the reason recorded in its metadata.
fn ended_error(run: &RunRecord) -> Option<RunError> {
    match run.status {
        RunStatus::Cancelled => {
            let reason = run.metadata.get(CANCEL_REASON_KEY).and_then(serde_json::Value::as_str);
            Some(cancelled_error(reason))
        }
        _ => run.error.clone(),
    }
}

/// Makes the conversation consistent before a run that did not finish stops: an answer
/// asking for calls that was never persisted is dropped (with its calls), and every call
/// of a persisted answer that has no result gets `note` as an error result.
fn close_conversation(state: &mut AgentState, note: &str) {
    if state.turns.last().is_some_and(|turn| turn.message_id.is_none() && !turn.tool_calls.is_empty()) {
        state.turns.pop();
        state.pending.clear();
        return;
    }
    for call in std::mem::take(&mut state.pending) {
        let mut turn = Turn::new(Speaker::Tool, note);
        turn.tool_call_id = Some(call.request.id);
        turn.is_error = true;
        state.turns.push(turn);
    }
}

/// The session's messages as history turns: a leading tool result whose call is outside
/// the window is dropped (models refuse an answer to a call they never made).
fn history_turns(messages: Vec<Message>) -> Vec<Turn> {
    let mut turns: Vec<Turn> = messages
        .into_iter()
        .filter_map(|message| {
            let speaker = match MessageRole::try_from(message.role).ok()? {
                MessageRole::User => Speaker::User,
                MessageRole::Assistant => Speaker::Assistant,
                MessageRole::Tool => Speaker::Tool,
                MessageRole::System | MessageRole::Unspecified => return None,
            };
            Some(Turn {
                speaker,
                content: message.content,
                tool_calls: message
                    .tool_calls
                    .into_iter()
                    .map(|call| super::state::CallRequest {
                        id: call.id,
                        name: call.name,
                        arguments_json: call.arguments,
                    })
                    .collect(),
                tool_call_id: message.tool_call_id,
                is_error: false,
                message_id: message.id.parse().ok(),
            })
        })
        .collect();
    let orphans = turns.iter().take_while(|turn| turn.speaker == Speaker::Tool).count();
    turns.drain(..orphans);
    turns
}

fn principal_of(run: &RunPrincipal) -> Principal {
    Principal {
        user_id: run.user_id.clone(),
        tenant_id: run.tenant.clone().unwrap_or_default(),
        tier: Tier::parse(&run.tier).unwrap_or_default(),
        scopes: run.scopes.clone(),
    }
}

fn not_waiting(run: &RunRecord) -> ApiError {
    ApiError::new(ErrorCode::Conflict, format!("run {} is not waiting for approval (it is {:?})", run.id, run.status))
        .with_detail("run_id", run.id.to_string())
}

/// An error as a run records it.
pub fn run_error(error: &ApiError) -> RunError {
    RunError { code: error.code.as_str().into(), message: error.message.clone(), details: error.details.clone() }
}

/// A run's recorded error as an API error.
pub fn to_api_error(error: &RunError) -> ApiError {
    let mut api = ApiError::new(ErrorCode::parse(&error.code).unwrap_or(ErrorCode::Internal), error.message.clone());
    api.details = error.details.clone();
    api
}

impl std::fmt::Debug for Runs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runs").field("replica", &self.replica).finish_non_exhaustive()
    }
}

/// Times a run that reached its final status, from acceptance (queueing included) to its
/// end, by status: `agentmesh_run_duration_seconds{status}`, whichever way it was started
/// (unary, streamed or in the background).
fn record_run_duration(run: &RunRecord) {
    let ended = run.completed_at.unwrap_or_else(Utc::now);
    if let Ok(duration) = (ended - run.created_at).to_std() {
        metrics::histogram!(RUN_DURATION_HISTOGRAM, "status" => run.status.as_str()).record(duration.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(count: usize) -> Vec<Turn> {
        (0..count)
            .map(|n| Turn { message_id: Some(Uuid::now_v7()), ..Turn::new(Speaker::User, format!("m{n}")) })
            .collect()
    }

    fn saved(text: &str) -> Checkpoint<AgentState> {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn a_last_step_keeps_only_the_message_it_replies_to() {
        let state = AgentState {
            history: history(50),
            turns: vec![Turn::new(Speaker::Assistant, "done")],
            ..AgentState::default()
        };
        let last = Checkpoint { step: 1, next: Next::End, state: state.clone() };
        let kept = saved(&step_text(&last).unwrap());
        assert_eq!(kept.state.history, state.history[49..]);
        assert_eq!(kept.state.last_message_id(), state.last_message_id(), "the parent of the next message");
        assert_eq!(kept.state.turns, state.turns);

        // Any other step keeps the window: the model reads it again.
        let middle = Checkpoint { step: 1, next: Next::Node("tools".into()), state: state.clone() };
        assert_eq!(saved(&step_text(&middle).unwrap()).state, state);
    }
}
