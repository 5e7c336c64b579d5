//! `agentmesh.agent.v1.AgentService` over gRPC: agents and run reads through
//! [`AgentsApi`], execution through [`Runs`].
//!
//! Execute, stream and background runs share one admission path
//! ([`Runs::execute`]): the `Idempotency-Key` header attaches a repeat to the run the key
//! started, and a stream resumes after `from_sequence` (the SSE `Last-Event-ID`). The
//! unary execute answers once the run completes or stops for approval: from what the run's
//! task hands over (its recorded end and last graph state) when the execute started it on
//! this replica, else by following the run's output and reading its record and last
//! checkpoint, so it answers the same whichever replica executed the run.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use agentmesh_graph::Checkpoint;
use agentmesh_proto::agentmesh::agent::v1 as pb;
use agentmesh_proto::agentmesh::agent::v1::agent_service_server::AgentService;
use agentmesh_proto::agentmesh::agent::v1::run_event::Kind;
use agentmesh_proto::json::{object_to_struct, struct_to_object};
use agentmesh_runtime::auth::Principal;
use agentmesh_runtime::request::{accept, caller, invalid, uuid_field};
use agentmesh_runtime::validate::validate;
use agentmesh_runtime::{ApiError, ErrorCode, RequestContext};
use chrono::Utc;
use futures::{Stream, StreamExt};
use serde_json::{Map, Value, json};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::agents::{AgentsApi, store_error};
use crate::convert;
use crate::execution::manager::Settled;
use crate::execution::manager::to_api_error;
use crate::execution::state::AgentState;
use crate::execution::{ExecuteRequest, Runs};
use crate::store::{Concurrency, RunRecord, RunStatus};

/// The gRPC metadata an idempotency key arrives in.
const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Longest accepted idempotency key.
const MAX_IDEMPOTENCY_KEY: usize = 255;

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The `AgentService` implementation.
#[derive(Clone)]
pub struct AgentOrchestrator {
    agents: Arc<AgentsApi>,
    runs: Arc<Runs>,
}

impl AgentOrchestrator {
    /// The service over `agents` and `runs`.
    pub fn new(agents: Arc<AgentsApi>, runs: Arc<Runs>) -> Self {
        Self { agents, runs }
    }

    /// The run as the contract shows it.
    fn run_to_proto(&self, run: &RunRecord) -> pb::Run {
        convert::run_to_proto(run, self.runs.settings().output_retention)
    }

    /// Admits (or attaches to) a run for an execute request.
    async fn start<T>(
        &self,
        request: &Request<T>,
        agent_id: &str,
        execution: Option<&pb::AgentExecutionRequest>,
    ) -> Result<(Principal, crate::execution::Started), Status> {
        let principal = caller(request)?;
        let execution = execution.ok_or_else(|| invalid("execution", "is required", Value::Null))?;
        let agent_id = uuid_field("agent_id", agent_id)?;
        if let Some(body_agent) = execution.agent_id.as_deref().filter(|raw| !raw.is_empty())
            && uuid_field("agent_id", body_agent)? != agent_id
        {
            return Err(invalid("agent_id", "must equal the agent id in the path", Value::from(body_agent)).into());
        }
        let idempotency_key = idempotency_key(request)?;
        let concurrency = match pb::ConcurrencyPolicy::try_from(execution.concurrency) {
            Ok(pb::ConcurrencyPolicy::Reject) => Some(Concurrency::Reject),
            Ok(pb::ConcurrencyPolicy::Enqueue) => Some(Concurrency::Enqueue),
            Ok(pb::ConcurrencyPolicy::Interrupt) => Some(Concurrency::Interrupt),
            _ => None,
        };
        let correlation_id =
            RequestContext::current().map_or_else(agentmesh_runtime::context::new_correlation_id, |c| c.correlation_id);
        let started = self
            .runs
            .execute(
                &principal,
                &correlation_id,
                ExecuteRequest {
                    agent_id,
                    session_id: uuid_field("session_id", &execution.session_id)?,
                    message: execution.message.clone(),
                    metadata: execution.metadata.as_ref().map(struct_to_object).unwrap_or_default(),
                    idempotency_key,
                    concurrency,
                    cancel_on_disconnect: execution.on_disconnect == pb::OnDisconnect::Cancel as i32,
                },
            )
            .await?;
        Ok((principal, started))
    }

