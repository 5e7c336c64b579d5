//! The Ed25519 keys of the mesh: each service's own signing key and the public keys every
//! service trusts, keyed by service and key id so keys can rotate.
//!
//! A key id (`kid`) is derived from the public key itself (a SHA-256 fingerprint), so it
//! can never disagree with the key it names and nobody has to invent one. Development
//! without configured keys uses keys derived from a fixed, public seed and the service
//! name, so separate processes agree on them with no setup; production refuses them.

use std::collections::HashMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

use crate::config::ServiceName;

/// Domain separation for the development keys: public, so they protect nothing.
const DEV_KEY_CONTEXT: &[u8] = b"agentmesh development service key v1\0";

/// DER prefix of a PKCS#8 Ed25519 private key (RFC 8410), followed by the 32-byte seed.
const PKCS8_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// DER prefix of an Ed25519 SubjectPublicKeyInfo (RFC 8410), followed by the 32-byte key.
const SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// A key that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not base64, PEM or DER of an Ed25519 key.
    #[error(
        "not an Ed25519 {0} key (expected base64 of the 32 raw bytes, or PEM/DER as `openssl genpkey -algorithm ed25519` writes)"
    )]
    Format(&'static str),
    /// A `SECURITY_TRUSTED_KEYS` entry is not `service:key`.
    #[error("entry {0:?} is not `<service>:<public key>`")]
    Entry(String),
    /// A `SECURITY_TRUSTED_KEYS` entry names no service of the mesh.
    #[error("unknown service {0:?}")]
    UnknownService(String),
}

/// The fingerprint naming a public key in tokens (`kid`): 8 bytes of its SHA-256, base64url.
pub fn key_id(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    URL_SAFE_NO_PAD.encode(&digest[..8])
}

/// A service's private signing key. `Debug` hides it.
#[derive(Clone)]
pub struct ServiceKey {
    signing: SigningKey,
    kid: String,
}

impl fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceKey {{ kid: {:?}, key: *** }}", self.kid)
    }
}

impl PartialEq for ServiceKey {
    fn eq(&self, other: &Self) -> bool {
        self.kid == other.kid && self.signing.verifying_key() == other.signing.verifying_key()
    }
}

impl ServiceKey {
    /// The key with this 32-byte seed.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(seed);
        let kid = key_id(&signing.verifying_key());
        Self { signing, kid }
    }

    /// Parses `SECURITY_SERVICE_KEY`: base64 of the 32-byte seed, or a PKCS#8 key as PEM
    /// or as base64 DER.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let bytes = decode_key_text(text).ok_or(KeyError::Format("private"))?;
        let seed: [u8; 32] = match bytes.len() {
            32 => bytes.try_into().map_err(|_| KeyError::Format("private"))?,
            48 if bytes.starts_with(&PKCS8_PREFIX) => {
                bytes[16..].try_into().map_err(|_| KeyError::Format("private"))?
            }
            _ => return Err(KeyError::Format("private")),
        };
        Ok(Self::from_seed(&seed))
    }

    /// `service`'s development key: derived from a public seed, so anyone can compute it.
    pub fn development(service: ServiceName) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(DEV_KEY_CONTEXT);
        hasher.update(service.as_str().as_bytes());
        let seed: [u8; 32] = hasher.finalize().into();
        Self::from_seed(&seed)
    }

    /// This key's id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half.
    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// Whether this is one of the development keys.
    pub fn is_development(&self) -> bool {
        is_development_key(&self.verifying_key())
    }

    pub(crate) fn signing_key(&self) -> &SigningKey {
        &self.signing
    }
}

/// Whether `key` is the public development key of some service.
pub fn is_development_key(key: &VerifyingKey) -> bool {
    ServiceName::ALL.iter().any(|&service| ServiceKey::development(service).verifying_key() == *key)
}

/// Parses a public key: base64 of the 32 raw bytes, or an SPKI key as PEM or base64 DER.
pub fn parse_public_key(text: &str) -> Result<VerifyingKey, KeyError> {
    let bytes = decode_key_text(text).ok_or(KeyError::Format("public"))?;
    let raw: [u8; 32] = match bytes.len() {
        32 => bytes.try_into().map_err(|_| KeyError::Format("public"))?,
        44 if bytes.starts_with(&SPKI_PREFIX) => bytes[12..].try_into().map_err(|_| KeyError::Format("public"))?,
        _ => return Err(KeyError::Format("public")),
    };
    VerifyingKey::from_bytes(&raw).map_err(|_| KeyError::Format("public"))
}

/// The bytes in base64 (standard or url-safe, padded or not) or in a PEM block.
fn decode_key_text(text: &str) -> Option<Vec<u8>> {
    let body: String = if text.contains("-----BEGIN") {
        text.lines().filter(|line| !line.starts_with("-----")).collect()
    } else {
        text.trim().to_owned()
    };
    let body = body.trim().trim_end_matches('=');
    URL_SAFE_NO_PAD.decode(body).ok().or_else(|| STANDARD.decode(pad(body)).ok())
}

