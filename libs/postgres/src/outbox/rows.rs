//! Outbox rows as statement parameters, for owners that write their events in the same
//! statement as their data (one round trip instead of a transaction).
//!
//! Events are bound as column arrays (`$1`-`$13`) of an `INSERT ... SELECT FROM
//! unnest(...)` ([`outbox_insert!`](crate::outbox_insert)) that an owner embeds in its own
//! statement (e.g. after a data-modifying CTE) or runs in its transaction; a single event
//! may be bound as scalars instead ([`outbox_insert_one!`](crate::outbox_insert_one)).
//! Each event carries the id of the record it is about (`record_id`), so a statement can
//! keep only the events of the records it actually changed — e.g. a bulk delete queues
//! events only for the rows it found. Rows get their `seq` in event order (`WITH
//! ORDINALITY`), which is the order the relay publishes them in.

use agentmesh_events::Event;
use chrono::{DateTime, Utc};
use sqlx::Postgres;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use uuid::Uuid;

use crate::error::DbError;

/// The outbox insert over the event arrays `$1`-`$13` of [`OutboxRows`], keeping the
/// events whose row `e` satisfies `$guard` (a SQL condition; `e.record_id` names the
/// event's record).
#[macro_export]
macro_rules! outbox_insert {
    ($guard:literal) => {
        concat!(
            "INSERT INTO outbox (event_id, topic, event_type, source, subject, tenant, correlation_id, ",
            "data_content_type, data_schema, data, time, actor) ",
            "SELECT e.event_id, e.topic, e.event_type, e.source, e.subject, e.tenant, e.correlation_id, ",
            "e.data_content_type, e.data_schema, e.data, e.time, e.actor ",
            "FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], ",
            "$8::text[], $9::text[], $10::bytea[], $11::timestamptz[], $12::text[], $13::uuid[]) WITH ORDINALITY ",
            "AS e(event_id, topic, event_type, source, subject, tenant, correlation_id, data_content_type, ",
            "data_schema, data, time, actor, record_id, n) ",
            "WHERE ",
            $guard,
            " ORDER BY e.n"
        )
    };
}

/// The outbox insert of one event bound as scalars `$1`-`$12` by [`OutboxRow`], if
/// `$guard` holds: for hot paths that write one event and skip the arrays.
#[macro_export]
macro_rules! outbox_insert_one {
    ($guard:literal) => {
        concat!(
            "INSERT INTO outbox (event_id, topic, event_type, source, subject, tenant, correlation_id, ",
            "data_content_type, data_schema, data, time, actor) ",
            "SELECT $1::uuid, $2::text, $3::text, $4::text, $5::text, $6::text, $7::text, $8::text, $9::text, ",
            "$10::bytea, $11::timestamptz, $12::text WHERE ",
            $guard
        )
    };
}

/// One event as the scalars of [`outbox_insert_one!`](crate::outbox_insert_one).
#[derive(Debug)]
pub struct OutboxRow {
    event_id: Uuid,
    event: Event,
    time: DateTime<Utc>,
}

impl OutboxRow {
    /// The row of `event`; fails when its id is not a UUID.
    pub fn new(event: Event) -> Result<Self, DbError> {
        let event_id = parse_id(&event)?;
        Ok(Self { event_id, time: crate::micros(event.time()), event })
    }

    /// The event, to hand to the relay once the row has committed
    /// ([`Outbox::committed_events`](super::Outbox::committed_events)).
    pub fn into_event(self) -> Event {
        self.event
    }

    /// Binds the event as `$1`-`$12` of `query` (which must have no parameters yet).
    pub fn bind<'q>(&self, query: Query<'q, Postgres, PgArguments>) -> Query<'q, Postgres, PgArguments> {
        bind_optional(Some(self), query)
    }
}

