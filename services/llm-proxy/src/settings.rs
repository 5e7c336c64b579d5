//! llm-proxy's own settings (`LLM_*`, plus the providers' conventional `OPENAI_API_KEY`
//! and friends): which providers are on and where they live, the model catalog (default,
//! aliases, fallbacks), timeouts, where keys come from, and prices.

use std::collections::BTreeMap;
use std::time::Duration;

use agentmesh_runtime::ServiceName;
use agentmesh_runtime::config::{Secret, Settings, SettingsReader};

/// Default `LLM_DEFAULT_MAX_TOKENS`: sent when a request sets none (Anthropic requires one).
pub const DEFAULT_MAX_TOKENS: u32 = 4096;

/// The model of the scripted provider that answers when nothing else is configured.
pub const SCRIPTED_DEFAULT_MODEL: &str = "scripted/echo";

/// Everything llm-proxy reads from its configuration.
#[derive(Debug, Clone)]
pub struct LlmSettings {
    /// `LLM_DEFAULT_MODEL`: what an empty `ChatRequest.model` selects; unset picks the
    /// first configured provider's first model (the scripted one when there is none).
    pub default_model: Option<String>,
    /// `LLM_FALLBACK_MODELS`: the chain tried when a request names none.
    pub fallback_models: Vec<String>,
    /// `LLM_MODEL_ALIASES`: `alias=provider/model`, comma-separated.
    pub aliases: BTreeMap<String, String>,
    /// `LLM_DEFAULT_MAX_TOKENS`.
    pub default_max_tokens: u32,
    /// `LLM_FIRST_TOKEN_TIMEOUT`: longest wait for a stream's first delta (per attempt).
    pub first_token_timeout: Duration,
    /// `LLM_STREAM_TIMEOUT`: longest a whole stream may last.
    pub stream_timeout: Duration,
    /// Where provider keys come from.
    pub key_source: KeySource,
    /// `LLM_KEY_REFRESH_INTERVAL`: how long a key read from secrets-broker is used before
    /// it is read again (a 401 reads it again at once).
    pub key_refresh_interval: Duration,
    /// `LLM_PRICES`: USD per million tokens, by `provider/model`.
    pub prices: BTreeMap<String, Price>,
    /// `LLM_SCRIPTED`: whether the scripted provider is on.
    pub scripted: ScriptedMode,
    /// `LLM_SCRIPTED_DELAY`: pause before each streamed token of the scripted provider.
    pub scripted_delay: Duration,
    /// OpenAI (on when it has a key or `LLM_PROVIDERS` names it).
    pub openai: EndpointSettings,
    /// Anthropic.
    pub anthropic: EndpointSettings,
    /// Google Gemini.
    pub gemini: EndpointSettings,
    /// Azure OpenAI (on when `LLM_AZURE_OPENAI_ENDPOINT` is set).
    pub azure: AzureSettings,
    /// `LLM_OPENAI_COMPATIBLE`: `name=base_url` pairs of OpenAI-compatible servers.
    pub compatible: Vec<CompatibleServer>,
    /// `LLM_PROVIDERS`: providers to turn on even without a key in the environment (their
    /// keys then come from secrets-broker); empty turns on those that have one.
    pub providers: Vec<String>,
}

/// Where provider keys come from (`LLM_KEY_SOURCE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    /// The environment's key when set, else secrets-broker (the default).
    Auto,
    /// Only the environment (`OPENAI_API_KEY`, ...): development without secrets-broker.
    Environment,
    /// Only secrets-broker, by the seed's secret names.
    SecretsBroker,
}

/// Whether the scripted provider is on (`LLM_SCRIPTED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptedMode {
    /// On when no other provider is configured (the default), so a first run answers.
    Auto,
    /// Always on (tests, benchmarks, demos).
    On,
    /// Never on.
    Off,
}

/// A price in USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    /// Per million prompt tokens.
    pub prompt: f64,
    /// Per million completion tokens.
    pub completion: f64,
    /// Per million prompt tokens read from cache (defaults to the prompt price).
    pub cached_prompt: f64,
}

/// One provider's endpoint and development key.
#[derive(Debug, Clone)]
pub struct EndpointSettings {
    /// Base URL of the API.
    pub base_url: String,
    /// Key from the environment, for development.
    pub env_key: Option<Secret>,
    /// Models listed by `ListModels`.
    pub models: Vec<String>,
}

