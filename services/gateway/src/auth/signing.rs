//! The token-signing secret from secrets-broker (`GATEWAY_JWT_KEY_SOURCE=secrets-broker`):
//! read once before serving, then followed as it rotates, so every gateway replica signs
//! with the same current key and still verifies the previous one for the overlap window
//! ([`JwtCodec::rotate`]).

use std::time::Duration;

use agentmesh_runtime::config::MIN_SECRET_KEY_LEN;
use agentmesh_runtime::secrets::{SecretNotice, SecretReader};
use futures::StreamExt as _;

use super::jwt::JwtCodec;

/// The seed's name of the signing secret (`SecretConfig.jwt_secret_name`).
pub const JWT_SECRET: &str = "jwt-secret-key";

/// Pause between start-up reads while secrets-broker is not answering yet.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Why the signing key could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SigningKeyError {
    /// secrets-broker gave no usable key in time.
    #[error("no usable {JWT_SECRET} from secrets-broker within {waited:?}: {reason}")]
    Unavailable {
        /// How long start-up waited.
        waited: Duration,
        /// The last reason (never the value).
        reason: String,
    },
}

/// Keeps a codec's signing key in step with secrets-broker.
#[derive(Debug)]
pub struct SigningKeys<R> {
    codec: JwtCodec,
    reader: R,
    overlap: Duration,
}

impl<R: SecretReader> SigningKeys<R> {
    /// Follows `reader`'s signing secret into `codec`, keeping the previous key for `overlap`.
    pub fn new(codec: JwtCodec, reader: R, overlap: Duration) -> Self {
        Self { codec, reader, overlap }
    }

    /// Reads the key before the gateway serves, retrying for up to `wait` (secrets-broker
    /// may start after the gateway); the key read replaces the configured one outright.
    pub async fn load(&self, wait: Duration) -> Result<(), SigningKeyError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let reason = match self.read().await {
                Ok(key) => {
                    self.codec.rotate(&key, Duration::ZERO);
                    return Ok(());
                }
                Err(reason) => reason,
            };
            if tokio::time::Instant::now() + RETRY_PAUSE > deadline {
                return Err(SigningKeyError::Unavailable { waited: wait, reason });
            }
            tracing::info!(%reason, "waiting for the token-signing key from secrets-broker");
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Follows the key's rotations for as long as it runs: each new key signs from then
    /// on, and the one before keeps verifying for the overlap.
    pub async fn follow(self) {
        let Some(mut notices) = self.reader.watch(JWT_SECRET) else { return };
        while let Some(notice) = notices.next().await {
            if matches!(&notice, SecretNotice::Changed(name) if name != JWT_SECRET) {
                continue;
            }
            match self.read().await {
                Ok(key) => self.codec.rotate(&key, self.overlap),
                Err(reason) => tracing::warn!(%reason, "token-signing key not re-read; signing with the current one"),
            }
        }
    }

    /// The current key, if secrets-broker has a usable one.
    async fn read(&self) -> Result<String, String> {
        match self.reader.read(JWT_SECRET).await {
            Ok(Some(key)) if key.expose().chars().count() >= MIN_SECRET_KEY_LEN => Ok(key.expose().to_owned()),
            Ok(Some(_)) => Err(format!("{JWT_SECRET} is shorter than {MIN_SECRET_KEY_LEN} characters")),
            Ok(None) => Err(format!("{JWT_SECRET} does not exist")),
            Err(error) => Err(error.to_string()),
        }
    }
}