/// Binds `row`'s event as `$1`-`$12` of `query` (which must have no parameters yet), or
/// twelve NULLs when there is none: for a statement that writes its data whether or not
/// it has an event, with its [`outbox_insert_one!`](crate::outbox_insert_one) guarded by
/// `$1::uuid IS NOT NULL`. The one place that knows the parameters' order.
pub fn bind_optional<'q>(
    row: Option<&OutboxRow>,
    query: Query<'q, Postgres, PgArguments>,
) -> Query<'q, Postgres, PgArguments> {
    let event = row.map(|row| &row.event);
    query
        .bind(row.map(|row| row.event_id))
        .bind(event.map(Event::topic))
        .bind(event.map(Event::event_type))
        .bind(event.map(Event::source))
        .bind(event.and_then(Event::subject))
        .bind(event.and_then(Event::tenant))
        .bind(event.and_then(Event::correlation_id))
        .bind(event.map(Event::data_content_type))
        .bind(event.and_then(Event::data_schema))
        .bind(event.map(|event| event.data().as_ref()))
        .bind(row.map(|row| row.time))
        .bind(event.and_then(Event::actor))
}

fn parse_id(event: &Event) -> Result<Uuid, DbError> {
    Uuid::parse_str(event.id()).map_err(|_| DbError::corrupt(format!("event id {:?} is not a UUID", event.id())))
}

/// Events as the column arrays of [`outbox_insert!`](crate::outbox_insert).
#[derive(Debug, Default)]
pub struct OutboxRows {
    event_id: Vec<Uuid>,
    topic: Vec<String>,
    event_type: Vec<String>,
    source: Vec<String>,
    subject: Vec<Option<String>>,
    tenant: Vec<Option<String>>,
    correlation_id: Vec<Option<String>>,
    data_content_type: Vec<String>,
    data_schema: Vec<Option<String>>,
    data: Vec<Vec<u8>>,
    time: Vec<DateTime<Utc>>,
    actor: Vec<Option<String>>,
    record_id: Vec<Uuid>,
}

impl OutboxRows {
    /// Rows for `events`, each paired with the id of the record it is about.
    pub fn new(events: impl IntoIterator<Item = (Uuid, Event)>) -> Result<Self, DbError> {
        let mut rows = OutboxRows::default();
        for (record_id, event) in events {
            rows.event_id.push(parse_id(&event)?);
            rows.topic.push(event.topic().to_owned());
            rows.event_type.push(event.event_type().to_owned());
            rows.source.push(event.source().to_owned());
            rows.subject.push(event.subject().map(str::to_owned));
            rows.tenant.push(event.tenant().map(str::to_owned));
            rows.correlation_id.push(event.correlation_id().map(str::to_owned));
            rows.data_content_type.push(event.data_content_type().to_owned());
            rows.data_schema.push(event.data_schema().map(str::to_owned));
            rows.data.push(event.data().to_vec());
            rows.time.push(crate::micros(event.time()));
            rows.actor.push(event.actor().map(str::to_owned));
            rows.record_id.push(record_id);
        }
        Ok(rows)
    }

    /// Binds the arrays as `$1`-`$13` of `query` (which must have no parameters yet).
    pub fn bind<'q>(&self, query: Query<'q, Postgres, PgArguments>) -> Query<'q, Postgres, PgArguments> {
        query
            .bind(&self.event_id)
            .bind(&self.topic)
            .bind(&self.event_type)
            .bind(&self.source)
            .bind(&self.subject)
            .bind(&self.tenant)
            .bind(&self.correlation_id)
            .bind(&self.data_content_type)
            .bind(&self.data_schema)
            .bind(&self.data)
            .bind(&self.time)
            .bind(&self.actor)
            .bind(&self.record_id)
    }
}

/// The outbox insert of a transaction step that queues all its events.
pub const INSERT_ALL: &str = crate::outbox_insert!("true");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_binds_thirteen_arrays_in_order() {
        assert!(INSERT_ALL.contains("$13::uuid[]) WITH ORDINALITY"));
        assert!(INSERT_ALL.ends_with("WHERE true ORDER BY e.n"));
        let event = Event::builder("thing.created", "s", "t").subject("x").build().unwrap();
        let rows = OutboxRows::new([(Uuid::nil(), event.clone())]).unwrap();
        assert_eq!(rows.event_id[0].to_string(), event.id());
        assert_eq!(rows.subject[0].as_deref(), Some("x"));
        assert_eq!(rows.tenant[0], None);
        assert_eq!(rows.actor[0], None);
        let bad = Event::builder("thing.created", "s", "t").id("not-a-uuid").build().unwrap();
        assert!(OutboxRows::new([(Uuid::nil(), bad.clone())]).is_err());
        assert!(OutboxRow::new(bad).is_err());
        assert!(crate::outbox_insert_one!("true").contains("$12::text WHERE true"));
    }
}
