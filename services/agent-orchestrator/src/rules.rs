//! An agent's input rules beyond the contract's field rules (which
//! `agentmesh_runtime::validate` enforces from the proto options): sampling ranges, tool
//! name syntax, non-blank fallback models and names.
//!
//! [`agent_definition`] turns a create or update request into what the store writes,
//! collecting every violation (named by its field path, as a client sent it) instead of
//! stopping at the first one, so one 422 lists everything wrong.

use agentmesh_proto::agentmesh::agent::v1 as pb;
use agentmesh_runtime::ApiError;
use agentmesh_runtime::error::FieldViolation;
use agentmesh_runtime::request::refuse_violations;
use serde_json::Value;

use crate::convert::{approval_from_proto, concurrency_from_proto, model_from_proto, struct_to_object};
use crate::store::AgentDefinition;

/// Longest tool name (what LLM providers accept).
const MAX_TOOL_NAME: usize = 64;

/// The fields of an agent write (CreateAgent and UpdateAgent carry the same).
pub struct AgentFields<'a> {
    /// `name`.
    pub name: &'a str,
    /// `description`.
    pub description: Option<&'a String>,
    /// `system_prompt`.
    pub system_prompt: Option<&'a String>,
    /// `model_config`.
    pub model_config: Option<&'a pb::ModelConfig>,
    /// `tools`.
    pub tools: &'a [String],
    /// `metadata`.
    pub metadata: Option<&'a prost_types::Struct>,
    /// `approval`.
    pub approval: Option<&'a pb::ApprovalPolicy>,
    /// `concurrency`.
    pub concurrency: i32,
}

impl<'a> From<&'a pb::CreateAgentRequest> for AgentFields<'a> {
    fn from(request: &'a pb::CreateAgentRequest) -> Self {
        Self {
            name: &request.name,
            description: request.description.as_ref(),
            system_prompt: request.system_prompt.as_ref(),
            model_config: request.model_config.as_ref(),
            tools: &request.tools,
            metadata: request.metadata.as_ref(),
            approval: request.approval.as_ref(),
            concurrency: request.concurrency,
        }
    }
}

impl<'a> From<&'a pb::UpdateAgentRequest> for AgentFields<'a> {
    fn from(request: &'a pb::UpdateAgentRequest) -> Self {
        Self {
            name: &request.name,
            description: request.description.as_ref(),
            system_prompt: request.system_prompt.as_ref(),
            model_config: request.model_config.as_ref(),
            tools: &request.tools,
            metadata: request.metadata.as_ref(),
            approval: request.approval.as_ref(),
            concurrency: request.concurrency,
        }
    }
}

/// The definition an agent write asks for (name trimmed, absent parts defaulted), or
/// every violation in it.
pub fn agent_definition(fields: AgentFields<'_>) -> Result<AgentDefinition, ApiError> {
    let mut out = Vec::new();
    let name = fields.name.trim();
    if name.is_empty() {
        out.push(FieldViolation::new("name", "must not be blank", Value::from(fields.name)));
    }
    if let Some(model) = fields.model_config {
        check_range("model_config.temperature", model.temperature, 2.0, &mut out);
        check_range("model_config.top_p", model.top_p, 1.0, &mut out);
        for (index, fallback) in model.fallback_models.iter().enumerate() {
            if fallback.trim().is_empty() {
                let field = format!("model_config.fallback_models[{index}]");
                out.push(FieldViolation::new(&field, "must name a model", Value::from(fallback.as_str())));
            }
        }
    }
    check_tool_names("tools", fields.tools, &mut out);
    if let Some(approval) = fields.approval {
        check_tool_names("approval.tools", &approval.tools, &mut out);
    }
    refuse_violations(out)?;
    Ok(AgentDefinition {
        name: name.to_owned(),
        description: fields.description.cloned(),
        system_prompt: fields.system_prompt.cloned(),
        model: model_from_proto(fields.model_config),
        tools: fields.tools.to_vec(),
        approval: approval_from_proto(fields.approval),
        concurrency: concurrency_from_proto(fields.concurrency).unwrap_or_default(),
        metadata: fields.metadata.map(struct_to_object).unwrap_or_default(),
    })
}

