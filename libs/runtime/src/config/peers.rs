//! How clients find the replicas of a peer service (`PEER_*`), kept apart from the rest of
//! the configuration so it can move with the client code.

use std::time::Duration;

use super::vars::Vars;

/// Who spreads one service's calls over a peer's replicas (`PEER_BALANCING`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerBalancing {
    /// `client` (default): each client resolves the peer's name to every address (one
    /// per pod behind a headless Service) and spreads calls over them itself.
    Client,
    /// `mesh`: one connection to the name as given; a service mesh (Istio's sidecar)
    /// spreads the calls. Choose this where the name is a ClusterIP Service.
    Mesh,
}

/// Settings for reaching peer services.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerConfig {
    /// `PEER_BALANCING`: `client` or `mesh`.
    pub balancing: PeerBalancing,
    /// `PEER_REFRESH_INTERVAL` (seconds, default 5): how often a peer's name is resolved
    /// again, so replicas that join get calls and replicas that left are dropped.
    pub refresh_interval: Duration,
}

impl Default for PeerConfig {
    fn default() -> Self {
        Self { balancing: PeerBalancing::Client, refresh_interval: Duration::from_secs(5) }
    }
}

impl PeerConfig {
    /// Reads `PEER_*`, recording bad values in `v`.
    pub(super) fn read(v: &mut Vars) -> Self {
        let defaults = Self::default();
        let balancing = match v.raw("PEER_BALANCING").map(str::to_ascii_lowercase).as_deref() {
            None | Some("client") => PeerBalancing::Client,
            Some("mesh") => PeerBalancing::Mesh,
            Some(other) => {
                v.issue("PEER_BALANCING", format!("invalid value {other:?}: expected client or mesh"));
                defaults.balancing
            }
        };
        let refresh_interval = v.get("PEER_REFRESH_INTERVAL", defaults.refresh_interval);
        if refresh_interval.is_zero() {
            v.issue("PEER_REFRESH_INTERVAL", "must be more than 0 seconds");
        }
        Self { balancing, refresh_interval }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn load(env: &[(&str, &str)]) -> Result<Config, crate::config::ConfigError> {
        Config::load(None, env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())))
    }

    #[test]
    fn clients_balance_and_resolve_every_five_seconds_by_default() {
        assert_eq!(load(&[]).unwrap().peers, PeerConfig::default());
        assert_eq!(PeerConfig::default().balancing, PeerBalancing::Client);
        assert_eq!(PeerConfig::default().refresh_interval, Duration::from_secs(5));
    }

    #[test]
    fn mesh_balancing_and_the_interval_are_read() {
        let config = load(&[("PEER_BALANCING", "Mesh"), ("PEER_REFRESH_INTERVAL", "0.5")]).unwrap();
        assert_eq!(config.peers.balancing, PeerBalancing::Mesh);
        assert_eq!(config.peers.refresh_interval, Duration::from_millis(500));
    }

    #[test]
    fn bad_values_are_named() {
        let error = load(&[("PEER_BALANCING", "istio"), ("PEER_REFRESH_INTERVAL", "0")]).unwrap_err();
        let variables: Vec<&str> = error.issues.iter().map(|i| i.variable.as_str()).collect();
        assert_eq!(variables, ["PEER_BALANCING", "PEER_REFRESH_INTERVAL"], "{error}");
    }
}
