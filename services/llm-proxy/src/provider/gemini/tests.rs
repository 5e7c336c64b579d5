//! Unit tests of the gemini translation the conformance suite does not reach.
use agentmesh_proto::agentmesh::common::v1::{ContentPart, content_part};
use agentmesh_proto::agentmesh::llm::v1::{
    GeminiSafetySetting, ProviderOptions, ResponseFormat, ToolChoice, ToolDefinition,
};
use wiremock::matchers::method;
use wiremock::{Mock, MockServer, ResponseTemplate};

use super::*;

fn message(role: MessageRole, content: &str) -> ChatMessage {
    ChatMessage { role: role as i32, content: content.to_owned(), ..ChatMessage::default() }
}

fn tool_result(content: &str, call_id: &str, name: Option<&str>) -> ChatMessage {
    ChatMessage {
        tool_call_id: Some(call_id.to_owned()),
        name: name.map(str::to_owned),
        ..message(MessageRole::Tool, content)
    }
}

fn calling(calls: &[(&str, &str, &str)]) -> ChatMessage {
    let tool_calls = calls
        .iter()
        .map(|(id, name, arguments)| ToolCall {
            id: (*id).to_owned(),
            name: (*name).to_owned(),
            arguments_json: (*arguments).to_owned(),
        })
        .collect();
    ChatMessage { tool_calls, ..message(MessageRole::Assistant, "") }
}

fn image(source: image_part::Source, mime_type: &str) -> ContentPart {
    ContentPart {
        part: Some(content_part::Part::Image(ImagePart {
            source: Some(source),
            mime_type: mime_type.to_owned(),
            detail: String::new(),
        })),
    }
}

fn asking(messages: Vec<ChatMessage>) -> ChatRequest {
    ChatRequest { messages, ..ChatRequest::default() }
}

fn body(request: &ChatRequest) -> Value {
    request_body(request, 100).unwrap()
}

