//! Replicas behind one name share a client's calls: two replicas on two loopback
//! addresses each get a fair share, killing one fails no call, a third that joins the name
//! gets calls after the next resolution, and the DNS path spreads `localhost` over every
//! address it has (127.0.0.1 and ::1 where the system resolver lists both).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentmesh_proto::agentmesh::session::v1::session_service_client::SessionServiceClient;
use agentmesh_proto::agentmesh::session::v1::session_service_server::{SessionService, SessionServiceServer};
use agentmesh_proto::agentmesh::session::v1::{GetSessionRequest, GetSessionResponse};
use agentmesh_resilience::{BreakerConfig, BreakerState, Preset, RetryPolicy};
use agentmesh_runtime::balance::{Discovery, Resolve};
use agentmesh_runtime::client::ServiceChannel;
use agentmesh_runtime::config::{PeerBalancing, PeerConfig};
use agentmesh_runtime::{Config, GrpcServer, ServiceName};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::{Request, Response, Status};

/// Counts the calls one replica answered.
#[derive(Default)]
struct Counter {
    calls: AtomicUsize,
}

#[tonic::async_trait]
impl SessionService for Counter {
    async fn get_session(&self, _request: Request<GetSessionRequest>) -> Result<Response<GetSessionResponse>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(GetSessionResponse::default()))
    }
}

/// One running replica.
struct Replica {
    address: SocketAddr,
    counter: Arc<Counter>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Replica {
    async fn start(listener: TcpListener) -> Self {
        let config = Config::load(None, []).unwrap();
        let address = listener.local_addr().unwrap();
        let counter = Arc::new(Counter::default());
        // Balancing is under test, not identity (tests/mesh.rs covers that): no tokens needed.
        let server = GrpcServer::new(ServiceName::SessionStore, &config)
            .without_authentication()
            .add_service(SessionServiceServer::from_arc(counter.clone()));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self { address, counter, stop: Some(stop), task: Some(task) }
    }

    async fn on(ip: &str) -> Self {
        Self::start(TcpListener::bind((ip, 0)).await.unwrap()).await
    }

    fn calls(&self) -> usize {
        self.counter.calls.load(Ordering::SeqCst)
    }

    /// Shuts the replica down and waits until it no longer accepts connections.
    async fn kill(&mut self) {
        drop(self.stop.take());
        self.task.take().unwrap().await.unwrap();
    }
}

/// A name whose addresses the test changes, standing in for a headless Service.
#[derive(Default)]
struct NameTable {
    addresses: Mutex<Vec<SocketAddr>>,
}

impl NameTable {
    fn set(&self, addresses: &[SocketAddr]) {
        *self.addresses.lock().unwrap() = addresses.to_vec();
    }
}

#[async_trait::async_trait]
impl Resolve for NameTable {
    async fn resolve(&self, host: &str, _port: u16) -> std::io::Result<Vec<SocketAddr>> {
        assert_eq!(host, "session-store", "the client resolves the peer's host name");
        Ok(self.addresses.lock().unwrap().clone())
    }
}

/// Retries as in production but fast, and a breaker that opens after two failed calls,
/// so any failure a dead replica caused would show.
fn preset() -> Preset {
    Preset {
        retry: RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            multiplier: 2.0,
            jitter: false,
        },
        breaker: BreakerConfig {
            failure_threshold: 2,
            recovery_timeout: Duration::from_secs(60),
            ..Preset::internal().breaker
        },
        ..Preset::internal()
    }
}

fn discovery(names: &Arc<NameTable>, refresh_interval: Duration) -> Discovery {
    Discovery::new(PeerConfig { balancing: PeerBalancing::Client, refresh_interval }).with_resolver(names.clone())
}

fn get() -> GetSessionRequest {
    GetSessionRequest { session_id: "s1".to_owned() }
}

/// Makes `calls` calls one after another; every one must succeed.
async fn call_times(client: &mut SessionServiceClient<ServiceChannel>, calls: usize) {
    for call in 0..calls {
        if let Err(status) = client.get_session(get()).await {
            panic!("call {call} failed: {status:?}");
        }
    }
}

fn assert_fair(served: usize, total: usize, who: &str) {
    let share = served as f64 / total as f64;
    assert!((0.35..=0.65).contains(&share), "{who} served {served} of {total} calls ({:.0} %)", share * 100.0);
}

