//! The event bus a process publishes to: NATS JetStream when `NATS_URL` is set, otherwise
//! an in-process bus (which the all-in-one binary shares between its services, so events
//! still flow from one service to another), and the bus as a reported dependency that
//! also carries the service's breaker state changes ([`attach`]).

use std::sync::Arc;

use agentmesh_events::{EventBus, EventsError, MemoryBus, NatsBus, NatsConfig};
use agentmesh_proto::agentmesh::common::v1::ExternalServiceType;

use crate::dependencies::{Dependency, DependencyHealth};

use crate::config::Config;

/// Connects the bus `config` names, creating or updating its JetStream stream.
pub async fn connect_bus(config: &Config) -> Result<Arc<dyn EventBus>, EventsError> {
    Ok(match &config.nats.url {
        Some(url) => {
            let nats = NatsConfig {
                url: url.clone(),
                stream_name: config.nats.stream.clone(),
                subject_root: config.nats.subject_root.clone(),
                ..NatsConfig::default()
            };
            Arc::new(NatsBus::connect(nats).await?)
        }
        None => Arc::new(MemoryBus::default()),
    })
}

/// The bus as a dependency (`event-bus`, a message queue) whose probe is its connection
/// state, for [`DependencyHealth`](crate::dependencies::DependencyHealth).
pub fn dependency(bus: &Arc<dyn EventBus>) -> Dependency {
    let bus = bus.clone();
    Dependency::new(BUS_DEPENDENCY, ExternalServiceType::MessageQueue).with_probe(move || {
        let health = bus.health();
        async move { if health.is_ready() { Ok(()) } else { Err(format!("{health:?}").to_lowercase()) } }
    })
}

/// Reports `bus` among `dependencies` and publishes their breakers' state changes to it
/// (`agentmesh.breaker.state_changed`): what every service with a bus does at start-up.
pub fn attach(dependencies: &DependencyHealth, bus: &Arc<dyn EventBus>) {
    dependencies.register(dependency(bus));
    dependencies.publish_breaker_changes(bus.clone());
}

/// Name the event bus is reported under in dependency health.
pub const BUS_DEPENDENCY: &str = "event-bus";
