//! The conformance suite on the in-process backend.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod conformance;

use std::sync::Arc;

use agentmesh_events::MemoryBus;
use agentmesh_mcp_broker::events::PublishDirect;
use agentmesh_mcp_broker::store::memory::MemoryStore;
use conformance::Fixture;

async fn fixture() -> Option<Fixture> {
    let bus = MemoryBus::default();
    let store = Arc::new(MemoryStore::new(Arc::new(PublishDirect::new(Arc::new(bus.clone())))));
    Some(Fixture { store, bus, guard: Box::new(()) })
}

conformance_tests!(fixture);
