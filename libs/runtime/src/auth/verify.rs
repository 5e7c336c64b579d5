//! Checking the tokens a service receives: the principal (who the user is) and the actor
//! (which service calls), each verified once and then served from a cache.
//!
//! A principal is accepted when its `typ` is a principal's, its issuer may mint
//! principals ([`PRINCIPAL_MINTERS`]), a `run` claim comes only from the orchestrator, the
//! key named by `kid` is trusted for that issuer, the signature verifies, and it has
//! neither expired nor claims a lifetime longer than the mesh ever mints. An actor token
//! is accepted when it is an actor token addressed to this service, signed by a trusted
//! key of the calling service, unexpired, and the caller is one this service serves
//! ([`served_actors`]) on the called RPC.

use std::sync::Arc;

use http::HeaderMap;
use serde::de::DeserializeOwned;

use super::actors::{ActorPolicy, PRINCIPAL_MINTERS, RUN_PRINCIPAL_MINTER, served_actors};
use super::cache::{DEFAULT_CAPACITY, VerifiedCache};
use super::claims::{ACTOR_TYPE, ActorClaims, PRINCIPAL_TYPE, PrincipalClaims, Unverified, parse, unix_now};
use super::keys::{TrustedKeys, service_named};
use super::mint::{ACTOR_TTL, PRINCIPAL_TTL};
use super::{ACTOR_HEADER, Authenticate, Caller, PRINCIPAL_HEADER, Principal};
use crate::config::ServiceName;
use crate::error::{ApiError, ErrorCode};

/// Clock difference between pods tolerated when checking that a token is not minted to
/// live longer than the mesh's lifetimes.
const CLOCK_SKEW_SECS: u64 = 60;

