//! Services' own settings, unknown variables in the file and in the environment.

use super::*;

/// A service's settings as a service crate would declare them.
#[derive(Debug)]
struct Limits {
    max_items: usize,
}

impl Settings for Limits {
    const SERVICE: ServiceName = ServiceName::SessionStore;

    fn load(reader: &mut SettingsReader<'_>) -> Self {
        let max_items = reader.get("SESSION_MAX_ITEMS", 10);
        if max_items == 0 {
            reader.issue("SESSION_MAX_ITEMS", "must be at least 1");
        }
        Limits { max_items }
    }
}

const SESSION_STORE: ServiceSettings =
    ServiceSettings { service: ServiceName::SessionStore, settings: &[SettingsSpec::of::<Limits>()] };
const GATEWAY: ServiceSettings = ServiceSettings { service: ServiceName::Gateway, settings: &[] };

/// Reads settings outside its service's namespace: a bug the loader reports.
struct Stray;

impl Settings for Stray {
    const SERVICE: ServiceName = ServiceName::LlmProxy;

    fn load(reader: &mut SettingsReader<'_>) -> Self {
        let _: Option<String> = reader.opt("OPENAI_API_KEY");
        Stray
    }
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// Writes `text` to a fresh file, loads with it and removes it.
fn load_file(text: &str, pairs: &[(&str, &str)], services: &[ServiceSettings]) -> Result<Config, ConfigError> {
    let path = std::env::temp_dir().join(format!("agentmesh-config-{}.env", uuid::Uuid::new_v4()));
    std::fs::write(&path, text).unwrap();
    let result = Config::load_with(Some(&path), env(pairs), services);
    std::fs::remove_file(&path).unwrap();
    result
}

#[test]
fn a_misspelled_variable_in_the_file_is_refused_with_its_line_and_the_known_name() {
    let error = load_file("DB_HOST=db\n# pool\nDB_MAX_POOL_SIZ=40\nFEATURE_ENABLE_MCP_HOT_RELOAD=true\n", &[], &[])
        .unwrap_err();
    let text = error.to_string();
    let names: Vec<_> = error.issues.iter().map(|i| i.variable.as_str()).collect();
    assert_eq!(names, ["DB_MAX_POOL_SIZ", "FEATURE_ENABLE_MCP_HOT_RELOAD"], "{text}");
    assert!(error.issues[0].message.contains("line 3"), "{text}");
    assert!(error.issues[0].message.contains("did you mean DB_MAX_POOL_SIZE?"), "{text}");
    assert!(error.issues[1].message.contains("line 4"), "a removed flag is unknown too: {text}");
    assert_eq!(text.lines().count(), 3, "one line per issue: {text}");
}

#[test]
fn every_runtime_variable_and_alias_in_the_file_is_known() {
    let file = "ENVIRONMENT=testing\nDB_URL=postgres://a@b/c\nDATABASE_URL=postgres://a@b/c\n\
                OBSERVABILITY_OTLP_ENDPOINT=http://c:4317\nOTEL_EXPORTER_OTLP_ENDPOINT=http://c:4317\n\
                RUST_LOG=info\nRETRY_SECRET_JITTER=false\nBULKHEAD_MCP_QUEUE_WAIT=1\nSESSION_STORE_URL=http://s:1\n\
                SECURITY_API_KEYS=\nFEATURE_ENABLE_STREAMING=false\nSERVER_DRAIN_DELAY=1\n";
    let config = load_file(file, &[], &[]).unwrap();
    assert!(!config.features.enable_streaming);
    assert_eq!(config.observability.log_filter.as_deref(), Some("info"));
}

#[test]
fn service_settings_are_validated_with_the_runtimes_and_read_typed() {
    let error =
        Config::load_with(None, env(&[("DB_PORT", "x"), ("SESSION_MAX_ITEMS", "0")]), &[SESSION_STORE]).unwrap_err();
    let names: Vec<_> = error.issues.iter().map(|i| i.variable.as_str()).collect();
    assert_eq!(names, ["DB_PORT", "SESSION_MAX_ITEMS"], "{error}");

    let error = Config::load_with(None, env(&[("SESSION_MAX_ITEMS", "many")]), &[SESSION_STORE]).unwrap_err();
    let text = error.to_string();
    assert!(text.starts_with("invalid configuration:\n  - SESSION_MAX_ITEMS: invalid value \"many\""), "{text}");

    let config = load_file("SESSION_MAX_ITEMS=7\n", &[], &[SESSION_STORE]).unwrap();
    assert_eq!(config.settings::<Limits>().unwrap().max_items, 7);
    assert_eq!(Config::load(None, []).unwrap().settings::<Limits>().unwrap().max_items, 10, "the default");
    let unregistered = Config::load(None, env(&[("SESSION_MAX_ITEMS", "0")])).unwrap();
    assert_eq!(unregistered.settings::<Limits>().unwrap_err().issues[0].variable, "SESSION_MAX_ITEMS");
}

#[test]
fn another_services_variables_are_left_to_its_binary_but_checked_by_its_own() {
    let file = "SESSION_MAX_ITEMS=3\nSESSION_MAX_ITMES=4\n";
    load_file(file, &[], &[GATEWAY]).expect("session-store's variables are left to its binary");
    let error = load_file(file, &[], &[GATEWAY, SESSION_STORE]).unwrap_err();
    let names: Vec<_> = error.issues.iter().map(|i| i.variable.as_str()).collect();
    assert_eq!(names, ["SESSION_MAX_ITMES"], "{error}");
    assert!(error.issues[0].message.contains("did you mean SESSION_MAX_ITEMS?"), "{error}");
    let unowned = load_file("GATEWAY_NOTHING=1\nSESION_MAX_ITEMS=1\n", &[], &[GATEWAY]).unwrap_err();
    let names: Vec<_> = unowned.issues.iter().map(|i| i.variable.as_str()).collect();
    assert_eq!(names, ["GATEWAY_NOTHING", "SESION_MAX_ITEMS"], "{unowned}");
}

/// Reads a conventional third-party variable.
struct ProviderKey(Option<String>);

impl Settings for ProviderKey {
    const SERVICE: ServiceName = ServiceName::LlmProxy;