fn pad(body: &str) -> String {
    let mut padded = body.to_owned();
    while !padded.len().is_multiple_of(4) {
        padded.push('=');
    }
    padded
}

/// The public keys a service accepts signatures from, per signing service and key id.
/// Several keys per service let a key rotate: trust the new one everywhere, switch the
/// signer, then drop the old one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedKeys {
    keys: HashMap<(ServiceName, String), VerifyingKey>,
}

impl TrustedKeys {
    /// The development keys of every service.
    pub fn development() -> Self {
        let mut trusted = Self::default();
        for service in ServiceName::ALL {
            trusted.insert(service, ServiceKey::development(service).verifying_key());
        }
        trusted
    }

    /// Parses `SECURITY_TRUSTED_KEYS`: `service:public-key` entries separated by commas,
    /// whitespace or newlines (a mounted file lists one per line).
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let mut trusted = Self::default();
        for entry in text.split(|c: char| c == ',' || c.is_whitespace()).filter(|e| !e.is_empty()) {
            let (service, key) = entry.split_once(':').ok_or_else(|| KeyError::Entry(entry.to_owned()))?;
            let service = service_named(service).ok_or_else(|| KeyError::UnknownService(service.to_owned()))?;
            trusted.insert(service, parse_public_key(key)?);
        }
        Ok(trusted)
    }

    /// Trusts `key` for signatures by `service`.
    pub fn insert(&mut self, service: ServiceName, key: VerifyingKey) {
        self.keys.insert((service, key_id(&key)), key);
    }

    /// The key `service` signs with under `kid`, if trusted.
    pub fn get(&self, service: ServiceName, kid: &str) -> Option<&VerifyingKey> {
        self.keys.get(&(service, kid.to_owned()))
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether any trusted key is a development key.
    pub fn has_development_key(&self) -> bool {
        self.keys.values().any(is_development_key)
    }
}

/// The service with the kebab-case name `name`.
pub fn service_named(name: &str) -> Option<ServiceName> {
    ServiceName::ALL.into_iter().find(|service| service.as_str() == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn development_keys_are_per_service_stable_and_recognised() {
        let gateway = ServiceKey::development(ServiceName::Gateway);
        assert_eq!(gateway, ServiceKey::development(ServiceName::Gateway));
        assert_ne!(gateway.kid(), ServiceKey::development(ServiceName::McpBroker).kid());
        assert!(gateway.is_development());
        assert!(!ServiceKey::from_seed(&[7; 32]).is_development());
        assert!(TrustedKeys::development().has_development_key());
    }

    #[test]
    fn keys_parse_from_base64_pem_and_der() {
        let key = ServiceKey::from_seed(&[9; 32]);
        assert_eq!(ServiceKey::parse(&STANDARD.encode([9u8; 32])), Ok(key.clone()));
        let mut der = PKCS8_PREFIX.to_vec();
        der.extend_from_slice(&[9; 32]);
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", STANDARD.encode(&der));
        assert_eq!(ServiceKey::parse(&pem), Ok(key.clone()));
        let public = key.verifying_key();
        let mut spki = SPKI_PREFIX.to_vec();
        spki.extend_from_slice(public.as_bytes());
        assert_eq!(parse_public_key(&STANDARD.encode(&spki)), Ok(public));
        assert_eq!(parse_public_key(&URL_SAFE_NO_PAD.encode(public.as_bytes())), Ok(public));
        assert_eq!(ServiceKey::parse("short").unwrap_err(), KeyError::Format("private"));
        assert_eq!(parse_public_key(&STANDARD.encode([1u8; 31])).unwrap_err(), KeyError::Format("public"));
    }

    #[test]
    fn trusted_keys_are_looked_up_by_service_and_kid() {
        let key = ServiceKey::from_seed(&[3; 32]);
        let text = format!("gateway:{},\nmcp-broker:{}", STANDARD.encode(key.verifying_key().as_bytes()), {
            STANDARD.encode(ServiceKey::from_seed(&[4; 32]).verifying_key().as_bytes())
        });
        let trusted = TrustedKeys::parse(&text).unwrap();
        assert_eq!(trusted.get(ServiceName::Gateway, key.kid()), Some(&key.verifying_key()));
        assert_eq!(trusted.get(ServiceName::McpBroker, key.kid()), None);
        assert!(!trusted.has_development_key());
        assert_eq!(TrustedKeys::parse("nobody:AAAA"), Err(KeyError::UnknownService("nobody".into())));
        assert_eq!(TrustedKeys::parse("gateway"), Err(KeyError::Entry("gateway".into())));
    }
}
