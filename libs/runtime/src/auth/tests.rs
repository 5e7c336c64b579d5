//! Minting and verification end to end: every refusal reason, the caches, run principals.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue};

use super::claims::{ACTOR_TYPE, ActorClaims, PRINCIPAL_TYPE, PrincipalClaims, sign, unix_now};
use super::*;

const GET_SESSION: &str = "/agentmesh.session.v1.SessionService/GetSession";

fn alice() -> Principal {
    Principal {
        user_id: "alice".into(),
        tenant_id: "t1".into(),
        tier: Tier::Premium,
        scopes: vec!["sessions:read".into()],
    }
}

fn store() -> MeshVerifier {
    ServiceIdentity::development(ServiceName::SessionStore).verifier()
}

fn claims(issuer: ServiceName, exp: u64, run: Option<&str>) -> PrincipalClaims {
    PrincipalClaims {
        iss: issuer.as_str().into(),
        sub: "alice".into(),
        ten: "t1".into(),
        tier: Tier::Premium,
        scp: vec!["sessions:read".into()],
        exp,
        run: run.map(str::to_owned),
    }
}

fn dev_key(service: ServiceName) -> ServiceKey {
    ServiceKey::development(service)
}

fn principal_signed_by(service: ServiceName) -> String {
    sign(&dev_key(service), PRINCIPAL_TYPE, &claims(service, unix_now() + 60, None))
}

fn actor_token(actor: ServiceName, audience: ServiceName) -> String {
    ServiceIdentity::development(actor).actor_signer(audience).token().to_str().unwrap().to_owned()
}

#[test]
fn a_minted_principal_verifies_and_carries_its_issuer() {
    let minter = ServiceIdentity::development(ServiceName::Gateway).principal_minter().unwrap();
    let token = minter.mint(&alice());
    let verified = store().verify_principal(token.to_str().unwrap()).unwrap();
    assert_eq!(verified.principal, alice());
    assert_eq!(verified.issuer, ServiceName::Gateway);
    assert_eq!(verified.run, None);
    assert!(verified.expires > unix_now() + REMINT_MARGIN_SECS);
}

const REMINT_MARGIN_SECS: u64 = mint::REMINT_MARGIN.as_secs();

#[test]
fn a_forged_or_tampered_principal_is_refused() {
    let forged =
        sign(&ServiceKey::from_seed(&[1; 32]), PRINCIPAL_TYPE, &claims(ServiceName::Gateway, unix_now() + 60, None));
    assert_eq!(
        store().verify_principal(&forged),
        Err(Refusal::UnknownKey { kind: "principal", issuer: ServiceName::Gateway })
    );

    let genuine = principal_signed_by(ServiceName::Gateway);
    assert_eq!(
        store().verify_principal(&for_mallory(&genuine, ServiceName::Gateway)),
        Err(Refusal::BadSignature("principal"))
    );
}

/// `token` with its claims replaced by mallory's (as issued by `issuer`), its signature kept.
fn for_mallory(token: &str, issuer: ServiceName) -> String {
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let (header, _) = signed.split_once('.').unwrap();
    let mut mallory = claims(issuer, unix_now() + 60, None);
    mallory.sub = "mallory".into();
    let payload = {
        use base64::Engine as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(&mallory).unwrap())
    };
    format!("{header}.{payload}.{signature}")
}

#[test]
fn a_principal_minted_in_this_process_is_trusted_as_signed_but_not_once_altered() {
    let minter = ServiceIdentity::development(ServiceName::AgentOrchestrator).principal_minter().unwrap();
    let minted = minter.mint(&alice());
    let minted = minted.to_str().unwrap();
    assert_eq!(store().verify_principal(minted).unwrap().principal, alice());

    assert_eq!(
        store().verify_principal(&for_mallory(minted, ServiceName::AgentOrchestrator)),
        Err(Refusal::BadSignature("principal")),
        "only the exact token signed here skips the signature check"
    );
    let mut gateway_only = TrustedKeys::default();
    gateway_only.insert(ServiceName::Gateway, dev_key(ServiceName::Gateway).verifying_key());
    assert_eq!(
        MeshVerifier::new(ServiceName::SessionStore, Arc::new(gateway_only)).verify_principal(minted),
        Err(Refusal::UnknownKey { kind: "principal", issuer: ServiceName::AgentOrchestrator }),
        "a key the verifier does not trust stays untrusted"
    );
}

