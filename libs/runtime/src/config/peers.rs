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

/// Reads `PEER_*`, recording bad values in `v`.
pub(super) fn parse(v: &mut Vars) -> PeerConfig {
    let defaults = PeerConfig::default();
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
    PeerConfig { balancing, refresh_interval }
}
