//! One error type for every layer, so a whole stack returns `ResilienceError<E>` (never
//! `ResilienceError<ResilienceError<E>>`) and callers match typed variants instead of
//! downcasting a boxed error.

use std::time::Duration;

use crate::breaker::BreakerOpen;
use crate::bulkhead::BulkheadFull;

/// What went wrong in a call made through this crate's layers; `E` is the wrapped
/// client's own error.
#[derive(Debug, thiserror::Error)]
pub enum ResilienceError<E> {
    /// The wrapped client failed (after any retries); its error is kept unchanged.
    #[error(transparent)]
    Inner(E),
    /// The call did not finish before its deadline.
    #[error("call timed out after {after:?}")]
    Timeout {
        /// The deadline that elapsed.
        after: Duration,
    },
    /// The target's circuit breaker rejected the call without trying it.
    #[error("circuit breaker {name} is open; retry after {retry_after:?}")]
    CircuitOpen {
        /// Name of the breaker, i.e. of the target.
        name: String,
        /// Time left until the breaker lets a probe through.
        retry_after: Duration,
    },
    /// The target already had as many calls in flight as its bulkhead allows.
    #[error("bulkhead {name} is full")]
    BulkheadFull {
        /// Name of the bulkhead, i.e. of the target.
        name: String,
    },
}

impl<E> ResilienceError<E> {
    /// Whether trying again later may succeed, as far as this crate can tell: true for
    /// its own rejections and timeouts, false for `Inner` (classify the inner error with
    /// a [`Classify`](crate::Classify) to decide about it).
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::Inner(_))
    }

    /// How long a caller should wait before trying again, when this crate knows.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::CircuitOpen { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    /// The wrapped client's error, if that is what this is.
    pub fn inner(&self) -> Option<&E> {
        match self {
            Self::Inner(error) => Some(error),
            _ => None,
        }
    }

    /// Takes out the wrapped client's error, if that is what this is.
    pub fn into_inner(self) -> Option<E> {
        match self {
            Self::Inner(error) => Some(error),
            _ => None,
        }
    }
}

impl<E> From<BreakerOpen> for ResilienceError<E> {
    fn from(open: BreakerOpen) -> Self {
        Self::CircuitOpen { name: open.name, retry_after: open.retry_after }
    }
}

impl<E> From<BulkheadFull> for ResilienceError<E> {
    fn from(full: BulkheadFull) -> Self {
        Self::BulkheadFull { name: full.name }
    }
}

/// A configuration value that cannot work, named by its field so start-up can report
/// which environment variable to fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field} must be {requirement}, got {value}")]
pub struct ConfigError {
    /// Dotted path of the field, e.g. `retry.max_attempts`.
    pub field: &'static str,
    /// What the field must satisfy.
    pub requirement: &'static str,
    /// The rejected value, as text.
    pub value: String,
}

/// Returns a [`ConfigError`] for `field` unless `ok`.
pub(crate) fn check(
    ok: bool,
    field: &'static str,
    requirement: &'static str,
    value: impl std::fmt::Debug,
) -> Result<(), ConfigError> {
    if ok { Ok(()) } else { Err(ConfigError { field, requirement, value: format!("{value:?}") }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_tell_rejections_from_inner_errors() {
        let open: ResilienceError<std::io::Error> =
            BreakerOpen { name: "llm".into(), retry_after: Duration::from_secs(3) }.into();
        assert!(open.is_retryable());
        assert_eq!(open.retry_after(), Some(Duration::from_secs(3)));
        assert_eq!(open.to_string(), "circuit breaker llm is open; retry after 3s");

        let inner = ResilienceError::Inner(std::io::Error::other("boom"));
        assert!(!inner.is_retryable());
        assert_eq!(inner.retry_after(), None);
        assert_eq!(inner.to_string(), "boom");
        assert!(inner.inner().is_some());
        assert!(inner.into_inner().is_some());

        let full: ResilienceError<std::io::Error> = BulkheadFull { name: "db".into() }.into();
        assert!(full.is_retryable());
        assert!(full.into_inner().is_none());
    }

    #[test]
    fn is_a_std_error_when_the_inner_error_is() {
        fn boxed<E: std::error::Error + Send + Sync + 'static>(e: E) -> Box<dyn std::error::Error> {
            Box::new(e)
        }
        let error = boxed(ResilienceError::<std::io::Error>::Timeout { after: Duration::from_millis(1500) });
        assert_eq!(error.to_string(), "call timed out after 1.5s");
    }
}
