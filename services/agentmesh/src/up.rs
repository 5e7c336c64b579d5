//! `agentmesh up`: the whole mesh in one process.
//!
//! The five internal services bind ephemeral loopback ports and the gateway learns their
//! URLs, so nothing but the gateway's address is exposed and two instances never collide.
//! All six share one shutdown: a signal, or any service stopping on its own (an error),
//! stops the rest, each draining as it would in its own process. Real backends are checked
//! first, with progress ([`crate::backends`]); a banner says where to go once the gateway
//! serves ([`crate::first_run`]).

use std::collections::HashMap;
use std::error::Error;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use agentmesh_events::EventBus;
use agentmesh_runtime::{Config, ServerError, ServiceName, bind};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::first_run;

/// Why `agentmesh up` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    /// A listener could not be bound.
    #[error(transparent)]
    Bind(#[from] ServerError),
    /// A backend (PostgreSQL, Redis, NATS) could not be reached.
    #[error(transparent)]
    Backend(#[from] crate::backends::BackendError),
    /// The development API key could not be made.
    #[error("cannot make a development API key: {0}")]
    Key(#[from] agentmesh_gateway::auth::keys::KeyError),
    /// A service failed while running.
    #[error("{service} failed: {source}")]
    Service {
        /// Which one.
        service: ServiceName,
        /// Why.
        source: Box<dyn Error + Send + Sync>,
    },
    /// A service stopped although no shutdown was requested.
    #[error("{0} stopped unexpectedly")]
    Stopped(ServiceName),
    /// A service's task panicked (a bug).
    #[error("{0} panicked")]
    Panicked(ServiceName),
}

/// Addresses the running mesh listens on.
#[derive(Debug, Clone)]
pub struct MeshAddresses {
    /// Where each service listens; the gateway's is the public one.
    pub services: Vec<(ServiceName, SocketAddr)>,
}

impl MeshAddresses {
    /// The address of `service`.
    pub fn get(&self, service: ServiceName) -> Option<SocketAddr> {
        self.services.iter().find(|(name, _)| *name == service).map(|(_, addr)| *addr)
    }
}

/// `agentmesh up`'s arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Gateway listen address [default: HOST:PORT, i.e. 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    pub http: Option<SocketAddr>,
    /// Keep data in PostgreSQL at URL (sets USE_DATABASE=true and DB_URL); its migrations
    /// are applied at start.
    #[arg(long, value_name = "URL")]
    pub postgres: Option<String>,
    /// Use Redis at URL (sets USE_REDIS=true and REDIS_URL): shared rate limits, and
    /// sessions when PostgreSQL is not used.
    #[arg(long, value_name = "URL")]
    pub redis: Option<String>,
    /// Carry events and run output over NATS JetStream at URL (sets NATS_URL).
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
    /// Services call each other over their loopback gRPC ports, as separate processes
    /// would, instead of within the process (to watch or capture the internal traffic).
    #[arg(long)]
    pub loopback_peers: bool,
}

impl UpArgs {
    /// The variables the backend flags set, on top of the environment.
    pub fn overrides(&self) -> Vec<(String, String)> {
        crate::backends::flag_overrides(self.postgres.as_deref(), self.redis.as_deref(), self.nats.as_deref())
    }
}

/// Binds every service (internal ones on `127.0.0.1:0`, the gateway on `--http` or
/// `HOST:PORT`), checks the configured backends, then runs the services until `shutdown`
/// resolves; once the gateway serves, the first-run banner is printed
/// ([`crate::first_run`]), with a development key when none is configured. The services
/// call each other within the process unless `--loopback-peers` says otherwise: the same
/// server stack serves those calls without the socket (`agentmesh_runtime`'s `in_process`).
pub async fn up(mut config: Config, args: &UpArgs, shutdown: impl Future<Output = ()> + Send) -> Result<(), UpError> {
    let key = first_run::development_key(&mut config)?;
    let model = first_run::default_model(&config);
    config.server.in_process_calls = !args.loopback_peers;
    let (config, listeners) = bind_all(config, args.http).await?;
    crate::backends::check(&config).await?;
    let bus = crate::backends::connect_events(&config).await?;
    let gateway = listeners.iter().find(|(s, _)| *s == ServiceName::Gateway).and_then(|(_, l)| l.local_addr().ok());
    run_all(config, bus, listeners, shutdown, |_| {
        if let Some(address) = gateway {
            tracing::info!(%address, "agentmesh is up: gateway on http://{address}");
            tokio::spawn(first_run::announce(first_run::gateway_url(address), model, key));
        }
    })
    .await
}

/// Binds the listeners and points the configuration's peer URLs at them.
pub async fn bind_all(
    mut config: Config,
    http: Option<SocketAddr>,
) -> Result<(Arc<Config>, Vec<(ServiceName, TcpListener)>), UpError> {
    let mut listeners = Vec::with_capacity(ServiceName::ALL.len());
    for service in ServiceName::ALL {
        let address = if service == ServiceName::Gateway {
            http.unwrap_or_else(|| config.listen_addr(service))
        } else {
            SocketAddr::from(([127, 0, 0, 1], 0))
        };
        let listener = bind(address).await?;
        if let Ok(local) = listener.local_addr() {
            config.endpoints.set_url(service, format!("http://{local}"));
        }
        listeners.push((service, listener));
    }
    Ok((Arc::new(config), listeners))
}

/// Runs one service per listener, all sharing `bus`, until `shutdown` resolves or one of
/// them stops; `started` is told the addresses once every service is spawned.
pub async fn run_all(
    config: Arc<Config>,
    bus: Arc<dyn EventBus>,
    listeners: Vec<(ServiceName, TcpListener)>,
    shutdown: impl Future<Output = ()> + Send,
    started: impl FnOnce(MeshAddresses),
) -> Result<(), UpError> {
    let stop = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let mut names = HashMap::new();
    let mut addresses = Vec::new();
    for (service, listener) in listeners {
        if let Ok(address) = listener.local_addr() {
            addresses.push((service, address));
        }
        let (config, bus) = (Arc::clone(&config), Arc::clone(&bus));
        let stopped = stop.clone().cancelled_owned();
        let task = tasks.spawn(async move { (service, run_service(service, config, bus, listener, stopped).await) });
        names.insert(task.id(), service);
    }
    started(MeshAddresses { services: addresses });

    let mut first_failure = None;
    tokio::select! {
        () = shutdown => {}
        Some(joined) = tasks.join_next() => {
            first_failure = Some(match outcome(joined, &names) {
                Ok(service) => UpError::Stopped(service),
                Err(error) => error,
            });
        }
    }
    stop.cancel();
    while let Some(joined) = tasks.join_next().await {
        if let Err(error) = outcome(joined, &names) {
            first_failure.get_or_insert(error);
        }
    }
    first_failure.map_or(Ok(()), Err)
}

type Joined = Result<(ServiceName, Result<(), UpError>), tokio::task::JoinError>;

/// A finished service task as a result, naming the service even when it panicked.
fn outcome(joined: Joined, names: &HashMap<tokio::task::Id, ServiceName>) -> Result<ServiceName, UpError> {
    match joined {
        Ok((service, Ok(()))) => Ok(service),
        Ok((_, Err(error))) => Err(error),
        Err(join_error) => Err(UpError::Panicked(names.get(&join_error.id()).copied().unwrap_or(ServiceName::Gateway))),
    }
}

async fn run_service(
    service: ServiceName,
    config: Arc<Config>,
    bus: Arc<dyn EventBus>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), UpError> {
    type BoxError = Box<dyn Error + Send + Sync>;
    let result: Result<(), BoxError> = match service {
        ServiceName::Gateway => agentmesh_gateway::serve(config, bus, listener, shutdown).await.map_err(Into::into),
        ServiceName::SessionStore => {
            agentmesh_session_store::serve(config, bus, listener, shutdown).await.map_err(Into::into)
        }
        ServiceName::AgentOrchestrator => {
            agentmesh_agent_orchestrator::serve(config, bus, listener, shutdown).await.map_err(Into::into)
        }
        ServiceName::LlmProxy => agentmesh_llm_proxy::serve(config, bus, listener, shutdown).await.map_err(Into::into),
        ServiceName::McpBroker => {
            agentmesh_mcp_broker::serve(config, bus, listener, shutdown).await.map_err(Into::into)
        }
        ServiceName::SecretsBroker => {
            agentmesh_secrets_broker::serve(config, bus, listener, shutdown).await.map_err(Into::into)
        }
    };
    result.map_err(|source| UpError::Service { service, source })
}
