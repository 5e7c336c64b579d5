//! MCP results and tool descriptions in the broker's terms.
//!
//! Tool results become `agentmesh.common.v1.ContentPart`s — the type LLM messages carry —
//! with base64 payloads decoded to bytes; every MCP content type (text, image, audio,
//! resource link, embedded resource) has a part of its own, so nothing is flattened to text.

use agentmesh_proto::agentmesh::common::v1 as common;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use rmcp::model::{CallToolResult, ContentBlock, ResourceContents, Tool};
use serde_json::{Map, Value};

use super::error::ConnectionError;

/// A tool as its server describes it in `tools/list`.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoveredTool {
    /// The tool's name on its server, used to call it.
    pub remote_name: String,
    /// A human-readable title (`title`, else the annotations' `title`).
    pub title: Option<String>,
    /// What the tool does.
    pub description: Option<String>,
    /// JSON Schema of the arguments (`inputSchema`), a JSON object.
    pub input_schema: Map<String, Value>,
    /// JSON Schema of the structured result (`outputSchema`), when declared.
    pub output_schema: Option<Map<String, Value>>,
    /// Behaviour hints (`annotations`); untrusted unless the server is.
    pub annotations: ToolHints,
}

/// A tool's behaviour hints, each absent when the server does not say.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ToolHints {
    /// `readOnlyHint`.
    pub read_only: Option<bool>,
    /// `destructiveHint`.
    pub destructive: Option<bool>,
    /// `idempotentHint`.
    pub idempotent: Option<bool>,
    /// `openWorldHint`.
    pub open_world: Option<bool>,
}

/// The result of a tool call.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolResult {
    /// What the tool returned, in order.
    pub content: Vec<common::ContentPart>,
    /// The structured result (`structuredContent`), when the tool returned one.
    pub structured_content: Option<Map<String, Value>>,
    /// Whether the tool reported an error (the content then describes it).
    pub is_error: bool,
}

impl From<Tool> for DiscoveredTool {
    fn from(tool: Tool) -> Self {
        let annotations = tool.annotations.unwrap_or_default();
        DiscoveredTool {
            remote_name: tool.name.into_owned(),
            title: tool.title.or(annotations.title),
            description: tool.description.map(|description| description.into_owned()),
            input_schema: (*tool.input_schema).clone(),
            output_schema: tool.output_schema.map(|schema| (*schema).clone()),
            annotations: ToolHints {
                read_only: annotations.read_only_hint,
                destructive: annotations.destructive_hint,
                idempotent: annotations.idempotent_hint,
                open_world: annotations.open_world_hint,
            },
        }
    }
}

/// Converts a `tools/call` result; `tool` is the name called.
///
/// A tool-error result that is really a protocol error in disguise — the TypeScript SDK
/// turns JSON-RPC errors into `isError` results whose only text is `MCP error <code>:
/// <message>`, and the Python SDK answers an unknown tool with `Unknown tool: <name>` —
/// becomes the typed error it stands for, so that an unknown tool is
/// [`ConnectionError::ToolNotFound`] whichever SDK the server uses.
pub(crate) fn tool_result(result: CallToolResult, tool: &str) -> Result<ToolResult, ConnectionError> {
    let is_error = result.is_error.unwrap_or(false);
    if is_error && let Some(error) = disguised_protocol_error(&result, tool) {
        return Err(error);
    }
    let structured_content = match result.structured_content {
        None | Some(Value::Null) => None,
        Some(Value::Object(object)) => Some(object),
        Some(_) => return Err(ConnectionError::protocol("structuredContent is not a JSON object")),
    };
    let content = result.content.into_iter().map(content_part).collect::<Result<_, _>>()?;
    Ok(ToolResult { content, structured_content, is_error })
}

fn disguised_protocol_error(result: &CallToolResult, tool: &str) -> Option<ConnectionError> {
    let [ContentBlock::Text(text)] = result.content.as_slice() else { return None };
    let text = text.text.as_str();
    if text == format!("Unknown tool: {tool}") {
        return Some(ConnectionError::ToolNotFound { tool: tool.to_owned() });
    }
    let (code, message) = text.strip_prefix("MCP error ")?.split_once(": ")?;
    let code = code.parse::<i32>().ok()?;
    let error = rmcp::model::ErrorData::new(rmcp::model::ErrorCode(code), message.to_owned(), None);
    Some(ConnectionError::from_json_rpc(&error, Some(tool)))
}

