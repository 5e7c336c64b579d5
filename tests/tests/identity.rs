//! Identity between services on the real binaries: session-store and llm-proxy refuse
//! forged, wrongly minted and expired principals and the actors they do not serve, and a
//! user reaching session-store through a second hop (gateway → a stand-in
//! agent-orchestrator holding the orchestrator's development key → session-store) sees
//! only their own sessions.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use agentmesh_e2e::{Process, free_port, wait_http, wait_serving};
use agentmesh_proto::agentmesh::agent::v1::agent_service_server::{AgentService, AgentServiceServer};
use agentmesh_proto::agentmesh::agent::v1::{Agent, GetAgentRequest, GetAgentResponse};
use agentmesh_proto::agentmesh::llm::v1::ListModelsRequest;
use agentmesh_proto::agentmesh::llm::v1::llm_service_client::LlmServiceClient;
use agentmesh_proto::agentmesh::session::v1::session_service_client::SessionServiceClient;
use agentmesh_proto::agentmesh::session::v1::{GetSessionRequest, ListSessionsRequest};
use agentmesh_resilience::Preset;
use agentmesh_runtime::auth::claims::sign_principal;
use agentmesh_runtime::auth::{ACTOR_HEADER, PRINCIPAL_HEADER, ServiceIdentity, ServiceKey};
use agentmesh_runtime::client::ServiceChannel;
use agentmesh_runtime::{Config, GrpcServer, RequestContext, ServiceName};
use agentmesh_testkit::identity;
use serde_json::{Value, json};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

/// Starts `binary` listening on a free port named by `addr_var`; returns it and a channel.
async fn start(binary: &str, addr_var: &str, extra: &[(&str, String)]) -> (Process, Channel, u16) {
    let port = free_port().unwrap();
    let mut env = vec![(addr_var, format!("127.0.0.1:{port}")), ("OBSERVABILITY_LOG_LEVEL", "WARNING".to_owned())];
    env.extend(extra.iter().cloned());
    let mut process = Process::spawn(binary, &[], &env).unwrap();
    let channel = wait_serving(&mut process, port).await.unwrap();
    (process, channel, port)
}

