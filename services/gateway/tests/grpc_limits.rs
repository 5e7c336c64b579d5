//! Rate limits on gRPC passthrough: the REST policy applies to native gRPC and grpc-web
//! calls with the same keys and buckets, refusals are RESOURCE_EXHAUSTED with
//! `retry-after`, and the `x-ratelimit-*` values travel as response metadata.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use agentmesh_proto::agentmesh::session::v1::CreateSessionRequest;
use agentmesh_proto::agentmesh::session::v1::session_service_client::SessionServiceClient;
use agentmesh_runtime::{ApiError, ErrorCode};
use common::Mesh;
use common::grpc_web::{Wire, request, send};
use tonic::transport::Channel;

/// Session creation allows this many calls per minute in these tests.
const LIMIT: u32 = 3;

async fn mesh(keys: &[(&str, &str)]) -> (Mesh, SessionServiceClient<Channel>) {
    let keys = keys.iter().map(|(key, user)| format!("{key}={user}:premium")).collect::<Vec<_>>().join(",");
    let limit = LIMIT.to_string();
    let mesh = Mesh::start(&[("SECURITY_API_KEYS", keys.as_str()), ("RATE_LIMIT_CREATE_SESSION_LIMIT", &limit)]).await;
    let channel = Channel::from_shared(mesh.base.clone()).unwrap().connect().await.unwrap();
    (mesh, SessionServiceClient::new(channel))
}

async fn create_grpc(
    client: &mut SessionServiceClient<Channel>,
    key: &str,
) -> Result<tonic::metadata::MetadataMap, tonic::Status> {
    let mut request =
        tonic::Request::new(CreateSessionRequest { title: Some("via grpc".into()), ..Default::default() });
    request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
    client.create_session(request).await.map(|response| response.metadata().clone())
}

async fn create_rest(mesh: &Mesh, key: &str) -> reqwest::Response {
    let body = serde_json::json!({"title": "via rest"});
    mesh.http.post(mesh.url("/api/v1/sessions")).bearer_auth(key).json(&body).send().await.unwrap()
}

fn value<'a>(metadata: &'a tonic::metadata::MetadataMap, name: &str) -> &'a str {
    metadata.get(name).unwrap_or_else(|| panic!("{name} missing from {metadata:?}")).to_str().unwrap()
}

/// Asserts `status` is the rate-limit refusal, with its metadata.
fn assert_refused(status: &tonic::Status) {
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(!status.message().is_empty());
    let retry_after: u64 = value(status.metadata(), "retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(value(status.metadata(), "x-ratelimit-limit"), LIMIT.to_string());
    assert_eq!(value(status.metadata(), "x-ratelimit-remaining"), "0");
    assert!(value(status.metadata(), "x-ratelimit-reset").parse::<u64>().unwrap() > 0);
    let error = ApiError::from_status(status);
    assert_eq!(error.code, ErrorCode::RateLimit);
    assert!(error.retry_after.is_some(), "RetryInfo travels in the status details too");
}

#[tokio::test]
async fn the_call_over_the_limit_is_resource_exhausted_with_retry_after() {
    let key = "sk-limited-0123456789abcdefghijklmnopqrstu";
    let (_mesh, mut client) = mesh(&[(key, "limited")]).await;
    for remaining in (0..LIMIT).rev() {
        let metadata = create_grpc(&mut client, key).await.unwrap();
        assert_eq!(value(&metadata, "x-ratelimit-limit"), LIMIT.to_string());
        assert_eq!(value(&metadata, "x-ratelimit-remaining"), remaining.to_string());
        assert!(metadata.get("retry-after").is_none(), "only refusals say when to retry");
    }
    assert_refused(&create_grpc(&mut client, key).await.unwrap_err());
}

#[tokio::test]
async fn rest_and_grpc_calls_share_one_budget() {
    let (key, other) = ("sk-shared-0123456789abcdefghijklmnopqrstuv", "sk-others-0123456789abcdefghijklmnopqrstuv");
    let (mesh, mut client) = mesh(&[(key, "shared"), (other, "other")]).await;
    for _ in 0..LIMIT - 1 {
        assert_eq!(create_rest(&mesh, key).await.status(), 201);
    }
    let metadata = create_grpc(&mut client, key).await.unwrap();
    assert_eq!(value(&metadata, "x-ratelimit-remaining"), "0", "REST calls spent the gRPC budget");

    let refused = create_rest(&mesh, key).await;
    assert_eq!(refused.status(), 429, "the gRPC call spent the REST budget");
    assert!(refused.headers().contains_key("retry-after"));
    assert_refused(&create_grpc(&mut client, key).await.unwrap_err());

    // grpc-web is passthrough too: refused the same way, the metadata in the HTTP headers.
    let path = "/agentmesh.session.v1.SessionService/CreateSession";
    let web = send(Wire::Binary, request(&mesh, Wire::Binary, path, &CreateSessionRequest::default()).bearer_auth(key));
    let web = web.await;
    assert_eq!(web.grpc_status(), Some("8"), "RESOURCE_EXHAUSTED: {web:?}");
    assert!(web.headers.contains_key("retry-after"));
    assert_eq!(web.headers["x-ratelimit-remaining"], "0");

    // Another caller has a budget of their own.
    assert!(create_grpc(&mut client, other).await.is_ok());
}

#[tokio::test]
async fn the_gateways_own_services_are_limited_over_grpc_too() {
    use agentmesh_proto::agentmesh::auth::v1::IssueTokenRequest;
    use agentmesh_proto::agentmesh::auth::v1::auth_service_client::AuthServiceClient;

    let key = "sk-tokens-0123456789abcdefghijklmnopqrstuv";
    let limit = LIMIT.to_string();
    let mesh = Mesh::start(&[
        ("SECURITY_API_KEYS", format!("{key}=tokens:premium").as_str()),
        ("RATE_LIMIT_API_PREMIUM_LIMIT", &limit),
    ])
    .await;
    let channel = Channel::from_shared(mesh.base.clone()).unwrap().connect().await.unwrap();
    let mut auth = AuthServiceClient::new(channel);
    let issue = || {
        let mut request = tonic::Request::new(IssueTokenRequest { api_key: key.to_owned() });
        request.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
        request
    };
    for remaining in (0..LIMIT).rev() {
        let response = auth.issue_token(issue()).await.unwrap();
        assert!(!response.get_ref().access_token.is_empty());
        assert_eq!(value(response.metadata(), "x-ratelimit-remaining"), remaining.to_string());
    }
    let refused = auth.issue_token(issue()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert!(refused.metadata().get("retry-after").is_some());
}
