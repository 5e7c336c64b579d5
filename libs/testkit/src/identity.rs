//! Mesh identities for tests: principals and actor tokens signed with the development
//! keys, exactly as the gateway and the other services sign them, plus the bad ones a
//! test needs to see refused.

use agentmesh_runtime::ServiceName;
use agentmesh_runtime::auth::claims::{ActorClaims, PrincipalClaims, sign_actor, sign_principal, unix_now};
use agentmesh_runtime::auth::{ACTOR_HEADER, PRINCIPAL_HEADER, Principal, ServiceKey, Tier};

/// A principal for `user` in `tenant` with the authenticated tier and no scopes.
pub fn user(user: &str, tenant: &str) -> Principal {
    Principal { user_id: user.to_owned(), tenant_id: tenant.to_owned(), tier: Tier::Authenticated, scopes: vec![] }
}

/// The claims of a principal for `principal` issued by `issuer`, expiring `ttl_secs` from
/// now (negative: already expired).
pub fn principal_claims(issuer: ServiceName, principal: &Principal, ttl_secs: i64) -> PrincipalClaims {
    PrincipalClaims {
        iss: issuer.as_str().to_owned(),
        sub: principal.user_id.clone(),
        ten: principal.tenant_id.clone(),
        tier: principal.tier,
        scp: principal.scopes.clone(),
        exp: unix_now().saturating_add_signed(ttl_secs),
        run: None,
    }
}

/// A principal token signed with `signer`'s development key, with `claims`.
pub fn principal_signed_by(signer: ServiceName, claims: &PrincipalClaims) -> String {
    sign_principal(&ServiceKey::development(signer), claims)
}

/// A valid principal token for `principal`, minted by the gateway.
pub fn principal_token(principal: &Principal) -> String {
    principal_signed_by(ServiceName::Gateway, &principal_claims(ServiceName::Gateway, principal, 300))
}

/// A valid actor token: `actor` calls `audience`.
pub fn actor_token(actor: ServiceName, audience: ServiceName) -> String {
    let claims = ActorClaims {
        iss: actor.as_str().to_owned(),
        aud: audience.as_str().to_owned(),
        exp: unix_now().saturating_add(300),
    };
    sign_actor(&ServiceKey::development(actor), &claims)
}

/// The metadata of a call from the gateway to `service` on `principal`'s behalf.
pub fn gateway_call(principal: &Principal, service: ServiceName) -> [(&'static str, String); 2] {
    [(PRINCIPAL_HEADER, principal_token(principal)), (ACTOR_HEADER, actor_token(ServiceName::Gateway, service))]
}
