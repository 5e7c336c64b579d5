//! The Chat Completions wire format, spoken by OpenAI, Azure OpenAI and OpenAI-compatible
//! servers (vLLM, llama.cpp's server, Ollama): one translation, three flavours.
//!
//! What differs between the flavours:
//! - **OpenAI**: `POST {base_url}/chat/completions`, `Authorization: Bearer <key>`, the
//!   model in the body, the token limit as `max_completion_tokens` (the o-series reject
//!   `max_tokens`).
//! - **Azure OpenAI**: `POST {endpoint}/openai/deployments/{deployment}/chat/completions
//!   ?api-version=…` (the model is the deployment, in the path, not the body), `api-key: <key>`.
//!   From api-version 2024-09-01 on (the default, 2024-10-21, included) the token limit is
//!   `max_completion_tokens` — 2024-10-21 documents `max_tokens` as deprecated and not
//!   accepted by o1 deployments — and streams ask for usage with `stream_options`; older
//!   versions get `max_tokens` and no `stream_options`, which they do not know. A request's
//!   `provider_options.azure_api_version` overrides the configured version. Streams may start
//!   with a chunk carrying only `prompt_filter_results` (no choices, empty id); it is skipped.
//! - **Compatible servers**: `POST {base_url}/chat/completions`, a Bearer key only when one is
//!   configured, `max_tokens` (not every server knows `max_completion_tokens`). llama.cpp
//!   reports usage in the chunk that carries `finish_reason`, or only as `timings`; vLLM in a
//!   last chunk without choices. Usage is read wherever it appears, and the finish is held
//!   back until `data: [DONE]` so that usage always precedes it. llama-cpp-python's server
//!   ignores `stream_options` and reports no usage in streams at all (only in whole answers):
//!   a compatible server's stream that ends without usage gets an estimate instead of none
//!   (which would account the call as free and leave it out of the tokens-per-minute budget):
//!   completion tokens are the chunks that carried text or a tool-call fragment (such servers
//!   send one per generated token), prompt tokens the admission's estimate of the prompt
//!   ([`crate::limits::estimate_tokens`], about four characters a token, so it misses the
//!   tokens of the server's chat template).
//!
//! Choices shared by all three: a failed tool result (`is_error`) is sent as
//! `Error: <content>`, so the model knows the call failed (the wire format has no flag).
//! Images on tool messages, which the format does not allow, are sent in a user message
//! right after the run of tool messages (the MCP tool images must reach the model).
//! Images on system or assistant messages are [`ProviderError::Unsupported`].

use std::borrow::Cow;
use std::collections::{BTreeSet, VecDeque};

use agentmesh_proto::agentmesh::common::v1::{ImagePart, image_part};
use agentmesh_proto::agentmesh::common::v1::{MessageRole, Usage};
use agentmesh_proto::agentmesh::llm::v1::{
    ChatMessage, ChatRequest, FinishReason, ToolCall, ToolCallDelta, response_format, tool_choice,
};
use agentmesh_runtime::config::Secret;
use base64::Engine;
use eventsource_stream::Event;
use futures::{Stream, StreamExt};
use reqwest::RequestBuilder;
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value, json};

use super::http::{HttpClient, redact};
use super::parts::{ModelPart, audio_format, model_parts};
use super::{Completion, Delta, DeltaStream, Finish, Provider, ProviderError, ProviderRequest, made_up_tool_call_id};

/// OpenAI's API, the default base URL of [`ChatCompletions::openai`].
pub const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

/// The first Azure api-version that knows `max_completion_tokens` and `stream_options`.
const AZURE_MAX_COMPLETION_TOKENS_SINCE: &str = "2024-09-01";

/// A provider speaking the Chat Completions wire format.
#[derive(Debug, Clone)]
pub struct ChatCompletions {
    /// Which family of server answers: it decides the URL, the auth header and dialect details.
    flavor: Flavor,
    /// The API's base URL (OpenAI, compatible) or the Azure resource endpoint, without a trailing `/`.
    base_url: String,
    /// The provider's name: `openai`, `azure` or the compatible server's configured name.
    name: String,
    /// The secret holding the key; compatible servers may have none configured.
    key_secret: String,
    /// Pooled connections; reads OpenAI-shaped error bodies.
    http: HttpClient,
}

