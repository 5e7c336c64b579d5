//! The agentmesh protobuf contract as Rust code.
//!
//! Every `.proto` file under `proto/` at the workspace root is compiled at build time with
//! protox (no system `protoc`) and turned into prost messages and tonic clients and servers
//! by tonic-prost-build. Modules mirror the protobuf packages:
//!
//! | package | module | service |
//! |---|---|---|
//! | `agentmesh.common.v1` | [`agentmesh::common::v1`] | — (errors, enums, options) |
//! | `agentmesh.session.v1` | [`agentmesh::session::v1`] | `SessionService` |
//! | `agentmesh.agent.v1` | [`agentmesh::agent::v1`] | `AgentService` |
//! | `agentmesh.mcp.v1` | [`agentmesh::mcp::v1`] | `McpService` |
//! | `agentmesh.llm.v1` | [`agentmesh::llm::v1`] | `LlmService` (internal) |
//! | `agentmesh.secrets.v1` | [`agentmesh::secrets::v1`] | `SecretsService` (internal) |
//! | `agentmesh.health.v1` | [`agentmesh::health::v1`] | `HealthService` (gateway), `DependencyHealthService` (every service) |
//! | `agentmesh.auth.v1` | [`agentmesh::auth::v1`] | `AuthService` (gateway) |
//! | `agentmesh.events.v1` | [`agentmesh::events::v1`] | — (event envelope and payloads) |
//! | `google.api` | [`google::api`] | — (`HttpRule`) |
//!
//! Servers and clients live in the usual tonic submodules, for example
//! `agentmesh::session::v1::session_service_server::SessionServiceServer` and
//! `agentmesh::session::v1::session_service_client::SessionServiceClient`. Well-known
//! types (`Struct`, `Timestamp`, `Any`, ...) are [`prost_types`].
//!
//! [`FILE_DESCRIPTOR_SET`] holds the encoded descriptors of every file (with comments and
//! custom options) and [`descriptor_pool`] decodes it once; the REST gateway transcodes
//! from it, gRPC reflection serves it and the OpenAPI document is generated from it.
//! [`options`] reads the contract's custom options (`google.api.http`, field and method
//! rules, event subjects) as typed messages, and [`doc_comment`] returns the comment of any
//! descriptor. [`json`] converts `google.protobuf.Struct` to and from JSON.

pub mod json;

use std::sync::LazyLock;

use prost_reflect::DescriptorPool;

/// Code generated for the hand-written `google.api` HTTP annotation files.
pub mod google {
    /// Package `google.api`: [`HttpRule`](api::HttpRule) and friends.
    #[allow(missing_docs, clippy::all, clippy::unwrap_used, clippy::expect_used, rustdoc::all)]
    pub mod api {
        tonic::include_proto!("google.api");
    }
}

/// Code generated for the `agentmesh.*` protobuf packages.
pub mod agentmesh {
    /// Shared types: error model, enums, principal, resilience config, usage, options.
    pub mod common {
        /// Package `agentmesh.common.v1`.
        #[allow(missing_docs, clippy::all, clippy::unwrap_used, clippy::expect_used, rustdoc::all)]
        pub mod v1 {
            tonic::include_proto!("agentmesh.common.v1");
        }
    }

    /// Sessions and messages (`SessionService`, served by session-store).
    pub mod session {
        /// Package `agentmesh.session.v1`.
        #[allow(missing_docs, clippy::all, clippy::unwrap_used, clippy::expect_used, rustdoc::all)]
        pub mod v1 {
            tonic::include_proto!("agentmesh.session.v1");
        }
    }

    /// Agents, execution and runs (`AgentService`, served by agent-orchestrator).
    pub mod agent {
        /// Package `agentmesh.agent.v1`.
        #[allow(missing_docs, clippy::all, clippy::unwrap_used, clippy::expect_used, rustdoc::all)]
        pub mod v1 {
            tonic::include_proto!("agentmesh.agent.v1");
        }
    }

    /// Tools and MCP servers (`McpService`, served by mcp-broker).
    pub mod mcp {
        /// Package `agentmesh.mcp.v1`.
        #[allow(missing_docs, clippy::all, clippy::unwrap_used, clippy::expect_used, rustdoc::all)]
        pub mod v1 {
            tonic::include_proto!("agentmesh.mcp.v1");
        }
    }

    /// Chat completions (`LlmService`, served by llm-proxy; internal).
    pub mod llm {
        /// Package `agentmesh.llm.v1`.
        #[allow(missing_docs, clippy::all, clippy::unwrap_used, clippy::expect_used, rustdoc::all)]
        pub mod v1 {
            tonic::include_proto!("agentmesh.llm.v1");
        }
    }

    /// Secrets (`SecretsService`, served by secrets-broker; internal).
    pub mod secrets {
        /// Package `agentmesh.secrets.v1`.
        #[allow(missing_docs, clippy::all, clippy::unwrap_used, clippy::expect_used, rustdoc::all)]
        pub mod v1 {
            tonic::include_proto!("agentmesh.secrets.v1");
        }
    }

    /// Health endpoints (`HealthService`, served by the gateway).
    pub mod health {
        /// Package `agentmesh.health.v1`.
        #[allow(missing_docs, clippy::all, clippy::unwrap_used, clippy::expect_used, rustdoc::all)]
        pub mod v1 {
            tonic::include_proto!("agentmesh.health.v1");
        }
    }

