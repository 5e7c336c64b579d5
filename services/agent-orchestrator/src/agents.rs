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
use agentmesh_runtime::auth::Principal;
use agentmesh_runtime::validate::validate;
use agentmesh_runtime::{ApiError, ErrorCode, RequestContext};
use serde_json::Value;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::convert::{agent_status_from_proto, agent_to_proto, run_to_proto};
use crate::paging::{self, query_fingerprint};
use crate::rules::{self, AgentFields, violation};
use crate::store::{AgentQuery, AgentRecord, OrchestratorStore, Page, RunQuery, RunRecord, StoreError};

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

/// The caller, as established by the server's authenticator.
pub fn principal<T>(request: &Request<T>) -> Result<Principal, Status> {
    request
        .extensions()
        .get::<RequestContext>()
        .and_then(|context| context.principal.clone())
        .or_else(|| RequestContext::current().and_then(|context| context.principal))
        .ok_or_else(|| Status::from(ApiError::new(ErrorCode::Authentication, "Authentication required")))
}

/// A UUID already checked by the contract's `format: "uuid"` rule.
pub fn parse_id(field: &str, raw: &str) -> Result<Uuid, Status> {
    Uuid::try_parse(raw)
        .map_err(|_| ApiError::validation(vec![violation(field, "must be a UUID", Value::from(raw))]).into())
}

/// A store error as the client sees it; `resource` (`Agent`, `Run`) names what was not
/// found. A busy session is 409 naming the run holding it; a transition the run's status
/// does not allow is 409 naming the status.
pub fn store_error(resource: &'static str) -> impl Fn(StoreError) -> Status {
    move |error| match error {
        StoreError::NotFound => ApiError::not_found(resource).into(),
        StoreError::NameTaken(name) => {
            ApiError::new(ErrorCode::Conflict, format!("{resource} name {name:?} is already taken"))
                .with_detail("name", name)
                .into()
        }
        StoreError::SessionBusy(holder) => {
            ApiError::new(ErrorCode::Conflict, format!("The session is busy with run {}", holder.id))
                .with_detail("run_id", holder.id.to_string())
                .with_detail("session_id", holder.session_id.to_string())
                .into()
        }
        StoreError::InvalidTransition(run) => {
            ApiError::new(ErrorCode::Conflict, format!("The run is {}", run.status.as_str()))
                .with_detail("run_id", run.id.to_string())
                .with_detail("status", run.status.as_str())
                .into()
        }
        StoreError::Unavailable(source) => {
            tracing::warn!(error = %source, "orchestrator storage unavailable");
            ApiError::external_service("agent-orchestrator-storage", "database", true).into()
        }
        StoreError::Internal(source) => {
            tracing::error!(error = %source, "orchestrator storage failure");
            ApiError::internal().into()
        }
    }
}

fn limit(raw: Option<i32>) -> u32 {
    raw.and_then(|n| u32::try_from(n).ok()).unwrap_or(DEFAULT_LIMIT)
}

fn offset(raw: Option<i32>) -> u64 {
    raw.and_then(|n| u64::try_from(n).ok()).unwrap_or(0)
}

/// The position in `page_token` (which takes precedence over `offset`), refusing a token
/// issued for another query.
fn after(page_token: &str, fingerprint: &str) -> Result<Option<Uuid>, Status> {
    if page_token.is_empty() {
        return Ok(None);
    }
    paging::decode(page_token, fingerprint)
        .map(Some)
        .map_err(|error| ApiError::validation(vec![violation("page_token", &error.to_string(), Value::Null)]).into())
}

/// The token of the page after `page`, empty on the last page.
fn next_token<T>(page: &Page<T>, id: impl Fn(&T) -> Uuid, fingerprint: &str) -> String {
    match page.items.last() {
        Some(last) if page.has_more => paging::encode(id(last), fingerprint),
        _ => String::new(),
    }
}

/// A filter value as a fingerprint part that tells "absent" from any value.
fn part<T: std::fmt::Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_owned(), |v| format!("+{v}"))
}

fn total(page_total: u64) -> i64 {
    i64::try_from(page_total).unwrap_or(i64::MAX)
}

