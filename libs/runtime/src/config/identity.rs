//! Service identity settings (`SECURITY_SERVICE_KEY`, `SECURITY_TRUSTED_KEYS`), kept apart
//! from the other `SECURITY_*` settings because only they concern the mesh's own keys.
//!
//! Each value may instead come from a file (`…_FILE`), as a Kubernetes secret is mounted.
//! Unset, every service uses its development key and trusts every development key; a
//! strict environment (production, staging) refuses that, and refuses development keys
//! given explicitly.

use crate::auth::{ServiceKey, TrustedKeys};

use super::vars::Vars;

/// `SECURITY_SERVICE_KEY` and `SECURITY_TRUSTED_KEYS`, parsed.
#[derive(Debug, Clone, Default)]
pub struct IdentityConfig {
    /// `SECURITY_SERVICE_KEY` (or `SECURITY_SERVICE_KEY_FILE`): this service's Ed25519
    /// private key; `None` means the development key.
    pub service_key: Option<ServiceKey>,
    /// `SECURITY_TRUSTED_KEYS` (or `SECURITY_TRUSTED_KEYS_FILE`): `service:public-key`
    /// entries; `None` means every service's development key.
    pub trusted_keys: Option<TrustedKeys>,
}

impl IdentityConfig {
    /// Reads and checks the settings; `strict` refuses missing and development keys.
    pub(crate) fn parse(v: &mut Vars, strict: bool) -> Self {
        let service_key = read(v, "SECURITY_SERVICE_KEY").and_then(|text| match ServiceKey::parse(&text) {
            Ok(key) => Some(key),
            Err(error) => {
                v.issue("SECURITY_SERVICE_KEY", error.to_string());
                None
            }
        });
        let trusted_keys = read(v, "SECURITY_TRUSTED_KEYS").and_then(|text| match TrustedKeys::parse(&text) {
            Ok(keys) if keys.is_empty() => {
                v.issue("SECURITY_TRUSTED_KEYS", "lists no key");
                None
            }
            Ok(keys) => Some(keys),
            Err(error) => {
                v.issue("SECURITY_TRUSTED_KEYS", error.to_string());
                None
            }
        });
        if strict {
            match &service_key {
                None => {
                    v.issue("SECURITY_SERVICE_KEY", "required in production and staging (or SECURITY_SERVICE_KEY_FILE)")
                }
                Some(key) if key.is_development() => {
                    v.issue("SECURITY_SERVICE_KEY", "a development key is refused in production and staging");
                }
                Some(_) => {}
            }
            match &trusted_keys {
                None => v.issue(
                    "SECURITY_TRUSTED_KEYS",
                    "required in production and staging (or SECURITY_TRUSTED_KEYS_FILE)",
                ),
                Some(keys) if keys.has_development_key() => {
                    v.issue("SECURITY_TRUSTED_KEYS", "development keys are refused in production and staging");
                }
                Some(_) => {}
            }
        }
        Self { service_key, trusted_keys }
    }
}

/// The value of `name`, or the contents of the file `name_FILE` names.
fn read(v: &mut Vars, name: &str) -> Option<String> {
    let file_variable = format!("{name}_FILE");
    if let Some(value) = v.opt::<String>(name) {
        return Some(value);
    }
    let path = v.opt::<String>(&file_variable)?;
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(error) => {
            v.issue(&file_variable, format!("cannot read {path}: {error}"));
            None
        }
    }
}
