//! Google's Gemini API (the Generative Language API, `v1beta`), so that agents can use
//! Gemini models through the same contract as every other provider.
//!
//! Unary calls go to `models/{model}:generateContent`, streams to
//! `models/{model}:streamGenerateContent?alt=sse`, whose every `data:` is a whole
//! `GenerateContentResponse` chunk. The stream has no end event: it is complete when a
//! chunk carries the candidate's `finishReason`, and cut off otherwise. The key travels
//! in the `x-goog-api-key` header, never in the URL, so it cannot reach a log line.
//!
//! What does not map one to one:
//! - System messages, wherever they are, become the one `systemInstruction`.
//! - Gemini sends no tool-call ids: calls get made-up ones, and a tool result names its
//!   function (from `ChatMessage.name`, else from the assistant call with its id). Ids are
//!   never sent back, Gemini pairs calls and results by order.
//! - Gemini streams every function call whole, in one chunk: a streamed call is one
//!   [`Delta::ToolCall`] carrying all of its arguments.
//! - Gemini 3 rejects replayed function calls without the thought signature it attached
//!   to them, which the contract does not carry: the first replayed call of a turn (the
//!   one Gemini signs) carries Google's documented "skip validation" signature instead.
//! - Tool parameters and response schemas go as full JSON Schema (`parametersJsonSchema`,
//!   `responseJsonSchema`) rather than Gemini's older OpenAPI subset, so schemas with
//!   `additionalProperties` and friends are accepted as they are.
//! - `parallel_tool_calls` has no Gemini switch and is not sent; `strict` is implied
//!   (Gemini always holds the answer to the schema).

use std::collections::HashMap;
use std::time::Duration;

use std::borrow::Cow;

use agentmesh_proto::agentmesh::common::v1::{AudioPart, ImagePart, MessageRole, Usage, image_part};
use agentmesh_proto::agentmesh::llm::v1::{
    ChatMessage, ChatRequest, FinishReason, ToolCall, ToolCallDelta, response_format, tool_choice,
};
use agentmesh_proto::json::struct_to_object;
use agentmesh_runtime::config::Secret;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::http::{ErrorHints, HttpClient, redact};
use super::parts::{ModelPart, model_parts};
use super::{Completion, Delta, DeltaStream, Finish, Provider, ProviderError, ProviderRequest, made_up_tool_call_id};

/// The secret holding the API key.
const KEY_SECRET: &str = "google-api-key";

/// The thought signature Google documents for function calls replayed without their own
/// (history from another model, or from a contract that cannot carry it).
const SKIP_THOUGHT_SIGNATURE: &str = "skip_thought_signature_validator";

/// Image types Gemini reads, by file extension, for image URLs sent without a media type.
const IMAGE_TYPES: &[(&str, &str)] = &[
    ("png", "image/png"),
    ("jpg", "image/jpeg"),
    ("jpeg", "image/jpeg"),
    ("webp", "image/webp"),
    ("heic", "image/heic"),
    ("heif", "image/heif"),
];

/// The Gemini API.
#[derive(Debug, Clone)]
pub struct Gemini {
    /// Where the API lives, without a trailing `/` (`https://generativelanguage.googleapis.com`).
    base_url: String,
    /// The pooled client, reading Google's error bodies.
    http: HttpClient,
}

impl Gemini {
    /// The Gemini API at `base_url` (`https://generativelanguage.googleapis.com`, or a fake
    /// server in tests).
    pub fn new(base_url: impl Into<String>) -> Self {
        let base_url = base_url.into().trim_end_matches('/').to_owned();
        Self { base_url, http: HttpClient::new(error_message).with_error_hints(error_hints) }
    }