/// Azure OpenAI.
#[derive(Debug, Clone)]
pub struct AzureSettings {
    /// `LLM_AZURE_OPENAI_ENDPOINT`, for example `https://my-resource.openai.azure.com`.
    pub endpoint: Option<String>,
    /// `LLM_AZURE_OPENAI_API_VERSION`.
    pub api_version: String,
    /// `LLM_AZURE_OPENAI_DEPLOYMENTS`: deployment names, listed as models.
    pub deployments: Vec<String>,
    /// `AZURE_OPENAI_API_KEY`.
    pub env_key: Option<Secret>,
}

/// An OpenAI-compatible server (vLLM, llama.cpp's server, Ollama).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompatibleServer {
    /// The provider name its models are called by.
    pub name: String,
    /// Base URL, for example `http://127.0.0.1:8080/v1`.
    pub base_url: String,
}

/// Default `LLM_AZURE_OPENAI_API_VERSION`.
pub const DEFAULT_AZURE_API_VERSION: &str = "2024-10-21";

impl Settings for LlmSettings {
    const SERVICE: ServiceName = ServiceName::LlmProxy;

    fn load(r: &mut SettingsReader<'_>) -> Self {
        let openai_base = r
            .opt::<String>("LLM_OPENAI_BASE_URL")
            .or_else(|| r.conventional("OPENAI_BASE_URL"))
            .unwrap_or_else(|| crate::provider::openai::OPENAI_BASE_URL.to_owned());
        let gemini_key = r.conventional("GEMINI_API_KEY").or_else(|| r.conventional("GOOGLE_API_KEY"));
        let settings = LlmSettings {
            default_model: r.opt::<String>("LLM_DEFAULT_MODEL").filter(|m| !m.is_empty()),
            fallback_models: r.get("LLM_FALLBACK_MODELS", Vec::new()),
            aliases: pairs(r, "LLM_MODEL_ALIASES"),
            default_max_tokens: r.get("LLM_DEFAULT_MAX_TOKENS", DEFAULT_MAX_TOKENS),
            first_token_timeout: r.get("LLM_FIRST_TOKEN_TIMEOUT", Duration::from_secs(30)),
            stream_timeout: r.get("LLM_STREAM_TIMEOUT", Duration::from_secs(300)),
            key_source: key_source(r),
            key_refresh_interval: r.get("LLM_KEY_REFRESH_INTERVAL", Duration::from_secs(60)),
            prices: prices(r),
            scripted: scripted_mode(r),
            scripted_delay: r.get("LLM_SCRIPTED_DELAY", Duration::from_millis(10)),
            openai: EndpointSettings {
                base_url: openai_base,
                env_key: r.conventional("OPENAI_API_KEY").map(Secret::new),
                models: r.get("LLM_OPENAI_MODELS", strings(&["gpt-4o", "gpt-4o-mini", "gpt-4.1", "o4-mini"])),
            },
            anthropic: EndpointSettings {
                base_url: r.get("LLM_ANTHROPIC_BASE_URL", "https://api.anthropic.com".to_owned()),
                env_key: r.conventional("ANTHROPIC_API_KEY").map(Secret::new),
                models: r.get(
                    "LLM_ANTHROPIC_MODELS",
                    strings(&["claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1"]),
                ),
            },
            gemini: EndpointSettings {
                base_url: r.get("LLM_GEMINI_BASE_URL", "https://generativelanguage.googleapis.com".to_owned()),
                env_key: gemini_key.map(Secret::new),
                models: r.get("LLM_GEMINI_MODELS", strings(&["gemini-2.5-flash", "gemini-2.5-pro"])),
            },
            azure: AzureSettings {
                endpoint: r.opt::<String>("LLM_AZURE_OPENAI_ENDPOINT").filter(|e| !e.is_empty()),
                api_version: r.get("LLM_AZURE_OPENAI_API_VERSION", DEFAULT_AZURE_API_VERSION.to_owned()),
                deployments: r.get("LLM_AZURE_OPENAI_DEPLOYMENTS", Vec::new()),
                env_key: r.conventional("AZURE_OPENAI_API_KEY").map(Secret::new),
            },
            compatible: pairs(r, "LLM_OPENAI_COMPATIBLE")
                .into_iter()
                .map(|(name, base_url)| CompatibleServer { name, base_url })
                .collect(),
            providers: r.get("LLM_PROVIDERS", Vec::new()),
        };
        settings.check(r);
        settings
    }
}