/// The families of servers speaking Chat Completions.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Flavor {
    /// OpenAI's own API.
    OpenAi,
    /// Azure OpenAI: deployments in the path, `api-version` in the query, `api-key` header.
    Azure {
        /// The configured `api-version`, unless a request overrides it.
        api_version: String,
    },
    /// vLLM, llama.cpp's server, Ollama and the like: older dialect, optional key.
    Compatible,
}

impl ChatCompletions {
    /// OpenAI at `base_url` (for example [`OPENAI_BASE_URL`]).
    pub fn openai(base_url: impl Into<String>) -> Self {
        Self::new(Flavor::OpenAi, base_url.into(), "openai".to_owned(), "openai-api-key".to_owned())
    }

    /// Azure OpenAI at `endpoint` (for example `https://my-resource.openai.azure.com`) with
    /// `api_version` (for example `2024-10-21`); models are deployment names.
    pub fn azure(endpoint: impl Into<String>, api_version: impl Into<String>) -> Self {
        let flavor = Flavor::Azure { api_version: api_version.into() };
        Self::new(flavor, endpoint.into(), "azure".to_owned(), "azure-openai-api-key".to_owned())
    }

    /// An OpenAI-compatible server called `name` at `base_url` (for example
    /// `http://127.0.0.1:8080/v1`); its key, from the secret `<name>-api-key`, is optional.
    pub fn compatible(name: impl Into<String>, base_url: impl Into<String>) -> Self {
        let name = name.into();
        let key_secret = format!("{name}-api-key");
        Self::new(Flavor::Compatible, base_url.into(), name, key_secret)
    }

    fn new(flavor: Flavor, base_url: String, name: String, key_secret: String) -> Self {
        let base_url = base_url.trim_end_matches('/').to_owned();
        Self { flavor, base_url, name, key_secret, http: HttpClient::new(error_message) }
    }

    /// The Azure api-version of one request: its own override, else the configured one.
    fn azure_api_version<'a>(&'a self, request: &'a ChatRequest) -> Option<&'a str> {
        let Flavor::Azure { api_version } = &self.flavor else { return None };
        let requested = request.provider_options.as_ref().and_then(|o| o.azure_api_version.as_deref());
        Some(requested.filter(|v| !v.is_empty()).unwrap_or(api_version))
    }

    /// Whether the server knows `max_completion_tokens` (and then also `stream_options`).
    fn knows_max_completion_tokens(&self, request: &ChatRequest) -> bool {
        match &self.flavor {
            Flavor::OpenAi => true,
            Flavor::Azure { .. } => {
                self.azure_api_version(request).is_some_and(|v| v >= AZURE_MAX_COMPLETION_TOKENS_SINCE)
            }
            Flavor::Compatible => false,
        }
    }

    fn url(&self, call: &ProviderRequest<'_>) -> Result<reqwest::Url, ProviderError> {
        let invalid =
            || ProviderError::Transport(format!("{} is not a valid base URL for {}", self.base_url, self.name));
        match self.azure_api_version(call.request) {
            Some(api_version) => {
                let mut url = reqwest::Url::parse(&self.base_url).map_err(|_| invalid())?;
                url.path_segments_mut().map_err(|()| invalid())?.pop_if_empty().extend([
                    "openai",
                    "deployments",
                    call.model,
                    "chat",
                    "completions",
                ]);
                url.query_pairs_mut().append_pair("api-version", api_version);
                Ok(url)
            }
            None => reqwest::Url::parse(&format!("{}/chat/completions", self.base_url)).map_err(|_| invalid()),
        }
    }

    /// The POST carrying `body`, with the flavour's auth header.
    fn post(&self, call: &ProviderRequest<'_>, body: &Value) -> Result<RequestBuilder, ProviderError> {
        let builder = self.http.client().post(self.url(call)?).json(body);
        let key = call.key.map(Secret::expose).filter(|key| !key.is_empty());
        match (&self.flavor, key) {
            (Flavor::Azure { .. }, Some(key)) => {
                let mut value = reqwest::header::HeaderValue::from_str(key)
                    .map_err(|_| ProviderError::Transport("the API key is not a valid HTTP header value".to_owned()))?;
                value.set_sensitive(true);
                Ok(builder.header("api-key", value))
            }
            (Flavor::OpenAi | Flavor::Compatible, Some(key)) => Ok(builder.bearer_auth(key)),
            (Flavor::Compatible, None) => Ok(builder),
            (Flavor::OpenAi | Flavor::Azure { .. }, None) => {
                Err(ProviderError::MissingKey { secret: self.key_secret.clone() })
            }
        }
    }

