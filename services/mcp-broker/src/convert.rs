//! Conversions between stored records and the protobuf contract (JSON objects ↔
//! `google.protobuf.Struct` live in `agentmesh_proto::json`).

use agentmesh_proto::agentmesh::mcp::v1::{self as pb, environment_variable};
pub use agentmesh_proto::json::{object_to_struct, struct_to_object};
use chrono::{DateTime, Utc};
use prost_types::Timestamp;

use crate::store::{
    Authentication, EnvValue, EnvVar, McpServerRecord, ServerStatus, StdioCommand, ToolAnnotations, ToolRecord,
    Transport,
};

/// A stored tool as the contract's `Tool`.
pub fn tool_to_proto(tool: &ToolRecord) -> pb::Tool {
    pb::Tool {
        id: tool.id.to_string(),
        name: tool.name.clone(),
        description: tool.description.clone(),
        schema: Some(object_to_struct(&tool.schema)),
        mcp_server_id: tool.mcp_server_id.map(|id| id.to_string()),
        enabled: tool.enabled,
        metadata: Some(object_to_struct(&tool.metadata)),
        created_at: Some(timestamp(tool.created_at)),
        updated_at: Some(timestamp(tool.updated_at)),
        title: tool.title.clone(),
        output_schema: tool.output_schema.as_ref().map(object_to_struct),
        annotations: tool.annotations.as_ref().map(annotations_to_proto),
        remote_name: tool.remote_name.clone(),
    }
}

/// Stored annotations as the contract's.
pub fn annotations_to_proto(annotations: &ToolAnnotations) -> pb::ToolAnnotations {
    pb::ToolAnnotations {
        read_only_hint: annotations.read_only_hint,
        destructive_hint: annotations.destructive_hint,
        idempotent_hint: annotations.idempotent_hint,
        open_world_hint: annotations.open_world_hint,
    }
}

/// The contract's annotations as stored ones.
pub fn annotations_from_proto(annotations: &pb::ToolAnnotations) -> ToolAnnotations {
    ToolAnnotations {
        read_only_hint: annotations.read_only_hint,
        destructive_hint: annotations.destructive_hint,
        idempotent_hint: annotations.idempotent_hint,
        open_world_hint: annotations.open_world_hint,
    }
}

/// A stored server as the contract's `McpServer`.
pub fn server_to_proto(server: &McpServerRecord) -> pb::McpServer {
    let config = &server.config;
    pb::McpServer {
        id: server.id.to_string(),
        name: config.name.clone(),
        description: config.description.clone(),
        endpoint: config.endpoint.clone(),
        authentication: Some(authentication_to_proto(&config.authentication)),
        capabilities: config.capabilities.clone(),
        health_check_url: config.health_check_url.clone(),
        enabled: config.enabled,
        transport: transport_to_proto(config.transport) as i32,
        status: status_to_proto(server.status) as i32,
        last_health_check: server.last_health_check.map(timestamp),
        created_at: Some(timestamp(server.created_at)),
        updated_at: Some(timestamp(server.updated_at)),
        stdio: config.stdio.as_ref().map(stdio_to_proto),
        tool_prefix: config.tool_prefix.clone(),
        protocol_version: server.protocol_version.clone(),
        server_info: server.server_info.clone(),
    }
}

fn authentication_to_proto(authentication: &Authentication) -> pb::McpAuthentication {
    pb::McpAuthentication {
        bearer_secret: authentication.bearer_secret.clone(),
        header_secrets: authentication
            .header_secrets
            .iter()
            .map(|(name, secret)| pb::SecretHeader { name: name.clone(), secret: secret.clone() })
            .collect(),
        per_user: authentication.per_user,
    }
}

/// The contract's authentication as stored (absent means none).
pub fn authentication_from_proto(authentication: Option<&pb::McpAuthentication>) -> Authentication {
    authentication.map_or_else(Authentication::default, |auth| Authentication {
        bearer_secret: auth.bearer_secret.clone().filter(|name| !name.is_empty()),
        header_secrets: auth.header_secrets.iter().map(|header| (header.name.clone(), header.secret.clone())).collect(),
        per_user: auth.per_user,
    })
}