impl LlmSettings {
    /// Cross-field rules.
    fn check(&self, r: &mut SettingsReader<'_>) {
        if self.default_max_tokens == 0 {
            r.issue("LLM_DEFAULT_MAX_TOKENS", "must be at least 1");
        }
        for (name, value) in
            [("LLM_FIRST_TOKEN_TIMEOUT", self.first_token_timeout), ("LLM_STREAM_TIMEOUT", self.stream_timeout)]
        {
            if value.is_zero() {
                r.issue(name, "must be positive");
            }
        }
        for (alias, target) in &self.aliases {
            if alias.contains('/') || !target.contains('/') {
                r.issue(
                    "LLM_MODEL_ALIASES",
                    format!("{alias}={target}: an alias has no '/' and names a provider/model"),
                );
            }
        }
        for server in &self.compatible {
            if server.name.contains('/')
                || !(server.base_url.starts_with("http://") || server.base_url.starts_with("https://"))
            {
                r.issue(
                    "LLM_OPENAI_COMPATIBLE",
                    format!("{}: a name without '/' and an http(s) base URL", server.name),
                );
            }
            if crate::provider::BUILT_IN.contains(&server.name.as_str()) {
                r.issue("LLM_OPENAI_COMPATIBLE", format!("{}: the name of a built-in provider", server.name));
            }
        }
        for provider in &self.providers {
            let known = crate::provider::BUILT_IN.contains(&provider.as_str())
                || self.compatible.iter().any(|server| &server.name == provider);
            if !known {
                r.issue("LLM_PROVIDERS", format!("unknown provider {provider}"));
            }
        }
    }
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// `name=value` pairs, comma-separated.
fn pairs(r: &mut SettingsReader<'_>, key: &str) -> BTreeMap<String, String> {
    let items: Vec<String> = r.get(key, Vec::new());
    let mut pairs = BTreeMap::new();
    for item in items {
        match item.split_once('=') {
            Some((name, value)) if !name.trim().is_empty() && !value.trim().is_empty() => {
                pairs.insert(name.trim().to_owned(), value.trim().to_owned());
            }
            _ => r.issue(key, format!("{item:?} is not name=value")),
        }
    }
    pairs
}

fn key_source(r: &mut SettingsReader<'_>) -> KeySource {
    match r.get("LLM_KEY_SOURCE", "auto".to_owned()).as_str() {
        "auto" => KeySource::Auto,
        "environment" => KeySource::Environment,
        "secrets-broker" => KeySource::SecretsBroker,
        other => {
            r.issue("LLM_KEY_SOURCE", format!("{other:?}: expected auto, environment or secrets-broker"));
            KeySource::Auto
        }
    }
}

fn scripted_mode(r: &mut SettingsReader<'_>) -> ScriptedMode {
    match r.get("LLM_SCRIPTED", "auto".to_owned()).as_str() {
        "auto" => ScriptedMode::Auto,
        "on" | "true" => ScriptedMode::On,
        "off" | "false" => ScriptedMode::Off,
        other => {
            r.issue("LLM_SCRIPTED", format!("{other:?}: expected auto, on or off"));
            ScriptedMode::Auto
        }
    }
}

/// `provider/model=prompt:completion[:cached]`, USD per million tokens.
fn prices(r: &mut SettingsReader<'_>) -> BTreeMap<String, Price> {
    let mut prices = BTreeMap::new();
    for (model, text) in pairs(r, "LLM_PRICES") {
        let numbers: Vec<Option<f64>> =
            text.split(':').map(|n| n.trim().parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0)).collect();
        match numbers.as_slice() {
            [Some(prompt), Some(completion)] => {
                prices.insert(model, Price { prompt: *prompt, completion: *completion, cached_prompt: *prompt });
            }
            [Some(prompt), Some(completion), Some(cached_prompt)] => {
                prices.insert(model, Price { prompt: *prompt, completion: *completion, cached_prompt: *cached_prompt });
            }
            _ => r.issue(
                "LLM_PRICES",
                format!("{model}={text}: expected prompt:completion[:cached] USD per million tokens"),
            ),
        }
    }
    prices
}