fn content_part(block: ContentBlock) -> Result<common::ContentPart, ConnectionError> {
    use common::content_part::Part;
    let part = match block {
        ContentBlock::Text(text) => Part::Text(text.text),
        ContentBlock::Image(image) => Part::Image(common::ImagePart {
            source: Some(common::image_part::Source::Data(decode(&image.data, "image")?)),
            mime_type: image.mime_type,
            detail: String::new(),
        }),
        ContentBlock::Audio(audio) => {
            Part::Audio(common::AudioPart { data: decode(&audio.data, "audio")?, mime_type: audio.mime_type })
        }
        ContentBlock::ResourceLink(link) => Part::ResourceLink(common::ResourceLink {
            uri: link.uri,
            name: link.name,
            title: link.title,
            description: link.description,
            mime_type: link.mime_type,
        }),
        ContentBlock::Resource(embedded) => Part::Resource(match embedded.resource {
            ResourceContents::TextResourceContents { uri, mime_type, text, .. } => common::EmbeddedResource {
                uri,
                mime_type,
                contents: Some(common::embedded_resource::Contents::Text(text)),
            },
            ResourceContents::BlobResourceContents { uri, mime_type, blob, .. } => common::EmbeddedResource {
                uri,
                mime_type,
                contents: Some(common::embedded_resource::Contents::Blob(decode(&blob, "resource blob")?)),
            },
            _ => return Err(ConnectionError::protocol("an embedded resource of an unknown kind")),
        }),
        _ => return Err(ConnectionError::protocol("a content type outside the MCP specification")),
    };
    Ok(common::ContentPart { part: Some(part) })
}

fn decode(data: &str, what: &str) -> Result<Vec<u8>, ConnectionError> {
    BASE64.decode(data).map_err(|_| ConnectionError::protocol(format!("the {what} data is not valid base64")))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn result(json: Value) -> CallToolResult {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn every_content_type_maps_to_its_part() {
        let converted = tool_result(
            result(serde_json::json!({
                "content": [
                    {"type": "text", "text": "hi"},
                    {"type": "image", "data": "AAEC", "mimeType": "image/png"},
                    {"type": "audio", "data": "AwQ=", "mimeType": "audio/wav"},
                    {"type": "resource_link", "uri": "demo://a", "name": "a", "mimeType": "text/plain"},
                    {"type": "resource", "resource": {"uri": "demo://t", "text": "body"}},
                    {"type": "resource", "resource": {"uri": "demo://b", "blob": "BQY=", "mimeType": "application/gzip"}}
                ],
                "structuredContent": {"n": 1}
            })),
            "t",
        )
        .unwrap();
        use common::content_part::Part;
        let parts: Vec<Part> = converted.content.into_iter().map(|part| part.part.unwrap()).collect();
        assert_eq!(parts[0], Part::Text("hi".into()));
        let Part::Image(image) = &parts[1] else { panic!("{:?}", parts[1]) };
        assert_eq!(image.source, Some(common::image_part::Source::Data(vec![0, 1, 2])));
        assert_eq!(parts[2], Part::Audio(common::AudioPart { data: vec![3, 4], mime_type: "audio/wav".into() }));
        let Part::ResourceLink(link) = &parts[3] else { panic!("{:?}", parts[3]) };
        assert_eq!((link.uri.as_str(), link.mime_type.as_deref()), ("demo://a", Some("text/plain")));
        let Part::Resource(text) = &parts[4] else { panic!("{:?}", parts[4]) };
        assert_eq!(text.contents, Some(common::embedded_resource::Contents::Text("body".into())));
        let Part::Resource(blob) = &parts[5] else { panic!("{:?}", parts[5]) };
        assert_eq!(blob.contents, Some(common::embedded_resource::Contents::Blob(vec![5, 6])));
        assert_eq!(converted.structured_content.unwrap()["n"], 1);
        assert!(!converted.is_error);
    }

    #[test]
    fn disguised_protocol_errors_are_typed_and_real_tool_errors_are_kept() {
        let text =
            |text: &str| result(serde_json::json!({"content": [{"type": "text", "text": text}], "isError": true}));
        let missing = ConnectionError::ToolNotFound { tool: "nope".into() };
        assert_eq!(tool_result(text("MCP error -32602: Tool nope not found"), "nope"), Err(missing.clone()));
        assert_eq!(tool_result(text("Unknown tool: nope"), "nope"), Err(missing));
        let invalid = tool_result(text("MCP error -32602: Input validation error: a"), "get-sum").unwrap_err();
        assert_eq!(invalid.kind(), super::super::ErrorKind::InvalidParams);
        let failed = tool_result(text("Error executing tool fail: boom"), "fail").unwrap();
        assert!(failed.is_error);
    }

    #[test]
    fn non_object_structured_content_and_bad_base64_are_protocol_errors() {
        let array = result(serde_json::json!({"content": [], "structuredContent": [1]}));
        assert_eq!(tool_result(array, "t").unwrap_err().kind(), super::super::ErrorKind::Protocol);
        let image = result(serde_json::json!({"content": [{"type": "image", "data": "%%", "mimeType": "image/png"}]}));
        assert_eq!(tool_result(image, "t").unwrap_err().kind(), super::super::ErrorKind::Protocol);
    }
}