    /// The decoder of a stream answering `request`: a compatible server's may have to
    /// estimate the usage it does not report.
    fn decoder(&self, request: &ChatRequest) -> StreamDecoder {
        let estimated_prompt =
            (self.flavor == Flavor::Compatible).then(|| i64::from(crate::limits::estimate_tokens(request, 0)));
        StreamDecoder { estimated_prompt, ..StreamDecoder::default() }
    }

    /// The request body.
    fn body(&self, call: &ProviderRequest<'_>, streamed: bool) -> Result<Value, ProviderError> {
        let request = call.request;
        let modern = self.knows_max_completion_tokens(request);
        let mut body = Map::new();
        if !matches!(self.flavor, Flavor::Azure { .. }) {
            body.insert("model".into(), json!(call.model));
        }
        body.insert("messages".into(), Value::Array(messages(&request.messages)?));
        let max_tokens_field = if modern { "max_completion_tokens" } else { "max_tokens" };
        body.insert(max_tokens_field.into(), json!(call.max_tokens));
        if let Some(temperature) = request.temperature {
            body.insert("temperature".into(), json!(temperature));
        }
        if let Some(top_p) = request.top_p {
            body.insert("top_p".into(), json!(top_p));
        }
        if !request.stop.is_empty() {
            body.insert("stop".into(), json!(request.stop));
        }
        // OpenAI rejects tool_choice and parallel_tool_calls without tools.
        if !request.tools.is_empty() {
            body.insert("tools".into(), Value::Array(request.tools.iter().map(tool).collect()));
            if let Some(choice) = request.tool_choice.as_ref().and_then(|c| c.choice.as_ref()).and_then(tool_choice) {
                body.insert("tool_choice".into(), choice);
            }
            if let Some(parallel) = request.parallel_tool_calls {
                body.insert("parallel_tool_calls".into(), json!(parallel));
            }
        }
        if let Some(format) = request.response_format.as_ref()
            && let Some(format) = response_format(format)?
        {
            body.insert("response_format".into(), format);
        }
        if let Some(user) =
            request.provider_options.as_ref().and_then(|o| o.openai_user.as_deref()).filter(|u| !u.is_empty())
        {
            body.insert("user".into(), json!(user));
        }
        if streamed {
            body.insert("stream".into(), json!(true));
            if modern || self.flavor == Flavor::Compatible {
                body.insert("stream_options".into(), json!({"include_usage": true}));
            }
        }
        Ok(Value::Object(body))
    }
}

#[async_trait::async_trait]
impl Provider for ChatCompletions {
    fn name(&self) -> &str {
        &self.name
    }

    fn key_secret(&self) -> Option<&str> {
        Some(&self.key_secret)
    }

    async fn chat(&self, call: ProviderRequest<'_>) -> Result<Completion, ProviderError> {
        let body = self.body(&call, false)?;
        let post = self.post(&call, &body)?;
        let secret = call.key.map(Secret::expose);
        let response: ResponseBody = self.http.json(post, secret).await?;
        completion(response)
    }

    async fn stream(&self, call: ProviderRequest<'_>) -> Result<DeltaStream, ProviderError> {
        let body = self.body(&call, true)?;
        let post = self.post(&call, &body)?;
        let events = self.http.events(post, call.key.map(Secret::expose)).await?;
        Ok(deltas(events, self.decoder(call.request)).boxed())
    }

    /// A compatible server's `GET {base_url}/models` (`{"data": [{"id": …}]}`); OpenAI's and
    /// Azure's models are configured instead (OpenAI lists hundreds, Azure lists base models,
    /// not deployments).
    async fn discover_models(&self, key: Option<&Secret>) -> Result<Vec<String>, ProviderError> {
        if self.flavor != Flavor::Compatible {
            return Ok(Vec::new());
        }
        let url = format!("{}/models", self.base_url);
        let mut get = self.http.client().get(url).timeout(std::time::Duration::from_secs(5));
        let key = key.map(Secret::expose).filter(|key| !key.is_empty());
        if let Some(key) = key {
            get = get.bearer_auth(key);
        }
        let listing: ModelListing = self.http.json(get, key).await?;
        Ok(listing.data.into_iter().map(|model| model.id).filter(|id| !id.is_empty()).collect())
    }
}

