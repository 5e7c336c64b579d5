//! Server-streaming RPCs as Server-Sent Events.
//!
//! Each streamed message becomes one event: `data:` is the message in the seed's JSON
//! (the route's `response_body` field, e.g. the `RunEvent`), `id:` its `sequence` so a
//! client reconnecting with `Last-Event-ID` resumes where it stopped, and `event:` the
//! event's kind (the set case of its `kind` oneof, e.g. `token`, `run_completed`). Idle
//! streams get a comment every 15 s so proxies keep them open. A failure of the stream
//! itself (the upstream call ending in an error status) is sent as a `stream_error` event
//! in the seed's error format, then the stream ends: `error` stays the name of the run's own
//! error events, whose data is always an `ErrorDetail`.

use std::convert::Infallible;
use std::time::Duration;

use agentmesh_runtime::ApiError;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use prost_reflect::{DynamicMessage, ReflectMessage, Value};
use tonic::codec::Streaming;

use crate::json;

/// How often an idle stream sends a keep-alive comment.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// The SSE event name of a failure of the stream itself (not of the run it carries).
pub const STREAM_ERROR: &str = "stream_error";

/// The request header a reconnecting SSE client sends.
pub const LAST_EVENT_ID: &str = "last-event-id";

/// The request field a `Last-Event-ID` resumes from, when the RPC has one.
pub const RESUME_FIELD: &str = "from_sequence";

/// Streams `messages` as SSE; `response_body` selects the field shown as each event.
pub fn response(
    messages: Streaming<DynamicMessage>,
    response_body: String,
    correlation_id: String,
    path: String,
) -> Response {
    let events = messages.scan(false, move |ended, item| {
        if *ended {
            return std::future::ready(None);
        }
        let event = match item {
            Ok(message) => event(&message, &response_body),
            Err(status) => {
                *ended = true;
                let body = ApiError::from_status(&status).to_response(Some(&correlation_id), &path);
                Event::default()
                    .event(STREAM_ERROR)
                    .json_data(body)
                    .unwrap_or_else(|_| Event::default().event(STREAM_ERROR))
            }
        };
        std::future::ready(Some(Ok::<Event, Infallible>(event)))
    });
    let mut response = Sse::new(events).keep_alive(KeepAlive::new().interval(HEARTBEAT)).into_response();
    response.headers_mut().insert("x-accel-buffering", http::HeaderValue::from_static("no"));
    response
}

/// One streamed message as an event.
fn event(message: &DynamicMessage, response_body: &str) -> Event {
    let (id, kind, data) = describe(message, response_body);
    let mut event = Event::default().json_data(&data).unwrap_or_default();
    if let Some(id) = id {
        event = event.id(id);
    }
    if let Some(kind) = kind {
        event = event.event(kind);
    }
    event
}

/// What a streamed message shows: its sequence (the event id), its kind (the event name)
/// and its JSON (the `response_body` field when set, else the whole message).
pub fn describe(message: &DynamicMessage, response_body: &str) -> (Option<String>, Option<String>, serde_json::Value) {
    let shown = message
        .descriptor()
        .get_field_by_name(response_body)
        .filter(|_| !response_body.is_empty())
        .and_then(|field| message.get_field(&field).as_message().cloned())
        .unwrap_or_else(|| message.clone());
    let id = shown.get_field_by_name("sequence").and_then(|v| v.as_u64()).map(|n| n.to_string());
    (id, event_kind(&shown), json::message_to_json(&shown))
}

/// The name of the set case of the message's `kind` oneof.
fn event_kind(message: &DynamicMessage) -> Option<String> {
    let descriptor = message.descriptor();
    let oneof = descriptor.oneofs().find(|o| o.name() == "kind")?;
    oneof.fields().find(|f| message.has_field(f)).map(|f| f.name().to_owned())
}

/// The sequence to resume after, from a `Last-Event-ID` header value.
pub fn resume_from(last_event_id: &str) -> Option<Value> {
    last_event_id.trim().parse::<u64>().ok().map(Value::U64)
}
