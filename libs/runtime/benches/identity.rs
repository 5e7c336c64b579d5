//! What identity costs one request: the HMAC-era principal (sign and check per request,
//! reproduced here as it was) against Ed25519 principals and actor tokens, minted and
//! verified once (cache miss) or served from the caches (what a steady stream of requests
//! pays). `cargo bench -p agentmesh-runtime --bench identity`; numbers in
//! docs/benchmarks.md.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use agentmesh_runtime::ServiceName;
use agentmesh_runtime::auth::claims::{PrincipalClaims, sign_principal, unix_now};
use agentmesh_runtime::auth::{ACTOR_HEADER, PRINCIPAL_HEADER, Principal, ServiceIdentity, Tier};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use hmac::{KeyInit, Mac};

const GET_SESSION: &str = "/agentmesh.session.v1.SessionService/GetSession";

fn alice() -> Principal {
    Principal { user_id: "bench-user".into(), tenant_id: String::new(), tier: Tier::Premium, scopes: vec!["*".into()] }
}

fn claims() -> PrincipalClaims {
    PrincipalClaims {
        iss: "gateway".into(),
        sub: "bench-user".into(),
        ten: String::new(),
        tier: Tier::Premium,
        scp: vec!["*".into()],
        exp: unix_now() + 300,
        run: None,
    }
}

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// The HMAC-era header: base64url(JSON claims) "." base64url(HMAC-SHA256).
fn hmac_encode(key: &[u8], claims: &PrincipalClaims) -> String {
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap());
    let mut mac = HmacSha256::new_from_slice(key).unwrap();
    mac.update(payload.as_bytes());
    format!("{payload}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
}

/// The HMAC-era check: verify the MAC, decode the claims, check expiry.
fn hmac_decode(key: &[u8], value: &str) -> Option<PrincipalClaims> {
    let (payload, signature) = value.split_once('.')?;
    let signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
    let mut mac = HmacSha256::new_from_slice(key).ok()?;
    mac.update(payload.as_bytes());
    mac.verify_slice(&signature).ok()?;
    let claims: PrincipalClaims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    (claims.exp >= unix_now()).then_some(claims)
}

fn identity(c: &mut Criterion) {
    let key = [7u8; 32];
    let hmac_header = hmac_encode(&key, &claims());
    c.bench_function("hmac_era/sign", |b| b.iter(|| hmac_encode(black_box(&key), black_box(&claims()))));
    c.bench_function("hmac_era/verify", |b| b.iter(|| hmac_decode(black_box(&key), black_box(&hmac_header))));

    let gateway = ServiceIdentity::development(ServiceName::Gateway);
    let store = ServiceIdentity::development(ServiceName::SessionStore);
    let minter = gateway.principal_minter().unwrap();
    let principal = alice();
    c.bench_function("ed25519/principal_mint_miss", |b| {
        b.iter(|| sign_principal(black_box(gateway.key()), black_box(&claims())))
    });
    c.bench_function("ed25519/principal_mint_hit", |b| b.iter(|| minter.mint(black_box(&principal))));

    let token = minter.mint(&principal);
    let token = token.to_str().unwrap().to_owned();
    c.bench_function("ed25519/principal_verify_miss", |b| {
        b.iter_batched(
            || store.verifier(),
            |verifier| verifier.verify_principal(&token).unwrap(),
            BatchSize::SmallInput,
        )
    });
    let verifier = store.verifier();
    c.bench_function("ed25519/principal_verify_hit", |b| b.iter(|| verifier.verify_principal(black_box(&token))));

    let signer = gateway.actor_signer(ServiceName::SessionStore);
    c.bench_function("ed25519/actor_sign_hit", |b| b.iter(|| signer.token()));

    let mut headers = http::HeaderMap::new();
    headers.insert(PRINCIPAL_HEADER, token.parse().unwrap());
    headers.insert(ACTOR_HEADER, signer.token());
    c.bench_function("request/gateway_side_hit", |b| b.iter(|| (minter.mint(black_box(&principal)), signer.token())));
    c.bench_function("request/service_side_hit", |b| {
        b.iter(|| verifier.authenticate_headers(GET_SESSION, black_box(&headers)).unwrap())
    });
    c.bench_function("request/service_side_miss", |b| {
        b.iter_batched(
            || store.verifier(),
            |fresh| fresh.authenticate_headers(GET_SESSION, &headers).unwrap(),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, identity);
criterion_main!(benches);