/// The answer of `GET /models`.
#[derive(Debug, Deserialize)]
struct ModelListing {
    #[serde(default)]
    data: Vec<ListedModel>,
}

/// One model of a listing.
#[derive(Debug, Deserialize)]
struct ListedModel {
    #[serde(default)]
    id: String,
}

/// The message of an error body: OpenAI, Azure, llama.cpp and Ollama send
/// `{"error": {"message": …}}`, older vLLM `{"message": …}`, some servers `{"error": "…"}`.
fn error_message(body: &Value) -> Option<String> {
    let message = match body.get("error") {
        Some(Value::Object(error)) => error.get("message"),
        Some(error @ Value::String(_)) => Some(error),
        _ => body.get("message"),
    };
    message.and_then(Value::as_str).map(str::to_owned)
}

// ---- request translation ----

fn tool(definition: &agentmesh_proto::agentmesh::llm::v1::ToolDefinition) -> Value {
    let mut function = Map::new();
    function.insert("name".into(), json!(definition.name));
    if !definition.description.is_empty() {
        function.insert("description".into(), json!(definition.description));
    }
    if let Some(parameters) = &definition.parameters {
        function.insert("parameters".into(), Value::Object(agentmesh_proto::json::struct_to_object(parameters)));
    }
    json!({"type": "function", "function": function})
}

fn tool_choice(choice: &tool_choice::Choice) -> Option<Value> {
    match choice {
        tool_choice::Choice::Mode(mode) => match tool_choice::Mode::try_from(*mode).ok()? {
            tool_choice::Mode::Auto => Some(json!("auto")),
            tool_choice::Mode::None => Some(json!("none")),
            tool_choice::Mode::Required => Some(json!("required")),
            tool_choice::Mode::Unspecified => None,
        },
        tool_choice::Choice::Tool(name) => Some(json!({"type": "function", "function": {"name": name}})),
    }
}

fn response_format(
    format: &agentmesh_proto::agentmesh::llm::v1::ResponseFormat,
) -> Result<Option<Value>, ProviderError> {
    match response_format::Type::try_from(format.r#type).unwrap_or_default() {
        response_format::Type::Unspecified | response_format::Type::Text => Ok(None),
        response_format::Type::JsonObject => Ok(Some(json!({"type": "json_object"}))),
        response_format::Type::JsonSchema => {
            let Some(format) = format.json_schema.as_ref() else {
                return Err(ProviderError::Unsupported("response_format json_schema needs json_schema".to_owned()));
            };
            let schema = format.schema.as_ref().map(agentmesh_proto::json::struct_to_object).unwrap_or_default();
            let mut json_schema = Map::new();
            json_schema.insert("name".into(), json!(format.name));
            if !format.description.is_empty() {
                json_schema.insert("description".into(), json!(format.description));
            }
            json_schema.insert("schema".into(), Value::Object(schema));
            json_schema.insert("strict".into(), json!(format.strict));
            Ok(Some(json!({"type": "json_schema", "json_schema": json_schema})))
        }
    }
}

/// The conversation as Chat Completions messages; images of a run of tool messages follow
/// it in one user message (tool messages must directly follow their assistant message).
fn messages(messages: &[ChatMessage]) -> Result<Vec<Value>, ProviderError> {
    let mut translated = Vec::with_capacity(messages.len());
    let mut tool_images: Vec<Value> = Vec::new();
    for message in messages {
        let role = MessageRole::try_from(message.role).unwrap_or_default();
        if role != MessageRole::Tool && !tool_images.is_empty() {
            translated.push(json!({"role": "user", "content": std::mem::take(&mut tool_images)}));
        }
        let (text, media) = text_and_media(message)?;
        let named = |mut value: Value| {
            if let (Some(name), Value::Object(object)) = (&message.name, &mut value) {
                object.insert("name".into(), json!(name));
            }
            value
        };
        match role {
            MessageRole::Unspecified | MessageRole::User if media.is_empty() => {
                translated.push(named(json!({"role": "user", "content": text})));
            }
            MessageRole::Unspecified | MessageRole::User => {
                translated.push(named(json!({"role": "user", "content": user_parts(message)?})));
            }
            MessageRole::System | MessageRole::Assistant if !media.is_empty() => {
                return Err(ProviderError::Unsupported(
                    "images and audio are accepted on user and tool messages only, not on system or assistant \
                     messages"
                        .to_owned(),
                ));
            }
            MessageRole::System => translated.push(named(json!({"role": "system", "content": text}))),
            MessageRole::Assistant => translated.push(named(assistant_message(message, text))),
            MessageRole::Tool => {
                let Some(call_id) = message.tool_call_id.as_deref().filter(|id| !id.is_empty()) else {
                    return Err(ProviderError::Unsupported(
                        "a tool message needs the tool_call_id it answers".to_owned(),
                    ));
                };
                let content = tool_content(message, text, !media.is_empty());
                translated.push(json!({"role": "tool", "tool_call_id": call_id, "content": content}));
                if !media.is_empty() {
                    let tool = message.name.as_deref().unwrap_or("a tool");
                    let label = format!("The result of tool call {call_id} ({tool}) includes these attachments:");
                    tool_images.push(json!({"type": "text", "text": label}));
                    for part in &media {
                        tool_images.push(media_part(part)?);
                    }
                }
            }
        }
    }
    if !tool_images.is_empty() {
        translated.push(json!({"role": "user", "content": tool_images}));
    }
    Ok(translated)
}

