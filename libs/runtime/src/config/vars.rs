//! The variable source behind [`Config`](super::Config): defaults, then an optional file,
//! then the process environment, read once and parsed field by field.
//!
//! Parsing never stops at the first bad value: every problem is collected as a
//! [`ConfigIssue`] naming its variable, so an operator fixes a deployment in one round.
//! Every variable a reader looks at is remembered, so once the runtime and the services'
//! [`Settings`](super::Settings) have read theirs, whatever else the file sets is unknown.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One bad configuration value, named by its variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// The variable, e.g. `DB_PORT`.
    pub variable: String,
    /// What is wrong, in words an operator can act on. Never contains a secret's value.
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.variable, self.message)
    }
}

/// Variables whose values must never appear in messages or logs.
const SECRET_VARIABLES: &[&str] = &[
    "SECURITY_SECRET_KEY",
    "SECURITY_SERVICE_KEY",
    "DB_PASSWORD",
    "REDIS_PASSWORD",
    "DB_URL",
    "REDIS_URL",
    // secrets-broker's local fallback values and cloud credentials.
    "SECRET_OPENAI_API_KEY",
    "SECRET_ANTHROPIC_API_KEY",
    "SECRET_GOOGLE_API_KEY",
    "SECRET_DATABASE_PASSWORD",
    "SECRET_REDIS_PASSWORD",
    "SECRET_JWT_SECRET",
    "SECRET_AWS_SECRET_ACCESS_KEY",
    "SECRET_AZURE_CLIENT_SECRET",
];

/// A merged view of the file and the environment, with the issues found so far.
#[derive(Debug, Default)]
pub(crate) struct Vars {
    values: BTreeMap<String, String>,
    /// The configuration file, if any.
    file: Option<PathBuf>,
    /// The line of the file that set each of its variables.
    file_lines: BTreeMap<String, usize>,
    /// Names that came from the process environment.
    env_names: BTreeSet<String>,
    /// Names some reader has looked at: the known variables.
    consulted: RefCell<BTreeSet<String>>,
    pub(crate) issues: Vec<ConfigIssue>,
}

impl Vars {
    /// Variables from `file` (if any), overridden by `env`.
    pub(crate) fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut vars = Vars::default();
        if let Some(path) = file {
            vars.file = Some(path.to_owned());
            match std::fs::read_to_string(path) {
                Ok(text) => vars.read_env_file(&text, path),
                Err(error) => vars.issue("AGENTMESH_CONFIG_FILE", format!("cannot read {}: {error}", path.display())),
            }
        }
        for (name, value) in env {
            vars.env_names.insert(name.clone());
            vars.values.insert(name, value);
        }
        vars
    }

    /// Variables already merged (a loaded configuration's), read again by a service.
    pub(crate) fn from_values(values: BTreeMap<String, String>) -> Self {
        Vars { values, ..Vars::default() }
    }

    /// The merged variables, for [`Config`](super::Config) to keep.
    pub(crate) fn values(&self) -> &BTreeMap<String, String> {
        &self.values
    }

    /// Reports every variable the file sets that no reader looked at, with its line and
    /// the closest known name, except those `tolerated` (another binary's settings).
    pub(crate) fn report_unknown_file_variables(&mut self, tolerated: impl Fn(&str) -> bool) {
        let Some(path) = self.file.clone() else { return };
        let mut unknown: Vec<(usize, String)> = {
            let consulted = self.consulted.borrow();
            self.file_lines
                .iter()
                .filter(|(name, _)| !consulted.contains(*name) && !tolerated(name))
                .map(|(name, line)| (*line, name.clone()))
                .collect()
        };
        unknown.sort();
        for (line, name) in unknown {
            let hint = self.closest_known(&name).map(|known| format!("; did you mean {known}?")).unwrap_or_default();
            self.issue(&name, format!("unknown variable ({}, line {line}){hint}", path.display()));
        }
    }

    /// Environment variables under a `watched` prefix that no reader looked at, as
    /// warnings: the environment also holds variables of other programs, so these never
    /// stop a start. Names shaped like Kubernetes service links (`X_SERVICE_HOST`,
    /// `X_PORT_80_TCP`, …) are skipped.
    pub(crate) fn unknown_env_variables(&self, watched: impl Fn(&str) -> bool) -> Vec<ConfigIssue> {
        let consulted = self.consulted.borrow();
        self.env_names
            .iter()
            .filter(|name| !consulted.contains(*name) && watched(name))
            .filter(|name| !name.contains("_SERVICE_") && !name.contains("_PORT"))
            .map(|name| {
                let hint = self.closest_known(name).map(|known| format!("; did you mean {known}?")).unwrap_or_default();
                ConfigIssue { variable: name.clone(), message: format!("unknown variable, ignored{hint}") }
            })
            .collect()
    }

    /// The known name within two edits of `name`, if there is one.
    fn closest_known(&self, name: &str) -> Option<String> {
        let consulted = self.consulted.borrow();
        consulted
            .iter()
            .map(|known| (edit_distance(name, known), known))
            .filter(|(distance, _)| *distance <= 2)
            .min()
            .map(|(_, known)| known.clone())
    }

    /// Parses `KEY=VALUE` lines (dotenv style: `#` comments, optional `export `, optional
    /// matching quotes). A malformed line is an issue, not a silent skip.
    fn read_env_file(&mut self, text: &str, path: &Path) {
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let Some((key, value)) = line.split_once('=') else {
                self.issue("AGENTMESH_CONFIG_FILE", format!("{}:{}: expected KEY=VALUE", path.display(), number + 1));
                continue;
            };
            let value = value.trim();
            let unquoted = ['"', '\'']
                .iter()
                .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
                .unwrap_or(value);
            let key = key.trim().to_owned();
            self.file_lines.insert(key.clone(), number + 1);
            self.values.insert(key, unquoted.to_owned());
        }
    }

    pub(crate) fn issue(&mut self, variable: &str, message: impl Into<String>) {
        self.issues.push(ConfigIssue { variable: variable.to_owned(), message: message.into() });
    }

    /// The raw value, treating an empty string as unset (as shells and compose files do).
    pub(crate) fn raw(&self, key: &str) -> Option<&str> {
        self.consulted.borrow_mut().insert(key.to_owned());
        self.values.get(key).map(String::as_str).filter(|v| !v.trim().is_empty())
    }

    /// The parsed value of `key`, or `default` when unset; a bad value is recorded as an
    /// issue and the default is returned so parsing can go on.
    pub(crate) fn get<T: ConfigValue>(&mut self, key: &str, default: T) -> T {
        self.opt(key).unwrap_or(default)
    }

    /// The parsed value of `key`, or `None` when unset or bad (bad is recorded).
    pub(crate) fn opt<T: ConfigValue>(&mut self, key: &str) -> Option<T> {
        let raw = self.raw(key)?.trim().to_owned();
        match T::parse(&raw) {
            Ok(value) => Some(value),
            Err(expected) => {
                let shown = if SECRET_VARIABLES.contains(&key) { "(hidden)".to_owned() } else { format!("{raw:?}") };
                self.issue(key, format!("invalid value {shown}: expected {expected}"));
                None
            }
        }
    }
}

