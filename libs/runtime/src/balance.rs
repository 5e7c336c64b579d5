//! Spreading a client's calls over every replica of a peer service.
//!
//! One tonic `Channel` is one HTTP/2 connection to the address a name first resolved to,
//! so behind a headless Service (one DNS record per pod) a single replica would serve
//! everything. [`Balanced`] instead resolves the peer's name to all its addresses, keeps
//! a lazily connecting channel per address, and sends each call to the next replica in
//! turn. A background task resolves the name again every refresh interval: replicas that
//! join get calls from then on, replicas that left are dropped (a failed or empty answer
//! keeps the last known set, so a DNS hiccup does not empty it).
//!
//! A replica that refuses the connection is skipped at once: the same call goes to the
//! next replica (it was never sent, so this is safe for every method), and the dead one
//! is left out for one refresh interval. The peer's breaker above therefore only sees a
//! failure when no replica could be reached. Literal IP URLs and `PEER_BALANCING=mesh`
//! keep one channel to the URL as given. `agentmesh_client_peer_replicas{peer}` counts the
//! replicas a client currently knows. A replica served by this very process takes its
//! calls without a socket ([`crate::in_process`]).

use std::collections::BTreeSet;
use std::error::Error as _;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tower::{Service, ServiceExt};

use crate::config::{PeerBalancing, PeerConfig};

/// Turns a peer's host name into addresses. The DNS implementation serves production;
/// tests plug in a list they can change.
#[async_trait::async_trait]
pub trait Resolve: Send + Sync + 'static {
    /// Every address `host` currently has, each with `port`.
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>>;
}

/// Resolves through the system resolver (`/etc/hosts`, then DNS).
#[derive(Debug, Clone, Copy, Default)]
pub struct DnsResolver;

#[async_trait::async_trait]
impl Resolve for DnsResolver {
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }
}

/// How a client finds a peer's replicas: the settings plus the resolver to use.
#[derive(Clone)]
pub struct Discovery {
    /// Who balances, and how often names are resolved again.
    pub settings: PeerConfig,
    /// Where addresses come from.
    pub resolver: Arc<dyn Resolve>,
}

impl Discovery {
    /// Discovery through DNS with `settings`.
    pub fn new(settings: PeerConfig) -> Self {
        Self { settings, resolver: Arc::new(DnsResolver) }
    }

    /// The same settings, addresses from `resolver`.
    #[must_use]
    pub fn with_resolver(mut self, resolver: Arc<dyn Resolve>) -> Self {
        self.resolver = resolver;
        self
    }
}

impl Default for Discovery {
    fn default() -> Self {
        Self::new(PeerConfig::default())
    }
}

/// A call could not be delivered to any replica.
#[derive(Debug, thiserror::Error)]
pub enum BalanceError {
    /// The peer's name has no address (yet).
    #[error("{target} resolved to no address")]
    NoAddress {
        /// The peer's name.
        target: String,
    },
    /// The last replica tried failed at the transport level.
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
}

/// See the module documentation. Cheap to clone; clones share replicas and turn order.
#[derive(Clone)]
pub struct Balanced {
    shared: Arc<Shared>,
}

struct Shared {
    /// The peer's name, for logs and errors.
    target: String,
    /// Where the replicas come from; `None` for one fixed channel.
    source: Option<ResolvedName>,
    replicas: RwLock<Arc<[Arc<Replica>]>>,
    /// Whose turn is next.
    next: AtomicUsize,
    refresher_started: AtomicBool,
    /// Held while a call resolves the name because no replica is known yet, so a burst of
    /// first calls resolves it once.
    first_resolution: tokio::sync::Mutex<()>,
    /// How long a replica that refused a connection is left out.
    ejection: Duration,
}

struct ResolvedName {
    host: String,
    port: u16,
    /// The peer's URL: each replica's channel connects to its own address but keeps this
    /// as the request's authority.
    origin: Uri,
    refresh_interval: Duration,
    resolver: Arc<dyn Resolve>,
}

struct Replica {
    /// `None` for the fixed channel.
    address: Option<SocketAddr>,
    /// The socket address calls go to, when the URL names one: where a server of this
    /// process may be listening ([`crate::in_process`]).
    socket: Option<SocketAddr>,
    channel: Channel,
    ejected_until: Mutex<Option<Instant>>,
}

impl Replica {
    fn new(address: Option<SocketAddr>, endpoint: &Endpoint) -> Arc<Self> {
        let socket = address.or_else(|| endpoint.uri().authority()?.as_str().parse().ok());
        Arc::new(Self { address, socket, channel: endpoint.connect_lazy(), ejected_until: Mutex::new(None) })
    }

    /// The server of this process listening where this replica's calls go, if any.
    fn in_process_server(&self) -> Option<axum::Router> {
        self.socket.and_then(crate::in_process::server_at)
    }

    fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.lock().unwrap_or_else(PoisonError::into_inner).is_some_and(|until| until > now)
    }

    fn eject(&self, period: Duration) {
        *self.ejected_until.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now() + period);
    }
}

impl Balanced {
    /// Calls to `target` at `url`, balanced as `discovery` says. Connects lazily;
    /// resolution starts with the first call.
    pub fn new(target: &str, url: &Uri, discovery: &Discovery) -> Self {
        let host = url.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
        let literal_ip = host.parse::<IpAddr>().is_ok();
        let fixed = literal_ip || discovery.settings.balancing == PeerBalancing::Mesh;
        let (source, replicas): (_, Arc<[Arc<Replica>]>) = if fixed {
            (None, vec![Replica::new(None, &endpoint(url.clone()))].into())
        } else {
            let default_port = if url.scheme_str() == Some("https") { 443 } else { 80 };
            let source = ResolvedName {
                host: host.to_owned(),
                port: url.port_u16().unwrap_or(default_port),
                origin: url.clone(),
                refresh_interval: discovery.settings.refresh_interval,
                resolver: discovery.resolver.clone(),
            };
            (Some(source), Vec::new().into())
        };
        let shared = Shared {
            target: target.to_owned(),
            source,
            replicas: RwLock::new(replicas),
            next: AtomicUsize::new(0),
            refresher_started: AtomicBool::new(false),
            first_resolution: tokio::sync::Mutex::new(()),
            ejection: discovery.settings.refresh_interval,
        };
        Self { shared: Arc::new(shared) }
    }
}

