//! Redis-only guarantees that the public API cannot provoke: a write attempt repeated
//! after a lost reply (as the resilience layer does for creates) applies only once.
//! Keys expire on their own within two short TTLs, so a failing test leaves nothing behind.

#![allow(clippy::unwrap_used)]

use agentmesh_testkit::{Service, require, unique_name};

use super::*;
use crate::events::PublishDirect;

const TTL: Duration = Duration::from_secs(5);

async fn store() -> Option<RedisStore> {
    let url = require(Service::Redis).await?;
    let prefix = format!("{}:", unique_name("ss_unit"));
    let sink = Arc::new(PublishDirect::new(Arc::new(agentmesh_events::MemoryBus::default())));
    Some(RedisStore::connect(&url, &prefix, 1, TTL, &Preset::database(), sink).await.unwrap())
}

fn owner() -> Owner {
    Owner { tenant_id: "t".into(), user_id: "u".into() }
}

#[tokio::test]
async fn a_repeated_append_attempt_counts_once() {
    let Some(store) = store().await else { return };
    let session = store.create_sessions(&owner(), vec![NewSession::default()]).await.unwrap()[0].id;
    let id = Uuid::now_v7();
    let args = vec![
        store.ttl(),
        text(session.to_string()),
        text(id.to_string()),
        text("user"),
        text("Hi"),
        text("hi"),
        text("{}"),
        text("[]"),
        text("-"),
        text("-"),
    ];
    let scripts = store.client.scripts();
    let mut replies = Vec::new();
    for _ in 0..2 {
        let mut reply =
            store.client.script(&scripts.create_message, &owner(), args.clone(), Retry::Transient).await.unwrap();
        check(&reply).unwrap();
        replies.push(message(&reply.record().unwrap()).unwrap());
    }
    assert_eq!(replies[0], replies[1], "the repeat answers with the first attempt's message");
    assert_eq!(store.get_session(&owner(), session).await.unwrap().message_count, 1);
    store.delete_sessions(&owner(), &[session]).await.unwrap();
}

#[tokio::test]
async fn a_repeated_bulk_create_attempt_creates_nothing_more() {
    let Some(store) = store().await else { return };
    let ids = [Uuid::now_v7(), Uuid::now_v7()];
    let mut args = vec![store.ttl(), text("2")];
    for id in ids {
        args.extend([text(id.to_string()), text("+label"), text("-"), text("{}")]);
    }
    let scripts = store.client.scripts();
    let mut created = Vec::new();
    for _ in 0..2 {
        let reply =
            store.client.script(&scripts.create_sessions, &owner(), args.clone(), Retry::Transient).await.unwrap();
        check(&reply).unwrap();
        created.push(reply.records().unwrap().iter().map(|fields| session(fields).unwrap().id).collect::<Vec<_>>());
    }
    assert_eq!(created, vec![ids.to_vec(), ids.to_vec()]);
    let query = SessionQuery {
        user_id: Some("label".into()),
        sort: SessionSort::CreatedAt,
        direction: Direction::Asc,
        limit: 10,
        offset: 0,
        after: None,
    };
    assert_eq!(store.list_sessions(&owner(), &query).await.unwrap().total, 2);
    store.delete_sessions(&owner(), &ids).await.unwrap();
}
