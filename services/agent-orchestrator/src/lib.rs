//! agent-orchestrator: owns agents, runs and checkpoints, and executes runs (ARCHITECTURE
//! §2, §7).
//!
//! Serves `agentmesh.agent.v1.AgentService` ([`service`]): agents and run reads through
//! [`agents`] (input rules in [`rules`]), execution through [`execution`] — the agent graph on
//! `agentmesh_graph`, calling llm-proxy, mcp-broker and session-store for the run's user,
//! with a checkpoint after every step and the run's output on the event bus. Agents, runs
//! and checkpoints live in memory or PostgreSQL ([`store`], opened by [`backend`]), and
//! every change is a domain event ([`events`]).
//!
//! Durability: a run is leased by the replica executing it; runs left by a replica that
//! died are resumed from their last checkpoint by the others, or by this one at start-up
//! (see [`execution::manager`]). With several replicas the event bus must be NATS, so that any
//! replica serves any run's stream.
//!
//! Like every service it serves only calls carrying a signed principal and an actor it
//! serves: the gateway (`agentmesh_runtime::auth::actors`).

pub mod agents;
pub mod backend;
pub mod convert;
pub mod events;
pub mod execution;
pub mod rules;
pub mod service;
pub mod settings;
pub mod store;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_events::EventBus;
use agentmesh_graph::GraphError;
use agentmesh_proto::agentmesh::agent::v1::agent_service_server::AgentServiceServer;
use agentmesh_runtime::background::{BackgroundTasks, follow_storage};
use agentmesh_runtime::config::{ConfigError, ServiceSettings, SettingsSpec};
use agentmesh_runtime::{Config, GrpcServer, ServerError, ServiceName};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::server::NamedService;

use crate::agents::AgentsApi;
use crate::execution::{Peers, PeersError, RunOutputs, Runs};
use crate::service::AgentOrchestrator;
use crate::settings::RunSettings;
use crate::store::StoreError;

/// agent-orchestrator's own settings, for every binary that runs it to register.
pub const SETTINGS: ServiceSettings =
    ServiceSettings { service: ServiceName::AgentOrchestrator, settings: &[SettingsSpec::of::<RunSettings>()] };

/// How long a stopping orchestrator lets its runs finish before it leaves them to be
/// resumed elsewhere.
const DRAIN: Duration = Duration::from_secs(10);

/// Why agent-orchestrator could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Serving failed.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The event bus could not be reached.
    #[error("event bus: {0}")]
    Events(#[from] agentmesh_events::EventsError),
    /// The storage backend could not be reached or prepared.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// The orchestrator's own settings are invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The clients of the services runs call could not be set up.
    #[error("peers: {0}")]
    Peers(#[from] PeersError),
    /// The agent graph is malformed (a bug).
    #[error("agent graph: {0}")]
    Graph(#[from] GraphError),
}

/// Runs agent-orchestrator as its own process: connects the event bus from `NATS_URL` (or
/// an in-process bus), then [`serve`]s.
pub async fn run(
    config: Arc<Config>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    let bus = agentmesh_runtime::bus::connect_bus(&config).await?;
    serve(config, bus, listener, shutdown).await
}

/// Serves agent-orchestrator on `listener`, publishing events and run output to `bus`,
/// until `shutdown`; then lets running runs finish for a while.
pub async fn serve(
    config: Arc<Config>,
    bus: Arc<dyn EventBus>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), StartError> {
    let settings = config.settings::<RunSettings>()?;
    let backend = backend::open_backend(&config, bus.clone()).await?;
    let outputs = RunOutputs::new(bus.clone(), settings.token_coalesce);
    let runs = Runs::new(
        backend.store.clone(),
        Peers::connect(&config)?,
        outputs,
        execution::agent_graph::build()?,
        settings.clone(),
    );
    let agents = Arc::new(AgentsApi { store: backend.store.clone(), output_retention: settings.output_retention });
    let server = GrpcServer::new(ServiceName::AgentOrchestrator, &config)
        .add_service(AgentServiceServer::new(AgentOrchestrator::new(agents, runs.clone())));
    let dependencies = server.dependencies();
    dependencies.register(backend.dependency);
    agentmesh_runtime::bus::attach(&dependencies, &bus);

    // Runs a dead replica (or this one, before a restart) left are taken over at once.
    match runs.recover().await {
        Ok(0) => {}
        Ok(count) => tracing::info!(count, "resumed runs left by a stopped orchestrator"),
        Err(error) => tracing::warn!(%error, "abandoned runs not claimed at start-up; retrying in the background"),
    }
    // Background work lives until the runs have drained (they still write events and
    // renew leases): dropping `background` and cancelling `stop` end it.
    let background = BackgroundTasks::new();
    let store = backend.store.clone();
    background.spawn(follow_storage(
        move || {
            let store = store.clone();
            async move { store.ping().await }
        },
        server.health_reporter(),
        <AgentServiceServer<AgentOrchestrator> as NamedService>::NAME,
        config.observability.health_check_interval,
    ));
    if let Some(relay) = backend.relay {
        tokio::spawn(relay.run(background.stopped()));
    }
    let stop = CancellationToken::new();
    tokio::spawn(runs.clone().maintain(stop.clone()));
    let served = server.serve(listener, shutdown).await;
    runs.drain(DRAIN).await;
    stop.cancel();
    drop(background);
    served?;
    Ok(())
}