impl Shared {
    fn current(&self) -> Arc<[Arc<Replica>]> {
        self.replicas.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Starts re-resolving the name in the background; the task ends with the last clone.
    fn start_refresher(self: &Arc<Self>) {
        let Some(source) = &self.source else { return };
        if self.refresher_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak: Weak<Self> = Arc::downgrade(self);
        let interval = source.refresh_interval;
        tokio::spawn(async move {
            // The first call resolved the name itself; the next resolution is one interval on.
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                shared.refresh().await;
            }
        });
    }

    /// Resolves the name once and adopts the answer, keeping the channels of replicas
    /// that are still there.
    async fn refresh(&self) {
        let Some(source) = &self.source else { return };
        let target = &self.target;
        let addresses: BTreeSet<SocketAddr> = match source.resolver.resolve(&source.host, source.port).await {
            Ok(addresses) if !addresses.is_empty() => addresses.into_iter().collect(),
            Ok(_) => {
                tracing::warn!(%target, host = %source.host, "peer name resolved to no address; keeping the last known");
                return;
            }
            Err(error) => {
                tracing::warn!(%target, host = %source.host, %error, "peer name did not resolve; keeping the last known");
                return;
            }
        };
        let mut replicas = self.replicas.write().unwrap_or_else(PoisonError::into_inner);
        let known: BTreeSet<SocketAddr> = replicas.iter().filter_map(|r| r.address).collect();
        if known == addresses {
            return;
        }
        let updated: Vec<Arc<Replica>> = addresses
            .iter()
            .map(|address| {
                replicas
                    .iter()
                    .find(|replica| replica.address == Some(*address))
                    .cloned()
                    .unwrap_or_else(|| Replica::new(Some(*address), &source.endpoint_for(*address)))
            })
            .collect();
        let (joined, left): (Vec<_>, Vec<_>) =
            (addresses.difference(&known).collect(), known.difference(&addresses).collect());
        tracing::info!(%target, ?joined, ?left, replicas = updated.len(), "peer replicas changed");
        metrics::gauge!("agentmesh_client_peer_replicas", "peer" => target.clone()).set(updated.len() as f64);
        *replicas = updated.into();
    }

    /// The replicas to try, in turn order: those not left out, or all when every one is.
    async fn candidates(self: &Arc<Self>) -> Vec<Arc<Replica>> {
        self.start_refresher();
        let mut replicas = self.current();
        if replicas.is_empty() {
            let _resolving = self.first_resolution.lock().await;
            replicas = self.current();
            if replicas.is_empty() {
                self.refresh().await;
                replicas = self.current();
            }
        }
        let now = Instant::now();
        let healthy: Vec<Arc<Replica>> = replicas.iter().filter(|r| !r.is_ejected(now)).cloned().collect();
        let mut order = if healthy.is_empty() { replicas.to_vec() } else { healthy };
        if !order.is_empty() {
            let start = self.next.fetch_add(1, Ordering::Relaxed) % order.len();
            order.rotate_left(start);
        }
        order
    }
}

impl ResolvedName {
    /// A channel endpoint that connects to `address` and names the peer as its authority.
    fn endpoint_for(&self, address: SocketAddr) -> Endpoint {
        let scheme = self.origin.scheme_str().unwrap_or("http");
        let uri = Uri::builder()
            .scheme(scheme)
            .authority(address.to_string())
            .path_and_query("/")
            .build()
            .unwrap_or_else(|_| self.origin.clone());
        endpoint(uri).origin(self.origin.clone())
    }
}

/// How long to wait for a TCP connection to a replica before trying the next.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The connection settings of every channel in the mesh.
fn endpoint(uri: Uri) -> Endpoint {
    Endpoint::from(uri)
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
}

impl Service<Request<Bytes>> for Balanced {
    type Response = Response<Body>;
    type Error = BalanceError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, BalanceError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BalanceError>> {
        // Each replica's channel is awaited inside the call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            let mut last_error = None;
            for replica in shared.candidates().await {
                if let Some(server) = replica.in_process_server() {
                    return Ok(crate::in_process::call(server, &request).await);
                }
                let attempt = request.clone().map(|bytes| Body::new(http_body_util::Full::new(bytes)));
                match replica.channel.clone().oneshot(attempt).await {
                    Ok(response) => return Ok(response),
                    Err(error) if is_connect_error(&error) => {
                        let address = replica.address.map(|a| a.to_string()).unwrap_or_default();
                        tracing::warn!(target = %shared.target, %address, %error, "replica unreachable; trying the next");
                        replica.eject(shared.ejection);
                        last_error = Some(error);
                    }
                    Err(error) => return Err(error.into()),
                }
            }
            Err(last_error.map_or_else(|| BalanceError::NoAddress { target: shared.target.clone() }, Into::into))
        })
    }
}

/// The connection could not be opened, so the request was never sent.
fn is_connect_error(error: &tonic::transport::Error) -> bool {
    let mut source = error.source();
    while let Some(cause) = source {
        if cause.is::<tonic::ConnectError>() {
            return true;
        }
        source = cause.source();
    }
    false
}
