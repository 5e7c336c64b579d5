//! What a failed database attempt means: for the caller ([`StoreError`]), and for the
//! resilience policy (retry or not, count against the breaker or not).
//!
//! # What is retried
//!
//! A retry is only safe when the failed attempt cannot have taken effect, or when taking
//! effect twice is harmless. So every error is classified by *where* it happened:
//!
//! | failure | example | retried |
//! |---|---|---|
//! | before anything was sent | pool exhausted (`acquire_timeout`), connection refused | yes |
//! | the server answered with a transient error | serialization failure, deadlock, admin shutdown, too many connections | yes (the statement failed, its transaction rolled back) |
//! | connection lost inside an open transaction, before `COMMIT` | I/O error mid-`UPDATE` | yes (the server rolls the transaction back) |
//! | connection lost during `COMMIT` or a single-statement write | I/O error awaiting the answer | **no**: the outcome is unknown ([`DbError::Ambiguous`]) |
//! | reads | any transient failure | yes |
//!
//! Creates are the exception to the last-but-one row: their ids are generated before the
//! first attempt, so a repeated insert of an already committed attempt hits the primary
//! key, which the create recognises as its own earlier success (see `sessions` and
//! `messages`). Deleting sessions is not retried once sent (a repeat would report nothing
//! deleted). The caller sees [`StoreError::Unavailable`] for every transient failure,
//! retried or not, and decides at its own level (idempotency keys make that safe).
//!
//! Errors of the store's own making (decoding, constraint violations other than the ones
//! mapped to domain errors) are [`StoreError::Internal`] and say nothing about the
//! database's health, so the breaker ignores them.

use agentmesh_resilience::{Outcome, ResilienceError};
use sqlx::error::DatabaseError;

use super::super::StoreError;

