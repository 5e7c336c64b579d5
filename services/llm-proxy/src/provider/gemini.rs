//! Placeholder until the provider lands (not committed).
#![allow(missing_docs, clippy::all)]
use super::*;
#[derive(Debug)]
pub struct Gemini(String);
impl Gemini {
    pub fn new(base: &str) -> Self {
        Self(base.to_owned())
    }
    pub fn openai(base: &str) -> Self {
        Self(base.to_owned())
    }
    pub fn azure(base: &str, _v: &str) -> Self {
        Self(base.to_owned())
    }
    pub fn compatible(name: &str, _base: &str) -> Self {
        Self(name.to_owned())
    }
}
#[async_trait::async_trait]
impl Provider for Gemini {
    fn name(&self) -> &str {
        &self.0
    }
    fn key_secret(&self) -> Option<&str> {
        None
    }
    async fn chat(&self, _r: ProviderRequest<'_>) -> Result<Completion, ProviderError> {
        Err(ProviderError::Unsupported("x".into()))
    }
    async fn stream(&self, _r: ProviderRequest<'_>) -> Result<DeltaStream, ProviderError> {
        Err(ProviderError::Unsupported("x".into()))
    }
}
