//! Calls to a server of the same process (`agentmesh up`, `ServerConfig::in_process_calls`)
//! skip the socket but nothing else: the server's authentication, context and handler see
//! the call as they would over loopback; a caller giving up drops the call in the server;
//! a stopped server is unreachable as a separate process would be; without the setting,
//! calls go over the socket.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use agentmesh_proto::agentmesh::session::v1::session_service_client::SessionServiceClient;
use agentmesh_proto::agentmesh::session::v1::session_service_server::{SessionService, SessionServiceServer};
use agentmesh_proto::agentmesh::session::v1::{GetSessionRequest, GetSessionResponse, Session};
use agentmesh_resilience::Preset;
use agentmesh_runtime::auth::{Principal, ServiceIdentity, Tier};
use agentmesh_runtime::client::ServiceChannel;
use agentmesh_runtime::{ApiError, Config, ErrorCode, GrpcServer, RequestContext, ServiceName};
use axum::extract::ConnectInfo;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// Answers with who called and from which port; session `hang` never answers, and says
/// when the server drops it.
struct Witness {
    dropped: mpsc::UnboundedSender<()>,
}

/// Reports when the call holding it is dropped.
struct DropSignal(mpsc::UnboundedSender<()>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

#[tonic::async_trait]
impl SessionService for Witness {
    async fn get_session(&self, request: Request<GetSessionRequest>) -> Result<Response<GetSessionResponse>, Status> {
        if request.get_ref().session_id == "hang" {
            let _signal = DropSignal(self.dropped.clone());
            std::future::pending::<()>().await;
        }
        let port = request.extensions().get::<ConnectInfo<SocketAddr>>().map_or(-1, |info| i64::from(info.0.port()));
        let context = RequestContext::current().expect("handlers run inside a request context");
        Ok(Response::new(GetSessionResponse {
            session: Some(Session {
                id: request.get_ref().session_id.clone(),
                user_id: context.principal.map(|p| p.user_id),
                title: context.actor.map(|a| a.as_str().to_owned()),
                message_count: port,
                ..Session::default()
            }),
        }))
    }
}

struct Running {
    url: String,
    dropped: mpsc::UnboundedReceiver<()>,
    stop: oneshot::Sender<()>,
    served: tokio::task::JoinHandle<()>,
}

async fn start(in_process_calls: bool) -> Running {
    let mut config = Config::load(None, []).unwrap();
    config.server.in_process_calls = in_process_calls;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (dropped_tx, dropped) = mpsc::unbounded_channel();
    let server = GrpcServer::new(ServiceName::SessionStore, &config)
        .add_service(SessionServiceServer::new(Witness { dropped: dropped_tx }));
    let (stop, stopped) = oneshot::channel::<()>();
    let served = tokio::spawn(async move {
        server
            .serve(listener, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    // The server registers before it accepts: once health answers on the socket, calls
    // can be served in process.
    let health = async {
        loop {
            if let Ok(channel) = tonic::transport::Channel::from_shared(url.clone()).unwrap().connect().await
                && HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await.is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), health).await.expect("the server serves");
    Running { url, dropped, stop, served }
}

/// A client acting as the orchestrator, the way services call session-store.
fn orchestrator(url: &str) -> SessionServiceClient<ServiceChannel> {
    let channel = ServiceChannel::connect_lazy("session-store", url, &Preset::internal()).unwrap();
    SessionServiceClient::new(channel.acting_as(&ServiceIdentity::development(ServiceName::AgentOrchestrator)))
}

/// alice's call, as a service serving it has it in its context.
fn alice() -> RequestContext {
    let alice = Principal { user_id: "alice".into(), tenant_id: "t1".into(), tier: Tier::Premium, scopes: vec![] };
    let minted = ServiceIdentity::development(ServiceName::Gateway).principal_minter().unwrap().mint(&alice);
    RequestContext { principal: Some(alice), principal_token: Some(minted), ..RequestContext::new() }
}

fn get(id: &str) -> GetSessionRequest {
    GetSessionRequest { session_id: id.to_owned() }
}

async fn session(client: &mut SessionServiceClient<ServiceChannel>, id: &str) -> Result<Session, Status> {
    let response = alice().scope(client.get_session(get(id))).await?;
    Ok(response.into_inner().session.unwrap())
}

#[tokio::test]
async fn a_server_of_the_same_process_serves_the_call_without_its_socket() {
    let server = start(true).await;
    let answer = session(&mut orchestrator(&server.url), "s1").await.unwrap();
    assert_eq!(answer.message_count, 0, "no connection carried the call (its peer port would show)");
    assert_eq!(answer.user_id.as_deref(), Some("alice"), "the principal was verified and forwarded");
    assert_eq!(answer.title.as_deref(), Some("agent-orchestrator"), "the actor token was verified");
}

#[tokio::test]
async fn without_the_setting_calls_go_over_the_socket() {
    let server = start(false).await;
    let answer = session(&mut orchestrator(&server.url), "s1").await.unwrap();
    assert!(answer.message_count > 0, "a loopback connection's port: {}", answer.message_count);
    assert_eq!(answer.user_id.as_deref(), Some("alice"));
}

#[tokio::test]
async fn in_process_calls_are_authenticated_like_any_other() {
    let server = start(true).await;
    let anonymous = ServiceChannel::connect_lazy("session-store", &server.url, &Preset::internal()).unwrap();
    let status = SessionServiceClient::new(anonymous).get_session(get("s1")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");

    let llm_proxy = ServiceChannel::connect_lazy("session-store", &server.url, &Preset::internal())
        .unwrap()
        .acting_as(&ServiceIdentity::development(ServiceName::LlmProxy));
    let status = session(&mut SessionServiceClient::new(llm_proxy), "s1").await.unwrap_err();
    assert!(status.message().contains("session-store does not serve calls from llm-proxy"), "{status:?}");
}

#[tokio::test]
async fn a_caller_giving_up_drops_the_call_in_the_server() {
    let mut server = start(true).await;
    let mut client = orchestrator(&server.url);
    let call = session(&mut client, "hang");
    assert!(tokio::time::timeout(Duration::from_millis(100), call).await.is_err(), "the handler never answers");
    let dropped = tokio::time::timeout(Duration::from_secs(5), server.dropped.recv()).await;
    assert!(matches!(dropped, Ok(Some(()))), "the server dropped the abandoned call");
}

#[tokio::test]
async fn a_stopped_server_is_unreachable_as_a_separate_process_would_be() {
    let server = start(true).await;
    let mut client = orchestrator(&server.url);
    session(&mut client, "s1").await.unwrap();
    server.stop.send(()).unwrap();
    server.served.await.unwrap();

    let status = session(&mut client, "s1").await.unwrap_err();
    assert_eq!(ApiError::from_status(&status).code, ErrorCode::ExternalService, "{status:?}");
    let second = start(true).await;
    let mut other = orchestrator(&second.url);
    assert_eq!(session(&mut other, "s2").await.unwrap().message_count, 0, "other servers stay in process");
}