#[test]
fn principals_from_services_that_may_not_mint_are_refused() {
    for service in
        [ServiceName::McpBroker, ServiceName::LlmProxy, ServiceName::SessionStore, ServiceName::SecretsBroker]
    {
        assert_eq!(store().verify_principal(&principal_signed_by(service)), Err(Refusal::NotAMinter(service)));
        assert!(ServiceIdentity::development(service).principal_minter().is_err());
    }
    // Signed with the mcp-broker's key but claiming to be the gateway: not the gateway's key.
    let impostor =
        sign(&dev_key(ServiceName::McpBroker), PRINCIPAL_TYPE, &claims(ServiceName::Gateway, unix_now() + 60, None));
    assert_eq!(
        store().verify_principal(&impostor),
        Err(Refusal::UnknownKey { kind: "principal", issuer: ServiceName::Gateway })
    );
}

#[test]
fn expired_overlong_run_bound_and_malformed_principals_are_refused() {
    let gateway = dev_key(ServiceName::Gateway);
    let expired = sign(&gateway, PRINCIPAL_TYPE, &claims(ServiceName::Gateway, unix_now() - 1, None));
    assert_eq!(store().verify_principal(&expired), Err(Refusal::Expired("principal")));
    let overlong = sign(&gateway, PRINCIPAL_TYPE, &claims(ServiceName::Gateway, unix_now() + 86_400, None));
    assert_eq!(store().verify_principal(&overlong), Err(Refusal::TooLong("principal")));
    let run_from_gateway = sign(&gateway, PRINCIPAL_TYPE, &claims(ServiceName::Gateway, unix_now() + 60, Some("r1")));
    assert_eq!(store().verify_principal(&run_from_gateway), Err(Refusal::RunNotAllowed(ServiceName::Gateway)));
    let unknown = sign(
        &gateway,
        PRINCIPAL_TYPE,
        &PrincipalClaims { iss: "mallory".into(), ..claims(ServiceName::Gateway, unix_now() + 60, None) },
    );
    assert_eq!(store().verify_principal(&unknown), Err(Refusal::UnknownIssuer("principal")));
    for garbage in ["", "x.y", "a.b.c", "not a token"] {
        assert_eq!(store().verify_principal(garbage), Err(Refusal::Malformed("principal")));
    }
    // An actor token is not a principal, whoever signed it.
    let actor = actor_token(ServiceName::Gateway, ServiceName::SessionStore);
    assert_eq!(store().verify_principal(&actor), Err(Refusal::Malformed("principal")));
}

#[test]
fn actors_are_served_only_by_the_services_that_serve_them() {
    let store = store();
    assert_eq!(
        store.verify_actor(&actor_token(ServiceName::Gateway, ServiceName::SessionStore), GET_SESSION),
        Ok(ServiceName::Gateway)
    );
    assert_eq!(
        store.verify_actor(&actor_token(ServiceName::AgentOrchestrator, ServiceName::SessionStore), GET_SESSION),
        Ok(ServiceName::AgentOrchestrator)
    );
    assert_eq!(
        store.verify_actor(&actor_token(ServiceName::LlmProxy, ServiceName::SessionStore), GET_SESSION),
        Err(Refusal::ActorNotServed { actor: ServiceName::LlmProxy, service: ServiceName::SessionStore })
    );
    let llm = ServiceIdentity::development(ServiceName::LlmProxy).verifier();
    assert_eq!(
        llm.verify_actor(
            &actor_token(ServiceName::SessionStore, ServiceName::LlmProxy),
            "/agentmesh.llm.v1.LlmService/Chat"
        ),
        Err(Refusal::ActorNotServed { actor: ServiceName::SessionStore, service: ServiceName::LlmProxy })
    );
    let broker = ServiceIdentity::development(ServiceName::McpBroker).verifier();
    let gateway_to_broker = actor_token(ServiceName::Gateway, ServiceName::McpBroker);
    assert!(broker.verify_actor(&gateway_to_broker, "/agentmesh.mcp.v1.McpService/ListTools").is_ok());
    assert_eq!(
        broker.verify_actor(&gateway_to_broker, "/agentmesh.mcp.v1.McpService/InvokeTool"),
        Err(Refusal::ActorNotServed { actor: ServiceName::Gateway, service: ServiceName::McpBroker })
    );
}

