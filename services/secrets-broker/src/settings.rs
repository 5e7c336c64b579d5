//! secrets-broker's own settings (`SECRET_*`): the seed's `SecretManagerSettings`
//! (provider, region, cache TTL, auto refresh, each cloud provider's settings) and
//! `SecretConfig` (the names secrets have in the provider, and local fallback values),
//! plus what the seed leaves implicit: the watched local file, how long a value may be
//! served stale while the provider is down, who may read and rotate what, and which
//! secrets the broker generates itself.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use agentmesh_runtime::ServiceName;
use agentmesh_runtime::config::{Secret, Settings, SettingsReader};

use crate::policy::AccessRules;
use crate::provider::{ProviderKind, SecretValue};

/// The seed's secret names, with the variables of their provider name and of their local
/// fallback value (`SecretConfig`).
pub const SEED_SECRETS: [(&str, &str, &str); 6] = [
    ("openai-api-key", "SECRET_OPENAI_API_KEY_NAME", "SECRET_OPENAI_API_KEY"),
    ("anthropic-api-key", "SECRET_ANTHROPIC_API_KEY_NAME", "SECRET_ANTHROPIC_API_KEY"),
    ("google-api-key", "SECRET_GOOGLE_API_KEY_NAME", "SECRET_GOOGLE_API_KEY"),
    ("database-password", "SECRET_DATABASE_PASSWORD_NAME", "SECRET_DATABASE_PASSWORD"),
    ("redis-password", "SECRET_REDIS_PASSWORD_NAME", "SECRET_REDIS_PASSWORD"),
    ("jwt-secret-key", "SECRET_JWT_SECRET_NAME", "SECRET_JWT_SECRET"),
];

/// Everything secrets-broker reads from its configuration.
#[derive(Debug, Clone)]
pub struct SecretsSettings {
    /// `SECRET_PROVIDER`: `local` (default), `aws`, `azure` or `gcp`.
    pub provider: ProviderKind,
    /// `SECRET_CACHE_TTL`: how long a value read is served from the cache (300 s).
    pub cache_ttl: Duration,
    /// `SECRET_AUTO_REFRESH`: values in use are read again before they expire (true).
    pub auto_refresh: bool,
    /// `SECRET_STALE_LIMIT`: how long past its TTL a value keeps being served while the
    /// provider cannot be read (1 hour); 0 serves nothing stale.
    pub stale_limit: Duration,
    /// `SECRET_<NAME>_NAME`: the provider's name for each of the seed's secrets, when it
    /// differs from the seed's name.
    pub names: BTreeMap<String, String>,
    /// The `local` provider.
    pub local: LocalSettings,
    /// AWS Secrets Manager.
    pub aws: AwsSettings,
    /// Azure Key Vault.
    pub azure: AzureSettings,
    /// GCP Secret Manager.
    pub gcp: GcpSettings,
    /// `SECRET_READ_POLICY`: which service may read which secrets; unset allows every
    /// caller outside production and none in production.
    pub read_policy: Option<AccessRules>,
    /// `SECRET_ROTATE_POLICY`: which service may rotate which secrets; unset as above.
    pub rotate_policy: Option<AccessRules>,
    /// `SECRET_GENERATED_NAMES`: internal secrets this service generates on rotation when
    /// no value is given (`jwt-secret-key`).
    pub generated: Vec<String>,
}

/// The `local` provider: the environment and a watched file.
#[derive(Debug, Clone)]
pub struct LocalSettings {
    /// `SECRET_LOCAL_FILE`: a dotenv file (`name=value` lines) or, when it ends in
    /// `.json`, a JSON object of names to strings; values there win over the environment.
    pub file: Option<PathBuf>,
    /// `SECRET_LOCAL_WATCH_INTERVAL`: how often the file is checked for changes (1 s).
    pub watch_interval: Duration,
    /// The seed's fallback values (`SECRET_OPENAI_API_KEY`, ...), by secret name.
    pub environment: BTreeMap<String, SecretValue>,
}

