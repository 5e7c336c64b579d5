//! Signing the tokens: principals (gateway, orchestrator), run principals (orchestrator)
//! and actor tokens (every service), each minted once per lifetime window and reused.
//!
//! An Ed25519 signature costs tens of microseconds, more than a cheap request, so no
//! request pays for one: a minted token is cached and reused until less than
//! [`REMINT_MARGIN`] of its life is left, which also guarantees every forwarded token at
//! least that much time for the hops after the first.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use http::HeaderValue;

use super::Principal;
use super::actors::{PRINCIPAL_MINTERS, RUN_PRINCIPAL_MINTER};
use super::claims::{ACTOR_TYPE, ActorClaims, PRINCIPAL_TYPE, PrincipalClaims, sign, unix_now, unix_time};
use super::keys::ServiceKey;
use crate::config::ServiceName;

/// How long a principal stays valid: long enough for one request's fan-out, short enough
/// that a leaked header is soon useless.
pub const PRINCIPAL_TTL: Duration = Duration::from_secs(300);

/// How long an actor token stays valid.
pub const ACTOR_TTL: Duration = Duration::from_secs(300);

/// A cached token is re-minted once less than this is left of its life.
pub const REMINT_MARGIN: Duration = Duration::from_secs(120);

/// Distinct principals a minter keeps tokens for before it starts over.
const MINT_CACHE_CAPACITY: usize = 16_384;

/// Why a token was not minted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    /// This service may not mint principals (or run principals).
    #[error("{0} may not mint this principal")]
    NotAMinter(ServiceName),
    /// The run has ended: its principal may not outlive it.
    #[error("run {0} has ended")]
    RunEnded(String),
}

/// A token and its expiry (seconds since the epoch).
type Minted = (HeaderValue, u64);

/// Signs principals for one minting service, reusing each while it is fresh enough.
#[derive(Debug)]
pub struct PrincipalMinter {
    issuer: ServiceName,
    key: Arc<ServiceKey>,
    ttl: Duration,
    minted: Mutex<HashMap<(Principal, Option<String>), Minted>>,
}

impl PrincipalMinter {
    /// A minter signing as `issuer` with `key`; refused for services that may not mint.
    pub fn new(issuer: ServiceName, key: Arc<ServiceKey>) -> Result<Self, MintError> {
        Self::with_ttl(issuer, key, PRINCIPAL_TTL)
    }

    /// Like [`PrincipalMinter::new`] with another lifetime (tests of expiry use 0).
    pub fn with_ttl(issuer: ServiceName, key: Arc<ServiceKey>, ttl: Duration) -> Result<Self, MintError> {
        if !PRINCIPAL_MINTERS.contains(&issuer) {
            return Err(MintError::NotAMinter(issuer));
        }
        Ok(Self { issuer, key, ttl, minted: Mutex::new(HashMap::new()) })
    }

    /// The `x-agentmesh-principal` value for `principal`.
    pub fn mint(&self, principal: &Principal) -> HeaderValue {
        let exp = unix_now().saturating_add(self.ttl.as_secs());
        self.mint_until(principal, None, exp)
    }

    /// A token for `principal` (bound to `run` if given) expiring at `exp`, or a cached one
    /// that lives at least [`REMINT_MARGIN`] more (or until `exp` if that is sooner).
    fn mint_until(&self, principal: &Principal, run: Option<&str>, exp: u64) -> HeaderValue {
        let now = unix_now();
        let good_until = now.saturating_add(REMINT_MARGIN.as_secs()).min(exp);
        let cache_key = (principal.clone(), run.map(str::to_owned));
        let mut minted = self.minted.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((token, expires)) = minted.get(&cache_key)
            && *expires >= good_until
            && *expires > now
        {
            return token.clone();
        }
        let claims = PrincipalClaims {
            iss: self.issuer.as_str().to_owned(),
            sub: principal.user_id.clone(),
            ten: principal.tenant_id.clone(),
            tier: principal.tier,
            scp: principal.scopes.clone(),
            exp,
            run: run.map(str::to_owned),
        };
        let signed = sign(&self.key, PRINCIPAL_TYPE, &claims);
        super::signed_here::record(&signed, &self.key.verifying_key(), exp);
        let token = header_value(signed);
        if minted.len() >= MINT_CACHE_CAPACITY {
            minted.retain(|_, (_, expires)| *expires > now.saturating_add(REMINT_MARGIN.as_secs()));
            if minted.len() >= MINT_CACHE_CAPACITY {
                minted.clear();
            }
        }
        minted.insert(cache_key, (token.clone(), exp));
        token
    }
}

/// Principals the orchestrator mints for the runs it executes: bound to the run (`run`
/// claim), never valid past the run's end, re-minted as the run goes on.
#[derive(Debug)]
pub struct RunPrincipals {
    minter: Arc<PrincipalMinter>,
}

impl RunPrincipals {
    /// Run principals signed by `minter`, which must be the orchestrator's.
    pub fn new(minter: Arc<PrincipalMinter>) -> Result<Self, MintError> {
        if minter.issuer != RUN_PRINCIPAL_MINTER {
            return Err(MintError::NotAMinter(minter.issuer));
        }
        Ok(Self { minter })
    }

    /// The principal to call on `user`'s behalf for `run_id`, which ends at `run_deadline`:
    /// valid for the principal lifetime or until the run ends, whichever is sooner. Call it
    /// before each downstream call; it returns the cached token while it is fresh enough.
    pub fn mint(&self, user: &Principal, run_id: &str, run_deadline: SystemTime) -> Result<HeaderValue, MintError> {
        let now = unix_now();
        let end = unix_time(run_deadline);
        if end <= now {
            return Err(MintError::RunEnded(run_id.to_owned()));
        }
        let exp = now.saturating_add(self.minter.ttl.as_secs()).min(end);
        Ok(self.minter.mint_until(user, Some(run_id), exp))
    }
}

/// Signs one service's actor token for one target, reusing it while it is fresh enough.
#[derive(Debug)]
pub struct ActorSigner {
    claims: ActorClaims,
    key: Arc<ServiceKey>,
    minted: Mutex<Option<Minted>>,
}

impl ActorSigner {
    /// Tokens saying `actor` (signing with `key`) calls `audience`.
    pub fn new(actor: ServiceName, key: Arc<ServiceKey>, audience: ServiceName) -> Self {
        let claims = ActorClaims { iss: actor.as_str().to_owned(), aud: audience.as_str().to_owned(), exp: 0 };
        Self { claims, key, minted: Mutex::new(None) }
    }

    /// The `x-agentmesh-actor` value.
    pub fn token(&self) -> HeaderValue {
        let now = unix_now();
        let mut minted = self.minted.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((token, expires)) = minted.as_ref()
            && *expires >= now.saturating_add(REMINT_MARGIN.as_secs())
        {
            return token.clone();
        }
        let exp = now.saturating_add(ACTOR_TTL.as_secs());
        let token = header_value(sign(&self.key, ACTOR_TYPE, &ActorClaims { exp, ..self.claims.clone() }));
        *minted = Some((token.clone(), exp));
        token
    }
}

/// A token as a header value (base64url and dots only, so always valid).
fn header_value(token: String) -> HeaderValue {
    HeaderValue::try_from(token).unwrap_or_else(|_| HeaderValue::from_static(""))
}