impl AgentsApi {
    /// `CreateAgent`.
    pub async fn create_agent(
        &self,
        request: Request<pb::CreateAgentRequest>,
    ) -> Result<Response<pb::CreateAgentResponse>, Status> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        validate(&request)?;
        let definition = rules::agent_definition(AgentFields::from(&request))?;
        let agent = self.store.create_agent(&principal.user_id, definition).await.map_err(store_error("Agent"))?;
        Ok(Response::new(pb::CreateAgentResponse { agent: Some(agent_to_proto(&agent)) }))
    }

    /// `ListAgents`: the caller's agents, newest first.
    pub async fn list_agents(
        &self,
        request: Request<pb::ListAgentsRequest>,
    ) -> Result<Response<pb::ListAgentsResponse>, Status> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        validate(&request)?;
        let status = match request.status {
            Some(raw) => Some(agent_status_from_proto(raw).ok_or_else(|| {
                Status::from(ApiError::validation(vec![violation(
                    "status",
                    "is not an agent status",
                    Value::from(raw),
                )]))
            })?),
            None => None,
        };
        let search = request.search.filter(|s| !s.is_empty());
        let fingerprint = query_fingerprint(&[
            "agents",
            &principal.user_id,
            &part(status.map(|s| s.as_str())),
            &part(search.as_deref()),
        ]);
        let after = after(&request.page_token, &fingerprint)?;
        let query = AgentQuery {
            status,
            search,
            limit: limit(request.limit),
            offset: if after.is_some() { 0 } else { offset(request.offset) },
            after,
        };
        let page = self.store.list_agents(&principal.user_id, &query).await.map_err(store_error("Agent"))?;
        Ok(Response::new(pb::ListAgentsResponse {
            agents: page.items.iter().map(agent_to_proto).collect(),
            next_page_token: next_token(&page, |agent| agent.id, &fingerprint),
            total_count: total(page.total),
        }))
    }

    /// `GetAgent`.
    pub async fn get_agent(
        &self,
        request: Request<pb::GetAgentRequest>,
    ) -> Result<Response<pb::GetAgentResponse>, Status> {
        let principal = principal(&request)?;
        validate(request.get_ref())?;
        let agent_id = parse_id("agent_id", &request.get_ref().agent_id)?;
        let agent = self.store.get_agent(&principal.user_id, agent_id).await.map_err(store_error("Agent"))?;
        Ok(Response::new(pb::GetAgentResponse { agent: Some(agent_to_proto(&agent)) }))
    }

    /// `UpdateAgent`: replaces the configuration.
    pub async fn update_agent(
        &self,
        request: Request<pb::UpdateAgentRequest>,
    ) -> Result<Response<pb::UpdateAgentResponse>, Status> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        validate(&request)?;
        let agent_id = parse_id("agent_id", &request.agent_id)?;
        let definition = rules::agent_definition(AgentFields::from(&request))?;
        let agent =
            self.store.update_agent(&principal.user_id, agent_id, definition).await.map_err(store_error("Agent"))?;
        Ok(Response::new(pb::UpdateAgentResponse { agent: Some(agent_to_proto(&agent)) }))
    }

    /// The first step of `DeleteAgent`: checks the request and returns the caller's user
    /// id, the agent, and its unfinished runs for the service to cancel before
    /// [`AgentsApi::delete_agent`].
    pub async fn agent_to_delete(
        &self,
        request: &Request<pb::DeleteAgentRequest>,
    ) -> Result<(String, AgentRecord, Vec<RunRecord>), Status> {
        let principal = principal(request)?;
        validate(request.get_ref())?;
        let agent_id = parse_id("agent_id", &request.get_ref().agent_id)?;
        let agent = self.store.get_agent(&principal.user_id, agent_id).await.map_err(store_error("Agent"))?;
        let runs = self.store.list_unfinished_runs(&principal.user_id, agent_id).await.map_err(store_error("Agent"))?;
        Ok((principal.user_id, agent, runs))
    }

    /// The second step of `DeleteAgent`: deletes the owner's agent (its runs stay, as
    /// history).
    pub async fn delete_agent(
        &self,
        user_id: &str,
        agent_id: Uuid,
    ) -> Result<Response<pb::DeleteAgentResponse>, Status> {
        self.store.delete_agent(user_id, agent_id).await.map_err(store_error("Agent"))?;
        Ok(Response::new(pb::DeleteAgentResponse {}))
    }

    /// `GetRun`.
    pub async fn get_run(&self, request: Request<pb::GetRunRequest>) -> Result<Response<pb::GetRunResponse>, Status> {
        let principal = principal(&request)?;
        validate(request.get_ref())?;
        let run_id = parse_id("run_id", &request.get_ref().run_id)?;
        let run = self.store.get_run(&principal.user_id, run_id).await.map_err(store_error("Run"))?;
        Ok(Response::new(pb::GetRunResponse { run: Some(run_to_proto(&run, self.output_retention)) }))
    }

    /// `ListSessionRuns`: the caller's runs of a session, newest first.
    pub async fn list_session_runs(
        &self,
        request: Request<pb::ListSessionRunsRequest>,
    ) -> Result<Response<pb::ListSessionRunsResponse>, Status> {
        let principal = principal(&request)?;
        let request = request.into_inner();
        validate(&request)?;
        let session_id = parse_id("session_id", &request.session_id)?;
        let fingerprint = query_fingerprint(&["session_runs", &principal.user_id, &session_id.to_string()]);
        let after = after(&request.page_token, &fingerprint)?;
        let query = RunQuery {
            limit: limit(request.limit),
            offset: if after.is_some() { 0 } else { offset(request.offset) },
            after,
        };
        let page =
            self.store.list_session_runs(&principal.user_id, session_id, &query).await.map_err(store_error("Run"))?;
        Ok(Response::new(pb::ListSessionRunsResponse {
            runs: page.items.iter().map(|run| run_to_proto(run, self.output_retention)).collect(),
            next_page_token: next_token(&page, |run| run.id, &fingerprint),
            total_count: total(page.total),
        }))
    }
}
