//! The event bus a process publishes to: NATS JetStream when `NATS_URL` is set, otherwise
//! an in-process bus (which the all-in-one binary shares between its services, so events
//! still flow from one service to another).

use std::sync::Arc;

use agentmesh_events::{EventBus, EventsError, MemoryBus, NatsBus, NatsConfig};

use crate::config::Config;

/// Connects the bus `config` names, creating or updating its JetStream stream.
pub async fn connect_bus(config: &Config) -> Result<Arc<dyn EventBus>, EventsError> {
    Ok(match &config.nats.url {
        Some(url) => {
            let nats =
                NatsConfig { url: url.clone(), stream_name: config.nats.stream.clone(), ..NatsConfig::default() };
            Arc::new(NatsBus::connect(nats).await?)
        }
        None => Arc::new(MemoryBus::default()),
    })
}
