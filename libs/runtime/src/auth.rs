//! Who is calling: the principal every service authorises against, and the hook the
//! server bootstrap uses to establish it.
//!
//! The gateway authenticates end users (API keys, JWT) and forwards a principal in gRPC
//! metadata; each service's [`Authenticate`] implementation verifies it before any handler
//! runs. Health and reflection stay open so probes and tooling work without credentials.

use std::fmt;

use crate::error::ApiError;

/// A caller's rate-limit and feature tier (seed: default / authenticated / premium).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Tier {
    /// Anonymous or basic callers.
    #[default]
    Default,
    /// Callers with an API key or token.
    Authenticated,
    /// Paying callers with the highest limits.
    Premium,
}

impl Tier {
    /// The lowercase name used in keys, tokens and metadata.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Default => "default",
            Self::Authenticated => "authenticated",
            Self::Premium => "premium",
        }
    }

    /// Parses the lowercase name.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "default" => Some(Self::Default),
            "authenticated" => Some(Self::Authenticated),
            "premium" => Some(Self::Premium),
            _ => None,
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The user every owned resource is scoped to.
    pub user_id: String,
    /// The tenant (organisation) the user acts for.
    pub tenant_id: String,
    /// Rate-limit tier.
    pub tier: Tier,
    /// Granted scopes, e.g. `sessions:write`.
    pub scopes: Vec<String>,
}

impl Principal {
    /// Whether the principal holds `scope` (or the `*` wildcard).
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope || s == "*")
    }
}

/// Establishes the caller of one gRPC request from its metadata.
pub trait Authenticate: Send + Sync + 'static {
    /// `Ok(Some)` for an authenticated caller, `Ok(None)` for an anonymous one the service
    /// may still serve, `Err` to refuse the call (`authentication_error`).
    fn authenticate(&self, headers: &http::HeaderMap) -> Result<Option<Principal>, ApiError>;
}

/// Paths served without authentication: health checks and reflection.
pub fn is_open_path(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.")
}