/// The message's text (its content, then its text parts, one per line) and its images
/// and audio.
fn text_and_media(message: &ChatMessage) -> Result<(String, Vec<ModelPart<'_>>), ProviderError> {
    let mut texts: Vec<Cow<'_, str>> = Vec::new();
    if !message.content.is_empty() {
        texts.push(Cow::Borrowed(&message.content));
    }
    let mut media = Vec::new();
    for part in model_parts(&message.parts)? {
        match part {
            ModelPart::Text(text) => texts.push(text),
            other => media.push(other),
        }
    }
    Ok((texts.join("\n"), media))
}

/// A user message's content and parts as content parts, in order.
fn user_parts(message: &ChatMessage) -> Result<Vec<Value>, ProviderError> {
    let mut parts = Vec::with_capacity(message.parts.len() + 1);
    if !message.content.is_empty() {
        parts.push(json!({"type": "text", "text": message.content}));
    }
    for part in model_parts(&message.parts)? {
        parts.push(media_part(&part)?);
    }
    Ok(parts)
}

/// A content part: `text`, `image_url` (bytes as a `data:` URL) or `input_audio`.
fn media_part(part: &ModelPart<'_>) -> Result<Value, ProviderError> {
    match part {
        ModelPart::Text(text) => Ok(json!({"type": "text", "text": text})),
        ModelPart::Image(image) => image_url(image),
        ModelPart::Audio(audio) => {
            let data = base64::engine::general_purpose::STANDARD.encode(&audio.data);
            Ok(json!({"type": "input_audio", "input_audio": {"data": data, "format": audio_format(audio)?}}))
        }
    }
}

fn image_url(image: &ImagePart) -> Result<Value, ProviderError> {
    let url = match &image.source {
        Some(image_part::Source::Url(url)) => url.clone(),
        Some(image_part::Source::Data(bytes)) if !image.mime_type.is_empty() => {
            format!("data:{};base64,{}", image.mime_type, base64::engine::general_purpose::STANDARD.encode(bytes))
        }
        Some(image_part::Source::Data(_)) => {
            return Err(ProviderError::Unsupported("image bytes need their mime_type".to_owned()));
        }
        None => return Err(ProviderError::Unsupported("an image part needs a url or data".to_owned())),
    };
    let mut image_url = json!({"url": url});
    if !image.detail.is_empty() {
        image_url["detail"] = json!(image.detail);
    }
    Ok(json!({"type": "image_url", "image_url": image_url}))
}

fn assistant_message(message: &ChatMessage, text: String) -> Value {
    let content = if text.is_empty() { Value::Null } else { json!(text) };
    let mut assistant = json!({"role": "assistant", "content": content});
    if !message.tool_calls.is_empty() {
        let calls: Vec<Value> = message
            .tool_calls
            .iter()
            .map(|call| {
                let arguments = if call.arguments_json.is_empty() { "{}" } else { call.arguments_json.as_str() };
                json!({"id": call.id, "type": "function", "function": {"name": call.name, "arguments": arguments}})
            })
            .collect();
        assistant["tool_calls"] = Value::Array(calls);
    }
    assistant
}

