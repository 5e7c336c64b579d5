//! Which providers are on, what models they offer and what a model name means: a request
//! names `provider/model` or an alias, and gets a chain of targets — the model itself, then
//! its fallbacks — that the proxy tries in order.

use std::collections::BTreeMap;
use std::sync::Arc;

use agentmesh_proto::agentmesh::llm::v1::{ListModelsResponse, ModelInfo};
use agentmesh_runtime::config::FeatureFlags;
use agentmesh_runtime::error::FieldViolation;
use agentmesh_runtime::{ApiError, ErrorCode};

use crate::keys::Keys;
use crate::provider::Provider;
use crate::provider::anthropic::Anthropic;
use crate::provider::gemini::Gemini;
use crate::provider::openai::ChatCompletions;
use crate::provider::scripted::{self, Scripted};
use crate::settings::{KeySource, LlmSettings, SCRIPTED_DEFAULT_MODEL, ScriptedMode};

/// One model of one provider, as a request's chain names it.
#[derive(Debug, Clone)]
pub struct Target {
    /// `provider/model`.
    pub full_name: String,
    /// The model inside the provider.
    pub model: String,
    /// The provider.
    pub provider: Arc<dyn Provider>,
}

/// The configured providers and models.
#[derive(Debug)]
pub struct Catalog {
    providers: BTreeMap<String, Arc<dyn Provider>>,
    /// Models listed per provider.
    models: BTreeMap<String, Vec<String>>,
    aliases: BTreeMap<String, String>,
    default_model: String,
    /// Whether `LLM_DEFAULT_MODEL` chose the default (else it follows the listed models).
    default_configured: bool,
    fallbacks: Vec<String>,
    /// `FEATURE_ENABLE_FALLBACKS` and `FEATURE_ENABLE_PROVIDER_FALLBACK`.
    fallbacks_enabled: bool,
    notice: String,
}

impl Catalog {
    /// The providers `settings` turn on, as `features` allow.
    pub fn from_settings(settings: &LlmSettings, features: &FeatureFlags) -> Self {
        let mut catalog = Catalog {
            providers: BTreeMap::new(),
            models: BTreeMap::new(),
            aliases: settings.aliases.clone(),
            default_model: String::new(),
            default_configured: settings.default_model.is_some(),
            fallbacks: settings.fallback_models.clone(),
            fallbacks_enabled: features.enable_fallbacks && features.enable_provider_fallback,
            notice: String::new(),
        };
        let named = |name: &str| settings.providers.iter().any(|p| p == name);
        let env_keys = settings.key_source != KeySource::SecretsBroker;
        let on = |name: &str, env_key: bool| named(name) || (env_keys && env_key);
        if on("openai", settings.openai.env_key.is_some()) {
            catalog.add(Arc::new(ChatCompletions::openai(&settings.openai.base_url)), &settings.openai.models);
        }
        if let Some(endpoint) = &settings.azure.endpoint {
            catalog.add(
                Arc::new(ChatCompletions::azure(endpoint, &settings.azure.api_version)),
                &settings.azure.deployments,
            );
        }
        if on("anthropic", settings.anthropic.env_key.is_some()) {
            catalog.add(Arc::new(Anthropic::new(&settings.anthropic.base_url)), &settings.anthropic.models);
        }
        if on("gemini", settings.gemini.env_key.is_some()) {
            catalog.add(Arc::new(Gemini::new(&settings.gemini.base_url)), &settings.gemini.models);
        }
        for server in &settings.compatible {
            catalog.add(Arc::new(ChatCompletions::compatible(&server.name, &server.base_url)), &[]);
        }
        let scripted = match settings.scripted {
            ScriptedMode::On => true,
            ScriptedMode::Off => false,
            ScriptedMode::Auto => catalog.providers.is_empty(),
        };
        if scripted {
            if catalog.providers.is_empty() {
                catalog.notice = "No LLM provider is configured: the scripted provider answers (set OPENAI_API_KEY, \
                                  ANTHROPIC_API_KEY, GOOGLE_API_KEY or LLM_OPENAI_COMPATIBLE to use a real model)."
                    .to_owned();
            }
            let models: Vec<String> = scripted::MODELS.iter().map(|m| (*m).to_owned()).collect();
            catalog.add(Arc::new(Scripted::new(settings.scripted_delay)), &models);
        }
        catalog.default_model = settings.default_model.clone().unwrap_or_else(|| catalog.first_model());
        if !features.enable_multiple_llm_providers {
            catalog.keep_only_the_default_provider();
        }
        catalog
    }

