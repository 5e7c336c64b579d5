//! The core of every configuration: the deployment environment (`ENVIRONMENT`, whose value
//! shifts many defaults), process-wide switches (`DEBUG`, `APP_NAME`, `WORKERS`) and the
//! [`Secret`] wrapper that keeps sensitive values out of logs.

use std::fmt;

use super::vars::Vars;

/// Deployment environment (`ENVIRONMENT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    /// Laptops and `agentmesh up`: memory storage, verbose logs, the dev secret.
    Development,
    /// Automated test runs.
    Testing,
    /// Pre-production; validated like production except for the storage rule.
    Staging,
    /// Strict: persistent storage, a real secret, an explicit CORS allow-list.
    Production,
}

impl Environment {
    fn parse(raw: &str) -> Option<Self> {
        match raw.to_ascii_lowercase().as_str() {
            "development" | "dev" => Some(Self::Development),
            "testing" | "test" => Some(Self::Testing),
            "staging" => Some(Self::Staging),
            "production" | "prod" => Some(Self::Production),
            _ => None,
        }
    }

    /// Reads `ENVIRONMENT` (default development); a bad value is an issue.
    pub(super) fn read(v: &mut Vars) -> Self {
        match v.raw("ENVIRONMENT").map(str::to_owned) {
            None => Environment::Development,
            Some(raw) => Environment::parse(&raw).unwrap_or_else(|| {
                v.issue(
                    "ENVIRONMENT",
                    format!("invalid value {raw:?}: expected development, testing, staging or production"),
                );
                Environment::Development
            }),
        }
    }

    /// The lowercase name, as the seed spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Development => "development",
            Self::Testing => "testing",
            Self::Staging => "staging",
            Self::Production => "production",
        }
    }

    /// Production and staging, which share the strict security rules.
    pub fn is_strict(self) -> bool {
        matches!(self, Self::Production | Self::Staging)
    }
}

/// A string that must not be printed: `Debug` shows `***`, and the memory holding it is
/// wiped when it is dropped.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether no value was configured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "***" })
    }
}