#[test]
fn actor_tokens_for_another_audience_expired_forged_or_of_the_wrong_kind_are_refused() {
    let store = store();
    let to_broker = actor_token(ServiceName::Gateway, ServiceName::McpBroker);
    assert_eq!(store.verify_actor(&to_broker, GET_SESSION), Err(Refusal::WrongAudience("mcp-broker".into())));
    let gateway = dev_key(ServiceName::Gateway);
    let claims = |exp| ActorClaims { iss: "gateway".into(), aud: "session-store".into(), exp };
    let expired = sign(&gateway, ACTOR_TYPE, &claims(unix_now() - 1));
    assert_eq!(store.verify_actor(&expired, GET_SESSION), Err(Refusal::Expired("actor token")));
    let overlong = sign(&gateway, ACTOR_TYPE, &claims(unix_now() + 86_400));
    assert_eq!(store.verify_actor(&overlong, GET_SESSION), Err(Refusal::TooLong("actor token")));
    let forged = sign(&ServiceKey::from_seed(&[2; 32]), ACTOR_TYPE, &claims(unix_now() + 60));
    assert_eq!(
        store.verify_actor(&forged, GET_SESSION),
        Err(Refusal::UnknownKey { kind: "actor token", issuer: ServiceName::Gateway })
    );
    let principal = principal_signed_by(ServiceName::Gateway);
    assert_eq!(store.verify_actor(&principal, GET_SESSION), Err(Refusal::Malformed("actor token")));
}

#[test]
fn a_call_needs_both_tokens_and_yields_the_caller() {
    let store = store();
    let mut headers = HeaderMap::new();
    assert_eq!(store.authenticate_headers(GET_SESSION, &headers), Err(Refusal::MissingActor));
    headers
        .insert(ACTOR_HEADER, actor_token(ServiceName::AgentOrchestrator, ServiceName::SessionStore).parse().unwrap());
    assert_eq!(store.authenticate_headers(GET_SESSION, &headers), Err(Refusal::MissingPrincipal));
    let principal: HeaderValue = principal_signed_by(ServiceName::Gateway).parse().unwrap();
    headers.insert(PRINCIPAL_HEADER, principal.clone());
    let caller = store.authenticate_headers(GET_SESSION, &headers).unwrap();
    assert_eq!(caller.principal, Some(alice()));
    assert_eq!(caller.actor, Some(ServiceName::AgentOrchestrator));
    assert_eq!(caller.principal_token, Some(principal));
    let error = ApiError::from(Refusal::NotAMinter(ServiceName::McpBroker));
    assert_eq!(error.code, crate::error::ErrorCode::Authentication);
    assert!(error.message.contains("mcp-broker, which may not mint"), "{}", error.message);
}

#[test]
fn secrets_broker_serves_a_service_acting_on_its_own_without_a_principal() {
    let broker = MeshVerifier::new(ServiceName::SecretsBroker, Arc::new(TrustedKeys::development()));
    let get_secret = "/agentmesh.secrets.v1.SecretsService/GetSecret";
    let mut headers = HeaderMap::new();
    assert_eq!(broker.authenticate_headers(get_secret, &headers), Err(Refusal::MissingActor));
    headers.insert(ACTOR_HEADER, actor_token(ServiceName::LlmProxy, ServiceName::SecretsBroker).parse().unwrap());
    let caller = broker.authenticate_headers(get_secret, &headers).unwrap();
    assert_eq!((caller.actor, caller.principal), (Some(ServiceName::LlmProxy), None));
    // The actor still has to be one it serves.
    headers.insert(ACTOR_HEADER, actor_token(ServiceName::SessionStore, ServiceName::SecretsBroker).parse().unwrap());
    assert!(matches!(broker.authenticate_headers(get_secret, &headers), Err(Refusal::ActorNotServed { .. })));
}

