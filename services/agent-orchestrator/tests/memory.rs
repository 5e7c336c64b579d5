//! The conformance suite on the in-process backend.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod conformance;

use std::sync::Arc;

use agentmesh_agent_orchestrator::events::PublishDirect;
use agentmesh_agent_orchestrator::store::OrchestratorStore;
use agentmesh_agent_orchestrator::store::memory::MemoryStore;
use agentmesh_events::MemoryBus;
use conformance::Fixture;

async fn fixture() -> Option<Fixture> {
    let bus = MemoryBus::default();
    let store: Arc<dyn OrchestratorStore> =
        Arc::new(MemoryStore::new(Arc::new(PublishDirect::new(Arc::new(bus.clone())))));
    Some(Fixture { twin: store.clone(), store, bus, guard: Box::new(()) })
}

conformance_tests!(fixture);
