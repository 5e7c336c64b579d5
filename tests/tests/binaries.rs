//! Every service binary starts on its configured address, serves `grpc.health.v1`,
//! reflection v1 and Prometheus `/metrics`, reports NOT_SERVING on SIGTERM and exits 0;
//! a bad configuration stops it at start-up with every bad variable named.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentmesh_e2e::{Process, free_port, wait_serving};
use futures::StreamExt;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

async fn reflected_services(channel: Channel) -> Vec<String> {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("reflection answers")
        .into_inner();
    let response = responses.next().await.expect("one response").expect("no error");
    match response.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => list.service.into_iter().map(|s| s.name).collect(),
        other => panic!("unexpected reflection response {other:?}"),
    }
}

/// Runs `binary` with its listen address set by `addr_var`, checks everything the issue
/// asks of a service binary, then stops it with SIGTERM.
async fn check_binary(binary: &str, addr_var: &str, grpc_services: &[&str]) {
    let port = free_port().unwrap();
    let env = [
        (addr_var, format!("127.0.0.1:{port}")),
        ("SERVER_DRAIN_DELAY", "0.3".to_owned()),
        ("SERVER_SHUTDOWN_GRACE_PERIOD", "20".to_owned()),
        ("OBSERVABILITY_LOG_LEVEL", "DEBUG".to_owned()),
    ];
    let mut process = Process::spawn(binary, &[], &env).unwrap();
    let channel = wait_serving(&mut process, port).await.unwrap();

    let mut health = HealthClient::new(channel.clone());
    for service in grpc_services {
        let status = health.check(HealthCheckRequest { service: (*service).to_owned() }).await.unwrap();
        assert_eq!(status.into_inner().status, ServingStatus::Serving as i32, "{binary}: {service}");
    }

    let reflected = reflected_services(channel.clone()).await;
    for expected in grpc_services.iter().chain(&["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"]) {
        assert!(reflected.iter().any(|s| s == expected), "{binary} does not reflect {expected}: {reflected:?}");
    }

    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("agentmesh_grpc_server_requests_total")
            && l.contains("rpc_service=\"grpc.health.v1.Health\"")
            && l.contains("code=\"Ok\"")),
        "{binary}: health checks are not counted in /metrics:\n{text}"
    );

    let mut watch = health.watch(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);
    process.terminate().await.unwrap();
    let next = watch.next().await.unwrap().unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32, "{binary} must report NOT_SERVING while draining");
    // An open stream is an in-flight call: close it so the drain can finish early.
    drop((watch, health, channel));

    let (status, stderr) = process.wait().await.unwrap();
    assert!(status.success(), "{binary} exited with {status}:\n{stderr}");
    assert!(stderr.contains("\"correlation_id\""), "{binary}: request logs carry correlation ids:\n{stderr}");
    assert!(stderr.contains("NOT_SERVING"), "{binary}: shutdown is logged:\n{stderr}");
    assert!(
        stderr.contains(&format!("\"address\":\"127.0.0.1:{port}\"")),
        "{binary}: the listen address is logged as an address:\n{stderr}"
    );
    assert!(!stderr.contains("Some("), "{binary}: log fields print values, not Option's Debug:\n{stderr}");
}

#[tokio::test]
async fn gateway_binary() {
    check_binary(
        "agentmesh-gateway",
        "GATEWAY_ADDR",
        &["agentmesh.health.v1.HealthService", "agentmesh.auth.v1.AuthService"],
    )
    .await;
}

#[tokio::test]
async fn session_store_binary() {
    check_binary("agentmesh-session-store", "SESSION_STORE_ADDR", &["agentmesh.session.v1.SessionService"]).await;
}

#[tokio::test]
async fn agent_orchestrator_binary() {
    check_binary("agentmesh-agent-orchestrator", "AGENT_ORCHESTRATOR_ADDR", &["agentmesh.agent.v1.AgentService"]).await;
}

#[tokio::test]
async fn llm_proxy_binary() {
    check_binary("agentmesh-llm-proxy", "LLM_PROXY_ADDR", &["agentmesh.llm.v1.LlmService"]).await;
}

#[tokio::test]
async fn mcp_broker_binary() {
    check_binary("agentmesh-mcp-broker", "MCP_BROKER_ADDR", &["agentmesh.mcp.v1.McpService"]).await;
}

#[tokio::test]
async fn secrets_broker_binary() {
    check_binary("agentmesh-secrets-broker", "SECRETS_BROKER_ADDR", &["agentmesh.secrets.v1.SecretsService"]).await;
}

#[tokio::test]
async fn a_call_still_running_after_the_grace_period_is_cut() {
    let port = free_port().unwrap();
    let env = [("SESSION_STORE_ADDR", format!("127.0.0.1:{port}")), ("SERVER_SHUTDOWN_GRACE_PERIOD", "1".to_owned())];
    let mut process = Process::spawn("agentmesh-session-store", &[], &env).unwrap();
    let channel = wait_serving(&mut process, port).await.unwrap();
    let mut watch =
        HealthClient::new(channel).watch(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(watch.next().await.unwrap().unwrap().status, ServingStatus::Serving as i32);

    let started = std::time::Instant::now();
    process.terminate().await.unwrap();
    let (status, stderr) = process.wait().await.unwrap();
    assert!(status.success(), "{status}:\n{stderr}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "the open stream held shutdown for {:?}",
        started.elapsed()
    );
    assert!(stderr.contains("grace period over"), "{stderr}");
    drop(watch);
}

#[tokio::test]
async fn a_bad_configuration_names_every_bad_variable_and_exits_2() {
    let env = [
        ("DB_PORT", "not-a-port".to_owned()),
        ("RETRY_LLM_MAX_ATTEMPTS", "0".to_owned()),
        ("ENVIRONMENT", "production".to_owned()),
        ("SECURITY_CORS_ORIGINS", "*".to_owned()),
        ("USE_MEMORY", "true".to_owned()),
    ];
    let process = Process::spawn("agentmesh-session-store", &[], &env).unwrap();
    let (status, stderr) = process.wait().await.unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    for variable in ["DB_PORT", "RETRY_LLM_MAX_ATTEMPTS", "SECURITY_SECRET_KEY", "SECURITY_CORS_ORIGINS", "USE_MEMORY"]
    {
        assert!(stderr.contains(variable), "{variable} not reported:\n{stderr}");
    }
}

#[tokio::test]
async fn agentmesh_up_runs_the_whole_mesh_and_stops_on_sigterm() {
    let port = free_port().unwrap();
    let mut process = Process::spawn("agentmesh", &["up", "--http", &format!("127.0.0.1:{port}")], &[]).unwrap();
    let channel = wait_serving(&mut process, port).await.unwrap();
    let reflected = reflected_services(channel).await;
    assert!(reflected.iter().any(|s| s == "agentmesh.health.v1.HealthService"), "{reflected:?}");
    let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("agentmesh_grpc_server_requests_total"), "{metrics}");

    process.terminate().await.unwrap();
    let (status, stderr) = process.wait().await.unwrap();
    assert!(status.success(), "agentmesh up exited with {status}:\n{stderr}");
    for service in ["gateway", "session-store", "agent-orchestrator", "llm-proxy", "mcp-broker", "secrets-broker"] {
        assert!(
            stderr.lines().any(|l| l.contains("\"stopped\"") && l.contains(&format!("\"service\":\"{service}\""))),
            "{service} did not drain and stop:\n{stderr}"
        );
    }
}