    /// The run's events after `after`, ending with its `run_completed` (written from its
    /// record when a final run's replica never wrote it); when `cancel_on_drop`, the run
    /// is cancelled if the stream is dropped before that.
    fn events(&self, run: &RunRecord, after: u64, cancel_on_drop: bool) -> EventStream<pb::RunEvent> {
        let guard = cancel_on_drop.then(|| DisconnectGuard {
            runs: self.runs.clone(),
            user_id: run.principal.user_id.clone(),
            run_id: run.id,
            done: false,
        });
        if run.status.is_final() {
            tokio::spawn(self.runs.clone().end_unended_stream(run.clone()));
        }
        let events = self.runs.outputs().read(run.id, after);
        Box::pin(futures::stream::unfold((events, guard), |(mut events, mut guard)| async move {
            match events.next().await? {
                Ok(event) => {
                    if matches!(event.kind, Some(Kind::RunCompleted(_)))
                        && let Some(guard) = guard.as_mut()
                    {
                        guard.done = true;
                    }
                    Some((Ok(event), (events, guard)))
                }
                Err(error) => {
                    tracing::warn!(%error, "run output unreadable");
                    let status = ApiError::external_service("run output", "event_bus", true).into();
                    Some((Err(status), (events, guard)))
                }
            }
        }))
    }

    /// The graph state of a run as its last checkpoint holds it.
    async fn last_state(&self, run: &RunRecord) -> Result<AgentState, Status> {
        match self.runs.store().load_checkpoint(run.id).await.map_err(store_error("Run"))? {
            Some(stored) => serde_json::from_str::<Checkpoint<AgentState>>(&stored.checkpoint)
                .map(|checkpoint| checkpoint.state)
                .map_err(|_| Status::from(ApiError::internal())),
            None => Ok(AgentState::default()),
        }
    }
}

/// The execution response of a run that completed or stopped for approval, from its
/// record and its graph's last `state`.
fn execution_response(run: &RunRecord, state: &AgentState) -> pb::AgentExecutionResponse {
    let mut tool_calls: Vec<prost_types::Struct> = state
        .calls
        .iter()
        .map(|call| {
            let mut object = call_object(&call.request.id, &call.request.name, &call.request.arguments_json);
            object.insert("result".into(), Value::String(call.result.clone()));
            object.insert("is_error".into(), Value::Bool(call.is_error));
            object_to_struct(&object)
        })
        .collect();
    tool_calls.extend(run.pending_tool_calls.iter().map(|call| {
        let mut object = call_object(&call.id, &call.name, &call.arguments_json);
        object.insert("status".into(), Value::String("pending".into()));
        object_to_struct(&object)
    }));
    let mut metadata = Map::new();
    if let Some(model) = &state.answered_by {
        metadata.insert("model".into(), Value::String(model.clone()));
    }
    metadata.insert("steps".into(), json!(run.step_count));
    let status =
        if run.status == RunStatus::RequiresAction { pb::RunStatus::RequiresAction } else { pb::RunStatus::Completed };
    pb::AgentExecutionResponse {
        session_id: run.session_id.to_string(),
        message_id: run.response_message_id.map(|id| id.to_string()).unwrap_or_default(),
        content: state.answer().map(|turn| turn.content.clone()).unwrap_or_default(),
        metadata: Some(object_to_struct(&metadata)),
        tool_calls,
        execution_time_ms: convert::execution_time_ms(run, Utc::now()),
        run_id: run.id.to_string(),
        usage: Some(convert::usage_to_proto(&run.usage)),
        status: status as i32,
    }
}

/// Cancels a run whose streaming client went away before the run completed (the request
/// asked for `on_disconnect: cancel`).
struct DisconnectGuard {
    runs: Arc<Runs>,
    user_id: String,
    run_id: Uuid,
    done: bool,
}

impl Drop for DisconnectGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let (runs, user_id, run_id) = (self.runs.clone(), std::mem::take(&mut self.user_id), self.run_id);
        tokio::spawn(async move {
            if let Err(error) = runs.cancel(&user_id, run_id, Some("the streaming client disconnected".into())).await {
                tracing::warn!(%error, %run_id, "run not cancelled after its client disconnected");
            }
        });
    }
}

/// `{"id", "name", "arguments", "arguments_json"}` of a call; `arguments` only when the
/// model's text parses as JSON.
fn call_object(id: &str, name: &str, arguments_json: &str) -> Map<String, Value> {
    let mut object = Map::new();
    object.insert("id".into(), Value::String(id.to_owned()));
    object.insert("name".into(), Value::String(name.to_owned()));
    if let Ok(arguments) = serde_json::from_str::<Value>(arguments_json) {
        object.insert("arguments".into(), arguments);
    }
    object.insert("arguments_json".into(), Value::String(arguments_json.to_owned()));
    object
}