fn unsupported(request: &ChatRequest) -> String {
    match request_body(request, 100) {
        Err(ProviderError::Unsupported(message)) => message,
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

fn with_tool_choice(choice: tool_choice::Choice) -> ChatRequest {
    ChatRequest {
        tool_choice: Some(ToolChoice { choice: Some(choice) }),
        tools: vec![ToolDefinition { name: "get_weather".to_owned(), ..ToolDefinition::default() }],
        ..asking(vec![message(MessageRole::User, "Hi")])
    }
}

#[test]
fn tool_choice_modes_and_named_tools_become_function_calling_modes() {
    let mode = |mode: tool_choice::Mode| body(&with_tool_choice(tool_choice::Choice::Mode(mode as i32)));
    assert_eq!(mode(tool_choice::Mode::None)["toolConfig"], json!({"functionCallingConfig": {"mode": "NONE"}}));
    assert_eq!(mode(tool_choice::Mode::Required)["toolConfig"], json!({"functionCallingConfig": {"mode": "ANY"}}));
    assert!(mode(tool_choice::Mode::Unspecified).get("toolConfig").is_none());
    let named = body(&with_tool_choice(tool_choice::Choice::Tool("get_weather".to_owned())));
    assert_eq!(
        named["toolConfig"],
        json!({"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["get_weather"]}})
    );
    assert_eq!(named["tools"][0]["functionDeclarations"][0]["name"], "get_weather");
    assert!(named["tools"][0]["functionDeclarations"][0].get("parametersJsonSchema").is_none());
}

#[test]
fn sampling_stop_sequences_json_mode_and_safety_settings_are_sent() {
    let request = ChatRequest {
        top_p: Some(0.5),
        stop: vec!["END".to_owned()],
        response_format: Some(ResponseFormat { r#type: response_format::Type::JsonObject as i32, json_schema: None }),
        provider_options: Some(ProviderOptions {
            gemini_safety_settings: vec![GeminiSafetySetting {
                category: "HARM_CATEGORY_HARASSMENT".to_owned(),
                threshold: "BLOCK_ONLY_HIGH".to_owned(),
            }],
            ..ProviderOptions::default()
        }),
        ..asking(vec![message(MessageRole::User, "Hi")])
    };
    let sent = body(&request);
    assert_eq!(
        sent["generationConfig"],
        json!({"maxOutputTokens": 100, "topP": 0.5, "stopSequences": ["END"], "responseMimeType": "application/json"})
    );
    assert_eq!(
        sent["safetySettings"],
        json!([{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_ONLY_HIGH"}])
    );
    let schemaless = ChatRequest {
        response_format: Some(ResponseFormat { r#type: response_format::Type::JsonSchema as i32, json_schema: None }),
        ..asking(vec![message(MessageRole::User, "Hi")])
    };
    assert!(unsupported(&schemaless).contains("schema"));
}

#[test]
fn system_messages_anywhere_become_the_system_instruction() {
    let request = asking(vec![
        message(MessageRole::System, "Be terse."),
        message(MessageRole::Unspecified, "Hi"),
        message(MessageRole::Assistant, "Hello."),
        message(MessageRole::System, "Answer in French."),
    ]);
    let sent = body(&request);
    assert_eq!(sent["systemInstruction"], json!({"parts": [{"text": "Be terse."}, {"text": "Answer in French."}]}));
    assert_eq!(
        sent["contents"],
        json!([{"role": "user", "parts": [{"text": "Hi"}]}, {"role": "model", "parts": [{"text": "Hello."}]}])
    );
}

#[test]
fn tool_results_are_named_by_their_call_merged_and_carry_errors_and_images() {
    let png = image(image_part::Source::Data(vec![1, 2, 3]), "image/png");
    let request = asking(vec![
        message(MessageRole::User, "Weather and a map of Paris?"),
        calling(&[("call_a", "get_weather", r#"{"city":"Paris"}"#), ("call_b", "get_map", "")]),
        tool_result("service down", "call_a", None),
        ChatMessage { parts: vec![png], ..tool_result("the map", "call_b", Some("get_map")) },
    ]);
    let mut failed = request.clone();
    failed.messages[2].is_error = true;
    let contents = body(&failed)["contents"].clone();
    assert_eq!(contents.as_array().map(Vec::len), Some(3), "the two results share one content: {contents}");
    assert_eq!(
        contents[1]["parts"],
        json!([
            {"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": SKIP_THOUGHT_SIGNATURE},
            {"functionCall": {"name": "get_map", "args": {}}},
        ])
    );
    assert_eq!(
        contents[2],
        json!({"role": "user", "parts": [
            {"functionResponse": {"name": "get_weather", "response": {"error": "service down"}}},
            {"functionResponse": {"name": "get_map", "response": {"content": "the map"}}},
            {"inlineData": {"mimeType": "image/png", "data": "AQID"}},
        ]})
    );
    let orphan = asking(vec![tool_result("21°C", "call_unknown", None)]);
    assert!(unsupported(&orphan).contains("name"));
}

#[test]
fn replayed_calls_need_object_arguments() {
    let request = asking(vec![calling(&[("call_a", "get_weather", "[1]")])]);
    assert!(unsupported(&request).contains("call_a"));
}

#[test]
fn image_urls_go_by_reference_with_a_known_type_and_data_urls_inline() {
    let url = |url: &str, mime_type: &str| {
        let user = ChatMessage {
            parts: vec![image(image_part::Source::Url(url.to_owned()), mime_type)],
            ..message(MessageRole::User, "")
        };
        asking(vec![user])
    };
    assert_eq!(
        body(&url("https://example.com/cat.JPG?size=large", ""))["contents"][0]["parts"][0],
        json!({"fileData": {"mimeType": "image/jpeg", "fileUri": "https://example.com/cat.JPG?size=large"}})
    );
    assert_eq!(
        body(&url("https://example.com/cat", "image/webp"))["contents"][0]["parts"][0]["fileData"]["mimeType"],
        "image/webp"
    );
    assert_eq!(
        body(&url("data:image/png;base64,AQID", ""))["contents"][0]["parts"][0],
        json!({"inlineData": {"mimeType": "image/png", "data": "AQID"}})
    );
    assert!(unsupported(&url("https://example.com/cat", "")).contains("mime_type"));
    assert!(unsupported(&url("data:image/svg+xml,<svg/>", "")).contains("base64"));
    let bytes =
        ChatMessage { parts: vec![image(image_part::Source::Data(vec![1]), "")], ..message(MessageRole::User, "") };
    assert!(unsupported(&asking(vec![bytes])).contains("mime_type"));
}

#[test]
fn images_only_go_on_user_and_tool_messages() {
    let png = image(image_part::Source::Data(vec![1]), "image/png");
    for role in [MessageRole::Assistant, MessageRole::System] {
        let request = asking(vec![ChatMessage { parts: vec![png.clone()], ..message(role, "look") }]);
        assert!(unsupported(&request).contains("images"), "{role:?}");
    }
}

fn answer(candidate: Value, usage: Value) -> GenerateContentResponse {
    serde_json::from_value(json!({"candidates": [candidate], "usageMetadata": usage, "responseId": "r1"})).unwrap()
}

#[test]
fn finish_reasons_are_normalised_and_kept_raw() {
    let finish_of = |raw: &str, parts: Value| {
        let candidate = json!({"content": {"parts": parts}, "finishReason": raw});
        completion(answer(candidate, json!({}))).unwrap().finish
    };
    let text = json!([{"text": "Hi"}]);
    assert_eq!(finish_of("MAX_TOKENS", text.clone()), Finish::new(FinishReason::Length, "MAX_TOKENS"));
    assert_eq!(finish_of("SAFETY", text.clone()), Finish::new(FinishReason::ContentFilter, "SAFETY"));
    assert_eq!(finish_of("RECITATION", text.clone()).reason, FinishReason::ContentFilter);
    assert_eq!(finish_of("MALFORMED_FUNCTION_CALL", json!([])).reason, FinishReason::Error);
    assert_eq!(finish_of("OTHER", text.clone()), Finish::new(FinishReason::Unspecified, "OTHER"));
    let call = json!([{"functionCall": {"name": "f", "args": {"a": 1}}}]);
    assert_eq!(finish_of("STOP", call), Finish::new(FinishReason::ToolCalls, "STOP"));
    assert_eq!(finish_of("STOP", text), Finish::new(FinishReason::Stop, "STOP"));
}

#[test]
fn a_blocked_prompt_is_a_content_filter_finish_with_no_answer() {
    let response: GenerateContentResponse = serde_json::from_value(json!({
        "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
        "usageMetadata": {"promptTokenCount": 7, "totalTokenCount": 7}
    }))
    .unwrap();
    let completion = completion(response).unwrap();
    assert_eq!(completion.finish, Finish::new(FinishReason::ContentFilter, "PROHIBITED_CONTENT"));
    assert!(completion.message.content.is_empty() && completion.message.tool_calls.is_empty());
    assert!(!completion.id.is_empty(), "a made-up id");
}

#[test]
fn usage_counts_thoughts_as_completion_and_reports_the_cache() {
    let candidate = json!({"content": {"parts": [
        {"text": "Thinking about greetings", "thought": true},
        {"text": "Hi"},
        {"functionCall": {"name": "f"}},
        {"functionCall": {"id": "fc_9", "name": "g", "args": {}}}
    ]}, "finishReason": "STOP"});
    let usage = json!({
        "promptTokenCount": 100, "cachedContentTokenCount": 60, "candidatesTokenCount": 5,
        "thoughtsTokenCount": 40, "totalTokenCount": 145
    });
    let completion = completion(answer(candidate, usage)).unwrap();
    assert_eq!(completion.id, "r1");
    assert_eq!(completion.message.content, "Hi", "thought summaries are not answer text");
    let calls = &completion.message.tool_calls;
    assert_eq!(calls[0].arguments_json, "{}");
    assert!(calls[0].id.starts_with("call_"), "a made-up id: {}", calls[0].id);
    assert_eq!(calls[1].id, "fc_9", "Gemini's own id when it sends one");
    assert_eq!(
        completion.usage,
        Some(Usage {
            prompt_tokens: 100,
            completion_tokens: 45,
            total_tokens: 145,
            cached_prompt_tokens: 60,
            reasoning_tokens: 40,
            ..Usage::default()
        })
    );
}

#[test]
fn a_unary_answer_without_a_finish_is_malformed() {
    let candidate = json!({"content": {"parts": [{"text": "Hi"}]}});
    assert!(matches!(completion(answer(candidate, json!({}))), Err(ProviderError::Malformed(_))));
}

#[test]
fn stream_chunks_send_the_id_once_and_usage_just_before_the_finish() {
    let mut state = StreamState::default();
    let first = state.on_data(r#"{"candidates":[{"content":{"parts":[{"text":"He"}]}}],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":1},"responseId":"r1"}"#).unwrap();
    assert_eq!(first, [Delta::Id("r1".to_owned()), Delta::Text("He".to_owned())]);
    let last = state.on_data(r#"{"candidates":[{"content":{"parts":[{"text":"llo"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":3,"candidatesTokenCount":2},"responseId":"r1"}"#).unwrap();
    let usage = Usage { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5, ..Usage::default() };
    assert_eq!(
        last,
        [Delta::Text("llo".to_owned()), Delta::Usage(usage), Delta::Finish(Finish::new(FinishReason::Stop, "STOP"))]
    );
}

#[test]
fn errors_inside_a_stream_keep_their_status_and_redact_the_key() {
    let mut state = StreamState { secret: Secret::new("sk-secret-key"), ..StreamState::default() };
    let error = state
        .on_data(
            r#"{"error":{"code":503,"message":"The model is overloaded (sk-secret-key).","status":"UNAVAILABLE"}}"#,
        )
        .unwrap_err();
    assert_eq!(
        error,
        ProviderError::Status {
            status: 503,
            retry_after: None,
            message: "The model is overloaded ([redacted]).".to_owned()
        }
    );
    assert!(matches!(state.on_data("{\"candidates\": [{"), Err(ProviderError::Malformed(_))));
}

#[test]
fn error_details_give_retry_delays_and_expose_wrong_keys() {
    let body = json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.", "details": [
        {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID", "domain": "googleapis.com"},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.250s"}
    ]}});
    assert_eq!(error_hints(&body), ErrorHints { retry_after: Some(Duration::from_millis(250)), status: Some(401) });
    assert_eq!(error_message(&body).as_deref(), Some("API key not valid. Please pass a valid API key."));
    assert_eq!(error_hints(&json!({"error": {"code": 500}})), ErrorHints::default());
    assert_eq!(protobuf_duration("-1s"), None);
    assert_eq!(protobuf_duration("7"), None);
}

fn call<'a>(request: &'a ChatRequest, key: Option<&'a Secret>, model: &'a str) -> ProviderRequest<'a> {
    ProviderRequest { model, request, max_tokens: 10, key }
}

#[tokio::test]
async fn a_missing_key_or_a_strange_model_name_fails_before_any_request() {
    let gemini = Gemini::new("http://127.0.0.1:9/");
    let request = asking(vec![message(MessageRole::User, "Hi")]);
    assert_eq!(
        gemini.chat(call(&request, None, "gemini-2.5-flash")).await,
        Err(ProviderError::MissingKey { secret: "google-api-key".to_owned() })
    );
    let key = Secret::new("AIza-test");
    assert!(matches!(
        gemini.stream(call(&request, Some(&key), "../files?x=1")).await.map(|_| ()),
        Err(ProviderError::Unsupported(_))
    ));
}

#[tokio::test]
async fn a_wrong_key_is_401_and_the_retry_delay_comes_from_the_body_without_a_header() {
    let server = MockServer::start().await;
    let wrong_key = json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",
        "status": "INVALID_ARGUMENT", "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
        "reason": "API_KEY_INVALID", "domain": "googleapis.com"}]}});
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(400).set_body_json(wrong_key))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    let quota = json!({"error": {"code": 429, "message": "Quota exceeded.", "status": "RESOURCE_EXHAUSTED",
        "details": [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "41s"}]}});
    Mock::given(method("POST")).respond_with(ResponseTemplate::new(429).set_body_json(quota)).mount(&server).await;
    let gemini = Gemini::new(server.uri());
    let request = asking(vec![message(MessageRole::User, "Hi")]);
    let key = Secret::new("AIza-test");
    let Err(ProviderError::Status { status, retry_after, .. }) =
        gemini.chat(call(&request, Some(&key), "gemini-2.5-flash")).await
    else {
        panic!("a status error");
    };
    assert_eq!((status, retry_after), (401, None));
    let Err(ProviderError::Status { status, retry_after, .. }) =
        gemini.stream(call(&request, Some(&key), "gemini-2.5-flash")).await.map(|_| ())
    else {
        panic!("a status error");
    };
    assert_eq!((status, retry_after), (429, Some(Duration::from_secs(41))));
}