    /// `FEATURE_ENABLE_MULTIPLE_LLM_PROVIDERS=false`: only the default model's provider stays.
    fn keep_only_the_default_provider(&mut self) {
        let default = self.aliases.get(&self.default_model).unwrap_or(&self.default_model);
        let Some((provider, _)) = default.split_once('/') else { return };
        let provider = provider.to_owned();
        self.providers.retain(|name, _| *name == provider);
        self.models.retain(|name, _| *name == provider);
    }

    /// A catalog of exactly `providers` (each listing `models`), for tests and benchmarks.
    pub fn of(providers: Vec<(Arc<dyn Provider>, Vec<String>)>, default_model: &str, fallbacks: Vec<String>) -> Self {
        let mut catalog = Catalog {
            providers: BTreeMap::new(),
            models: BTreeMap::new(),
            aliases: BTreeMap::new(),
            default_model: default_model.to_owned(),
            default_configured: true,
            fallbacks,
            fallbacks_enabled: true,
            notice: String::new(),
        };
        for (provider, models) in providers {
            catalog.add(provider, &models);
        }
        catalog
    }

    fn add(&mut self, provider: Arc<dyn Provider>, models: &[String]) {
        let name = provider.name().to_owned();
        self.models.insert(name.clone(), models.to_vec());
        self.providers.insert(name, provider);
    }

    /// The first real provider's first model, else the scripted model when it is on;
    /// empty when no provider lists a model (requests must then name one).
    fn first_model(&self) -> String {
        let real = self
            .models
            .iter()
            .filter(|(provider, _)| provider.as_str() != "scripted")
            .find_map(|(provider, models)| models.first().map(|m| format!("{provider}/{m}")));
        match real {
            Some(model) => model,
            None if self.providers.contains_key("scripted") => SCRIPTED_DEFAULT_MODEL.to_owned(),
            None => String::new(),
        }
    }

    /// Asks providers without configured models which they serve (compatible servers'
    /// `GET /models`), so `ListModels` and the default model reflect them. A provider that
    /// does not answer keeps an empty list and is reported; requests may still name its
    /// models.
    pub async fn discover_models(&mut self, keys: &Keys) {
        for (name, provider) in &self.providers {
            if self.models.get(name).is_some_and(|models| !models.is_empty()) {
                continue;
            }
            let key = keys.key_for(provider.as_ref()).await.ok().flatten();
            match provider.discover_models(key.as_ref()).await {
                Ok(models) => {
                    self.models.insert(name.clone(), models);
                }
                Err(error) => tracing::warn!(provider = name.as_str(), %error, "models not listed"),
            }
        }
        if !self.default_configured {
            self.default_model = self.first_model();
        }
    }

    /// Something the operator should know (no provider configured); empty otherwise.
    pub fn notice(&self) -> &str {
        &self.notice
    }

    /// The model an empty request model selects.
    pub fn default_model(&self) -> &str {
        &self.default_model
    }

    /// The configured providers.
    pub fn providers(&self) -> impl Iterator<Item = &Arc<dyn Provider>> {
        self.providers.values()
    }