/// Levenshtein distance between two ASCII-ish names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// A type a configuration variable can hold; implement it for a service's own types.
pub trait ConfigValue: Sized {
    /// Parses the trimmed raw value, or describes what was expected.
    fn parse(raw: &str) -> Result<Self, String>;
}

macro_rules! integer_config_value {
    ($($ty:ty),*) => {$(
        impl ConfigValue for $ty {
            fn parse(raw: &str) -> Result<Self, String> {
                raw.parse().map_err(|_| format!("an integer between {} and {}", <$ty>::MIN, <$ty>::MAX))
            }
        }
    )*};
}
integer_config_value!(u16, u32, u64, usize, i64);

impl ConfigValue for f64 {
    fn parse(raw: &str) -> Result<Self, String> {
        raw.parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| "a number".to_owned())
    }
}

impl ConfigValue for bool {
    fn parse(raw: &str) -> Result<Self, String> {
        match raw.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => Ok(true),
            "false" | "0" | "no" | "off" => Ok(false),
            _ => Err("true or false".to_owned()),
        }
    }
}

impl ConfigValue for String {
    fn parse(raw: &str) -> Result<Self, String> {
        Ok(raw.to_owned())
    }
}

/// Durations are given in seconds, fractions allowed (`0.5`), as in the seed's settings.
impl ConfigValue for Duration {
    fn parse(raw: &str) -> Result<Self, String> {
        raw.parse::<f64>()
            .ok()
            .and_then(|seconds| Duration::try_from_secs_f64(seconds).ok())
            .ok_or_else(|| "a non-negative number of seconds".to_owned())
    }
}

/// Lists are a JSON array of strings (`["a","b"]`, the seed's form) or comma-separated.
impl ConfigValue for Vec<String> {
    fn parse(raw: &str) -> Result<Self, String> {
        if raw.starts_with('[') {
            return serde_json::from_str(raw).map_err(|_| "a JSON array of strings".to_owned());
        }
        Ok(raw.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vars {
        Vars::load(None, pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())))
    }

    #[test]
    fn bad_values_are_issues_named_by_variable_and_fall_back_to_defaults() {
        let mut v = vars(&[("DB_PORT", "abc"), ("X_FLAG", "maybe")]);
        assert_eq!(v.get("DB_PORT", 5432u16), 5432);
        assert!(v.get("X_FLAG", true));
        let names: Vec<_> = v.issues.iter().map(|i| i.variable.as_str()).collect();
        assert_eq!(names, ["DB_PORT", "X_FLAG"]);
        assert!(v.issues[0].message.contains("\"abc\""));
    }

    #[test]
    fn secret_values_are_never_echoed() {
        let mut v = vars(&[("DB_URL", "postgres://u:hunter2@h/db")]);
        let _: Option<u16> = v.opt("DB_URL");
        assert_eq!(v.issues.len(), 1);
        assert!(!v.issues[0].message.contains("hunter2"));
    }

    #[test]
    fn lists_accept_json_and_commas_and_durations_accept_fractions() {
        assert_eq!(Vec::<String>::parse(r#"["a","b"]"#).unwrap(), ["a", "b"]);
        assert_eq!(Vec::<String>::parse("a, b,,c").unwrap(), ["a", "b", "c"]);
        assert_eq!(Duration::parse("0.5").unwrap(), Duration::from_millis(500));
        assert!(Duration::parse("-1").is_err());
        assert!(f64::parse("NaN").is_err());
    }

    #[test]
    fn env_file_is_overridden_by_environment() {
        let dir = std::env::temp_dir().join(format!("agentmesh-env-{}", uuid::Uuid::new_v4()));
        std::fs::write(&dir, "# comment\nexport DB_PORT=6000\nDB_NAME=\"quoted\"\nREDIS_DB=1\nbroken line\n").unwrap();
        let mut v = Vars::load(Some(&dir), [("REDIS_DB".to_owned(), "2".to_owned())]);
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(v.get("DB_PORT", 0u16), 6000);
        assert_eq!(v.get("DB_NAME", String::new()), "quoted");
        assert_eq!(v.get("REDIS_DB", 0u32), 2);
        assert_eq!(v.issues.len(), 1, "the malformed line is reported: {:?}", v.issues);
        assert!(v.issues[0].message.contains(":5:"));
    }
}