/// The request's `Idempotency-Key`, if any.
fn idempotency_key<T>(request: &Request<T>) -> Result<Option<String>, Status> {
    let Some(raw) = request.metadata().get(IDEMPOTENCY_KEY) else { return Ok(None) };
    match raw.to_str() {
        Ok(key) if !key.trim().is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY => Ok(Some(key.to_owned())),
        _ => Err(invalid(
            "Idempotency-Key",
            &format!("must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
            Value::Null,
        )
        .into()),
    }
}

/// The run's output is no longer kept.
fn expired(run: &RunRecord, retention: std::time::Duration) -> Option<Status> {
    let completed = run.completed_at?;
    let until = completed + chrono::Duration::from_std(retention).ok()?;
    (until < Utc::now()).then(|| {
        ApiError::new(
            ErrorCode::NotFound,
            format!("the output of run {} is no longer kept: it expired at {}", run.id, until.to_rfc3339()),
        )
        .with_detail("run_id", run.id.to_string())
        .with_detail("expired_at", until.to_rfc3339())
        .into()
    })
}

#[tonic::async_trait]
impl AgentService for AgentOrchestrator {
    async fn create_agent(
        &self,
        request: Request<pb::CreateAgentRequest>,
    ) -> Result<Response<pb::CreateAgentResponse>, Status> {
        self.agents.create_agent(request).await
    }

    async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        self.agents.list_agents(request).await
    }

    async fn get_agent(&self, request: Request<pb::GetAgentRequest>) -> Result<Response<pb::GetAgentResponse>, Status> {
        self.agents.get_agent(request).await
    }

    async fn update_agent(
        &self,
        request: Request<pb::UpdateAgentRequest>,
    ) -> Result<Response<pb::UpdateAgentResponse>, Status> {
        self.agents.update_agent(request).await
    }

    async fn delete_agent(
        &self,
        request: Request<pb::DeleteAgentRequest>,
    ) -> Result<Response<pb::DeleteAgentResponse>, Status> {
        let (user_id, agent, unfinished) = self.agents.agent_to_delete(&request).await?;
        for run in unfinished {
            self.runs.cancel(&user_id, run.id, Some("the agent was deleted".into())).await?;
        }
        self.agents.delete_agent(&user_id, agent.id).await
    }

    async fn execute_agent(
        &self,
        request: Request<pb::ExecuteAgentRequest>,
    ) -> Result<Response<pb::ExecuteAgentResponse>, Status> {
        validate(request.get_ref())?;
        let body = request.get_ref();
        if body.execution.as_ref().is_some_and(|execution| execution.stream) {
            return Err(invalid(
                "stream",
                "this endpoint answers once; POST /api/v1/agents/{agent_id}/execute/stream streams",
                Value::Bool(true),
            )
            .with_detail("stream_endpoint", format!("/api/v1/agents/{}/execute/stream", body.agent_id))
            .into());
        }
        let (principal, started) = self.start(&request, &body.agent_id, body.execution.as_ref()).await?;
        // A run started here settles here: its end comes with its last state. Otherwise
        // (attached, queued, or its end not recorded here) follow its output, then read it.
        let settled = match started.settled {
            Some(settled) => settled.await.ok(),
            None => None,
        };
        let (run, state) = match settled {
            Some(Settled { run, state }) if state.is_some() || run.status.is_final() => {
                (run, state.unwrap_or_default())
            }
            _ => {
                let run_id = started.run.id;
                let mut events = self.runs.outputs().read(run_id, 0);
                while let Some(event) = events.next().await {
                    let event =
                        event.map_err(|_| Status::from(ApiError::external_service("run output", "event_bus", true)))?;
                    if matches!(event.kind, Some(Kind::RunCompleted(_) | Kind::Interrupt(_))) {
                        break;
                    }
                }
                let run = self.runs.settled(&principal.user_id, run_id).await?;
                let state = self.last_state(&run).await?;
                (run, state)
            }
        };
        match run.status {
            RunStatus::Failed | RunStatus::Cancelled => {
                let error = run.error.as_ref().map(to_api_error).unwrap_or_else(ApiError::internal);
                Err(error.with_detail("run_id", run.id.to_string()).into())
            }
            _ => Ok(Response::new(pb::ExecuteAgentResponse { execution: Some(execution_response(&run, &state)) })),
        }
    }

    async fn execute_agent_stream(
        &self,
        request: Request<pb::ExecuteAgentStreamRequest>,
    ) -> Result<Response<EventStream<pb::ExecuteAgentStreamResponse>>, Status> {
        validate(request.get_ref())?;
        let body = request.get_ref();
        let (_, started) = self.start(&request, &body.agent_id, body.execution.as_ref()).await?;
        let cancel_on_drop = started.run.request.cancel_on_disconnect;
        let after = if started.attached { body.from_sequence.unwrap_or(0) } else { 0 };
        let events = self.events(&started.run, after, cancel_on_drop);
        Ok(Response::new(Box::pin(
            events.map(|event| event.map(|event| pb::ExecuteAgentStreamResponse { event: Some(event) })),
        )))
    }

    async fn create_run(
        &self,
        request: Request<pb::CreateRunRequest>,
    ) -> Result<Response<pb::CreateRunResponse>, Status> {
        validate(request.get_ref())?;
        let body = request.get_ref();
        let (_, started) = self.start(&request, &body.agent_id, body.execution.as_ref()).await?;
        Ok(Response::new(pb::CreateRunResponse { run: Some(self.run_to_proto(&started.run)) }))
    }

    async fn get_run(&self, request: Request<pb::GetRunRequest>) -> Result<Response<pb::GetRunResponse>, Status> {
        self.agents.get_run(request).await
    }

    async fn list_session_runs(
        &self,
        request: Request<pb::ListSessionRunsRequest>,
    ) -> Result<Response<pb::ListSessionRunsResponse>, Status> {
        self.agents.list_session_runs(request).await
    }

    async fn cancel_run(
        &self,
        request: Request<pb::CancelRunRequest>,
    ) -> Result<Response<pb::CancelRunResponse>, Status> {
        let (principal, body) = accept(request)?;
        let run_id = uuid_field("run_id", &body.run_id)?;
        let reason = body.reason.filter(|reason| !reason.trim().is_empty());
        let run = self.runs.cancel(&principal.user_id, run_id, reason).await?;
        Ok(Response::new(pb::CancelRunResponse { run: Some(self.run_to_proto(&run)) }))
    }

    async fn approve_run(
        &self,
        request: Request<pb::ApproveRunRequest>,
    ) -> Result<Response<pb::ApproveRunResponse>, Status> {
        let (principal, body) = accept(request)?;
        let run_id = uuid_field("run_id", &body.run_id)?;
        let mut edits = HashMap::new();
        for (index, edit) in body.edits.into_iter().enumerate() {
            if !matches!(serde_json::from_str::<Value>(&edit.arguments_json), Ok(Value::Object(_))) {
                return Err(invalid(
                    &format!("edits[{index}].arguments_json"),
                    "must be a JSON object",
                    Value::String(edit.arguments_json),
                )
                .into());
            }
            edits.insert(edit.tool_call_id, edit.arguments_json);
        }
        let run = self.runs.approve(&principal.user_id, run_id, edits).await?;
        Ok(Response::new(pb::ApproveRunResponse { run: Some(self.run_to_proto(&run)) }))
    }

    async fn reject_run(
        &self,
        request: Request<pb::RejectRunRequest>,
    ) -> Result<Response<pb::RejectRunResponse>, Status> {
        let (principal, body) = accept(request)?;
        let run_id = uuid_field("run_id", &body.run_id)?;
        let run = self.runs.reject(&principal.user_id, run_id, body.message).await?;
        Ok(Response::new(pb::RejectRunResponse { run: Some(self.run_to_proto(&run)) }))
    }

    async fn stream_run(
        &self,
        request: Request<pb::StreamRunRequest>,
    ) -> Result<Response<EventStream<pb::StreamRunResponse>>, Status> {
        let (principal, body) = accept(request)?;
        let run_id = uuid_field("run_id", &body.run_id)?;
        let run = self.runs.store().get_run(&principal.user_id, run_id).await.map_err(store_error("Run"))?;
        if let Some(expired) = expired(&run, self.runs.settings().output_retention) {
            return Err(expired);
        }
        let events = self.events(&run, body.from_sequence.unwrap_or(0), false);
        Ok(Response::new(Box::pin(events.map(|event| event.map(|event| pb::StreamRunResponse { event: Some(event) })))))
    }
}