/// A tool result's text: `Error: …` when the tool failed (unless it already says so), and a
/// pointer to the images when there is no text.
fn tool_content(message: &ChatMessage, text: String, has_images: bool) -> String {
    let text =
        if text.is_empty() && has_images { "The result is the images in the next message.".to_owned() } else { text };
    if message.is_error && !text.get(..5).is_some_and(|start| start.eq_ignore_ascii_case("error")) {
        format!("Error: {text}")
    } else {
        text
    }
}

// ---- response translation ----

/// `null` read as the type's default (OpenAI sends `"tool_calls": null` and the like).
fn null_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(deserializer: D) -> Result<T, D::Error> {
    Option::<T>::deserialize(deserializer).map(Option::unwrap_or_default)
}

/// A whole answer (`chat.completion`).
#[derive(Debug, Deserialize)]
struct ResponseBody {
    #[serde(default, deserialize_with = "null_default")]
    id: String,
    #[serde(default, deserialize_with = "null_default")]
    choices: Vec<ResponseChoice>,
    usage: Option<WireUsage>,
    /// llama.cpp's own statistics, the usage of its older versions.
    timings: Option<Timings>,
}

#[derive(Debug, Deserialize)]
struct ResponseChoice {
    #[serde(default, deserialize_with = "null_default")]
    message: ResponseMessage,
    finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ResponseMessage {
    content: Option<String>,
    refusal: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    tool_calls: Vec<WireToolCall>,
    /// The tool call of the deprecated function-calling API.
    function_call: Option<WireFunction>,
}

#[derive(Debug, Default, Deserialize)]
struct WireToolCall {
    /// Absent in Ollama's older streams, which send each call whole.
    index: Option<u32>,
    id: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    function: WireFunction,
}

#[derive(Debug, Default, Deserialize)]
struct WireFunction {
    name: Option<String>,
    arguments: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct WireUsage {
    #[serde(default, deserialize_with = "null_default")]
    prompt_tokens: i64,
    #[serde(default, deserialize_with = "null_default")]
    completion_tokens: i64,
    #[serde(default, deserialize_with = "null_default")]
    prompt_tokens_details: PromptTokensDetails,
    #[serde(default, deserialize_with = "null_default")]
    completion_tokens_details: CompletionTokensDetails,
}

#[derive(Debug, Default, Deserialize)]
struct PromptTokensDetails {
    #[serde(default, deserialize_with = "null_default")]
    cached_tokens: i64,
}

#[derive(Debug, Default, Deserialize)]
struct CompletionTokensDetails {
    #[serde(default, deserialize_with = "null_default")]
    reasoning_tokens: i64,
}

/// llama.cpp's `timings`: tokens evaluated (`prompt_n`, besides `cache_n` read from its
/// cache) and generated (`predicted_n`).
#[derive(Debug, Default, Deserialize)]
struct Timings {
    #[serde(default, deserialize_with = "null_default")]
    prompt_n: i64,
    #[serde(default, deserialize_with = "null_default")]
    cache_n: i64,
    #[serde(default, deserialize_with = "null_default")]
    predicted_n: i64,
}

/// The usage reported, from `usage` or else llama.cpp's `timings`.
fn usage(usage: Option<&WireUsage>, timings: Option<&Timings>) -> Option<Usage> {
    let usage = match (usage, timings) {
        (Some(usage), _) => Usage {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            cached_prompt_tokens: usage.prompt_tokens_details.cached_tokens,
            reasoning_tokens: usage.completion_tokens_details.reasoning_tokens,
            ..Usage::default()
        },
        (None, Some(timings)) => Usage {
            prompt_tokens: timings.prompt_n + timings.cache_n,
            completion_tokens: timings.predicted_n,
            cached_prompt_tokens: timings.cache_n,
            ..Usage::default()
        },
        (None, None) => return None,
    };
    Some(Usage { total_tokens: usage.prompt_tokens + usage.completion_tokens, ..usage })
}

/// The finish, normalised: a refusal wins; a server that says `stop` after tool calls
/// (older Ollama) means tool calls; unknown words count as a stop, the raw word is kept.
fn finish(raw: Option<&str>, refused: bool, called_tools: bool) -> Finish {
    let raw = raw.unwrap_or_default();
    let reason = match raw {
        _ if refused => FinishReason::Refusal,
        "length" => FinishReason::Length,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        _ if called_tools => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    };
    Finish::new(reason, raw)
}

fn completion(body: ResponseBody) -> Result<Completion, ProviderError> {
    let usage = usage(body.usage.as_ref(), body.timings.as_ref());
    let Some(choice) = body.choices.into_iter().next() else {
        return Err(ProviderError::Malformed("the answer has no choices".to_owned()));
    };
    let message = choice.message;
    let mut calls: Vec<WireFunction> = Vec::new();
    let mut ids: Vec<Option<String>> = Vec::new();
    for call in message.tool_calls {
        ids.push(call.id);
        calls.push(call.function);
    }
    if let Some(function) = message.function_call {
        ids.push(None);
        calls.push(function);
    }
    let tool_calls: Vec<ToolCall> = calls
        .into_iter()
        .zip(ids)
        .enumerate()
        .map(|(index, (function, id))| ToolCall {
            id: id.filter(|id| !id.is_empty()).unwrap_or_else(|| made_up_tool_call_id(index)),
            name: function.name.unwrap_or_default(),
            arguments_json: function.arguments.unwrap_or_default(),
        })
        .collect();
    let refusal = message.refusal.filter(|r| !r.is_empty());
    let finish = finish(choice.finish_reason.as_deref(), refusal.is_some(), !tool_calls.is_empty());
    let content = refusal.or(message.content).unwrap_or_default();
    let id = if body.id.is_empty() { made_up_completion_id() } else { body.id };
    Ok(Completion {
        id,
        message: ChatMessage { role: MessageRole::Assistant as i32, content, tool_calls, ..ChatMessage::default() },
        finish,
        usage,
    })
}

fn made_up_completion_id() -> String {
    format!("chatcmpl-{}", uuid::Uuid::new_v4().simple())
}

// ---- streams ----

/// One `data:` event of a stream (`chat.completion.chunk`), or an error reported mid-stream.
#[derive(Debug, Deserialize)]
struct Chunk {
    #[serde(default, deserialize_with = "null_default")]
    id: String,
    #[serde(default, deserialize_with = "null_default")]
    choices: Vec<ChunkChoice>,
    usage: Option<WireUsage>,
    timings: Option<Timings>,
    error: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct ChunkChoice {
    /// Absent in Azure's content-filter chunks.
    #[serde(default, deserialize_with = "null_default")]
    delta: ChunkDelta,
    finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ChunkDelta {
    content: Option<String>,
    refusal: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    tool_calls: Vec<WireToolCall>,
}

/// The deltas of a stream of server-sent events: ends after [`Delta::Finish`] or the first error.
fn deltas(
    events: impl Stream<Item = Result<Event, ProviderError>> + Send + 'static,
    decoder: StreamDecoder,
) -> impl Stream<Item = Result<Delta, ProviderError>> + Send + 'static {
    let state = (events.boxed(), decoder, VecDeque::new());
    futures::stream::unfold(Some(state), |state| async move {
        let (mut events, mut decoder, mut pending) = state?;
        loop {
            if let Some(delta) = pending.pop_front() {
                return Some((Ok(delta), Some((events, decoder, pending))));
            }
            if decoder.done {
                return None;
            }
            let failure = match events.next().await {
                Some(Ok(event)) => match decoder.event(&event, &mut pending) {
                    Ok(()) => continue,
                    Err(error) => error,
                },
                Some(Err(error)) => error,
                None => ProviderError::Truncated,
            };
            return Some((Err(failure), None));
        }
    })
}

/// What a stream has said so far.
#[derive(Debug, Default)]
struct StreamDecoder {
    /// Whether [`Delta::Id`] was sent.
    id_sent: bool,
    /// The finish reason, held back until `[DONE]` because usage may follow it.
    finish_reason: Option<String>,
    /// Whether the model refused (its refusal is sent as text).
    refused: bool,
    /// Tool-call indexes already announced with their id and name.
    announced: BTreeSet<u32>,
    /// Whether `[DONE]` arrived: the stream is over.
    done: bool,
    /// Whether any chunk carried usage (or llama.cpp's `timings`).
    usage_seen: bool,
    /// Chunks that carried text or a tool-call fragment: the completion tokens of a server
    /// that streams one chunk per token and reports no usage.
    content_chunks: i64,
    /// The prompt's estimated tokens, for a stream that ends without usage; `None` (OpenAI,
    /// Azure: they report usage when asked) estimates nothing.
    estimated_prompt: Option<i64>,
}

impl StreamDecoder {
    /// Reads one event, queueing the deltas it carries.
    fn event(&mut self, event: &Event, out: &mut VecDeque<Delta>) -> Result<(), ProviderError> {
        let data = event.data.trim();
        if !matches!(event.event.as_str(), "" | "message" | "error") || data.is_empty() {
            return Ok(());
        }
        if data == "[DONE]" {
            let Some(raw) = self.finish_reason.take() else {
                return Err(ProviderError::Malformed("the stream ended without a finish_reason".to_owned()));
            };
            if let Some(prompt_tokens) = self.estimated_prompt.filter(|_| !self.usage_seen) {
                let completion_tokens = self.content_chunks;
                let total_tokens = prompt_tokens + completion_tokens;
                out.push_back(Delta::Usage(Usage {
                    prompt_tokens,
                    completion_tokens,
                    total_tokens,
                    ..Usage::default()
                }));
            }
            out.push_back(Delta::Finish(finish(Some(&raw), self.refused, !self.announced.is_empty())));
            self.done = true;
            return Ok(());
        }
        let chunk: Chunk = serde_json::from_str(data)
            .map_err(|error| ProviderError::Malformed(format!("a stream event is not a completion chunk: {error}")))?;
        if let Some(error) = chunk.error {
            return Err(stream_error(&error));
        }
        if !chunk.id.is_empty() && !self.id_sent {
            self.id_sent = true;
            out.push_back(Delta::Id(chunk.id));
        }
        let sent = out.len();
        for choice in chunk.choices {
            let delta = choice.delta;
            if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                self.push(out, Delta::Text(text));
            }
            if let Some(refusal) = delta.refusal.filter(|r| !r.is_empty()) {
                self.refused = true;
                self.push(out, Delta::Text(refusal));
            }
            for call in delta.tool_calls {
                if let Some(delta) = self.tool_call(call) {
                    self.push(out, Delta::ToolCall(delta));
                }
            }
            if let Some(reason) = choice.finish_reason.filter(|r| !r.is_empty()) {
                self.finish_reason = Some(reason);
            }
        }
        if out.iter().skip(sent).any(|delta| matches!(delta, Delta::Text(_) | Delta::ToolCall(_))) {
            self.content_chunks += 1;
        }
        if let Some(usage) = usage(chunk.usage.as_ref(), chunk.timings.as_ref()) {
            self.usage_seen = true;
            self.push(out, Delta::Usage(usage));
        }
        Ok(())
    }