    fn load(reader: &mut SettingsReader<'_>) -> Self {
        ProviderKey(reader.conventional("OPENAI_API_KEY"))
    }
}

#[test]
fn conventional_third_party_variables_are_readable_without_the_prefix() {
    const KEYED: ServiceSettings =
        ServiceSettings { service: ServiceName::LlmProxy, settings: &[SettingsSpec::of::<ProviderKey>()] };
    let config = Config::load_with(None, env(&[("OPENAI_API_KEY", "sk-test")]), &[KEYED]).unwrap();
    assert_eq!(config.settings::<ProviderKey>().unwrap().0.as_deref(), Some("sk-test"));
    let config = Config::load_with(None, env(&[("OPENAI_API_KEY", "")]), &[KEYED]).unwrap();
    assert_eq!(config.settings::<ProviderKey>().unwrap().0, None, "empty counts as unset");
}

#[test]
fn settings_outside_their_namespace_are_a_reported_bug() {
    const STRAY: ServiceSettings =
        ServiceSettings { service: ServiceName::LlmProxy, settings: &[SettingsSpec::of::<Stray>()] };
    let error = Config::load_with(None, [], &[STRAY]).unwrap_err();
    assert_eq!(error.issues[0].variable, "OPENAI_API_KEY");
    assert!(error.issues[0].message.contains("LLM_*"), "{error}");
}

#[test]
fn the_environment_stays_lenient_but_misspelled_agentmesh_variables_are_warned_about() {
    let config = Config::load_with(
        None,
        env(&[
            ("PATH", "/usr/bin"),
            ("HOME", "/root"),
            ("FEATURE_ENABLE_RETRIS", "false"),
            ("SESSION_MAX_ITEM", "3"),
            ("SESSION_STORE_SERVICE_HOST", "10.0.0.1"),
            ("REDIS_PORT_6379_TCP", "tcp://10.0.0.2:6379"),
            ("DB_HOST", "db"),
        ]),
        &[SESSION_STORE],
    )
    .unwrap();
    let warned: Vec<_> = config.warnings.iter().map(|i| i.variable.as_str()).collect();
    assert_eq!(warned, ["FEATURE_ENABLE_RETRIS", "SESSION_MAX_ITEM"]);
    assert!(config.warnings[0].message.contains("did you mean FEATURE_ENABLE_RETRIES?"), "{:?}", config.warnings);
    let other_binary = Config::load_with(None, env(&[("SESSION_MAX_ITEM", "3")]), &[GATEWAY]).unwrap();
    assert!(other_binary.warnings.is_empty(), "{:?}", other_binary.warnings);
}

#[test]
fn request_tracing_flag_switches_the_trace_exporter_off() {
    assert!(Config::load(None, []).unwrap().observability.tracing_enabled);
    let off = Config::load(None, env(&[("FEATURE_ENABLE_REQUEST_TRACING", "false")])).unwrap();
    assert!(!off.observability.tracing_enabled);
    let off = Config::load(None, env(&[("OBSERVABILITY_TRACING_ENABLED", "false")])).unwrap();
    assert!(!off.observability.tracing_enabled);
}

#[test]
fn debug_output_never_shows_raw_values() {
    let config = Config::load(None, env(&[("SOME_TOKEN", "hunter2")])).unwrap();
    assert!(!format!("{config:?}").contains("hunter2"));
}
