//! Integration tests of both buses.
//!
//! The conformance suite is the behaviour every bus must show, written once: each
//! behaviour in [`suite`] is an async fn over `dyn Publisher` / `dyn Subscriber`, and the
//! macro below generates one test per behaviour for [`agentmesh_events::MemoryBus`] (on
//! paused time) and one for [`agentmesh_events::NatsBus`] (on the real server, skipped
//! locally when it is unreachable, failing under `AGENTMESH_REQUIRE_SERVICES=1`).
//! [`nats`] holds what only the NATS bus does: stream and consumer administration,
//! foreign messages on the stream, error classification.

// Test helpers outside `#[test]` fns: a panic is how they report a failure.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fixture;
mod nats;
mod suite;

macro_rules! conformance {
    ($($behaviour:ident),+ $(,)?) => {
        mod memory_bus {
            $(
                #[tokio::test(start_paused = true)]
                async fn $behaviour() {
                    let harness = crate::fixture::memory();
                    crate::suite::$behaviour(&harness).await;
                }
            )+
        }

        mod nats_bus {
            $(
                #[tokio::test]
                async fn $behaviour() {
                    let Some(stream) = crate::fixture::NatsStream::create().await else {
                        return;
                    };
                    crate::suite::$behaviour(&stream.harness()).await;
                    stream.cleanup().await;
                }
            )+
        }
    };
}

conformance!(
    round_trip_preserves_attributes,
    duplicate_ids_are_stored_once,
    single_token_wildcard_filter,
    run_output_wildcard_filter,
    full_wildcard_filter,
    several_filters_select_their_union,
    every_subscription_sees_every_event,
    durable_consumer_resumes_without_redelivering_acked_events,
    unacked_delivery_survives_resubscribe,
    durable_subscriptions_share_the_work,
    unacked_delivery_is_redelivered_after_ack_wait,
    nak_redelivers_before_ack_wait,
    max_deliver_stops_redelivery,
    after_sequence_replays_only_later_events,
    start_new_skips_history,
    order_is_preserved_per_subject,
    concurrent_publishes_arrive_exactly_once,
    invalid_subscriptions_are_rejected,
    last_event_is_none_when_nothing_is_stored,
    last_event_is_the_newest_on_its_topic,
    last_event_rejects_wildcards_and_malformed_topics,
);
