//! Conversions between stored records and the protobuf contract (JSON objects ↔
//! `google.protobuf.Struct` live in `agentmesh_proto::json`).
//!
//! A run's `output_expires_at` depends on the deployment's output retention, so
//! [`run_to_proto`] takes it; the runs inside domain events ([`run_to_event_proto`]) carry
//! none, as consumers of events do not replay output.

use std::time::Duration;

use agentmesh_proto::agentmesh::agent::v1 as pb;
use agentmesh_proto::agentmesh::common::v1 as common;
pub use agentmesh_proto::json::{object_to_struct, struct_to_object};
use agentmesh_runtime::ErrorCode;
use chrono::{DateTime, Utc};
use prost_types::Timestamp;

use crate::store::lifecycle::lease_until;
use crate::store::{
    AgentRecord, AgentStatus, Approval, Concurrency, ModelSettings, PendingToolCall, RunError, RunRecord, RunStatus,
    RunUsage,
};

/// A stored agent as the contract's `Agent`.
pub fn agent_to_proto(agent: &AgentRecord) -> pb::Agent {
    let definition = &agent.definition;
    pb::Agent {
        id: agent.id.to_string(),
        name: definition.name.clone(),
        description: definition.description.clone(),
        system_prompt: definition.system_prompt.clone(),
        model_config: Some(model_to_proto(&definition.model)),
        tools: definition.tools.clone(),
        status: agent_status_to_proto(agent.status) as i32,
        metadata: Some(object_to_struct(&definition.metadata)),
        created_at: Some(timestamp(agent.created_at)),
        updated_at: Some(timestamp(agent.updated_at)),
        user_id: agent.user_id.clone(),
        approval: Some(approval_to_proto(&definition.approval)),
        concurrency: concurrency_to_proto(definition.concurrency) as i32,
    }
}

/// Stored model settings as the contract's `ModelConfig`.
pub fn model_to_proto(model: &ModelSettings) -> pb::ModelConfig {
    pb::ModelConfig {
        model: model.model.clone(),
        temperature: model.temperature,
        max_tokens: model.max_tokens.map(saturating_i32),
        fallback_models: model.fallback_models.clone(),
        max_steps: model.max_steps.map(saturating_i32),
        token_budget: model.token_budget.map(saturating_i64),
        history_messages: model.history_messages.map(saturating_i32),
        top_p: model.top_p,
    }
}

/// The contract's `ModelConfig` as stored settings (absent means all defaults). Negative
/// numbers, which the contract's field rules refuse before this runs, are dropped.
pub fn model_from_proto(model: Option<&pb::ModelConfig>) -> ModelSettings {
    model.map_or_else(ModelSettings::default, |model| ModelSettings {
        model: model.model.clone(),
        temperature: model.temperature,
        max_tokens: model.max_tokens.and_then(|n| u32::try_from(n).ok()),
        fallback_models: model.fallback_models.clone(),
        max_steps: model.max_steps.and_then(|n| u32::try_from(n).ok()),
        token_budget: model.token_budget.and_then(|n| u64::try_from(n).ok()),
        history_messages: model.history_messages.and_then(|n| u32::try_from(n).ok()),
        top_p: model.top_p,
    })
}

/// A stored approval policy as the contract's.
pub fn approval_to_proto(approval: &Approval) -> pb::ApprovalPolicy {
    pb::ApprovalPolicy { tools: approval.tools.clone(), destructive_tools: approval.destructive_tools }
}

/// The contract's approval policy as stored (absent means none).
pub fn approval_from_proto(approval: Option<&pb::ApprovalPolicy>) -> Approval {
    approval.map_or_else(Approval::default, |approval| Approval {
        tools: approval.tools.clone(),
        destructive_tools: approval.destructive_tools,
    })
}

/// The contract's concurrency policy for a stored one.
pub fn concurrency_to_proto(concurrency: Concurrency) -> pb::ConcurrencyPolicy {
    match concurrency {
        Concurrency::Reject => pb::ConcurrencyPolicy::Reject,
        Concurrency::Enqueue => pb::ConcurrencyPolicy::Enqueue,
        Concurrency::Interrupt => pb::ConcurrencyPolicy::Interrupt,
    }
}

/// The stored policy for the contract's; `None` for UNSPECIFIED or unknown values (an
/// agent then takes `reject`, an execute its agent's policy).
pub fn concurrency_from_proto(value: i32) -> Option<Concurrency> {
    match pb::ConcurrencyPolicy::try_from(value).ok()? {
        pb::ConcurrencyPolicy::Reject => Some(Concurrency::Reject),
        pb::ConcurrencyPolicy::Enqueue => Some(Concurrency::Enqueue),
        pb::ConcurrencyPolicy::Interrupt => Some(Concurrency::Interrupt),
        pb::ConcurrencyPolicy::Unspecified => None,
    }
}