#[test]
fn verified_tokens_are_cached_and_only_valid_ones_enter_the_cache() {
    let verifier = MeshVerifier::new(ServiceName::SessionStore, Arc::new(TrustedKeys::development()));
    let token = principal_signed_by(ServiceName::Gateway);
    let first = verifier.verify_principal(&token).unwrap();
    let second = verifier.verify_principal(&token).unwrap();
    assert!(Arc::ptr_eq(&first, &second), "the second verification came from the cache");
    assert!(verifier.verify_principal(&principal_signed_by(ServiceName::McpBroker)).is_err());
    let actor = actor_token(ServiceName::Gateway, ServiceName::SessionStore);
    verifier.verify_actor(&actor, GET_SESSION).unwrap();
    verifier.verify_actor(&actor, GET_SESSION).unwrap();
    let refused = actor_token(ServiceName::LlmProxy, ServiceName::SessionStore);
    assert!(verifier.verify_actor(&refused, GET_SESSION).is_err());
    assert!(verifier.verify_actor(&refused, GET_SESSION).is_err(), "a refusal is never cached as a success");
}

#[test]
fn minters_and_signers_reuse_tokens_within_their_window() {
    let gateway = ServiceIdentity::development(ServiceName::Gateway);
    let minter = gateway.principal_minter().unwrap();
    assert_eq!(minter.mint(&alice()), minter.mint(&alice()));
    let bob = Principal { user_id: "bob".into(), ..alice() };
    assert_ne!(minter.mint(&alice()), minter.mint(&bob));
    let premium_less = Principal { tier: Tier::Default, ..alice() };
    assert_ne!(minter.mint(&alice()), minter.mint(&premium_less));
    let signer = gateway.actor_signer(ServiceName::SessionStore);
    assert_eq!(signer.token(), signer.token());
    // A minter whose tokens live less than the re-mint margin still mints valid ones.
    let short =
        PrincipalMinter::with_ttl(ServiceName::Gateway, gateway.key().clone(), Duration::from_secs(30)).unwrap();
    let verified = store().verify_principal(short.mint(&alice()).to_str().unwrap()).unwrap();
    assert!(verified.expires <= unix_now() + 30);
}

#[test]
fn run_principals_are_bound_to_the_run_and_never_outlive_it() {
    let orchestrator = ServiceIdentity::development(ServiceName::AgentOrchestrator);
    let runs = RunPrincipals::new(Arc::new(orchestrator.principal_minter().unwrap())).unwrap();
    let ends = SystemTime::now() + Duration::from_secs(90);
    let token = runs.mint(&alice(), "run-1", ends).unwrap();
    let verified = store().verify_principal(token.to_str().unwrap()).unwrap();
    assert_eq!(verified.run.as_deref(), Some("run-1"));
    assert_eq!(verified.issuer, ServiceName::AgentOrchestrator);
    assert!(verified.expires <= claims::unix_time(ends));
    assert_eq!(runs.mint(&alice(), "run-1", ends).unwrap(), token, "reused while fresh enough");
    let mut headers = HeaderMap::new();
    headers.insert(PRINCIPAL_HEADER, token.clone());
    headers
        .insert(ACTOR_HEADER, actor_token(ServiceName::AgentOrchestrator, ServiceName::SessionStore).parse().unwrap());
    assert_eq!(store().authenticate_headers(GET_SESSION, &headers).unwrap().run.as_deref(), Some("run-1"));
    let long_run = SystemTime::now() + Duration::from_secs(3600);
    let long = store().verify_principal(runs.mint(&alice(), "run-2", long_run).unwrap().to_str().unwrap()).unwrap();
    assert!(long.expires <= unix_now() + PRINCIPAL_TTL.as_secs());
    assert_eq!(
        runs.mint(&alice(), "run-3", SystemTime::now() - Duration::from_secs(1)),
        Err(MintError::RunEnded("run-3".into()))
    );
    let gateway = Arc::new(ServiceIdentity::development(ServiceName::Gateway).principal_minter().unwrap());
    assert_eq!(RunPrincipals::new(gateway).unwrap_err(), MintError::NotAMinter(ServiceName::Gateway));
}