/// `value`, when given, is a finite number from 0 to `max`.
fn check_range(field: &str, value: Option<f64>, max: f64, out: &mut Vec<FieldViolation>) {
    if let Some(value) = value
        && !(value.is_finite() && (0.0..=max).contains(&value))
    {
        let shown = serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number);
        out.push(FieldViolation::new(field, &format!("must be a number from 0 to {max}"), shown));
    }
}

/// Whether `name` is a tool name: 1 to 64 ASCII letters, digits, `_` or `-`.
pub fn is_tool_name(name: &str) -> bool {
    (1..=MAX_TOOL_NAME).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn check_tool_names(field: &str, names: &[String], out: &mut Vec<FieldViolation>) {
    for (index, name) in names.iter().enumerate() {
        if !is_tool_name(name) {
            let message = format!("must be 1 to {MAX_TOOL_NAME} letters, digits, `_` or `-`");
            out.push(FieldViolation::new(&format!("{field}[{index}]"), &message, Value::from(name.as_str())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Concurrency;

    fn fields<'a>(
        name: &'a str,
        model: Option<&'a pb::ModelConfig>,
        tools: &'a [String],
        approval: Option<&'a pb::ApprovalPolicy>,
    ) -> AgentFields<'a> {
        AgentFields {
            name,
            description: None,
            system_prompt: None,
            model_config: model,
            tools,
            metadata: None,
            approval,
            concurrency: 0,
        }
    }

    fn fields_of(error: ApiError) -> Vec<String> {
        error.field_violations.into_iter().map(|v| v.field).collect()
    }

    #[test]
    fn a_minimal_agent_takes_the_defaults_and_a_trimmed_name() {
        let agent = agent_definition(fields("  helper ", None, &[], None)).unwrap();
        assert_eq!(agent.name, "helper");
        assert_eq!(agent.concurrency, Concurrency::Reject);
        assert!(agent.tools.is_empty() && agent.metadata.is_empty() && agent.approval.tools.is_empty());
        assert_eq!(agent.model, crate::store::ModelSettings::default());
    }

    #[test]
    fn every_violation_is_listed_by_its_path() {
        let model = pb::ModelConfig {
            temperature: Some(2.5),
            top_p: Some(f64::NAN),
            fallback_models: vec!["openai/gpt-4o".into(), " ".into()],
            ..Default::default()
        };
        let tools = vec!["web_search".to_owned(), "bad name".to_owned(), "x".repeat(65)];
        let approval = pb::ApprovalPolicy { tools: vec!["ok-tool".into(), String::new()], destructive_tools: true };
        let error = agent_definition(fields(" ", Some(&model), &tools, Some(&approval))).unwrap_err();
        assert_eq!(
            fields_of(error),
            [
                "name",
                "model_config.temperature",
                "model_config.top_p",
                "model_config.fallback_models[1]",
                "tools[1]",
                "tools[2]",
                "approval.tools[1]"
            ]
        );
    }

    #[test]
    fn sampling_bounds_are_inclusive() {
        let model = pb::ModelConfig { temperature: Some(0.0), top_p: Some(1.0), ..Default::default() };
        let agent = agent_definition(fields("a", Some(&model), &[], None)).unwrap();
        assert_eq!((agent.model.temperature, agent.model.top_p), (Some(0.0), Some(1.0)));
        let model = pb::ModelConfig { temperature: Some(-0.1), ..Default::default() };
        assert_eq!(
            fields_of(agent_definition(fields("a", Some(&model), &[], None)).unwrap_err()),
            ["model_config.temperature"]
        );
        assert!(is_tool_name(&"a".repeat(64)) && !is_tool_name("é"));
    }
}
