//! Domain events for agentmesh: a CloudEvents envelope and a publish/subscribe bus.
//!
//! Services publish [`Event`]s (CloudEvents attributes around a protobuf payload) on
//! topics such as `session.created` or `run.<run_id>.output`, and consume them through
//! the [`Publisher`] and [`Subscriber`] traits. Two buses implement them with the same
//! semantics: [`NatsBus`] on NATS JetStream in production, [`MemoryBus`] in-process for
//! `agentmesh up` and tests. Both store events in an append-only log with sequences,
//! deduplicate by event id, and deliver to durable or ephemeral consumers that must ack
//! each delivery. [`Subscriber::last_event`] reads the newest retained event of one topic
//! without replaying it, so a restarted publisher can continue that topic's numbering.
//!
//! ```no_run
//! # async fn example() -> Result<(), agentmesh_events::EventsError> {
//! use std::sync::Arc;
//! use agentmesh_events::{Event, EventBus, MemoryBus, SubscriptionSpec};
//! use futures::StreamExt;
//!
//! let bus: Arc<dyn EventBus> = Arc::new(MemoryBus::default());
//! let event = Event::builder("session.created", "agentmesh/session-store", "agentmesh.session.created")
//!     .subject("0190f1b2-7c4e-7000-8000-000000000001")
//!     .tenant("acme")
//!     .build()?;
//! let ack = bus.publish(event).await?;
//!
//! let mut deliveries = bus
//!     .subscribe(SubscriptionSpec::durable("audit", vec!["session.*".into()]))
//!     .await?;
//! if let Some(delivery) = deliveries.next().await {
//!     let delivery = delivery?;
//!     assert_eq!(delivery.sequence(), ack.sequence);
//!     delivery.ack().await?;
//! }
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]

mod bus;
pub mod envelope;
mod error;
pub mod memory;
pub mod nats;
mod telemetry;
pub mod topic;

pub use bus::{
    DEFAULT_ACK_WAIT, DEFAULT_DUPLICATE_WINDOW, DEFAULT_MAX_AGE, Delivery, EventBus, EventStream, Health,
    MAX_ACK_PENDING, PublishAck, Publisher, StartPosition, Subscriber, SubscriptionSpec,
};
pub use envelope::{DEFAULT_DATA_CONTENT_TYPE, Event, EventBuilder};
pub use error::{BoxError, DecodeError, EventsError, ValidationError};
pub use memory::{MemoryBus, MemoryConfig};
pub use nats::{NatsBus, NatsConfig};
pub use telemetry::{DELIVERY_LAG_HISTOGRAM, record_delivery_lag};