/// Why a call's identity was refused. The message is safe to return to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No `x-agentmesh-principal`.
    #[error("a principal (x-agentmesh-principal) is required")]
    MissingPrincipal,
    /// No `x-agentmesh-actor`.
    #[error("an actor token (x-agentmesh-actor) is required")]
    MissingActor,
    /// Not a token of the expected kind, or unreadable.
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The issuer is no service of the mesh.
    #[error("{0} issued by an unknown service")]
    UnknownIssuer(&'static str),
    /// The principal was signed by a service that may not mint principals.
    #[error("principal signed by {0}, which may not mint principals")]
    NotAMinter(ServiceName),
    /// A principal bound to a run, signed by a service other than the orchestrator.
    #[error("principal bound to a run signed by {0}; only agent-orchestrator mints those")]
    RunNotAllowed(ServiceName),
    /// No trusted key of the issuer has this key id.
    #[error("{kind} signed with a key not trusted for {issuer}")]
    UnknownKey {
        /// `principal` or `actor token`.
        kind: &'static str,
        /// The claimed issuer.
        issuer: ServiceName,
    },
    /// The signature does not verify (forged or tampered).
    #[error("{0} signature is invalid")]
    BadSignature(&'static str),
    /// Past its expiry.
    #[error("{0} has expired")]
    Expired(&'static str),
    /// Expires later than the mesh ever mints.
    #[error("{0} claims a longer lifetime than allowed")]
    TooLong(&'static str),
    /// An actor token for another service.
    #[error("actor token is addressed to {0}")]
    WrongAudience(String),
    /// A calling service this service does not serve (on this RPC).
    #[error("{service} does not serve calls from {actor}")]
    ActorNotServed {
        /// The calling service.
        actor: ServiceName,
        /// This service.
        service: ServiceName,
    },
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> Self {
        ApiError::new(ErrorCode::Authentication, format!("Authentication failed: {refusal}"))
    }
}

/// A principal whose signature has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedPrincipal {
    /// The user.
    pub principal: Principal,
    /// Who minted it.
    pub issuer: ServiceName,
    /// The run it is bound to, if the orchestrator minted it for one.
    pub run: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub expires: u64,
}

/// Verifies the tokens of calls to one service. Cheap to share; caches are internal.
#[derive(Debug)]
pub struct MeshVerifier {
    service: ServiceName,
    policy: ActorPolicy,
    trusted: Arc<TrustedKeys>,
    principals: VerifiedCache<Arc<VerifiedPrincipal>>,
    actors: VerifiedCache<ServiceName>,
}

impl MeshVerifier {
    /// A verifier for calls to `service`, trusting `trusted`.
    pub fn new(service: ServiceName, trusted: Arc<TrustedKeys>) -> Self {
        Self {
            service,
            policy: served_actors(service),
            trusted,
            principals: VerifiedCache::new(DEFAULT_CAPACITY),
            actors: VerifiedCache::new(DEFAULT_CAPACITY),
        }
    }

    /// The principal in `token`, from the cache or verified now.
    pub fn verify_principal(&self, token: &str) -> Result<Arc<VerifiedPrincipal>, Refusal> {
        const KIND: &str = "principal";
        let key = VerifiedCache::<()>::key(token);
        if let Some(hit) = self.principals.get(&key) {
            return Ok(hit);
        }
        let unverified: Unverified<'_, PrincipalClaims> = parse(token).map_err(|_| Refusal::Malformed(KIND))?;
        if unverified.header.typ != PRINCIPAL_TYPE {
            return Err(Refusal::Malformed(KIND));
        }
        let issuer = service_named(&unverified.claims.iss).ok_or(Refusal::UnknownIssuer(KIND))?;
        if !PRINCIPAL_MINTERS.contains(&issuer) {
            return Err(Refusal::NotAMinter(issuer));
        }
        if unverified.claims.run.is_some() && issuer != RUN_PRINCIPAL_MINTER {
            return Err(Refusal::RunNotAllowed(issuer));
        }
        let claims = self.check(KIND, issuer, unverified, &key, PRINCIPAL_TTL.as_secs())?;
        let verified = Arc::new(VerifiedPrincipal {
            principal: Principal { user_id: claims.sub, tenant_id: claims.ten, tier: claims.tier, scopes: claims.scp },
            issuer,
            run: claims.run,
            expires: claims.exp,
        });
        self.principals.insert(key, verified.clone(), claims.exp);
        Ok(verified)
    }

    /// The calling service in `token`, if this service serves it on the RPC at `path`.
    pub fn verify_actor(&self, token: &str, path: &str) -> Result<ServiceName, Refusal> {
        const KIND: &str = "actor token";
        let key = VerifiedCache::<()>::key(token);
        let actor = match self.actors.get(&key) {
            Some(actor) => actor,
            None => {
                let unverified: Unverified<'_, ActorClaims> = parse(token).map_err(|_| Refusal::Malformed(KIND))?;
                if unverified.header.typ != ACTOR_TYPE {
                    return Err(Refusal::Malformed(KIND));
                }
                let actor = service_named(&unverified.claims.iss).ok_or(Refusal::UnknownIssuer(KIND))?;
                if unverified.claims.aud != self.service.as_str() {
                    return Err(Refusal::WrongAudience(unverified.claims.aud));
                }
                if !self.policy.serves(actor) {
                    return Err(Refusal::ActorNotServed { actor, service: self.service });
                }
                let claims = self.check(KIND, actor, unverified, &key, ACTOR_TTL.as_secs())?;
                self.actors.insert(key, actor, claims.exp);
                actor
            }
        };
        if !self.policy.allows(actor, path) {
            return Err(Refusal::ActorNotServed { actor, service: self.service });
        }
        Ok(actor)
    }

    /// Checks key, signature (unless this process signed `digest`'s token with that very
    /// key, see `signed_here`) and lifetime; returns the claims once they can be trusted.
    fn check<C: DeserializeOwned + Expiring>(
        &self,
        kind: &'static str,
        issuer: ServiceName,
        token: Unverified<'_, C>,
        digest: &[u8; 32],
        max_ttl: u64,
    ) -> Result<C, Refusal> {
        let key = self.trusted.get(issuer, &token.header.kid).ok_or(Refusal::UnknownKey { kind, issuer })?;
        if !super::signed_here::signed_with(digest, key) {
            key.verify_strict(token.signed, &token.signature).map_err(|_| Refusal::BadSignature(kind))?;
        }
        let now = unix_now();
        let exp = token.claims.exp();
        if exp < now {
            return Err(Refusal::Expired(kind));
        }
        if exp > now + max_ttl + CLOCK_SKEW_SECS {
            return Err(Refusal::TooLong(kind));
        }
        Ok(token.claims)
    }

    /// The caller of a call to `path` with `headers`: actor first (a service this one does
    /// not serve is refused whoever the user is), then the principal.
    pub fn authenticate_headers(&self, path: &str, headers: &HeaderMap) -> Result<Caller, Refusal> {
        let actor = headers.get(ACTOR_HEADER).ok_or(Refusal::MissingActor)?;
        let actor = self.verify_actor(actor.to_str().map_err(|_| Refusal::Malformed("actor token"))?, path)?;
        let Some(token) = headers.get(PRINCIPAL_HEADER) else {
            if served_actors(self.service).needs_principal {
                return Err(Refusal::MissingPrincipal);
            }
            return Ok(Caller { principal: None, actor: Some(actor), principal_token: None, run: None });
        };
        let verified = self.verify_principal(token.to_str().map_err(|_| Refusal::Malformed("principal"))?)?;
        Ok(Caller {
            principal: Some(verified.principal.clone()),
            actor: Some(actor),
            principal_token: Some(token.clone()),
            run: verified.run.clone(),
        })
    }
}

/// Claims with an expiry.
pub(crate) trait Expiring {
    /// Expiry, seconds since the Unix epoch.
    fn exp(&self) -> u64;
}

impl Expiring for PrincipalClaims {
    fn exp(&self) -> u64 {
        self.exp
    }
}

impl Expiring for ActorClaims {
    fn exp(&self) -> u64 {
        self.exp
    }
}

#[async_trait::async_trait]
impl Authenticate for MeshVerifier {
    async fn authenticate(&self, headers: &HeaderMap) -> Result<Option<Principal>, ApiError> {
        Ok(self.authenticate_headers("", headers)?.principal)
    }

    async fn authenticate_call(&self, path: &str, headers: &HeaderMap) -> Result<Caller, ApiError> {
        self.authenticate_headers(path, headers).map_err(ApiError::from)
    }
}