    /// What `name` (`provider/model`, an alias, or empty for the default) refers to;
    /// `field` names the request field for the validation error.
    pub fn resolve(&self, name: &str, field: &str) -> Result<Target, ApiError> {
        let name = if name.is_empty() { self.default_model.as_str() } else { name };
        if name.is_empty() {
            let message = "no default model is configured (LLM_DEFAULT_MODEL): name one as provider/model";
            return Err(ApiError::validation(vec![FieldViolation {
                field: field.to_owned(),
                message: message.to_owned(),
                value: name.into(),
            }]));
        }
        let full_name = self.aliases.get(name).map_or(name, String::as_str);
        let unknown = |message: String| {
            ApiError::validation(vec![FieldViolation { field: field.to_owned(), message, value: name.into() }])
        };
        let Some((provider_name, model)) = full_name.split_once('/') else {
            return Err(unknown(format!("expected provider/model or an alias; providers: {}", self.provider_list())));
        };
        if model.is_empty() {
            return Err(unknown("the model after the provider is empty".to_owned()));
        }
        let Some(provider) = self.providers.get(provider_name) else {
            return Err(unknown(format!(
                "provider {provider_name} is not configured; configured: {}",
                self.provider_list()
            )));
        };
        Ok(Target { full_name: full_name.to_owned(), model: model.to_owned(), provider: provider.clone() })
    }

    /// The targets to try for a request: its model, then its fallbacks (the request's, else
    /// the configured ones), each once; only its model when fallbacks are switched off.
    pub fn chain(&self, model: &str, fallbacks: &[String]) -> Result<Vec<Target>, ApiError> {
        let mut chain = vec![self.resolve(model, "model")?];
        if !self.fallbacks_enabled {
            return Ok(chain);
        }
        if fallbacks.is_empty() {
            // Configured fallbacks this deployment cannot serve were reported at start-up.
            for fallback in &self.fallbacks {
                if let Ok(target) = self.resolve(fallback, "fallback_models") {
                    push_new(&mut chain, target);
                }
            }
        }
        for (index, fallback) in fallbacks.iter().enumerate() {
            push_new(&mut chain, self.resolve(fallback, &format!("fallback_models.{index}"))?);
        }
        Ok(chain)
    }

    /// `ListModels`: every listed model, optionally of one provider.
    pub fn list(&self, provider: Option<&str>) -> Result<ListModelsResponse, ApiError> {
        if let Some(provider) = provider
            && !self.providers.contains_key(provider)
        {
            return Err(ApiError::new(ErrorCode::NotFound, format!("provider {provider} is not configured")));
        }
        let models = self
            .models
            .iter()
            .filter(|(name, _)| provider.is_none_or(|p| p == name.as_str()))
            .flat_map(|(name, models)| {
                models.iter().map(move |model| {
                    let id = format!("{name}/{model}");
                    ModelInfo {
                        aliases: self
                            .aliases
                            .iter()
                            .filter(|(_, target)| **target == id)
                            .map(|(a, _)| a.clone())
                            .collect(),
                        id,
                        provider: name.clone(),
                        context_window: context_window(name, model),
                        supports_tools: true,
                        supports_streaming: true,
                        scripted: name == "scripted",
                    }
                })
            })
            .collect();
        Ok(ListModelsResponse { models, default_model: self.default_model.clone(), notice: self.notice.clone() })
    }

    /// The configured default and fallback models that name no configured provider.
    pub fn unserved_models(&self) -> Vec<String> {
        std::iter::once(&self.default_model)
            .chain(&self.fallbacks)
            .filter(|model| self.resolve(model, "model").is_err())
            .cloned()
            .collect()
    }

    fn provider_list(&self) -> String {
        self.providers.keys().cloned().collect::<Vec<_>>().join(", ")
    }
}

/// Adds `target` to `chain` unless it is already there.
fn push_new(chain: &mut Vec<Target>, target: Target) {
    if !chain.iter().any(|t| t.full_name == target.full_name) {
        chain.push(target);
    }
}

/// The context window a provider publishes for its well-known models; 0 when unknown
/// (Azure deployments and compatible servers are named by their operators).
fn context_window(provider: &str, model: &str) -> i32 {
    match provider {
        "openai" if model.starts_with("gpt-4.1") => 1_047_576,
        "openai" if model.starts_with("gpt-4o") => 128_000,
        "openai" if model.starts_with("o3") || model.starts_with("o4") => 200_000,
        "anthropic" if model.starts_with("claude-") => 200_000,
        "gemini" if model.starts_with("gemini-2.5") => 1_048_576,
        _ => 0,
    }
}
