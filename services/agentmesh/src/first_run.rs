//! What `agentmesh up` tells a person once the mesh serves: the gateway and docs URLs, the
//! model in use, and, in development with no API key configured, a development key made
//! at start with a curl line and a chat command that work when pasted.
//!
//! The key is a static key ([`StaticApiKey`], as `SECURITY_API_KEYS` declares them) that
//! lives as long as the process. Production and staging never get one: there keys come
//! from `agentmesh keys create`. The banner goes to stdout, logs to stderr, so
//! `agentmesh up > banner.txt` keeps it apart.

use std::net::SocketAddr;
use std::time::Duration;

use agentmesh_gateway::auth::keys::{KeyError, KeySettings};
use agentmesh_llm_proxy::catalog::Catalog;
use agentmesh_llm_proxy::settings::LlmSettings;
use agentmesh_runtime::Config;
use agentmesh_runtime::auth::Tier;
use agentmesh_runtime::config::{Environment, Secret, StaticApiKey};

use crate::chat::DEFAULT_URL;
use crate::chat::api::Api;

/// The user the development key authenticates as.
pub const DEVELOPER: &str = "developer";

/// How long the banner waits for the gateway to answer its health check.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Adds a development API key to `config` and returns it, when the environment is
/// development and no static key is configured; `None` otherwise.
pub fn development_key(config: &mut Config) -> Result<Option<String>, KeyError> {
    if config.environment != Environment::Development || !config.security.api_keys.is_empty() {
        return Ok(None);
    }
    let generated = KeySettings::from_config(&config.security).generate()?;
    let key = generated.secret.expose().to_owned();
    config.security.api_keys.push(StaticApiKey {
        key: Secret::new(key.clone()),
        user_id: DEVELOPER.to_owned(),
        tier: Tier::Premium,
    });
    Ok(Some(key))
}

/// The model an agent without one runs on, as llm-proxy will pick it (before it asks
/// OpenAI-compatible servers for their models); `None` when its settings are unreadable.
pub fn default_model(config: &Config) -> Option<String> {
    let settings = config.settings::<LlmSettings>().ok()?;
    let model = Catalog::from_settings(&settings, &config.features).default_model().to_owned();
    (!model.is_empty()).then_some(model)
}

/// Everything the banner shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Banner {
    /// The gateway's URL.
    pub gateway: String,
    /// The default model, when known.
    pub model: Option<String>,
    /// The development key, when one was made.
    pub key: Option<String>,
    /// An agent and a session made with that key for the curl line: `(agent, session)`.
    pub ready: Option<(String, String)>,
}

impl Banner {
    /// The banner's text.
    pub fn render(&self) -> String {
        let gateway = &self.gateway;
        let mut text = format!("agentmesh is up.\n\n  Gateway   {gateway}\n  Docs      {gateway}/docs\n");
        match self.model.as_deref() {
            Some(model) if model.starts_with("scripted/") => text.push_str(&format!(
                "  Model     {model}: a built-in test model that echoes you (a line `/tool NAME {{json}}` calls a \
                 tool); set OPENAI_API_KEY for a real one\n"
            )),
            Some(model) => text.push_str(&format!("  Model     {model}\n")),
            None => {}
        }
        let Some(key) = &self.key else {
            text.push_str("\nCtrl-C stops it.\n");
            return text;
        };
        text.push_str(&format!(
            "  API key   {key}\n            (a development key, valid until agentmesh stops; SECURITY_API_KEYS sets \
             your own)\n\n"
        ));
        let auth = format!("-H 'Authorization: Bearer {key}' -H 'Content-Type: application/json'");
        match &self.ready {
            Some((agent, session)) => text.push_str(&format!(
                "Ask the `assistant` agent something (streamed):\n  curl -N {gateway}/api/v1/agents/{agent}/execute/stream \
                 {auth} -d '{{\"session_id\": \"{session}\", \"message\": \"Hello!\"}}'\n"
            )),
            None => text.push_str(&format!(
                "Create an agent:\n  curl -s {gateway}/api/v1/agents {auth} -d '{{\"name\": \"my-agent\"}}'\n"
            )),
        }
        let url = if gateway == DEFAULT_URL { String::new() } else { format!(" --url {gateway}") };
        text.push_str(&format!("Chat with it:\n  agentmesh chat{url} --key {key}\n\nCtrl-C stops it.\n"));
        text
    }
}

/// The URL people call the gateway listening on `address` by (loopback for a wildcard).
pub fn gateway_url(address: SocketAddr) -> String {
    let host = if address.ip().is_unspecified() { "127.0.0.1".to_owned() } else { address.ip().to_string() };
    let host = if address.is_ipv6() && !address.ip().is_unspecified() { format!("[{host}]") } else { host };
    format!("http://{host}:{}", address.port())
}

