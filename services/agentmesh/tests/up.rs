//! `agentmesh up` runs its six services on one event bus, and its configuration file is
//! checked against every service's variables.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};

use agentmesh::up::{bind_all, run_all};
use agentmesh_events::{
    Event, EventBus, EventStream, EventsError, Health, MemoryBus, PublishAck, Publisher, Subscriber, SubscriptionSpec,
};
use agentmesh_runtime::{Config, ServiceName};
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// The one bus handed to `run_all`: remembers what was published on it, and reports
/// itself as still connecting so that a health report showing that state came from it.
#[derive(Default)]
struct WatchedBus {
    inner: MemoryBus,
    topics: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl Publisher for WatchedBus {
    async fn publish(&self, event: Event) -> Result<PublishAck, EventsError> {
        self.topics.lock().unwrap().push(event.topic().to_owned());
        self.inner.publish(event).await
    }
}

#[async_trait::async_trait]
impl Subscriber for WatchedBus {
    async fn subscribe(&self, spec: SubscriptionSpec) -> Result<EventStream, EventsError> {
        self.inner.subscribe(spec).await
    }

    async fn last_event(&self, topic: &str) -> Result<Option<Event>, EventsError> {
        self.inner.last_event(topic).await
    }
}

impl EventBus for WatchedBus {
    fn health(&self) -> Health {
        Health::Connecting
    }
}

const KEY: &str = "sk-up-test-0123456789abcdefghijklmnopqrstu";

#[tokio::test]
async fn the_gateway_and_session_store_share_the_bus_of_agentmesh_up() {
    let env = [("SECURITY_API_KEYS".to_owned(), format!("{KEY}=upper"))];
    let mut config = Config::load_with(None, env, &agentmesh::SERVICES).unwrap();
    // As `agentmesh up` runs them: the services call each other within the process.
    config.server.in_process_calls = true;
    let (config, listeners) = bind_all(config, Some(SocketAddr::from(([127, 0, 0, 1], 0)))).await.unwrap();
    let bus = Arc::new(WatchedBus::default());
    let (addresses, started) = oneshot::channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let shared: Arc<dyn EventBus> = bus.clone();
    let mesh = tokio::spawn(run_all(
        config,
        shared,
        listeners,
        async {
            let _ = stopped.await;
        },
        |mesh| {
            let _ = addresses.send(mesh);
        },
    ));
    let gateway = started.await.unwrap().get(ServiceName::Gateway).unwrap();
    let http = reqwest::Client::new();

    let created = http
        .post(format!("http://{gateway}/api/v1/sessions"))
        .bearer_auth(KEY)
        .json(&json!({"title": "one bus"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    assert!(
        bus.topics.lock().unwrap().iter().any(|topic| topic == "session.created"),
        "session-store publishes on the shared bus: {:?}",
        bus.topics.lock().unwrap()
    );

    let health: Value =
        http.get(format!("http://{gateway}/api/v1/health/services")).send().await.unwrap().json().await.unwrap();
    let services = health.as_array().unwrap();
    let event_bus = services.iter().find(|s| s["service_name"] == "event-bus").unwrap();
    assert_eq!(event_bus["metadata"]["message"], "connecting", "the gateway reports the shared bus: {event_bus}");

    stop.send(()).unwrap();
    mesh.await.unwrap().unwrap();
}

#[test]
fn a_misspelled_variable_in_the_config_file_stops_agentmesh_with_its_line() {
    let path = std::env::temp_dir().join(format!("agentmesh-up-{}.env", uuid::Uuid::new_v4()));
    std::fs::write(&path, "SESSION_MAX_TITLE_LENGTH=100\nGATEWAY_DB_SCHEMA=keys\nDB_MAX_POOL_SIZ=40\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_agentmesh"))
        .env_clear()
        .env("AGENTMESH_CONFIG_FILE", &path)
        .args(["keys", "list"])
        .output()
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("DB_MAX_POOL_SIZ: unknown variable"), "{stderr}");
    assert!(stderr.contains("line 3); did you mean DB_MAX_POOL_SIZE?"), "{stderr}");
    assert_eq!(stderr.matches("  - ").count(), 1, "the services' own variables are known: {stderr}");
}
