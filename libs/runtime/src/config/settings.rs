//! Settings a service declares for itself, read from the same sources as the runtime's
//! and validated with them, without the runtime knowing the service.
//!
//! A service implements [`Settings`] for a plain struct and lists it in its
//! [`ServiceSettings`]; every binary that runs the service registers those when it loads
//! [`Config`](super::Config) ([`Config::load_with`](super::Config::load_with)), so a bad
//! value is reported at start-up together with the runtime's, and the file's variables
//! count as known. The service then reads its typed settings with
//! [`Config::settings`](super::Config::settings).
//!
//! ```
//! use agentmesh_runtime::config::{Config, ServiceSettings, Settings, SettingsReader, SettingsSpec};
//! use agentmesh_runtime::ServiceName;
//!
//! struct Limits { max_title: usize }
//!
//! impl Settings for Limits {
//!     const SERVICE: ServiceName = ServiceName::SessionStore;
//!     fn load(reader: &mut SettingsReader<'_>) -> Self {
//!         let max_title = reader.get("SESSION_MAX_TITLE_LENGTH", 500);
//!         if max_title == 0 {
//!             reader.issue("SESSION_MAX_TITLE_LENGTH", "must be at least 1");
//!         }
//!         Limits { max_title }
//!     }
//! }
//!
//! let env = [("SESSION_MAX_TITLE_LENGTH".to_owned(), "0".to_owned())];
//! const SETTINGS: ServiceSettings =
//!     ServiceSettings { service: ServiceName::SessionStore, settings: &[SettingsSpec::of::<Limits>()] };
//! let error = Config::load_with(None, env, &[SETTINGS]).unwrap_err();
//! assert_eq!(error.issues[0].variable, "SESSION_MAX_TITLE_LENGTH");
//! let config = Config::load_with(None, [], &[SETTINGS]).unwrap();
//! assert_eq!(config.settings::<Limits>().unwrap().max_title, 500);
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use super::endpoints::ServiceName;
use super::vars::{ConfigValue, Vars};

/// A service's own typed settings.
pub trait Settings: Sized {
    /// The service they belong to; every variable they read starts with its
    /// [`settings_prefix`](ServiceName::settings_prefix).
    const SERVICE: ServiceName;

    /// Reads the settings; reports every bad value through `reader` by its variable name
    /// (falling back to defaults so reading goes on) instead of stopping at the first.
    fn load(reader: &mut SettingsReader<'_>) -> Self;
}

/// What [`Settings::load`] reads from.
pub struct SettingsReader<'a> {
    vars: &'a mut Vars,
    prefix: &'static str,
}

impl SettingsReader<'_> {
    /// The parsed value of `key`, or `default` when unset or bad (bad is reported).
    pub fn get<T: ConfigValue>(&mut self, key: &str, default: T) -> T {
        self.check_prefix(key);
        self.vars.get(key, default)
    }

    /// The parsed value of `key`, or `None` when unset or bad (bad is reported).
    pub fn opt<T: ConfigValue>(&mut self, key: &str) -> Option<T> {
        self.check_prefix(key);
        self.vars.opt(key)
    }

    /// The value of a widely used third-party variable outside the service's namespace
    /// (for example `OPENAI_API_KEY`), which only the names in [`CONVENTIONAL_VARIABLES`]
    /// may be; `None` when unset or empty.
    pub fn conventional(&mut self, key: &str) -> Option<String> {
        if !CONVENTIONAL_VARIABLES.contains(&key) {
            self.vars.issue(key, "read as a conventional variable but not listed in CONVENTIONAL_VARIABLES");
            return None;
        }
        self.vars.opt::<String>(key).filter(|value| !value.is_empty())
    }

    /// Reports a problem with `variable` (e.g. a cross-field rule).
    pub fn issue(&mut self, variable: &str, message: impl Into<String>) {
        self.vars.issue(variable, message);
    }

    /// A variable outside the service's namespace is a bug in the service, reported as
    /// an issue so it cannot go unnoticed.
    fn check_prefix(&mut self, key: &str) {
        if !key.starts_with(self.prefix) {
            self.vars.issue(key, format!("read by a service's settings but outside its namespace {}*", self.prefix));
        }
    }
}

/// Third-party variables a service may read without its prefix, because users already
/// have them set for the providers' own tools: LLM provider keys and OpenAI's base URL.
pub const CONVENTIONAL_VARIABLES: &[&str] = &[
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "ANTHROPIC_API_KEY",
    "GOOGLE_API_KEY",
    "GEMINI_API_KEY",
    "AZURE_OPENAI_API_KEY",
];

/// Everything one service declares: its name and its [`Settings`] types. Each service
/// crate exports one (`SETTINGS`); a binary passes those of the services it runs to
/// [`Config::load_with`](super::Config::load_with).
#[derive(Debug, Clone, Copy)]
pub struct ServiceSettings {
    /// The service.
    pub service: ServiceName,
    /// Its settings types (none for a service without settings of its own).
    pub settings: &'static [SettingsSpec],
}

/// One [`Settings`] type, as listed in [`ServiceSettings`].
#[derive(Clone, Copy)]
pub struct SettingsSpec {
    service: ServiceName,
    check: fn(&mut SettingsReader<'_>),
}

impl SettingsSpec {
    /// The spec of `T`.
    pub const fn of<T: Settings>() -> Self {
        SettingsSpec { service: T::SERVICE, check: check::<T> }
    }

    /// Reads the settings into `vars`, reporting their issues there.
    pub(super) fn check(&self, vars: &mut Vars) {
        (self.check)(&mut SettingsReader { vars, prefix: self.service.settings_prefix() });
    }
}

impl fmt::Debug for SettingsSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SettingsSpec").field("service", &self.service).finish_non_exhaustive()
    }
}

fn check<T: Settings>(reader: &mut SettingsReader<'_>) {
    T::load(reader);
}

/// Reads `T` from merged variables, returning its issues.
pub(super) fn read<T: Settings>(values: &RawVariables) -> Result<T, Vec<super::ConfigIssue>> {
    let mut vars = Vars::from_values(values.0.as_ref().clone());
    let settings = T::load(&mut SettingsReader { vars: &mut vars, prefix: T::SERVICE.settings_prefix() });
    if vars.issues.is_empty() { Ok(settings) } else { Err(vars.issues) }
}

/// Every variable a configuration was loaded from, for services' [`Settings`]. `Debug`
/// shows only how many there are: values may be secrets.
#[derive(Clone, Default)]
pub struct RawVariables(Arc<BTreeMap<String, String>>);

impl RawVariables {
    pub(super) fn new(values: BTreeMap<String, String>) -> Self {
        Self(Arc::new(values))
    }
}

impl fmt::Debug for RawVariables {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RawVariables({} variables)", self.0.len())
    }
}