/// Waits until the gateway serves, makes the default agent and a session with the
/// development key (so the curl line runs as pasted), and prints the banner to stdout.
pub async fn announce(gateway: String, model: Option<String>, key: Option<String>) {
    let ready = match &key {
        Some(key) if wait_ready(&gateway).await => prepare(&Api::new(&gateway, key)).await,
        _ => None,
    };
    print!("{}", Banner { gateway, model, key, ready }.render());
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
}

/// The default agent's id and a new session's, or `None` (logged) when either fails.
async fn prepare(api: &Api) -> Option<(String, String)> {
    let made = async {
        Ok::<_, crate::chat::api::ApiError>((api.default_agent().await?.id, api.create_session("first run").await?))
    };
    match made.await {
        Ok(ready) => Some(ready),
        Err(error) => {
            tracing::warn!(%error, "the first-run agent and session could not be made");
            None
        }
    }
}

async fn wait_ready(gateway: &str) -> bool {
    let client = reqwest::Client::new();
    let health = format!("{gateway}/api/v1/health");
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        if client.get(&health).send().await.is_ok_and(|response| response.status().is_success()) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Config {
        let env = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
        Config::load_with(None, env, &crate::SERVICES).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_development_key_is_made_only_in_development_without_keys() {
        let mut development = config(&[]);
        let key = development_key(&mut development).unwrap().unwrap();
        assert!(key.starts_with("sk-") && key.len() >= 35, "{key}");
        assert_eq!(development.security.api_keys.len(), 1);
        assert_eq!(development.security.api_keys[0].user_id, DEVELOPER);

        let configured = "sk-mine-0123456789abcdefghijklmnopqrstuv";
        let mut with_keys = config(&[("SECURITY_API_KEYS", &format!("{configured}=me"))]);
        assert_eq!(development_key(&mut with_keys).unwrap(), None);
        let mut testing = config(&[("ENVIRONMENT", "testing")]);
        assert_eq!(development_key(&mut testing).unwrap(), None);
    }

    #[test]
    fn without_a_provider_the_model_is_the_scripted_one() {
        assert_eq!(default_model(&config(&[])).as_deref(), Some("scripted/echo"));
        let chosen = config(&[("OPENAI_API_KEY", "sk-test"), ("LLM_DEFAULT_MODEL", "openai/gpt-4o-mini")]);
        assert_eq!(default_model(&chosen).as_deref(), Some("openai/gpt-4o-mini"));
    }

    #[test]
    fn the_banner_gives_a_key_a_curl_line_and_the_chat_command() {
        let banner = Banner {
            gateway: DEFAULT_URL.to_owned(),
            model: Some("scripted/echo".to_owned()),
            key: Some("sk-KEY".to_owned()),
            ready: Some(("A1".to_owned(), "S1".to_owned())),
        };
        let text = banner.render();
        assert!(text.contains("  Docs      http://127.0.0.1:8080/docs\n"), "{text}");
        assert!(text.contains("scripted/echo: a built-in test model"), "{text}");
        assert!(text.contains("set OPENAI_API_KEY for a real one"), "{text}");
        assert!(text.contains("  API key   sk-KEY\n"), "{text}");
        assert!(
            text.contains(
                "  curl -N http://127.0.0.1:8080/api/v1/agents/A1/execute/stream -H 'Authorization: Bearer sk-KEY' \
             -H 'Content-Type: application/json' -d '{\"session_id\": \"S1\", \"message\": \"Hello!\"}'\n"
            ),
            "{text}"
        );
        assert!(text.contains("  agentmesh chat --key sk-KEY\n"), "{text}");

        let elsewhere = Banner { gateway: "http://127.0.0.1:9000".into(), ready: None, ..banner }.render();
        assert!(elsewhere.contains("curl -s http://127.0.0.1:9000/api/v1/agents -H"), "{elsewhere}");
        assert!(elsewhere.contains("agentmesh chat --url http://127.0.0.1:9000 --key sk-KEY"), "{elsewhere}");

        let no_key =
            Banner { gateway: DEFAULT_URL.into(), model: Some("openai/gpt-4o".into()), key: None, ready: None };
        assert_eq!(
            no_key.render(),
            "agentmesh is up.\n\n  Gateway   http://127.0.0.1:8080\n  Docs      http://127.0.0.1:8080/docs\n  Model     \
             openai/gpt-4o\n\nCtrl-C stops it.\n"
        );
    }

    #[test]
    fn wildcard_addresses_are_called_on_loopback() {
        assert_eq!(gateway_url("0.0.0.0:8080".parse().unwrap()), "http://127.0.0.1:8080");
        assert_eq!(gateway_url("127.0.0.1:1".parse().unwrap()), "http://127.0.0.1:1");
        assert_eq!(gateway_url("[::1]:2".parse().unwrap()), "http://[::1]:2");
    }
}