/// The contract's agent status for a stored one.
pub fn agent_status_to_proto(status: AgentStatus) -> common::AgentStatus {
    match status {
        AgentStatus::Idle => common::AgentStatus::Idle,
        AgentStatus::Processing => common::AgentStatus::Processing,
        AgentStatus::Waiting => common::AgentStatus::Waiting,
        AgentStatus::Error => common::AgentStatus::Error,
        AgentStatus::Completed => common::AgentStatus::Completed,
    }
}

/// The stored status for the contract's (UNSPECIFIED is `idle`, as the contract says);
/// `None` for unknown values.
pub fn agent_status_from_proto(value: i32) -> Option<AgentStatus> {
    Some(match common::AgentStatus::try_from(value).ok()? {
        common::AgentStatus::Unspecified | common::AgentStatus::Idle => AgentStatus::Idle,
        common::AgentStatus::Processing => AgentStatus::Processing,
        common::AgentStatus::Waiting => AgentStatus::Waiting,
        common::AgentStatus::Error => AgentStatus::Error,
        common::AgentStatus::Completed => AgentStatus::Completed,
    })
}

/// The contract's run status for a stored one.
pub fn run_status_to_proto(status: RunStatus) -> pb::RunStatus {
    match status {
        RunStatus::Queued => pb::RunStatus::Queued,
        RunStatus::Running => pb::RunStatus::Running,
        RunStatus::RequiresAction => pb::RunStatus::RequiresAction,
        RunStatus::Completed => pb::RunStatus::Completed,
        RunStatus::Failed => pb::RunStatus::Failed,
        RunStatus::Cancelled => pb::RunStatus::Cancelled,
    }
}

/// A stored run as the contract's `Run`; `output_retention` is how long a finished run's
/// output stays replayable (`output_expires_at` = completion + retention).
pub fn run_to_proto(run: &RunRecord, output_retention: Duration) -> pb::Run {
    let mut proto = run_to_event_proto(run);
    proto.output_expires_at = run.completed_at.map(|at| timestamp(lease_until(at, output_retention)));
    proto
}

/// A stored run as the contract's `Run` without `output_expires_at` (for domain events).
pub fn run_to_event_proto(run: &RunRecord) -> pb::Run {
    pb::Run {
        id: run.id.to_string(),
        agent_id: run.agent_id.to_string(),
        session_id: run.session_id.to_string(),
        user_id: run.principal.user_id.clone(),
        status: run_status_to_proto(run.status) as i32,
        user_message_id: run.user_message_id.map(|id| id.to_string()).unwrap_or_default(),
        response_message_id: run.response_message_id.map(|id| id.to_string()),
        usage: Some(usage_to_proto(&run.usage)),
        error: run.error.as_ref().filter(|_| run.status == RunStatus::Failed).map(error_detail),
        execution_time_ms: execution_time_ms(run, crate::store::now()),
        step_count: saturating_i32(run.step_count),
        created_at: Some(timestamp(run.created_at)),
        started_at: run.started_at.map(timestamp),
        completed_at: run.completed_at.map(timestamp),
        metadata: Some(object_to_struct(&run.metadata)),
        pending_tool_calls: run.pending_tool_calls.iter().map(pending_call_to_proto).collect(),
        idempotency_key: run.idempotency_key.clone(),
        last_sequence: run.last_sequence,
        output_expires_at: None,
    }
}

/// Milliseconds from start to completion (or to `now` while unfinished); 0 before start.
pub fn execution_time_ms(run: &RunRecord, now: DateTime<Utc>) -> i64 {
    run.started_at.map_or(0, |started| (run.completed_at.unwrap_or(now) - started).num_milliseconds().max(0))
}

/// Stored usage as the contract's `Usage`.
pub fn usage_to_proto(usage: &RunUsage) -> common::Usage {
    common::Usage {
        prompt_tokens: saturating_i64(usage.prompt_tokens),
        completion_tokens: saturating_i64(usage.completion_tokens),
        total_tokens: saturating_i64(usage.total()),
        cost_usd: None,
        cached_prompt_tokens: saturating_i64(usage.cached_tokens),
        cache_creation_tokens: 0,
        reasoning_tokens: saturating_i64(usage.reasoning_tokens),
    }
}

/// A run's error as the contract's `ErrorDetail`; a code the mesh does not know is
/// reported as `internal_error`.
pub fn error_detail(error: &RunError) -> common::ErrorDetail {
    let code = ErrorCode::parse(&error.code).unwrap_or(ErrorCode::Internal);
    let proto_code = common::ErrorCode::from_str_name(&format!("ERROR_CODE_{}", code.as_str().to_ascii_uppercase()))
        .unwrap_or(common::ErrorCode::InternalError);
    common::ErrorDetail {
        code: proto_code as i32,
        message: error.message.clone(),
        details: Some(object_to_struct(&error.details)),
        retry_after: None,
        correlation_id: None,
    }
}

