//! Streamed deltas put back together: the text, and each tool call whole from its
//! fragments, so a stream's last message carries the complete answer and the caller need
//! not reassemble it.

use agentmesh_proto::agentmesh::common::v1::MessageRole;
use agentmesh_proto::agentmesh::llm::v1::{ChatMessage, ToolCall, ToolCallDelta};

/// Collects one answer's deltas.
#[derive(Debug, Default)]
pub struct Assembler {
    text: String,
    /// Tool calls by their index in the answer.
    tool_calls: Vec<ToolCall>,
}

impl Assembler {
    /// Appends text.
    pub fn text(&mut self, text: &str) {
        self.text.push_str(text);
    }

    /// Adds a tool-call fragment: its id and name when given, its arguments appended.
    pub fn tool_call(&mut self, delta: &ToolCallDelta) {
        // A provider skipping indexes (or sending a huge one) appends rather than allocates.
        let index = usize::try_from(delta.index).unwrap_or(usize::MAX).min(self.tool_calls.len());
        if index == self.tool_calls.len() {
            self.tool_calls.push(ToolCall::default());
        }
        let call = &mut self.tool_calls[index];
        if let Some(id) = &delta.id {
            call.id.clone_from(id);
        }
        if let Some(name) = &delta.name {
            call.name.clone_from(name);
        }
        call.arguments_json.push_str(&delta.arguments_fragment);
    }

    /// The assistant message so far; calls that never got a name are dropped.
    pub fn finish(&mut self) -> ChatMessage {
        let tool_calls =
            std::mem::take(&mut self.tool_calls).into_iter().filter(|call| !call.name.is_empty()).collect();
        ChatMessage {
            role: MessageRole::Assistant as i32,
            content: std::mem::take(&mut self.text),
            tool_calls,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fragment(index: u32, id: Option<&str>, name: Option<&str>, arguments: &str) -> ToolCallDelta {
        ToolCallDelta {
            index,
            id: id.map(str::to_owned),
            name: name.map(str::to_owned),
            arguments_fragment: arguments.to_owned(),
        }
    }

    #[test]
    fn fragments_become_whole_calls_in_index_order() {
        let mut assembler = Assembler::default();
        assembler.text("Checking ");
        assembler.tool_call(&fragment(0, Some("a"), Some("get_weather"), "{\"ci"));
        assembler.tool_call(&fragment(1, Some("b"), Some("get_weather"), "{\"city\":"));
        assembler.tool_call(&fragment(0, None, None, "ty\":\"Paris\"}"));
        assembler.tool_call(&fragment(1, None, None, "\"Tokyo\"}"));
        assembler.text("both.");
        let message = assembler.finish();
        assert_eq!(message.content, "Checking both.");
        let calls: Vec<_> = message.tool_calls.iter().map(|c| (c.id.as_str(), c.arguments_json.as_str())).collect();
        assert_eq!(calls, [("a", r#"{"city":"Paris"}"#), ("b", r#"{"city":"Tokyo"}"#)]);
    }
}