    /// Tokens and API keys (`AuthService`, served by the gateway).
    pub mod auth {
        /// Package `agentmesh.auth.v1`.
        #[allow(missing_docs, clippy::all, clippy::unwrap_used, clippy::expect_used, rustdoc::all)]
        pub mod v1 {
            tonic::include_proto!("agentmesh.auth.v1");
        }
    }

    /// Domain events: the CloudEvents envelope and one message per event.
    pub mod events {
        /// Package `agentmesh.events.v1`.
        #[allow(missing_docs, clippy::all, clippy::unwrap_used, clippy::expect_used, rustdoc::all)]
        pub mod v1 {
            tonic::include_proto!("agentmesh.events.v1");
        }
    }
}

/// The encoded `google.protobuf.FileDescriptorSet` of the whole contract, imports
/// (well-known types, `google.api`) included, with source comments and custom options.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/agentmesh_descriptor.bin"));

static DESCRIPTOR_POOL: LazyLock<DescriptorPool> = LazyLock::new(|| {
    match DescriptorPool::decode(FILE_DESCRIPTOR_SET) {
        Ok(pool) => pool,
        // The bytes were produced by protox from a pool it had just validated, and the
        // crate's tests decode them, so this cannot fail in a build that passed its tests.
        Err(error) => panic!("agentmesh descriptor set embedded at build time is invalid: {error}"),
    }
});

/// The contract's descriptors, decoded once on first use.
///
/// ```
/// let pool = agentmesh_proto::descriptor_pool();
/// assert!(pool.get_service_by_name("agentmesh.session.v1.SessionService").is_some());
/// ```
pub fn descriptor_pool() -> &'static DescriptorPool {
    &DESCRIPTOR_POOL
}

/// The comment attached to the descriptor element at `path` in `file` (leading comment,
/// else trailing comment), trimmed, with the per-line leading space removed. Descriptors
/// expose their path through `path()`, for example `MessageDescriptor::path`.
///
/// ```
/// let pool = agentmesh_proto::descriptor_pool();
/// let session = pool.get_message_by_name("agentmesh.session.v1.Session").unwrap();
/// let doc = agentmesh_proto::doc_comment(&session.parent_file(), session.path());
/// assert_eq!(doc.as_deref(), Some("A user conversation session."));
/// ```
pub fn doc_comment(file: &prost_reflect::FileDescriptor, path: &[i32]) -> Option<String> {
    let info = file.file_descriptor_proto().source_code_info.as_ref()?;
    let location = info.location.iter().find(|location| location.path == path)?;
    let raw = location
        .leading_comments
        .as_deref()
        .filter(|comment| !comment.trim().is_empty())
        .or(location.trailing_comments.as_deref())?;
    let text = raw.lines().map(|line| line.strip_prefix(' ').unwrap_or(line).trim_end()).collect::<Vec<_>>().join("\n");
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// Typed access to the contract's custom options.
///
/// The options are read from descriptor options as dynamic extensions of the descriptor's
/// own pool, then transcoded into the generated message types, so they work with
/// [`descriptor_pool`] and with any pool built from the same files.
pub mod options {
    use prost_reflect::{DynamicMessage, FieldDescriptor, MessageDescriptor, MethodDescriptor};

    use crate::agentmesh::common::v1::{EventRules, FieldRules, MethodRules};
    use crate::google::api::HttpRule;

    /// Full name of the `google.api.http` method option.
    pub const HTTP: &str = "google.api.http";
    /// Full name of the `agentmesh.common.v1.field` field option ([`FieldRules`]).
    pub const FIELD_RULES: &str = "agentmesh.common.v1.field";
    /// Full name of the `agentmesh.common.v1.method` method option ([`MethodRules`]).
    pub const METHOD_RULES: &str = "agentmesh.common.v1.method";
    /// Full name of the `agentmesh.common.v1.event` message option ([`EventRules`]).
    pub const EVENT_RULES: &str = "agentmesh.common.v1.event";

    /// The `google.api.http` rule of a method; `None` for internal (gRPC-only) methods.
    pub fn http_rule(method: &MethodDescriptor) -> Option<HttpRule> {
        extension(&method.options(), method.parent_pool(), HTTP)
    }

    /// The REST behaviour (status, rate-limit group, scopes) of a method, if annotated.
    pub fn method_rules(method: &MethodDescriptor) -> Option<MethodRules> {
        extension(&method.options(), method.parent_pool(), METHOD_RULES)
    }

    /// The validation rules of a field, if annotated.
    pub fn field_rules(field: &FieldDescriptor) -> Option<FieldRules> {
        extension(&field.options(), field.parent_pool(), FIELD_RULES)
    }

    /// The publication details (NATS subject) of an event message, if annotated.
    pub fn event_rules(message: &MessageDescriptor) -> Option<EventRules> {
        extension(&message.options(), message.parent_pool(), EVENT_RULES)
    }

    fn extension<T: prost::Message + Default>(
        options: &DynamicMessage,
        pool: &prost_reflect::DescriptorPool,
        name: &str,
    ) -> Option<T> {
        let extension = pool.get_extension_by_name(name)?;
        if !options.has_extension(&extension) {
            return None;
        }
        options.get_extension(&extension).as_message()?.transcode_to::<T>().ok()
    }
}