/// A call waiting for approval as the contract's `ToolCall`.
pub fn pending_call_to_proto(call: &PendingToolCall) -> pb::ToolCall {
    pb::ToolCall {
        id: call.id.clone(),
        name: call.name.clone(),
        step: call.step,
        arguments_json: call.arguments_json.clone(),
        requires_approval: true,
    }
}

/// A protobuf timestamp.
pub fn timestamp(at: DateTime<Utc>) -> Timestamp {
    Timestamp { seconds: at.timestamp(), nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0) }
}

fn saturating_i32(value: u32) -> i32 {
    i32::try_from(value).unwrap_or(i32::MAX)
}

fn saturating_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::store::{RunPrincipal, RunRequest};

    fn run(status: RunStatus) -> RunRecord {
        let at = crate::store::now();
        RunRecord {
            id: Uuid::now_v7(),
            agent_id: Uuid::now_v7(),
            session_id: Uuid::now_v7(),
            principal: RunPrincipal { user_id: "alice".into(), tenant: None, tier: "basic".into(), scopes: vec![] },
            request: RunRequest { message: "hi".into(), cancel_on_disconnect: false },
            status,
            user_message_id: None,
            response_message_id: None,
            usage: RunUsage { prompt_tokens: 10, completion_tokens: 5, cached_tokens: 2, reasoning_tokens: 1 },
            error: Some(RunError {
                code: "rate_limit_error".into(),
                message: "slow down".into(),
                details: crate::store::JsonObject::new(),
            }),
            step_count: 3,
            pending_tool_calls: vec![PendingToolCall {
                id: "c1".into(),
                name: "delete_file".into(),
                arguments_json: "{\"path\":".into(),
                step: 2,
            }],
            idempotency_key: Some("k".into()),
            last_sequence: 9,
            metadata: crate::store::JsonObject::new(),
            created_at: at,
            started_at: Some(at),
            completed_at: Some(at + chrono::Duration::milliseconds(1500)),
            lease_owner: None,
            lease_expires_at: None,
            holds_session: false,
        }
    }

    #[test]
    fn runs_carry_usage_error_calls_and_the_output_expiry() {
        let failed = run(RunStatus::Failed);
        let proto = run_to_proto(&failed, Duration::from_secs(3600));
        assert_eq!(proto.status, pb::RunStatus::Failed as i32);
        assert_eq!(proto.execution_time_ms, 1500);
        assert_eq!(proto.user_message_id, "");
        let usage = proto.usage.unwrap_or_default();
        assert_eq!((usage.total_tokens, usage.cached_prompt_tokens, usage.reasoning_tokens), (15, 2, 1));
        let error = proto.error.unwrap_or_default();
        assert_eq!((error.code, error.message.as_str()), (common::ErrorCode::RateLimitError as i32, "slow down"));
        let call = &proto.pending_tool_calls[0];
        assert_eq!((call.arguments_json.as_str(), call.requires_approval, call.step), ("{\"path\":", true, 2));
        let completed = failed.completed_at.unwrap_or_default();
        assert_eq!(proto.output_expires_at, Some(timestamp(completed + chrono::Duration::hours(1))));
        assert_eq!(run_to_event_proto(&failed).output_expires_at, None);

        // The error is the failure's only; an unfinished run has no expiry.
        let running = RunRecord { completed_at: None, ..run(RunStatus::Running) };
        let proto = run_to_proto(&running, Duration::from_secs(3600));
        assert!(proto.error.is_none() && proto.output_expires_at.is_none());
    }

    #[test]
    fn error_codes_map_by_name_and_unknown_ones_are_internal() {
        for code in ErrorCode::ALL {
            let error = RunError { code: code.as_str().into(), message: String::new(), details: Default::default() };
            let proto = common::ErrorCode::try_from(error_detail(&error).code).unwrap_or_default();
            assert_eq!(proto.as_str_name(), format!("ERROR_CODE_{}", code.as_str().to_ascii_uppercase()));
        }
        let unknown = RunError { code: "nope".into(), message: String::new(), details: Default::default() };
        assert_eq!(error_detail(&unknown).code, common::ErrorCode::InternalError as i32);
    }

    #[test]
    fn policies_and_statuses_map_both_ways() {
        for policy in Concurrency::ALL {
            assert_eq!(concurrency_from_proto(concurrency_to_proto(policy) as i32), Some(policy));
        }
        assert_eq!(concurrency_from_proto(0), None);
        for status in AgentStatus::ALL {
            assert_eq!(agent_status_from_proto(agent_status_to_proto(status) as i32), Some(status));
        }
        assert_eq!(agent_status_from_proto(0), Some(AgentStatus::Idle));
        assert_eq!(agent_status_from_proto(42), None);
        let model = ModelSettings { max_tokens: Some(100), token_budget: Some(5), ..ModelSettings::default() };
        assert_eq!(model_from_proto(Some(&model_to_proto(&model))), model);
    }
}
