//! The same streams as SSE, multiplexed over one WebSocket at `/api/v1/ws`.
//!
//! A client authenticates when connecting (headers, or `?token=` for browsers, which cannot
//! set headers on a WebSocket), then sends JSON text frames:
//!
//! - `{"type":"subscribe","id":"s1","path":"/api/v1/runs/<id>/stream","last_event_id":"12"}`
//!   (optionally `"method":"POST"` and `"body":{…}` for `/agents/<id>/execute/stream`);
//! - `{"type":"unsubscribe","id":"s1"}`; `{"type":"ping"}`.
//!
//! and receives `subscribed`, `event` (`{"type":"event","id":"s1","event":"token",
//! "event_id":"13","data":{…}}`), `error` (the seed's error body), `end` and `pong`
//! frames. The seed's limits apply: connections per client IP and messages per minute per
//! connection (`RATE_LIMIT_WEBSOCKET_*`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentmesh_runtime::auth::Principal;
use agentmesh_runtime::context::new_correlation_id;
use agentmesh_runtime::{ApiError, ErrorCode};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Method, header};
use serde::Deserialize;
use serde_json::{Value as Json, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::rest::{Invocation, RestGateway, request_message};
use crate::sse;

/// The WebSocket endpoint's path.
pub const PATH: &str = "/api/v1/ws";

/// Outgoing frames buffered per connection before a slow client is dropped.
const OUTBOX: usize = 256;

/// Per-IP connection counts and per-connection message budgets.
pub struct WsLimits {
    /// Open connections allowed per client IP.
    pub connections_per_ip: u32,
    /// Client messages allowed per connection per minute.
    pub messages_per_minute: u32,
    open: Mutex<HashMap<IpAddr, u32>>,
}

impl WsLimits {
    /// Limits from the seed's settings.
    pub fn new(connections_per_ip: u32, messages_per_minute: u32) -> Self {
        Self { connections_per_ip, messages_per_minute, open: Mutex::new(HashMap::new()) }
    }

    fn open(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, u32>> {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Takes a connection slot for `ip`, or `None` when it has too many open.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut open = self.open();
        let count = open.entry(ip).or_insert(0);
        if *count >= self.connections_per_ip {
            return None;
        }
        *count += 1;
        Some(Slot { limits: Arc::clone(self), ip })
    }
}

/// An open connection's slot, given back when dropped.
struct Slot {
    limits: Arc<WsLimits>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.limits.open();
        if let Some(count) = open.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientFrame {
    Subscribe {
        id: String,
        path: String,
        #[serde(default)]
        method: Option<String>,
        #[serde(default)]
        body: Option<Json>,
        #[serde(default)]
        last_event_id: Option<String>,
    },
    Unsubscribe {
        id: String,
    },
    Ping,
}

/// Upgrades the connection after authenticating the caller and admitting its IP.
pub async fn upgrade(
    gateway: Arc<RestGateway>,
    limits: Arc<WsLimits>,
    upgrade: WebSocketUpgrade,
    headers: &HeaderMap,
    query: Option<&str>,
    client_ip: IpAddr,
) -> Result<Response, ApiError> {
    let mut headers = headers.clone();
    if let Some(token) = query.and_then(|q| form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "token"))
        && let Ok(value) = HeaderValue::from_str(&format!("Bearer {}", token.1))
    {
        headers.insert(header::AUTHORIZATION, value);
    }
    let principal =
        gateway.authenticator.authenticate(&headers).await?.ok_or_else(|| {
            ApiError::new(ErrorCode::Authentication, "Authentication required: send an API key or token")
        })?;
    let slot = limits.admit(client_ip).ok_or_else(|| {
        ApiError::new(ErrorCode::RateLimit, "Too many WebSocket connections from this address")
            .with_retry_after(Duration::from_secs(60))
    })?;
    let budget = limits.messages_per_minute;
    Ok(upgrade.on_upgrade(move |socket| connection(gateway, socket, principal, budget, slot)))
}

async fn connection(gateway: Arc<RestGateway>, socket: WebSocket, principal: Principal, budget: u32, _slot: Slot) {
    let (mut sink, mut incoming) = socket.split();
    let (frames, mut outbox) = mpsc::channel::<Json>(OUTBOX);
    let writer = tokio::spawn(async move {
        while let Some(frame) = outbox.recv().await {
            if sink.send(Message::Text(frame.to_string().into())).await.is_err() {
                break;
            }
        }
    });
    let mut subscriptions: HashMap<String, JoinHandle<()>> = HashMap::new();
    let mut window = (Instant::now(), 0u32);
    while let Some(Ok(message)) = incoming.next().await {
        let text = match message {
            Message::Text(text) => text,
            Message::Close(_) => break,
            _ => continue,
        };
        if window.0.elapsed() >= Duration::from_secs(60) {
            window = (Instant::now(), 0);
        }
        window.1 += 1;
        if window.1 > budget {
            let error = ApiError::new(ErrorCode::RateLimit, "Too many WebSocket messages: limit per minute reached")
                .with_retry_after(Duration::from_secs(60) - window.0.elapsed().min(Duration::from_secs(60)));
            let _ = frames.send(error_frame(None, &error)).await;
            break;
        }
        match serde_json::from_str::<ClientFrame>(&text) {
            Ok(ClientFrame::Ping) => {
                let _ = frames.send(json!({"type": "pong"})).await;
            }
            Ok(ClientFrame::Unsubscribe { id }) => {
                if let Some(task) = subscriptions.remove(&id) {
                    task.abort();
                }
                let _ = frames.send(json!({"type": "end", "id": id})).await;
            }
            Ok(ClientFrame::Subscribe { id, path, method, body, last_event_id }) => {
                if let Some(previous) = subscriptions.remove(&id) {
                    previous.abort();
                }
                let request = Subscription { id: id.clone(), path, method, body, last_event_id };
                let task = tokio::spawn(subscribe(Arc::clone(&gateway), principal.clone(), request, frames.clone()));
                subscriptions.insert(id, task);
            }
            Err(error) => {
                let error = ApiError::new(ErrorCode::Validation, format!("Invalid frame: {error}"));
                let _ = frames.send(error_frame(None, &error)).await;
            }
        }
        subscriptions.retain(|_, task| !task.is_finished());
    }
    for task in subscriptions.into_values() {
        task.abort();
    }
    drop(frames);
    let _ = writer.await;
}

struct Subscription {
    id: String,
    path: String,
    method: Option<String>,
    body: Option<Json>,
    last_event_id: Option<String>,
}

async fn subscribe(gateway: Arc<RestGateway>, principal: Principal, request: Subscription, frames: mpsc::Sender<Json>) {
    let id = request.id.clone();
    match open(&gateway, principal, request).await {
        Ok(mut stream) => {
            let _ = frames.send(json!({"type": "subscribed", "id": id})).await;
            while let Some(item) = stream.next().await {
                let frame = match item {
                    Ok(message) => {
                        let (event_id, event, data) = sse::describe(&message, "event");
                        json!({"type": "event", "id": id, "event": event, "event_id": event_id, "data": data})
                    }
                    Err(status) => {
                        let _ = frames.send(error_frame(Some(&id), &ApiError::from_status(&status))).await;
                        return;
                    }
                };
                if frames.send(frame).await.is_err() {
                    return;
                }
            }
            let _ = frames.send(json!({"type": "end", "id": id})).await;
        }
        Err(error) => {
            let _ = frames.send(error_frame(Some(&id), &error)).await;
        }
    }
}

async fn open(
    gateway: &RestGateway,
    principal: Principal,
    request: Subscription,
) -> Result<tonic::codec::Streaming<prost_reflect::DynamicMessage>, ApiError> {
    let method = match request.method.as_deref() {
        None => Method::GET,
        Some(name) => Method::from_bytes(name.to_ascii_uppercase().as_bytes())
            .map_err(|_| ApiError::new(ErrorCode::Validation, format!("Invalid method {name}")))?,
    };
    let (path, query) = request.path.split_once('?').map_or((request.path.as_str(), None), |(p, q)| (p, Some(q)));
    let matched = gateway.routes.find(&method, path).map_err(|_| ApiError::not_found("Stream"))?;
    let route = matched.route;
    if !route.is_streaming() {
        return Err(ApiError::new(ErrorCode::Validation, format!("{path} is not a stream")));
    }
    let principal = crate::rest::admit(route, Some(principal))?;
    let body =
        if route.body.is_empty() { None } else { Some(request.body.unwrap_or(Json::Object(Default::default()))) };
    let message = request_message(route, &matched.variables, query, body, request.last_event_id.as_deref())?;
    let invocation = Invocation {
        route,
        message,
        principal,
        idempotency_key: None,
        correlation_id: new_correlation_id(),
        trace: None,
    };
    gateway.open_stream(invocation).await
}

fn error_frame(id: Option<&str>, error: &ApiError) -> Json {
    let body = error.to_response(None, PATH);
    json!({"type": "error", "id": id, "error": body})
}
