//! Per-method maximum deadlines on a served `GrpcServer`: a CRUD call asking for 600 s
//! runs under `SERVER_REQUEST_TIMEOUT`, a method whose contract declares a larger maximum
//! keeps the caller's deadline (and gets its maximum when the caller sets none), and a
//! server stream is bounded as a whole by its deadline, not cut at the server's cap.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentmesh_proto::agentmesh::agent::v1::agent_service_client::AgentServiceClient;
use agentmesh_proto::agentmesh::agent::v1::agent_service_server::{AgentService, AgentServiceServer};
use agentmesh_proto::agentmesh::agent::v1::{
    ExecuteAgentRequest, ExecuteAgentResponse, StreamRunRequest, StreamRunResponse,
};
use agentmesh_proto::agentmesh::session::v1::session_service_client::SessionServiceClient;
use agentmesh_proto::agentmesh::session::v1::session_service_server::{SessionService, SessionServiceServer};
use agentmesh_proto::agentmesh::session::v1::{GetSessionRequest, GetSessionResponse};
use agentmesh_runtime::{Config, GrpcServer, RequestContext, ServiceName};
use futures::StreamExt;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Records the deadline each handler saw; streams run events until cut.
#[derive(Default)]
struct Recorder {
    remaining: Mutex<Vec<(&'static str, Duration)>>,
}

impl Recorder {
    fn record(&self, method: &'static str) {
        let remaining = RequestContext::current().and_then(|c| c.remaining()).expect("every call has a deadline");
        self.remaining.lock().unwrap().push((method, remaining));
    }

    fn last(&self, method: &str) -> Duration {
        let seen = self.remaining.lock().unwrap();
        seen.iter().rev().find(|(m, _)| *m == method).map(|(_, d)| *d).unwrap()
    }
}

#[tonic::async_trait]
impl SessionService for Recorder {
    async fn get_session(&self, _request: Request<GetSessionRequest>) -> Result<Response<GetSessionResponse>, Status> {
        self.record("GetSession");
        Ok(Response::new(GetSessionResponse::default()))
    }
}

#[tonic::async_trait]
impl AgentService for Recorder {
    async fn execute_agent(
        &self,
        _request: Request<ExecuteAgentRequest>,
    ) -> Result<Response<ExecuteAgentResponse>, Status> {
        self.record("ExecuteAgent");
        Ok(Response::new(ExecuteAgentResponse::default()))
    }

    async fn stream_run(
        &self,
        _request: Request<StreamRunRequest>,
    ) -> Result<Response<tonic::codegen::BoxStream<StreamRunResponse>>, Status> {
        self.record("StreamRun");
        // One event every 50 ms, forever: only the deadline ends it.
        let events = futures::stream::unfold((), |()| async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            Some((Ok(StreamRunResponse::default()), ()))
        });
        Ok(Response::new(events.boxed()))
    }
}

struct Running {
    channel: Channel,
    recorder: Arc<Recorder>,
    _stop: oneshot::Sender<()>,
}

/// A server whose `SERVER_REQUEST_TIMEOUT` is `cap`.
async fn start(cap: &str) -> Running {
    let config = Config::load(None, [("SERVER_REQUEST_TIMEOUT".to_owned(), cap.to_owned())]).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let recorder = Arc::new(Recorder::default());
    // Deadlines, not identity, are under test here.
    let server = GrpcServer::new(ServiceName::AgentOrchestrator, &config)
        .without_authentication()
        .add_service(SessionServiceServer::from_arc(recorder.clone()))
        .add_service(AgentServiceServer::from_arc(recorder.clone()));
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.serve(listener, async {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(url).unwrap().connect().await.unwrap();
    Running { channel, recorder, _stop: stop }
}

fn with_deadline<T>(message: T, deadline: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(deadline);
    request
}

const CAP: Duration = Duration::from_secs(30);
const TEN_MINUTES: Duration = Duration::from_secs(600);

#[tokio::test]
async fn a_crud_call_asking_for_ten_minutes_gets_the_server_cap() {
    let server = start("30").await;
    let mut sessions = SessionServiceClient::new(server.channel.clone());
    sessions.get_session(with_deadline(GetSessionRequest::default(), TEN_MINUTES)).await.unwrap();
    let seen = server.recorder.last("GetSession");
    assert!(seen <= CAP, "GetSession declares no maximum: {seen:?}");
}

#[tokio::test]
async fn a_method_declaring_a_larger_maximum_keeps_the_callers_deadline() {
    let server = start("30").await;
    let mut agents = AgentServiceClient::new(server.channel.clone());
    agents.execute_agent(with_deadline(ExecuteAgentRequest::default(), TEN_MINUTES)).await.unwrap();
    let seen = server.recorder.last("ExecuteAgent");
    assert!(seen > CAP && seen <= TEN_MINUTES, "ExecuteAgent allows 600 s: {seen:?}");

    // Asking for more than the maximum gets the maximum; asking for nothing too.
    agents.execute_agent(with_deadline(ExecuteAgentRequest::default(), Duration::from_secs(3600))).await.unwrap();
    let seen = server.recorder.last("ExecuteAgent");
    assert!(seen > CAP && seen <= TEN_MINUTES, "capped at 600 s: {seen:?}");
    agents.execute_agent(ExecuteAgentRequest::default()).await.unwrap();
    let seen = server.recorder.last("ExecuteAgent");
    assert!(seen > CAP && seen <= TEN_MINUTES, "no deadline: the method's maximum: {seen:?}");
}

#[tokio::test]
async fn a_stream_outlives_the_server_cap_and_ends_at_its_own_deadline() {
    // The cap (300 ms) would end the stream after about 6 events; the caller's 2 s,
    // allowed by StreamRun's 600 s maximum, governs instead.
    let server = start("0.3").await;
    let mut agents = AgentServiceClient::new(server.channel.clone());
    let request = with_deadline(StreamRunRequest::default(), Duration::from_secs(2));
    let mut events = agents.stream_run(request).await.unwrap().into_inner();
    let mut received = 0;
    let end = loop {
        match events.next().await {
            Some(Ok(_)) => received += 1,
            Some(Err(status)) => break Some(status),
            None => break None,
        }
    };
    let status = end.expect("a stream cut by its deadline ends with an error status");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(received > 6, "the stream ran past the 300 ms server cap: {received} events");
    let seen = server.recorder.last("StreamRun");
    assert!(seen > Duration::from_millis(300), "StreamRun ran under the caller's deadline: {seen:?}");
}