/// A ListSessions call to session-store carrying exactly `metadata`.
async fn list_sessions(channel: &Channel, metadata: &[(&'static str, String)]) -> Result<(), Status> {
    let mut request = Request::new(ListSessionsRequest::default());
    for (name, value) in metadata {
        request.metadata_mut().insert(*name, value.parse().unwrap());
    }
    SessionServiceClient::new(channel.clone()).list_sessions(request).await.map(|_| ())
}

fn assert_refused<T: std::fmt::Debug>(result: Result<T, Status>, reason: &str) {
    let status = result.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains(reason), "expected {reason:?} in {status:?}");
}

#[tokio::test]
async fn session_store_refuses_forged_wrongly_minted_and_expired_principals_and_unserved_actors() {
    let (_store, channel, _) = start("agentmesh-session-store", "SESSION_STORE_ADDR", &[]).await;
    let alice = identity::user("alice", "acme");
    let gateway_actor = (ACTOR_HEADER, identity::actor_token(ServiceName::Gateway, ServiceName::SessionStore));

    // The real thing passes.
    list_sessions(&channel, &identity::gateway_call(&alice, ServiceName::SessionStore)).await.unwrap();

    // Forged: signed with a key nobody trusts, claiming to be the gateway.
    let claims = identity::principal_claims(ServiceName::Gateway, &alice, 60);
    let forged = sign_principal(&ServiceKey::from_seed(&[42; 32]), &claims);
    assert_refused(
        list_sessions(&channel, &[(PRINCIPAL_HEADER, forged), gateway_actor.clone()]).await,
        "principal signed with a key not trusted for gateway",
    );

    // Signed by a service that may not mint principals (mcp-broker's own key and name).
    let by_broker = identity::principal_claims(ServiceName::McpBroker, &alice, 60);
    let by_broker = identity::principal_signed_by(ServiceName::McpBroker, &by_broker);
    assert_refused(
        list_sessions(&channel, &[(PRINCIPAL_HEADER, by_broker), gateway_actor.clone()]).await,
        "principal signed by mcp-broker, which may not mint principals",
    );

    // Expired.
    let expired = identity::principal_claims(ServiceName::Gateway, &alice, -5);
    let expired = identity::principal_signed_by(ServiceName::Gateway, &expired);
    assert_refused(
        list_sessions(&channel, &[(PRINCIPAL_HEADER, expired), gateway_actor.clone()]).await,
        "principal has expired",
    );

    // A valid principal, but from an actor session-store does not serve.
    let principal = (PRINCIPAL_HEADER, identity::principal_token(&alice));
    let llm_proxy = (ACTOR_HEADER, identity::actor_token(ServiceName::LlmProxy, ServiceName::SessionStore));
    assert_refused(
        list_sessions(&channel, &[principal.clone(), llm_proxy]).await,
        "session-store does not serve calls from llm-proxy",
    );
    // No actor at all, and an actor token made out to another service.
    assert_refused(
        list_sessions(&channel, std::slice::from_ref(&principal)).await,
        "actor token (x-agentmesh-actor) is required",
    );
    let elsewhere = (ACTOR_HEADER, identity::actor_token(ServiceName::Gateway, ServiceName::LlmProxy));
    assert_refused(list_sessions(&channel, &[principal, elsewhere]).await, "actor token is addressed to llm-proxy");
}

#[tokio::test]
async fn llm_proxy_serves_the_orchestrator_only() {
    let (_proxy, channel, _) = start("agentmesh-llm-proxy", "LLM_PROXY_ADDR", &[]).await;
    let alice = identity::user("alice", "acme");
    let call = |actor: ServiceName| {
        let mut request = Request::new(ListModelsRequest::default());
        request.metadata_mut().insert(PRINCIPAL_HEADER, identity::principal_token(&alice).parse().unwrap());
        request
            .metadata_mut()
            .insert(ACTOR_HEADER, identity::actor_token(actor, ServiceName::LlmProxy).parse().unwrap());
        let mut client = LlmServiceClient::new(channel.clone());
        async move { client.list_models(request).await.map(tonic::Response::into_inner) }
    };
    assert_refused(call(ServiceName::SessionStore).await, "llm-proxy does not serve calls from session-store");
    assert_refused(call(ServiceName::Gateway).await, "llm-proxy does not serve calls from gateway");
    let models = call(ServiceName::AgentOrchestrator).await.unwrap();
    assert_eq!(models.default_model, "scripted/echo", "no provider configured: the scripted one answers");
}

/// Stands in for agent-orchestrator: `GetAgent(id)` reads session `id` from session-store
/// on the caller's behalf and answers an agent named after it, described by the actor
/// that called.
struct SecondHop {
    sessions: SessionServiceClient<ServiceChannel>,
}

#[tonic::async_trait]
impl AgentService for SecondHop {
    async fn get_agent(&self, request: Request<GetAgentRequest>) -> Result<Response<GetAgentResponse>, Status> {
        let id = request.into_inner().agent_id;
        let session = self.sessions.clone().get_session(GetSessionRequest { session_id: id.clone() }).await?;
        let title = session.into_inner().session.and_then(|s| s.title).unwrap_or_default();
        let actor = RequestContext::current().and_then(|c| c.actor).map(|a| a.as_str().to_owned());
        Ok(Response::new(GetAgentResponse {
            agent: Some(Agent { id, name: title, description: actor, ..Agent::default() }),
        }))
    }
}

const ALICE: &str = "sk-e2e-alice-0123456789abcdefghijklmnopqrstuv";
const BOB: &str = "sk-e2e-bob-0123456789abcdefghijklmnopqrstuvwxy";

#[tokio::test]
async fn through_a_second_hop_a_user_reads_only_their_own_sessions() {
    let (_store, _, store_port) = start("agentmesh-session-store", "SESSION_STORE_ADDR", &[]).await;
    let store_url = format!("http://127.0.0.1:{store_port}");

    // The stand-in orchestrator, served as every service is (authentication on by default).
    let config = Config::load(None, []).unwrap();
    let me = ServiceIdentity::from_config(&config, ServiceName::AgentOrchestrator);
    let channel =
        ServiceChannel::connect_lazy("session-store", &store_url, &Preset::internal()).unwrap().acting_as(&me);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let orchestrator_url = format!("http://{}", listener.local_addr().unwrap());
    let server = GrpcServer::new(ServiceName::AgentOrchestrator, &config)
        .add_service(AgentServiceServer::new(SecondHop { sessions: SessionServiceClient::new(channel) }));
    tokio::spawn(server.serve(listener, std::future::pending()));

    let gateway_port = free_port().unwrap();
    let env = [
        ("GATEWAY_ADDR", format!("127.0.0.1:{gateway_port}")),
        ("SESSION_STORE_URL", store_url),
        ("AGENT_ORCHESTRATOR_URL", orchestrator_url),
        ("SECURITY_API_KEYS", format!("{ALICE}=alice:premium,{BOB}=bob:premium")),
        ("OBSERVABILITY_LOG_LEVEL", "WARNING".to_owned()),
    ];
    let mut gateway = Process::spawn("agentmesh-gateway", &[], &env).unwrap();
    let base = format!("http://127.0.0.1:{gateway_port}");
    wait_http(&mut gateway, &format!("{base}/api/v1/health")).await.unwrap();
    let http = reqwest::Client::new();
    let create = |key: &'static str, title: &'static str| {
        let request = http.post(format!("{base}/api/v1/sessions")).bearer_auth(key).json(&json!({ "title": title }));
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), 201);
            response.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned()
        }
    };
    let alices = create(ALICE, "alice's notes").await;
    let bobs = create(BOB, "bob's notes").await;
    let get_agent = |key: &'static str, id: &str| {
        let request = http.get(format!("{base}/api/v1/agents/{id}")).bearer_auth(key);
        async move {
            let response = request.send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    let (status, agent) = get_agent(ALICE, &alices).await;
    assert_eq!(status, 200, "{agent}");
    assert_eq!(agent["name"], "alice's notes", "alice reads her own session through the second hop");
    assert_eq!(agent["description"], "gateway", "the stand-in saw the gateway as its actor");
    let (status, body) = get_agent(ALICE, &bobs).await;
    assert_eq!(status, 404, "alice must not read bob's session through the second hop: {body}");
    let (status, agent) = get_agent(BOB, &bobs).await;
    assert_eq!((status, agent["name"].clone()), (200, json!("bob's notes")));
}
