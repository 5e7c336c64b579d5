//! Periodic health checks of every enabled MCP server: a `GET` of its `health_check_url`
//! when it has one (any 2xx is healthy), else an MCP `ping` on its session. Each result is
//! recorded, which emits `mcp_server.health_changed` when the status changes.

use std::sync::Arc;
use std::time::Duration;

use crate::sessions::Sessions;
use crate::store::{McpServerRecord, McpStore, ServerQuery, ServerStatus};

/// Servers read per registry page while checking.
const PAGE: u32 = 100;

/// Checks every enabled server each `interval`, forever.
pub async fn watch(store: Arc<dyn McpStore>, sessions: Arc<Sessions>, interval: Duration) {
    let http = reqwest::Client::builder().timeout(sessions.settings().request_timeout).build().unwrap_or_default();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let mut query = ServerQuery { enabled: Some(true), limit: PAGE, ..ServerQuery::default() };
        loop {
            let page = match store.list_servers(&query).await {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(%error, "listing MCP servers for health checks failed");
                    break;
                }
            };
            for server in &page.items {
                let (status, reason) = check(&http, &sessions, server).await;
                if let Err(error) = store.record_health(server.id, status, crate::store::now(), &reason).await {
                    tracing::warn!(server = %server.config.name, %error, "recording health failed");
                }
            }
            match page.items.last() {
                Some(last) if page.has_more => {
                    query.after = Some(crate::store::Cursor { name: last.config.name.clone() });
                }
                _ => break,
            }
        }
    }
}

/// One server's status and why.
async fn check(http: &reqwest::Client, sessions: &Sessions, server: &McpServerRecord) -> (ServerStatus, String) {
    if let Some(url) = &server.config.health_check_url {
        return match http.get(url).send().await {
            Ok(response) if response.status().is_success() => (ServerStatus::Healthy, "health check answered".into()),
            Ok(response) => (ServerStatus::Unhealthy, format!("health check answered {}", response.status())),
            Err(_) => (ServerStatus::Unhealthy, "health check unreachable".into()),
        };
    }
    if server.config.authentication.per_user {
        // Its sessions belong to users; without a health_check_url there is nothing to probe.
        return (server.status, "per-user server without health_check_url".into());
    }
    let connection = match sessions.connection(server, "").await {
        Ok(connection) => connection,
        Err(error) => return (ServerStatus::Unhealthy, format!("could not connect: {error}")),
    };
    match connection.ping().await {
        Ok(()) => (ServerStatus::Healthy, "ping answered".into()),
        Err(error) => {
            if error.closes_connection() {
                sessions.discard(server, "", &connection).await;
            }
            (ServerStatus::Unhealthy, format!("ping failed: {error}"))
        }
    }
}
