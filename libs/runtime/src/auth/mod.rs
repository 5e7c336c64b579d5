//! Who is calling: the user a call acts for (the principal), the service making it (the
//! actor), and the hook the server bootstrap uses to establish both.
//!
//! The gateway authenticates end users (API keys, JWT) and mints a signed principal
//! (`x-agentmesh-principal`); the orchestrator may mint one for a run. Every service
//! signs an actor token (`x-agentmesh-actor`) naming itself and its callee. Both are
//! Ed25519-signed, so a service holding only public keys cannot forge them. A service
//! acting for a user forwards the principal it received unchanged and adds its own
//! actor token ([`crate::client::ServiceChannel`] does both). Health and reflection stay
//! open so probes and tooling work without credentials.
//!
//! - [`keys`]: service keys, trusted public keys, development keys.
//! - [`claims`]: the two tokens' claims and wire form.
//! - [`mint`]: signing, once per lifetime window ([`PrincipalMinter`], [`RunPrincipals`], [`ActorSigner`]).
//! - [`verify`]: checking, once per token ([`MeshVerifier`]).
//! - [`actors`]: who may mint, and which actors each service serves.
//! - [`cache`]: the bounded cache of verified tokens; `signed_here`: the tokens this
//!   process signed, which its own verifiers need not check again (`agentmesh up`).

pub mod actors;
pub mod cache;
pub mod claims;
pub mod keys;
pub mod mint;
mod signed_here;
pub mod verify;

use std::fmt;
use std::sync::Arc;

use http::HeaderValue;
use serde::{Deserialize, Serialize};

pub use keys::{KeyError, ServiceKey, TrustedKeys};
pub use mint::{ActorSigner, MintError, PRINCIPAL_TTL, PrincipalMinter, RunPrincipals};
pub use verify::{MeshVerifier, Refusal, VerifiedPrincipal};

use crate::config::{Config, ServiceName};
use crate::error::ApiError;

/// A caller's rate-limit and feature tier (seed: default / authenticated / premium).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
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
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
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

/// Who made one call, as established by the server's authenticator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Caller {
    /// The user the call acts for.
    pub principal: Option<Principal>,
    /// The calling service, for calls inside the mesh.
    pub actor: Option<ServiceName>,
    /// The principal header as received, forwarded unchanged on calls this one makes.
    pub principal_token: Option<HeaderValue>,
    /// The run the principal is bound to, if the orchestrator minted it for one.
    pub run: Option<String>,
}

/// Establishes the caller of one request from its headers (gRPC metadata).
#[async_trait::async_trait]
pub trait Authenticate: Send + Sync + 'static {
    /// `Ok(Some)` for an authenticated caller, `Ok(None)` for an anonymous one the service
    /// may still serve, `Err` to refuse the call (`authentication_error`, or a retryable
    /// error when a credential store is down).
    async fn authenticate(&self, headers: &http::HeaderMap) -> Result<Option<Principal>, ApiError>;

    /// The caller of a gRPC call to `path` (`/package.Service/Method`); by default the
    /// principal [`Authenticate::authenticate`] finds, with no actor.
    async fn authenticate_call(&self, path: &str, headers: &http::HeaderMap) -> Result<Caller, ApiError> {
        let _ = path;
        let principal = self.authenticate(headers).await?;
        Ok(Caller { principal, ..Caller::default() })
    }
}

/// Paths served without authentication: health checks and reflection.
pub fn is_open_path(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/")
        || path.starts_with("/grpc.reflection.")
        || path.starts_with("/agentmesh.health.v1.DependencyHealthService/")
}

/// gRPC metadata carrying the signed principal: who the user is.
pub const PRINCIPAL_HEADER: &str = "x-agentmesh-principal";

/// gRPC metadata carrying the signed actor token: which service is calling.
pub const ACTOR_HEADER: &str = "x-agentmesh-actor";

/// One service's identity in the mesh: its name, its signing key and the public keys it
/// trusts. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ServiceIdentity {
    service: ServiceName,
    key: Arc<ServiceKey>,
    trusted: Arc<TrustedKeys>,
}

impl ServiceIdentity {
    /// `service` signing with `key` and trusting `trusted`.
    pub fn new(service: ServiceName, key: ServiceKey, trusted: TrustedKeys) -> Self {
        Self { service, key: Arc::new(key), trusted: Arc::new(trusted) }
    }

    /// `service`'s identity from `SECURITY_SERVICE_KEY` and `SECURITY_TRUSTED_KEYS`, or,
    /// where those are unset (refused in production), the development keys.
    pub fn from_config(config: &Config, service: ServiceName) -> Self {
        let identity = &config.identity;
        let key = identity.service_key.clone().unwrap_or_else(|| ServiceKey::development(service));
        let trusted = identity.trusted_keys.clone().unwrap_or_else(TrustedKeys::development);
        if trusted.get(service, key.kid()).is_none() {
            // Peers holding the same trusted keys will refuse this service's tokens.
            tracing::warn!(%service, kid = key.kid(), "SECURITY_TRUSTED_KEYS does not list this service's own public key");
        }
        Self::new(service, key, trusted)
    }

    /// `service` with its development key, trusting every development key.
    pub fn development(service: ServiceName) -> Self {
        Self::new(service, ServiceKey::development(service), TrustedKeys::development())
    }

    /// The service this identity belongs to.
    pub fn service(&self) -> ServiceName {
        self.service
    }

    /// The signing key.
    pub fn key(&self) -> &Arc<ServiceKey> {
        &self.key
    }

    /// A verifier of calls to this service.
    pub fn verifier(&self) -> MeshVerifier {
        MeshVerifier::new(self.service, self.trusted.clone())
    }

    /// Actor tokens for this service's calls to `audience`.
    pub fn actor_signer(&self, audience: ServiceName) -> ActorSigner {
        ActorSigner::new(self.service, self.key.clone(), audience)
    }

    /// A principal minter; only the gateway and the orchestrator may have one.
    pub fn principal_minter(&self) -> Result<PrincipalMinter, MintError> {
        PrincipalMinter::new(self.service, self.key.clone())
    }
}

#[cfg(test)]
mod tests;