    /// Queues `delta`, after a made-up id when the server sent none.
    fn push(&mut self, out: &mut VecDeque<Delta>, delta: Delta) {
        if !self.id_sent {
            self.id_sent = true;
            out.push_back(Delta::Id(made_up_completion_id()));
        }
        out.push_back(delta);
    }

    /// One tool-call fragment; the first of each index carries the id and name. Without an
    /// index, a fragment with an id starts the next call and one without continues the last.
    fn tool_call(&mut self, call: WireToolCall) -> Option<ToolCallDelta> {
        let count = u32::try_from(self.announced.len()).unwrap_or(u32::MAX);
        let index = call.index.unwrap_or(if call.id.is_some() { count } else { count.saturating_sub(1) });
        let first = self.announced.insert(index);
        let arguments_fragment = call.function.arguments.unwrap_or_default();
        if first {
            let id = call.id.filter(|id| !id.is_empty()).unwrap_or_else(|| made_up_tool_call_id(index as usize));
            let name = call.function.name.unwrap_or_default();
            Some(ToolCallDelta { index, id: Some(id), name: Some(name), arguments_fragment })
        } else if arguments_fragment.is_empty() {
            None
        } else {
            Some(ToolCallDelta { index, id: None, name: None, arguments_fragment })
        }
    }
}

/// An error the server reported inside the stream: its numeric `code` when it has one
/// (llama.cpp, Azure), else 500.
fn stream_error(error: &Value) -> ProviderError {
    let code = error.get("code").and_then(|code| code.as_u64().or_else(|| code.as_str()?.parse().ok()));
    let status = code.and_then(|code| u16::try_from(code).ok()).filter(|code| (400..=599).contains(code));
    let message = error_message(&json!({"error": error})).unwrap_or_else(|| error.to_string());
    ProviderError::Status { status: status.unwrap_or(500), retry_after: None, message: redact(&message, None) }
}

#[cfg(test)]
mod tests;