    /// The request for `method` (`generateContent`, `streamGenerateContent?alt=sse`) of the
    /// requested model, with its body and key, and the key to redact.
    fn post<'a>(
        &self,
        request: &ProviderRequest<'a>,
        method: &str,
    ) -> Result<(reqwest::RequestBuilder, &'a str), ProviderError> {
        let key = request
            .key
            .map(|key| key.expose())
            .filter(|key| !key.is_empty())
            .ok_or_else(|| ProviderError::MissingKey { secret: KEY_SECRET.to_owned() })?;
        let model = request.model;
        if model.is_empty() || !model.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            return Err(ProviderError::Unsupported(format!("{model:?} is not a Gemini model name")));
        }
        let body = request_body(request.request, request.max_tokens)?;
        let url = format!("{}/v1beta/models/{model}:{method}", self.base_url);
        Ok((self.http.client().post(url).header("x-goog-api-key", key).json(&body), key))
    }
}

#[async_trait::async_trait]
impl Provider for Gemini {
    fn name(&self) -> &str {
        "gemini"
    }

    fn key_secret(&self) -> Option<&str> {
        Some(KEY_SECRET)
    }

    async fn chat(&self, request: ProviderRequest<'_>) -> Result<Completion, ProviderError> {
        let (http_request, key) = self.post(&request, "generateContent")?;
        let response: GenerateContentResponse = self.http.json(http_request, Some(key)).await?;
        completion(response)
    }

    async fn stream(&self, request: ProviderRequest<'_>) -> Result<DeltaStream, ProviderError> {
        let (http_request, key) = self.post(&request, "streamGenerateContent?alt=sse")?;
        let events = Box::pin(self.http.events(http_request, Some(key)).await?);
        let state = StreamState { secret: Secret::new(key), ..StreamState::default() };
        let deltas = futures::stream::unfold(Some((events, state)), |running| async move {
            let (mut events, mut state) = running?;
            loop {
                let deltas = match events.next().await {
                    None => Err(ProviderError::Truncated),
                    Some(Err(error)) => Err(error),
                    Some(Ok(event)) if !(event.event.is_empty() || event.event == "message") => continue,
                    Some(Ok(event)) if event.data.trim().is_empty() => continue,
                    Some(Ok(event)) => state.on_data(&event.data),
                };
                return match deltas {
                    Ok(deltas) if deltas.is_empty() => continue,
                    Ok(deltas) => {
                        let finished = matches!(deltas.last(), Some(Delta::Finish(_)));
                        Some((deltas.into_iter().map(Ok).collect::<Vec<_>>(), (!finished).then_some((events, state))))
                    }
                    Err(error) => Some((vec![Err(error)], None)),
                };
            }
        });
        Ok(Box::pin(deltas.flat_map(futures::stream::iter)))
    }
}

// ---- Request ------------------------------------------------------------------------

/// The `generateContent` body for `request`.
fn request_body(request: &ChatRequest, max_tokens: u32) -> Result<Value, ProviderError> {
    let conversation = Conversation::of(&request.messages)?;
    let mut body = Map::new();
    if !conversation.system.is_empty() {
        body.insert("systemInstruction".into(), json!({"parts": conversation.system}));
    }
    body.insert("contents".into(), Value::Array(conversation.contents()));
    body.insert("generationConfig".into(), generation_config(request, max_tokens)?);
    if !request.tools.is_empty() {
        let declarations: Vec<Value> = request
            .tools
            .iter()
            .map(|tool| {
                let mut declaration = json!({"name": tool.name, "description": tool.description});
                if let Some(parameters) = &tool.parameters {
                    declaration["parametersJsonSchema"] = Value::Object(struct_to_object(parameters));
                }
                declaration
            })
            .collect();
        body.insert("tools".into(), json!([{"functionDeclarations": declarations}]));
    }
    if let Some(config) = function_calling_config(request)? {
        body.insert("toolConfig".into(), json!({"functionCallingConfig": config}));
    }
    if let Some(options) = &request.provider_options
        && !options.gemini_safety_settings.is_empty()
    {
        let settings: Vec<Value> = options
            .gemini_safety_settings
            .iter()
            .map(|setting| json!({"category": setting.category, "threshold": setting.threshold}))
            .collect();
        body.insert("safetySettings".into(), Value::Array(settings));
    }
    Ok(Value::Object(body))
}

