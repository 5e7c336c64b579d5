//! The agent CRUD and run-read RPCs of `AgentService`, ready for the service to delegate
//! to: each method takes the tonic request and answers exactly as the trait method does.
//!
//! Every call takes the caller's principal from the request context (set by the server's
//! authenticator) and scopes the store call to its user: another user's agent or run is
//! 404, as if it did not exist. Requests are checked against the contract's field rules,
//! then an agent's own rules ([`crate::rules`]); store errors become the mesh's error
//! model ([`store_error`]).
//!
//! `DeleteAgent` is two steps, so the service can cancel the agent's unfinished runs in
//! between: [`AgentsApi::agent_to_delete`] authorises the request and returns the agent
//! (with its unfinished runs, see [`OrchestratorStore::list_unfinished_runs`]), then
//! [`AgentsApi::delete_agent`] deletes it.

use std::sync::Arc;
use std::time::Duration;

use agentmesh_proto::agentmesh::agent::v1 as pb;
use agentmesh_runtime::paging::{PageRequest, filter_part, query_fingerprint};
use agentmesh_runtime::request::{accept, caller, invalid, uuid_field};
use agentmesh_runtime::validate::validate;
use agentmesh_runtime::{ApiError, ErrorCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::convert::{agent_status_from_proto, agent_to_proto, run_to_proto};
use crate::rules::{self, AgentFields};
use crate::store::{AgentQuery, AgentRecord, OrchestratorStore, RunQuery, RunRecord, StoreError};

/// Page size when the request gives none.
const DEFAULT_LIMIT: u32 = 20;

/// Agent CRUD and run reads over a store.
#[derive(Clone)]
pub struct AgentsApi {
    /// Where agents and runs live.
    pub store: Arc<dyn OrchestratorStore>,
    /// How long a finished run's output stays replayable (`Run.output_expires_at`).
    pub output_retention: Duration,
}

/// The position in a listing: lists are newest first by id, so the id of the last item
/// seen (`{"i": id}` in the page token).
#[derive(Serialize, Deserialize)]
struct Cursor {
    #[serde(rename = "i")]
    id: Uuid,
}

/// Where a listing of `fingerprint` starts (see [`PageRequest::parse`]): its size, offset
/// and the id to continue after.
fn page_request(
    limit: Option<i32>,
    offset: Option<i32>,
    page_token: &str,
    fingerprint: &str,
) -> Result<(u32, u64, Option<Uuid>), Status> {
    let PageRequest { limit, offset, after } =
        PageRequest::<Cursor>::parse(limit, offset, page_token, fingerprint, DEFAULT_LIMIT)?;
    Ok((limit, offset, after.map(|cursor| cursor.id)))
}

/// A store error as the client sees it; `resource` (`Agent`, `Run`) names what was not
/// found. A busy session is 409 naming the run holding it; a transition the run's status
/// does not allow is 409 naming the status.
pub fn store_error(resource: &'static str) -> impl Fn(StoreError) -> ApiError {
    move |error| match error {
        StoreError::NotFound => ApiError::not_found(resource),
        StoreError::NameTaken(name) => {
            ApiError::new(ErrorCode::Conflict, format!("{resource} name {name:?} is already taken"))
                .with_detail("name", name)
        }
        StoreError::SessionBusy(holder) => {
            ApiError::new(ErrorCode::Conflict, format!("The session is busy with run {}", holder.id))
                .with_detail("run_id", holder.id.to_string())
                .with_detail("session_id", holder.session_id.to_string())
        }
        StoreError::InvalidTransition(run) => {
            ApiError::new(ErrorCode::Conflict, format!("The run is {}", run.status.as_str()))
                .with_detail("run_id", run.id.to_string())
                .with_detail("status", run.status.as_str())
        }
        StoreError::Unavailable(source) => {
            tracing::warn!(error = %source, "orchestrator storage unavailable");
            ApiError::external_service("agent-orchestrator-storage", "database", true)
        }
        StoreError::Internal(source) => {
            tracing::error!(error = %source, "orchestrator storage failure");
            ApiError::internal()
        }
    }
}

/// [`store_error`] as a gRPC status.
fn store_status(resource: &'static str) -> impl Fn(StoreError) -> Status {
    let to_api_error = store_error(resource);
    move |error| to_api_error(error).into()
}

impl AgentsApi {
    /// `CreateAgent`.
    pub async fn create_agent(
        &self,
        request: Request<pb::CreateAgentRequest>,
    ) -> Result<Response<pb::CreateAgentResponse>, Status> {
        let (principal, request) = accept(request)?;
        let definition = rules::agent_definition(AgentFields::from(&request))?;
        let agent = self.store.create_agent(&principal.user_id, definition).await.map_err(store_status("Agent"))?;
        Ok(Response::new(pb::CreateAgentResponse { agent: Some(agent_to_proto(&agent)) }))
    }

    /// `ListAgents`: the caller's agents, newest first.
    pub async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let (principal, request) = accept(request)?;
        let status = match request.status {
            Some(raw) => Some(
                agent_status_from_proto(raw)
                    .ok_or_else(|| invalid("status", "is not an agent status", Value::from(raw)))?,
            ),
            None => None,
        };
        let search = request.search.filter(|s| !s.is_empty());
        let fingerprint = query_fingerprint(&[
            "agents",
            &principal.user_id,
            &filter_part(status.map(|s| s.as_str())),
            &filter_part(search.as_deref()),
        ]);
        let (limit, offset, after) = page_request(request.limit, request.offset, &request.page_token, &fingerprint)?;
        let query = AgentQuery { status, search, limit, offset, after };
        let page = self.store.list_agents(&principal.user_id, &query).await.map_err(store_status("Agent"))?;
        Ok(Response::new(pb::ListAgentsResponse {
            agents: page.items.iter().map(agent_to_proto).collect(),
            next_page_token: page.next_token(|agent| Cursor { id: agent.id }, &fingerprint),
            total_count: page.total_count(),
        }))
    }

    /// `GetAgent`.
    pub async fn get_agent(
        &self,
        request: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::GetAgentResponse>, Status> {
        let (principal, request) = accept(request)?;
        let agent_id = uuid_field("agent_id", &request.agent_id)?;
        let agent = self.store.get_agent(&principal.user_id, agent_id).await.map_err(store_status("Agent"))?;
        Ok(Response::new(pb::GetAgentResponse { agent: Some(agent_to_proto(&agent)) }))
    }

    /// `UpdateAgent`: replaces the configuration.
    pub async fn update_agent(
        &self,
        request: Request<pb::UpdateAgentRequest>,
    ) -> Result<Response<pb::UpdateAgentResponse>, Status> {
        let (principal, request) = accept(request)?;
        let agent_id = uuid_field("agent_id", &request.agent_id)?;
        let definition = rules::agent_definition(AgentFields::from(&request))?;
        let agent =
            self.store.update_agent(&principal.user_id, agent_id, definition).await.map_err(store_status("Agent"))?;
        Ok(Response::new(pb::UpdateAgentResponse { agent: Some(agent_to_proto(&agent)) }))
    }

    /// The first step of `DeleteAgent`: checks the request and returns the caller's user
    /// id, the agent, and its unfinished runs for the service to cancel before
    /// [`AgentsApi::delete_agent`].
    pub async fn agent_to_delete(
        &self,
        request: &Request<pb::DeleteAgentRequest>,
    ) -> Result<(String, AgentRecord, Vec<RunRecord>), Status> {
        let principal = caller(request)?;
        validate(request.get_ref())?;
        let agent_id = uuid_field("agent_id", &request.get_ref().agent_id)?;
        let agent = self.store.get_agent(&principal.user_id, agent_id).await.map_err(store_status("Agent"))?;
        let runs =
            self.store.list_unfinished_runs(&principal.user_id, agent_id).await.map_err(store_status("Agent"))?;
        Ok((principal.user_id, agent, runs))
    }

    /// The second step of `DeleteAgent`: deletes the owner's agent (its runs stay, as
    /// history).
    pub async fn delete_agent(
        &self,
        user_id: &str,
        agent_id: Uuid,
    ) -> Result<Response<pb::DeleteAgentResponse>, Status> {
        self.store.delete_agent(user_id, agent_id).await.map_err(store_status("Agent"))?;
        Ok(Response::new(pb::DeleteAgentResponse {}))
    }

    /// `GetRun`.
    pub async fn get_run(&self, request: Request<pb::GetRunRequest>) -> Result<Response<pb::GetRunResponse>, Status> {
        let (principal, request) = accept(request)?;
        let run_id = uuid_field("run_id", &request.run_id)?;
        let run = self.store.get_run(&principal.user_id, run_id).await.map_err(store_status("Run"))?;
        Ok(Response::new(pb::GetRunResponse { run: Some(run_to_proto(&run, self.output_retention)) }))
    }

    /// `ListSessionRuns`: the caller's runs of a session, newest first.
    pub async fn list_session_runs(
        &self,
        request: Request<pb::ListSessionRunsRequest>,
    ) -> Result<Response<pb::ListSessionRunsResponse>, Status> {
        let (principal, request) = accept(request)?;
        let session_id = uuid_field("session_id", &request.session_id)?;
        let fingerprint = query_fingerprint(&["session_runs", &principal.user_id, &session_id.to_string()]);
        let (limit, offset, after) = page_request(request.limit, request.offset, &request.page_token, &fingerprint)?;
        let query = RunQuery { limit, offset, after };
        let page =
            self.store.list_session_runs(&principal.user_id, session_id, &query).await.map_err(store_status("Run"))?;
        Ok(Response::new(pb::ListSessionRunsResponse {
            runs: page.items.iter().map(|run| run_to_proto(run, self.output_retention)).collect(),
            next_page_token: page.next_token(|run| Cursor { id: run.id }, &fingerprint),
            total_count: page.total_count(),
        }))
    }
}