/// AWS Secrets Manager (seed `aws_*`).
#[derive(Debug, Clone)]
pub struct AwsSettings {
    /// `SECRET_AWS_REGION` (else `SECRET_REGION`, else `us-east-1`).
    pub region: String,
    /// `SECRET_AWS_ACCESS_KEY_ID`: static credentials; unset uses the SDK's default chain.
    pub access_key_id: Option<String>,
    /// `SECRET_AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<Secret>,
    /// `SECRET_AWS_ENDPOINT_URL`: another endpoint (a local Secrets Manager such as moto's).
    pub endpoint_url: Option<String>,
}

/// Azure Key Vault (seed `azure_*`).
#[derive(Debug, Clone)]
pub struct AzureSettings {
    /// `SECRET_AZURE_VAULT_URL`, for example `https://my-vault.vault.azure.net`.
    pub vault_url: Option<String>,
    /// `SECRET_AZURE_TENANT_ID`.
    pub tenant_id: Option<String>,
    /// `SECRET_AZURE_CLIENT_ID`.
    pub client_id: Option<String>,
    /// `SECRET_AZURE_CLIENT_SECRET`.
    pub client_secret: Option<Secret>,
    /// `SECRET_AZURE_AUTHORITY_HOST`: the Microsoft Entra endpoint tokens come from
    /// (`https://login.microsoftonline.com`; another one for sovereign clouds and tests).
    pub authority_host: String,
}

/// GCP Secret Manager (seed `gcp_*`).
#[derive(Debug, Clone)]
pub struct GcpSettings {
    /// `SECRET_GCP_PROJECT_ID`.
    pub project_id: Option<String>,
    /// `SECRET_GCP_CREDENTIALS_PATH`: a service account key file; unset uses the
    /// environment's default credentials.
    pub credentials_path: Option<PathBuf>,
    /// `SECRET_GCP_ENDPOINT`: another Secret Manager endpoint (tests).
    pub endpoint: Option<String>,
}

/// Default `SECRET_CACHE_TTL` (the seed's `cache_ttl`).
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(300);

/// Default `SECRET_STALE_LIMIT`.
pub const DEFAULT_STALE_LIMIT: Duration = Duration::from_secs(3600);

/// Default `SECRET_AZURE_AUTHORITY_HOST`.
pub const AZURE_PUBLIC_CLOUD: &str = "https://login.microsoftonline.com";

impl Settings for SecretsSettings {
    const SERVICE: ServiceName = ServiceName::SecretsBroker;

    fn load(r: &mut SettingsReader<'_>) -> Self {
        let provider = provider_kind(r);
        let region = r.opt::<String>("SECRET_REGION").filter(|region| !region.is_empty());
        let mut names = BTreeMap::new();
        let mut environment = BTreeMap::new();
        for (name, name_variable, value_variable) in SEED_SECRETS {
            if let Some(mapped) = r.opt::<String>(name_variable).filter(|mapped| !mapped.is_empty()) {
                names.insert(name.to_owned(), mapped);
            }
            if let Some(value) = r.opt::<String>(value_variable).filter(|value| !value.is_empty()) {
                environment.insert(name.to_owned(), SecretValue::from(value));
            }
        }
        let cache_ttl = r.get("SECRET_CACHE_TTL", DEFAULT_CACHE_TTL);
        if cache_ttl.is_zero() {
            r.issue("SECRET_CACHE_TTL", "must be more than 0");
        }
        let watch_interval = r.get("SECRET_LOCAL_WATCH_INTERVAL", Duration::from_secs(1));
        if watch_interval.is_zero() {
            r.issue("SECRET_LOCAL_WATCH_INTERVAL", "must be more than 0");
        }
        let settings = SecretsSettings {
            provider,
            cache_ttl,
            auto_refresh: r.get("SECRET_AUTO_REFRESH", true),
            stale_limit: r.get("SECRET_STALE_LIMIT", DEFAULT_STALE_LIMIT),
            names,
            local: LocalSettings {
                file: r.opt::<String>("SECRET_LOCAL_FILE").filter(|path| !path.is_empty()).map(PathBuf::from),
                watch_interval,
                environment,
            },
            aws: AwsSettings {
                region: r
                    .opt::<String>("SECRET_AWS_REGION")
                    .filter(|region| !region.is_empty())
                    .or_else(|| region.clone())
                    .unwrap_or_else(|| "us-east-1".to_owned()),
                access_key_id: non_empty(r, "SECRET_AWS_ACCESS_KEY_ID"),
                secret_access_key: non_empty(r, "SECRET_AWS_SECRET_ACCESS_KEY").map(Secret::new),
                endpoint_url: non_empty(r, "SECRET_AWS_ENDPOINT_URL"),
            },
            azure: AzureSettings {
                vault_url: non_empty(r, "SECRET_AZURE_VAULT_URL"),
                tenant_id: non_empty(r, "SECRET_AZURE_TENANT_ID"),
                client_id: non_empty(r, "SECRET_AZURE_CLIENT_ID"),
                client_secret: non_empty(r, "SECRET_AZURE_CLIENT_SECRET").map(Secret::new),
                authority_host: non_empty(r, "SECRET_AZURE_AUTHORITY_HOST")
                    .unwrap_or_else(|| AZURE_PUBLIC_CLOUD.to_owned()),
            },
            gcp: GcpSettings {
                project_id: non_empty(r, "SECRET_GCP_PROJECT_ID"),
                credentials_path: non_empty(r, "SECRET_GCP_CREDENTIALS_PATH").map(PathBuf::from),
                endpoint: non_empty(r, "SECRET_GCP_ENDPOINT"),
            },
            read_policy: rules(r, "SECRET_READ_POLICY"),
            rotate_policy: rules(r, "SECRET_ROTATE_POLICY"),
            generated: r.get("SECRET_GENERATED_NAMES", vec!["jwt-secret-key".to_owned()]),
        };
        settings.check(r);
        settings
    }
}

