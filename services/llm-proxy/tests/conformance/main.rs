//! The provider conformance suite: every provider runs the same cases against a local fake
//! server that answers with that provider's recorded wire format (committed under
//! `tests/fixtures/<provider>/`, SSE streams included). Each case checks what the provider
//! sent (path, auth header, body shape against `<case>.request.json`) and what it returned.
//!
//! A provider joins the suite with one [`Subject`] and one `conformance!` line.

mod anthropic;
mod gemini;
mod openai;
mod support;

use support::{Case, Subject};

/// Declares one test per case for a subject.
macro_rules! conformance {
    ($module:ident, $subject:expr) => {
        mod $module {
            use super::*;

            #[tokio::test]
            async fn plain_reply() {
                support::run(&$subject, Case::PlainReply).await;
            }
            #[tokio::test]
            async fn streamed_reply() {
                support::run(&$subject, Case::StreamedReply).await;
            }
            #[tokio::test]
            async fn tool_call() {
                support::run(&$subject, Case::ToolCall).await;
            }
            #[tokio::test]
            async fn streamed_tool_call() {
                support::run(&$subject, Case::StreamedToolCall).await;
            }
            #[tokio::test]
            async fn parallel_tool_calls() {
                support::run(&$subject, Case::ParallelToolCalls).await;
            }
            #[tokio::test]
            async fn tool_result() {
                support::run(&$subject, Case::ToolResult).await;
            }
            #[tokio::test]
            async fn json_schema() {
                support::run(&$subject, Case::JsonSchema).await;
            }
            #[tokio::test]
            async fn image_input() {
                support::run(&$subject, Case::ImageInput).await;
            }
            #[tokio::test]
            async fn unauthorized() {
                support::run(&$subject, Case::Unauthorized).await;
            }
            #[tokio::test]
            async fn rate_limited() {
                support::run(&$subject, Case::RateLimited).await;
            }
            #[tokio::test]
            async fn server_error() {
                support::run(&$subject, Case::ServerError).await;
            }
            #[tokio::test]
            async fn malformed_stream() {
                support::run(&$subject, Case::MalformedStream).await;
            }
            #[tokio::test]
            async fn disconnect_mid_stream() {
                support::run(&$subject, Case::DisconnectMidStream).await;
            }
            #[tokio::test]
            async fn slow_first_token() {
                support::run(&$subject, Case::SlowFirstToken).await;
            }
        }
    };
}

conformance!(openai_suite, openai::OPENAI);
conformance!(azure_suite, openai::AZURE);
conformance!(compatible_suite, openai::COMPATIBLE);
conformance!(anthropic_suite, anthropic::SUBJECT);
conformance!(gemini_suite, gemini::SUBJECT);