#[tokio::test]
async fn replicas_behind_one_name_share_calls_survive_a_kill_and_take_in_a_newcomer() {
    let mut first = Replica::on("127.0.0.1").await;
    let second = Replica::on("127.0.0.2").await;
    let names = Arc::new(NameTable::default());
    names.set(&[first.address, second.address]);
    // Re-resolution every 50 ms, so the newcomer below is found quickly.
    let channel = ServiceChannel::connect_with(
        "session-store",
        "http://session-store:50052",
        &preset(),
        &discovery(&names, Duration::from_millis(50)),
    )
    .unwrap();
    let mut client = SessionServiceClient::new(channel.clone());

    // Fair share.
    call_times(&mut client, 200).await;
    assert_eq!(first.calls() + second.calls(), 200);
    assert_fair(first.calls(), 200, "127.0.0.1");
    assert_fair(second.calls(), 200, "127.0.0.2");

    // One replica dies while the name still lists it (DNS lags behind pods): every call
    // still succeeds on the survivor and the peer's breaker stays closed.
    first.kill().await;
    let before = second.calls();
    call_times(&mut client, 100).await;
    assert_eq!(second.calls() - before, 100, "the survivor served every call");
    assert_eq!(channel.policy().breaker().state(), BreakerState::Closed);

    // The dead replica leaves the name and a third joins: after the next resolution the
    // newcomer gets calls. Waits for that resolution, up to 10 s (never in practice).
    let third = Replica::on("127.0.0.3").await;
    names.set(&[second.address, third.address]);
    let mut waited = Duration::ZERO;
    while third.calls() == 0 {
        assert!(waited < Duration::from_secs(10), "127.0.0.3 got no call after joining the name");
        call_times(&mut client, 10).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += Duration::from_millis(20);
    }
    let (second_before, third_before) = (second.calls(), third.calls());
    call_times(&mut client, 200).await;
    assert_fair(second.calls() - second_before, 200, "127.0.0.2");
    assert_fair(third.calls() - third_before, 200, "127.0.0.3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_replica_under_concurrent_load_fails_no_call() {
    let mut doomed = Replica::on("127.0.0.1").await;
    let survivor = Replica::on("127.0.0.2").await;
    let names = Arc::new(NameTable::default());
    names.set(&[doomed.address, survivor.address]);
    let channel = ServiceChannel::connect_with(
        "session-store",
        "http://session-store:50052",
        &preset(),
        &discovery(&names, Duration::from_secs(60)),
    )
    .unwrap();
    // Eight callers keep calls in flight while one replica shuts down under them.
    let (kill, killed) = tokio::sync::watch::channel(false);
    let callers: Vec<_> = (0..8)
        .map(|_| {
            let mut client = SessionServiceClient::new(channel.clone());
            let mut killed = killed.clone();
            tokio::spawn(async move {
                let mut failures = Vec::new();
                for _ in 0..25 {
                    if let Err(status) = client.get_session(get()).await {
                        failures.push(status);
                    }
                }
                // Keep calling until the kill has happened, then 25 more.
                let _ = killed.wait_for(|done| *done).await;
                for _ in 0..25 {
                    if let Err(status) = client.get_session(get()).await {
                        failures.push(status);
                    }
                }
                failures
            })
        })
        .collect();
    while doomed.calls() + survivor.calls() < 40 {
        tokio::task::yield_now().await;
    }
    doomed.kill().await;
    kill.send(true).unwrap();
    for caller in callers {
        let failures = caller.await.unwrap();
        assert!(failures.is_empty(), "calls failed around the kill: {failures:?}");
    }
    assert!(survivor.calls() >= 200, "the survivor served every call after the kill: {}", survivor.calls());
    assert_eq!(channel.policy().breaker().state(), BreakerState::Closed);
}

#[tokio::test]
async fn a_replica_that_is_down_from_the_start_costs_no_call() {
    let alive = Replica::on("127.0.0.1").await;
    // An address where nothing listens: bound, then released.
    let dead = TcpListener::bind("127.0.0.4:0").await.unwrap().local_addr().unwrap();
    let names = Arc::new(NameTable::default());
    names.set(&[dead, alive.address]);
    let no_retries = Preset { retry: RetryPolicy { max_attempts: 1, ..preset().retry }, ..preset() };
    let channel = ServiceChannel::connect_with(
        "session-store",
        "http://session-store:50052",
        &no_retries,
        &discovery(&names, Duration::from_secs(60)),
    )
    .unwrap();
    let mut client = SessionServiceClient::new(channel.clone());
    // Without retries above it, the balancer itself moves refused calls to the next replica.
    call_times(&mut client, 50).await;
    assert_eq!(alive.calls(), 50);
    assert_eq!(channel.policy().breaker().state(), BreakerState::Closed);
}

#[tokio::test]
async fn localhost_is_resolved_through_dns_and_balanced_over_its_addresses() {
    // A replica on every address `localhost` has (127.0.0.1, and ::1 where the system
    // resolver lists it), all on one port, as pods behind a headless Service.
    let mut ips: Vec<std::net::IpAddr> =
        tokio::net::lookup_host(("localhost", 0)).await.unwrap().map(|address| address.ip()).collect();
    ips.sort();
    ips.dedup();
    let first = TcpListener::bind((ips[0], 0)).await.unwrap();
    let port = first.local_addr().unwrap().port();
    let mut replicas = vec![Replica::start(first).await];
    for ip in &ips[1..] {
        replicas.push(Replica::start(TcpListener::bind((*ip, port)).await.unwrap()).await);
    }
    let url = format!("http://localhost:{port}");
    let discovery = Discovery::new(PeerConfig::default());
    let mut client =
        SessionServiceClient::new(ServiceChannel::connect_with("session-store", &url, &preset(), &discovery).unwrap());
    call_times(&mut client, 200).await;
    assert_eq!(replicas.iter().map(Replica::calls).sum::<usize>(), 200);
    if replicas.len() < 2 {
        eprintln!("fair share over two addresses not checked: localhost resolves only to {ips:?} here");
        return;
    }
    for replica in &replicas {
        assert_fair(replica.calls(), 200, &replica.address.to_string());
    }
}

#[tokio::test]
async fn a_literal_address_or_mesh_balancing_keeps_one_connection_to_the_url() {
    let replica = Replica::on("127.0.0.1").await;
    let names = Arc::new(NameTable::default());
    // The table would send calls nowhere: neither channel may consult it.
    names.set(&[]);
    let client_side = discovery(&names, Duration::from_secs(60));
    let mesh = Discovery {
        settings: PeerConfig { balancing: PeerBalancing::Mesh, ..client_side.settings.clone() },
        ..client_side.clone()
    };
    let literal = format!("http://{}", replica.address);
    let named = format!("http://localhost:{}", replica.address.port());
    for (url, discovery) in [(&literal, &client_side), (&named, &mesh)] {
        let channel = ServiceChannel::connect_with("session-store", url, &preset(), discovery).unwrap();
        call_times(&mut SessionServiceClient::new(channel), 5).await;
    }
    assert_eq!(replica.calls(), 10);
}