impl SecretsSettings {
    /// The provider's name of secret `name`.
    pub fn provider_name<'a>(&'a self, name: &'a str) -> &'a str {
        self.names.get(name).map_or(name, String::as_str)
    }

    /// The seed's name of the provider's secret `provider_name` (the inverse of
    /// [`provider_name`](Self::provider_name)).
    pub fn seed_name<'a>(&'a self, provider_name: &'a str) -> &'a str {
        self.names.iter().find(|(_, mapped)| *mapped == provider_name).map_or(provider_name, |(name, _)| name)
    }

    /// Cross-field rules: the selected cloud provider has what it needs.
    fn check(&self, r: &mut SettingsReader<'_>) {
        match self.provider {
            ProviderKind::Local | ProviderKind::Aws => {}
            ProviderKind::Azure if self.azure.vault_url.is_none() => {
                r.issue("SECRET_AZURE_VAULT_URL", "is required when SECRET_PROVIDER=azure");
            }
            ProviderKind::Gcp if self.gcp.project_id.is_none() => {
                r.issue("SECRET_GCP_PROJECT_ID", "is required when SECRET_PROVIDER=gcp");
            }
            ProviderKind::Azure | ProviderKind::Gcp => {}
        }
        if self.aws.access_key_id.is_some() != self.aws.secret_access_key.is_some() {
            r.issue(
                "SECRET_AWS_SECRET_ACCESS_KEY",
                "SECRET_AWS_ACCESS_KEY_ID and SECRET_AWS_SECRET_ACCESS_KEY go together",
            );
        }
    }
}

fn provider_kind(r: &mut SettingsReader<'_>) -> ProviderKind {
    match r.get("SECRET_PROVIDER", "local".to_owned()).to_ascii_lowercase().as_str() {
        "local" | "" => ProviderKind::Local,
        "aws" => ProviderKind::Aws,
        "azure" => ProviderKind::Azure,
        "gcp" => ProviderKind::Gcp,
        _ => {
            r.issue("SECRET_PROVIDER", "must be one of local, aws, azure, gcp");
            ProviderKind::Local
        }
    }
}

fn non_empty(r: &mut SettingsReader<'_>, key: &str) -> Option<String> {
    r.opt::<String>(key).filter(|value| !value.is_empty())
}

fn rules(r: &mut SettingsReader<'_>, key: &str) -> Option<AccessRules> {
    let text = non_empty(r, key)?;
    match AccessRules::parse(&text) {
        Ok(rules) => Some(rules),
        Err(message) => {
            r.issue(key, message);
            None
        }
    }
}