/// `generationConfig`: sampling, the token limit (always sent), stop sequences and the
/// answer's shape.
fn generation_config(request: &ChatRequest, max_tokens: u32) -> Result<Value, ProviderError> {
    let mut config = Map::new();
    config.insert("maxOutputTokens".into(), max_tokens.into());
    if let Some(temperature) = request.temperature {
        config.insert("temperature".into(), temperature.into());
    }
    if let Some(top_p) = request.top_p {
        config.insert("topP".into(), top_p.into());
    }
    if !request.stop.is_empty() {
        config.insert("stopSequences".into(), request.stop.clone().into());
    }
    if let Some(format) = &request.response_format {
        match response_format::Type::try_from(format.r#type) {
            Ok(response_format::Type::Unspecified | response_format::Type::Text) => {}
            Ok(response_format::Type::JsonObject) => {
                config.insert("responseMimeType".into(), "application/json".into());
            }
            Ok(response_format::Type::JsonSchema) => {
                let schema =
                    format.json_schema.as_ref().and_then(|format| format.schema.as_ref()).ok_or_else(|| {
                        ProviderError::Unsupported("a json_schema response format needs its schema".to_owned())
                    })?;
                config.insert("responseMimeType".into(), "application/json".into());
                config.insert("responseJsonSchema".into(), Value::Object(struct_to_object(schema)));
            }
            Err(_) => {
                return Err(ProviderError::Unsupported(format!("unknown response format type {}", format.r#type)));
            }
        }
    }
    Ok(Value::Object(config))
}

/// `functionCallingConfig` for the request's tool choice, when it makes one.
fn function_calling_config(request: &ChatRequest) -> Result<Option<Value>, ProviderError> {
    let Some(choice) = request.tool_choice.as_ref().and_then(|choice| choice.choice.as_ref()) else {
        return Ok(None);
    };
    let config = match choice {
        tool_choice::Choice::Tool(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
        tool_choice::Choice::Mode(mode) => match tool_choice::Mode::try_from(*mode) {
            Ok(tool_choice::Mode::Unspecified) => return Ok(None),
            Ok(tool_choice::Mode::Auto) => json!({"mode": "AUTO"}),
            Ok(tool_choice::Mode::None) => json!({"mode": "NONE"}),
            Ok(tool_choice::Mode::Required) => json!({"mode": "ANY"}),
            Err(_) => return Err(ProviderError::Unsupported(format!("unknown tool choice mode {mode}"))),
        },
    };
    Ok(Some(config))
}

/// The conversation as Gemini takes it: the system instruction apart, and the turns.
#[derive(Debug, Default)]
struct Conversation {
    /// Parts of `systemInstruction`, from every system message.
    system: Vec<Value>,
    /// The turns, oldest first.
    turns: Vec<Turn>,
}

/// One `Content` of `contents`.
#[derive(Debug)]
struct Turn {
    /// `user` or `model`.
    role: &'static str,
    /// Its parts, never empty once pushed.
    parts: Vec<Value>,
    /// Whether it holds tool results, so that the next tool result joins it: Gemini wants
    /// the answers to one turn's function calls together.
    tool_results: bool,
}

impl Conversation {
    /// Translates `messages`; what Gemini cannot take is [`ProviderError::Unsupported`].
    fn of(messages: &[ChatMessage]) -> Result<Self, ProviderError> {
        let mut conversation = Conversation::default();
        // The function name of every tool call so far, for tool results naming only the call.
        let mut call_names: HashMap<&str, &str> = HashMap::new();
        for message in messages {
            let role = MessageRole::try_from(message.role)
                .map_err(|_| ProviderError::Unsupported(format!("unknown message role {}", message.role)))?;
            match role {
                MessageRole::System => conversation.system.extend(text_parts(message, "system")?),
                MessageRole::Unspecified | MessageRole::User => {
                    let parts = user_parts(message)?;
                    conversation.push(Turn { role: "user", parts, tool_results: false });
                }
                MessageRole::Assistant => {
                    let mut parts = text_parts(message, "assistant")?;
                    for (position, call) in message.tool_calls.iter().enumerate() {
                        call_names.insert(&call.id, &call.name);
                        parts.push(function_call_part(call, position == 0)?);
                    }
                    conversation.push(Turn { role: "model", parts, tool_results: false });
                }
                MessageRole::Tool => {
                    let parts = tool_result_parts(message, &call_names)?;
                    conversation.push(Turn { role: "user", parts, tool_results: true });
                }
            }
        }
        Ok(conversation)
    }

    /// Adds a turn; tool results join the tool results before them, and empty turns are
    /// dropped (Gemini refuses a content without parts).
    fn push(&mut self, turn: Turn) {
        if turn.parts.is_empty() {
            return;
        }
        match self.turns.last_mut() {
            Some(last) if turn.tool_results && last.tool_results => last.parts.extend(turn.parts),
            _ => self.turns.push(turn),
        }
    }

    /// The turns as `contents`.
    fn contents(self) -> Vec<Value> {
        self.turns.into_iter().map(|turn| json!({"role": turn.role, "parts": turn.parts})).collect()
    }
}

/// The text of a message that may hold no images (`who` names it in the error).
fn text_parts(message: &ChatMessage, who: &str) -> Result<Vec<Value>, ProviderError> {
    let mut parts = text_part(&message.content).into_iter().collect::<Vec<_>>();
    for part in model_parts(&message.parts)? {
        match part {
            ModelPart::Text(text) => parts.extend(text_part(&text)),
            ModelPart::Image(_) | ModelPart::Audio(_) => {
                return Err(ProviderError::Unsupported(format!(
                    "Gemini takes images and audio on user and tool messages, not on {who} messages"
                )));
            }
        }
    }
    Ok(parts)
}

/// A text part, unless the text is empty (Gemini refuses empty text parts).
fn text_part(text: &str) -> Option<Value> {
    (!text.is_empty()).then(|| json!({"text": text}))
}

/// A user message's text, images and audio, in order.
fn user_parts(message: &ChatMessage) -> Result<Vec<Value>, ProviderError> {
    let mut parts: Vec<Value> = text_part(&message.content).into_iter().collect();
    for part in model_parts(&message.parts)? {
        match part {
            ModelPart::Text(text) => parts.extend(text_part(&text)),
            ModelPart::Image(image) => parts.push(image_part(&image)?),
            ModelPart::Audio(audio) => parts.push(audio_part(audio)?),
        }
    }
    Ok(parts)
}

/// Audio, inline.
fn audio_part(audio: &AudioPart) -> Result<Value, ProviderError> {
    if audio.mime_type.is_empty() {
        return Err(ProviderError::Unsupported("audio needs its mime_type".to_owned()));
    }
    Ok(json!({"inlineData": {"mimeType": audio.mime_type, "data": BASE64.encode(&audio.data)}}))
}

/// An image: bytes and `data:` URLs inline, other URLs by reference.
fn image_part(image: &ImagePart) -> Result<Value, ProviderError> {
    match &image.source {
        Some(image_part::Source::Data(bytes)) => {
            if image.mime_type.is_empty() {
                return Err(ProviderError::Unsupported("an image given as bytes needs its mime_type".to_owned()));
            }
            Ok(json!({"inlineData": {"mimeType": image.mime_type, "data": BASE64.encode(bytes)}}))
        }
        Some(image_part::Source::Url(url)) => match url.strip_prefix("data:") {
            Some(data_url) => {
                let (media_type, data) = data_url
                    .split_once(";base64,")
                    .ok_or_else(|| ProviderError::Unsupported("Gemini takes base64 data: URLs only".to_owned()))?;
                let mime_type = if image.mime_type.is_empty() { media_type } else { &image.mime_type };
                Ok(json!({"inlineData": {"mimeType": mime_type, "data": data}}))
            }
            None => {
                let mime_type = if image.mime_type.is_empty() {
                    mime_type_of_url(url).ok_or_else(|| {
                        ProviderError::Unsupported(format!(
                            "the image {url} needs a mime_type: Gemini requires one and its name does not tell"
                        ))
                    })?
                } else {
                    &image.mime_type
                };
                Ok(json!({"fileData": {"mimeType": mime_type, "fileUri": url}}))
            }
        },
        None => Err(ProviderError::Unsupported("an image part without an image".to_owned())),
    }
}

/// The media type an image URL's file extension tells, among those Gemini reads.
fn mime_type_of_url(url: &str) -> Option<&'static str> {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let name = path.rsplit('/').next().unwrap_or_default();
    let (_, extension) = name.rsplit_once('.')?;
    IMAGE_TYPES.iter().find(|(known, _)| known.eq_ignore_ascii_case(extension)).map(|(_, mime_type)| *mime_type)
}

/// A replayed function call; the first of a turn carries the signature that lets Gemini 3
/// accept it (Gemini signs only the first of parallel calls).
fn function_call_part(call: &ToolCall, first: bool) -> Result<Value, ProviderError> {
    let args = if call.arguments_json.trim().is_empty() {
        Value::Object(Map::new())
    } else {
        match serde_json::from_str::<Value>(&call.arguments_json) {
            Ok(args @ Value::Object(_)) => args,
            _ => {
                return Err(ProviderError::Unsupported(format!(
                    "the arguments of tool call {} are not a JSON object, which Gemini requires",
                    call.id
                )));
            }
        }
    };
    let mut part = json!({"functionCall": {"name": call.name, "args": args}});
    if first {
        part["thoughtSignature"] = SKIP_THOUGHT_SIGNATURE.into();
    }
    Ok(part)
}

/// A tool result: its `functionResponse` (Gemini wants an object: `{"content": text}`, or
/// `{"error": text}` for a failure), then its images.
fn tool_result_parts(message: &ChatMessage, call_names: &HashMap<&str, &str>) -> Result<Vec<Value>, ProviderError> {
    let name = message
        .name
        .as_deref()
        .filter(|name| !name.is_empty())
        .or_else(|| message.tool_call_id.as_deref().and_then(|id| call_names.get(id).copied()))
        .ok_or_else(|| {
            ProviderError::Unsupported(
                "Gemini needs the tool's name with its result: set name, or answer a call made earlier".to_owned(),
            )
        })?;
    let mut texts: Vec<Cow<'_, str>> = Vec::new();
    let mut images = Vec::new();
    if !message.content.is_empty() {
        texts.push(Cow::Borrowed(&message.content));
    }
    for part in model_parts(&message.parts)? {
        match part {
            ModelPart::Text(text) if !text.is_empty() => texts.push(text),
            ModelPart::Text(_) => {}
            ModelPart::Image(image) => images.push(image_part(&image)?),
            ModelPart::Audio(audio) => images.push(audio_part(audio)?),
        }
    }
    let field = if message.is_error { "error" } else { "content" };
    let response = json!({"functionResponse": {"name": name, "response": {(field): texts.join("\n")}}});
    Ok(std::iter::once(response).chain(images).collect())
}

// ---- Response -----------------------------------------------------------------------

/// A `generateContent` answer, or one chunk of a stream.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateContentResponse {
    #[serde(default)]
    candidates: Vec<Candidate>,
    prompt_feedback: Option<PromptFeedback>,
    usage_metadata: Option<UsageMetadata>,
    response_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate {
    content: Option<Content>,
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Content {
    #[serde(default)]
    parts: Vec<Part>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Part {
    text: Option<String>,
    /// A thought summary rather than answer text.
    #[serde(default)]
    thought: bool,
    function_call: Option<FunctionCall>,
}

#[derive(Debug, Deserialize)]
struct FunctionCall {
    id: Option<String>,
    name: String,
    args: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback {
    /// Why the prompt was refused (then there are no candidates).
    block_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct UsageMetadata {
    prompt_token_count: i64,
    candidates_token_count: i64,
    cached_content_token_count: i64,
    thoughts_token_count: i64,
}

impl UsageMetadata {
    /// The contract's usage: thinking counts as completion (Gemini counts it apart), and the
    /// total is recomputed to match.
    fn usage(&self) -> Usage {
        let completion_tokens = self.candidates_token_count + self.thoughts_token_count;
        Usage {
            prompt_tokens: self.prompt_token_count,
            completion_tokens,
            total_tokens: self.prompt_token_count + completion_tokens,
            cached_prompt_tokens: self.cached_content_token_count,
            reasoning_tokens: self.thoughts_token_count,
            ..Usage::default()
        }
    }
}

/// A whole answer: the stream's translation applied to its one response.
fn completion(response: GenerateContentResponse) -> Result<Completion, ProviderError> {
    let mut state = StreamState::default();
    let mut id = String::new();
    let mut message = ChatMessage { role: MessageRole::Assistant as i32, ..ChatMessage::default() };
    let mut usage = None;
    for delta in state.on_chunk(response) {
        match delta {
            Delta::Id(response_id) => id = response_id,
            Delta::Text(text) => message.content.push_str(&text),
            Delta::ToolCall(call) => message.tool_calls.push(ToolCall {
                id: call.id.unwrap_or_default(),
                name: call.name.unwrap_or_default(),
                arguments_json: call.arguments_fragment,
            }),
            Delta::Usage(reported) => usage = Some(reported),
            Delta::Finish(finish) => return Ok(Completion { id, message, finish, usage }),
        }
    }
    Err(ProviderError::Malformed("the answer has neither a finishReason nor a blockReason".to_owned()))
}

/// What a stream has sent so far.
#[derive(Debug, Default)]
struct StreamState {
    /// Whether [`Delta::Id`] was sent (with the first chunk).
    id_sent: bool,
    /// Tool calls sent so far, which is the next call's index.
    tool_calls: u32,
    /// The latest usage (every chunk reports it so far), sent just before the finish.
    usage: Option<Usage>,
    /// The API key, to redact from in-stream error messages.
    secret: Secret,
}

impl StreamState {
    /// The deltas of one SSE `data`: a response chunk, or an error Google reports mid-stream.
    fn on_data(&mut self, data: &str) -> Result<Vec<Delta>, ProviderError> {
        let secret = Some(self.secret.expose());
        let json: Value = serde_json::from_str(data).map_err(|error| {
            ProviderError::Malformed(redact(&format!("a stream chunk is not JSON: {error}"), secret))
        })?;
        if let Some(error) = json.get("error") {
            let hints = error_hints(&json);
            let status = error.get("code").and_then(Value::as_u64).and_then(|code| u16::try_from(code).ok());
            return Err(ProviderError::Status {
                status: hints.status.or(status).unwrap_or(500),
                retry_after: hints.retry_after,
                message: redact(&error_message(&json).unwrap_or_else(|| error.to_string()), secret),
            });
        }
        let chunk: GenerateContentResponse = serde_json::from_value(json)
            .map_err(|error| ProviderError::Malformed(redact(&format!("a stream chunk: {error}"), secret)))?;
        Ok(self.on_chunk(chunk))
    }

    /// The deltas of one response chunk; [`Delta::Finish`] comes last when the chunk ends
    /// the answer.
    fn on_chunk(&mut self, chunk: GenerateContentResponse) -> Vec<Delta> {
        let mut deltas = Vec::new();
        if !self.id_sent {
            self.id_sent = true;
            let id = chunk.response_id.unwrap_or_else(|| format!("gemini-{}", uuid::Uuid::new_v4().simple()));
            deltas.push(Delta::Id(id));
        }
        if let Some(usage) = &chunk.usage_metadata {
            self.usage = Some(usage.usage());
        }
        let Some(candidate) = chunk.candidates.into_iter().next() else {
            if let Some(reason) = chunk.prompt_feedback.and_then(|feedback| feedback.block_reason) {
                self.finish(&mut deltas, Finish::new(FinishReason::ContentFilter, reason));
            }
            return deltas;
        };
        for part in candidate.content.map(|content| content.parts).unwrap_or_default() {
            if part.thought {
                continue;
            }
            if let Some(text) = part.text.filter(|text| !text.is_empty()) {
                deltas.push(Delta::Text(text));
            }
            if let Some(call) = part.function_call {
                let index = self.tool_calls;
                self.tool_calls += 1;
                let id = call.id.filter(|id| !id.is_empty()).unwrap_or_else(|| made_up_tool_call_id(index as usize));
                deltas.push(Delta::ToolCall(ToolCallDelta {
                    index,
                    id: Some(id),
                    name: Some(call.name),
                    arguments_fragment: call.args.map_or_else(|| "{}".to_owned(), |args| args.to_string()),
                }));
            }
        }
        if let Some(raw) = candidate.finish_reason {
            let finish = finish(raw, self.tool_calls > 0);
            self.finish(&mut deltas, finish);
        }
        deltas
    }

    fn finish(&mut self, deltas: &mut Vec<Delta>, finish: Finish) {
        deltas.extend(self.usage.take().map(Delta::Usage));
        deltas.push(Delta::Finish(finish));
    }
}

/// The contract's reason for Gemini's `finishReason`: `STOP` after function calls is
/// [`FinishReason::ToolCalls`]; failed function calls are [`FinishReason::Error`]; reasons
/// without a counterpart (`LANGUAGE`, `OTHER`, new ones) stay unspecified, raw kept.
fn finish(raw: String, tool_calls: bool) -> Finish {
    let reason = match raw.as_str() {
        "STOP" if tool_calls => FinishReason::ToolCalls,
        "STOP" => FinishReason::Stop,
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT"
        | "IMAGE_RECITATION" => FinishReason::ContentFilter,
        "MALFORMED_FUNCTION_CALL" | "UNEXPECTED_TOOL_CALL" | "TOO_MANY_TOOL_CALLS" | "MISSING_THOUGHT_SIGNATURE" => {
            FinishReason::Error
        }
        _ => FinishReason::Unspecified,
    };
    Finish::new(reason, raw)
}

// ---- Errors -------------------------------------------------------------------------

/// Google's error message: `{"error": {"code", "message", "status", "details"}}`.
fn error_message(body: &Value) -> Option<String> {
    body.pointer("/error/message").and_then(Value::as_str).map(str::to_owned)
}

/// What Google's error details say: `RetryInfo.retryDelay` (`"7s"`), and a wrong key
/// (`ErrorInfo.reason` `API_KEY_INVALID`, sent with 400) stands for 401.
fn error_hints(body: &Value) -> ErrorHints {
    let mut hints = ErrorHints::default();
    let details = body.pointer("/error/details").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    for detail in details {
        match detail.get("@type").and_then(Value::as_str) {
            Some("type.googleapis.com/google.rpc.RetryInfo") => {
                hints.retry_after = detail.get("retryDelay").and_then(Value::as_str).and_then(protobuf_duration);
            }
            Some("type.googleapis.com/google.rpc.ErrorInfo")
                if detail.get("reason").and_then(Value::as_str) == Some("API_KEY_INVALID") =>
            {
                hints.status = Some(401);
            }
            _ => {}
        }
    }
    hints
}

/// A protobuf `Duration` in its JSON form: seconds with an `s` (`"7s"`, `"0.250s"`).
fn protobuf_duration(text: &str) -> Option<Duration> {
    let seconds = text.strip_suffix('s')?.parse::<f64>().ok()?;
    Duration::try_from_secs_f64(seconds).ok()
}

#[cfg(test)]
mod tests;