/// A failed attempt, as the operations report it.
#[derive(Debug, thiserror::Error)]
pub(super) enum DbError {
    /// The record is not the owner's (or does not exist).
    #[error("not found")]
    NotFound,
    /// The parent message is not in the session.
    #[error("parent message is not in this session")]
    InvalidParent,
    /// The message's shape is no longer the one the caller expected.
    #[error("message changed concurrently")]
    Conflict,
    /// Failed without taking effect; the same attempt may succeed later.
    #[error("database unavailable: {0}")]
    Transient(#[source] sqlx::Error),
    /// The connection was lost while a write's outcome was being decided.
    #[error("database connection lost, write outcome unknown: {0}")]
    Ambiguous(#[source] sqlx::Error),
    /// A bug or corrupt data.
    #[error("database failure: {0}")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl DbError {
    /// A value read from the database that the store cannot accept.
    pub(super) fn corrupt(what: impl Into<String>) -> Self {
        DbError::Internal(what.into().into())
    }
}

/// SQLSTATEs after which the statement failed as a whole and may succeed if repeated:
/// connection exceptions (08), serialization failure and deadlock (40001, 40P01),
/// insufficient resources (53), lock not available (55P03), cancelled by timeout (57014)
/// and shutdowns (57P01-57P03).
fn transient_state(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(code, "40001" | "40P01" | "55P03" | "57014" | "57P01" | "57P02" | "57P03")
}

/// Classifies an error of a step that cannot have committed anything by itself:
/// acquiring a connection, a read, or a statement inside a transaction not yet committed.
pub(super) fn classify(error: sqlx::Error) -> DbError {
    classify_at(error, false)
}

/// Classifies an error of a step that commits: `COMMIT` itself, or a write issued as one
/// statement outside a transaction.
pub(super) fn classify_commit(error: sqlx::Error) -> DbError {
    classify_at(error, true)
}

fn classify_at(error: sqlx::Error, committing: bool) -> DbError {
    let lost = |error| if committing { DbError::Ambiguous(error) } else { DbError::Transient(error) };
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::Tls(_) => DbError::Transient(error),
        sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed | sqlx::Error::Protocol(_) => lost(error),
        sqlx::Error::Database(ref db) => match db.code() {
            // The server answered: the statement failed and took its transaction with it.
            Some(code) if transient_state(&code) => DbError::Transient(error),
            _ => DbError::Internal(Box::new(error)),
        },
        // Closed by our own shutdown: not the database's fault, and not worth retrying.
        sqlx::Error::PoolClosed => DbError::Internal(Box::new(error)),
        other => DbError::Internal(Box::new(other)),
    }
}

/// The constraint a unique or foreign-key violation names, if `error` is one.
pub(super) fn violated_constraint(error: &sqlx::Error) -> Option<(&'static str, String)> {
    let db: &dyn DatabaseError = match error {
        sqlx::Error::Database(db) => db.as_ref(),
        _ => return None,
    };
    let kind = match db.code().as_deref() {
        Some("23505") => "unique",
        Some("23503") => "foreign_key",
        _ => return None,
    };
    Some((kind, db.constraint().unwrap_or_default().to_owned()))
}

/// How the resilience policy judges one attempt's result.
pub(super) fn outcome<T>(result: &Result<T, DbError>) -> Outcome {
    match result {
        Ok(_) | Err(DbError::NotFound | DbError::InvalidParent | DbError::Conflict) => Outcome::Success,
        Err(DbError::Transient(_)) => Outcome::RETRYABLE,
        Err(DbError::Ambiguous(_)) => Outcome::FATAL,
        Err(DbError::Internal(_)) => Outcome::Neutral,
    }
}

/// The caller's view of a failed call.
pub(super) fn into_store_error(error: ResilienceError<DbError>) -> StoreError {
    match error {
        ResilienceError::Inner(DbError::NotFound) => StoreError::NotFound,
        ResilienceError::Inner(DbError::InvalidParent) => StoreError::InvalidParent,
        ResilienceError::Inner(DbError::Conflict) => StoreError::Conflict,
        ResilienceError::Inner(error @ (DbError::Transient(_) | DbError::Ambiguous(_))) => {
            StoreError::Unavailable(Box::new(error))
        }
        ResilienceError::Inner(error @ DbError::Internal(_)) => StoreError::Internal(Box::new(error)),
        other @ (ResilienceError::Timeout { .. }
        | ResilienceError::CircuitOpen { .. }
        | ResilienceError::BulkheadFull { .. }) => StoreError::Unavailable(Box::new(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io() -> sqlx::Error {
        sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset"))
    }

    #[test]
    fn lost_connections_are_retried_only_before_commit() {
        assert!(matches!(classify(io()), DbError::Transient(_)));
        assert!(matches!(classify_commit(io()), DbError::Ambiguous(_)));
        assert!(matches!(classify_commit(sqlx::Error::PoolTimedOut), DbError::Transient(_)));
        assert!(matches!(classify(sqlx::Error::PoolClosed), DbError::Internal(_)));
        assert!(matches!(classify(sqlx::Error::RowNotFound), DbError::Internal(_)));
    }

    #[test]
    fn transient_states() {
        for code in ["08006", "40001", "40P01", "53300", "55P03", "57014", "57P01"] {
            assert!(transient_state(code), "{code}");
        }
        for code in ["23505", "23503", "42P01", "22001", "XX000"] {
            assert!(!transient_state(code), "{code}");
        }
    }

    #[test]
    fn outcomes_and_caller_errors() {
        assert_eq!(outcome(&Ok::<(), DbError>(())), Outcome::Success);
        assert_eq!(outcome::<()>(&Err(DbError::NotFound)), Outcome::Success);
        assert_eq!(outcome::<()>(&Err(DbError::Transient(io()))), Outcome::RETRYABLE);
        assert_eq!(outcome::<()>(&Err(DbError::Ambiguous(io()))), Outcome::FATAL);
        assert_eq!(outcome::<()>(&Err(DbError::corrupt("bad role"))), Outcome::Neutral);

        assert!(matches!(into_store_error(ResilienceError::Inner(DbError::NotFound)), StoreError::NotFound));
        assert!(matches!(into_store_error(ResilienceError::Inner(DbError::InvalidParent)), StoreError::InvalidParent));
        assert!(matches!(
            into_store_error(ResilienceError::Inner(DbError::Ambiguous(io()))),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(
            into_store_error(ResilienceError::BulkheadFull { name: "db".into() }),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(into_store_error(ResilienceError::Inner(DbError::corrupt("x"))), StoreError::Internal(_)));
    }
}