fn stdio_to_proto(stdio: &StdioCommand) -> pb::StdioCommand {
    pb::StdioCommand {
        command: stdio.command.clone(),
        args: stdio.args.clone(),
        env: stdio
            .env
            .iter()
            .map(|var| pb::EnvironmentVariable {
                name: var.name.clone(),
                value: Some(match &var.value {
                    EnvValue::Literal(text) => environment_variable::Value::Literal(text.clone()),
                    EnvValue::Secret(name) => environment_variable::Value::Secret(name.clone()),
                }),
            })
            .collect(),
        working_directory: stdio.working_directory.clone(),
    }
}

/// The contract's stdio command as stored (a variable without a value is an empty literal).
pub fn stdio_from_proto(stdio: &pb::StdioCommand) -> StdioCommand {
    StdioCommand {
        command: stdio.command.clone(),
        args: stdio.args.clone(),
        env: stdio
            .env
            .iter()
            .map(|var| EnvVar {
                name: var.name.clone(),
                value: match &var.value {
                    Some(environment_variable::Value::Secret(name)) => EnvValue::Secret(name.clone()),
                    Some(environment_variable::Value::Literal(text)) => EnvValue::Literal(text.clone()),
                    None => EnvValue::Literal(String::new()),
                },
            })
            .collect(),
        working_directory: stdio.working_directory.clone().filter(|dir| !dir.is_empty()),
    }
}

/// The contract's transport for a stored one.
pub fn transport_to_proto(transport: Transport) -> pb::McpTransport {
    match transport {
        Transport::Stdio => pb::McpTransport::Stdio,
        Transport::StreamableHttp => pb::McpTransport::StreamableHttp,
        Transport::Sse => pb::McpTransport::Sse,
    }
}

/// The stored transport for the contract's; `None` for UNSPECIFIED or unknown values.
pub fn transport_from_proto(value: i32) -> Option<Transport> {
    match pb::McpTransport::try_from(value).ok()? {
        pb::McpTransport::Stdio => Some(Transport::Stdio),
        pb::McpTransport::StreamableHttp => Some(Transport::StreamableHttp),
        pb::McpTransport::Sse => Some(Transport::Sse),
        pb::McpTransport::Unspecified => None,
    }
}

/// The contract's status for a stored one.
pub fn status_to_proto(status: ServerStatus) -> pb::McpServerStatus {
    match status {
        ServerStatus::Unknown => pb::McpServerStatus::Unspecified,
        ServerStatus::Healthy => pb::McpServerStatus::Healthy,
        ServerStatus::Degraded => pb::McpServerStatus::Degraded,
        ServerStatus::Unhealthy => pb::McpServerStatus::Unhealthy,
    }
}

/// A protobuf timestamp.
pub fn timestamp(at: DateTime<Utc>) -> Timestamp {
    Timestamp { seconds: at.timestamp(), nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transports_map_both_ways_and_unspecified_is_none() {
        for transport in Transport::ALL {
            assert_eq!(transport_from_proto(transport_to_proto(transport) as i32), Some(transport));
        }
        assert_eq!(transport_from_proto(0), None);
        assert_eq!(transport_from_proto(42), None);
    }

    #[test]
    fn stdio_commands_round_trip() {
        let stdio = StdioCommand {
            command: "node".into(),
            args: vec!["index.js".into(), "stdio".into()],
            env: vec![
                EnvVar { name: "A".into(), value: EnvValue::Literal("1".into()) },
                EnvVar { name: "TOKEN".into(), value: EnvValue::Secret("gh-token".into()) },
            ],
            working_directory: Some("/srv".into()),
        };
        assert_eq!(stdio_from_proto(&stdio_to_proto(&stdio)), stdio);
    }
}
