//! What a failed database attempt means for the caller ([`StoreError`]) and for the
//! resilience policy. Which failures are transient, and which are retried before or
//! after a commit, is the library's ([`agentmesh_postgres::error`]); this module adds the
//! store's domain outcomes.
//!
//! # What is retried
//!
//! Besides the library's rules (anything before `COMMIT`, never a commit whose outcome
//! is unknown), creates are retried even after a lost single-statement write: their ids
//! are generated before the first attempt, so a repeated insert of an already committed
//! attempt hits the primary key, which the create recognises as its own earlier success
//! (see `sessions` and `messages`). Deleting sessions is not retried once sent (a repeat
//! would report nothing deleted). The caller sees [`StoreError::Unavailable`] for every
//! transient failure, retried or not, and decides at its own level (idempotency keys
//! make that safe).

use agentmesh_postgres::Judge;
use agentmesh_postgres::error::{Failure, attempt_error};
use agentmesh_resilience::{Outcome, ResilienceError};

pub(super) use agentmesh_postgres::error::violated_constraint;

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
    /// The database failed.
    #[error(transparent)]
    Db(#[from] agentmesh_postgres::DbError),
}

impl DbError {
    /// A value read from the database that the store cannot accept.
    pub(super) fn corrupt(what: impl Into<String>) -> Self {
        DbError::Db(agentmesh_postgres::DbError::corrupt(what))
    }
}

/// See [`agentmesh_postgres::classify`].
pub(super) fn classify(error: sqlx::Error) -> DbError {
    DbError::Db(agentmesh_postgres::classify(error))
}

/// See [`agentmesh_postgres::classify_commit`].
pub(super) fn classify_commit(error: sqlx::Error) -> DbError {
    DbError::Db(agentmesh_postgres::classify_commit(error))
}

impl Judge for DbError {
    /// Not found, a foreign parent and a concurrent change are answers from a healthy
    /// database.
    fn outcome(&self) -> Outcome {
        match self {
            DbError::NotFound | DbError::InvalidParent | DbError::Conflict => Outcome::Success,
            DbError::Db(error) => error.outcome(),
        }
    }
}

/// The caller's view of a failed call.
pub(super) fn into_store_error(error: ResilienceError<DbError>) -> StoreError {
    match attempt_error(error) {
        Ok(DbError::NotFound) => StoreError::NotFound,
        Ok(DbError::InvalidParent) => StoreError::InvalidParent,
        Ok(DbError::Conflict) => StoreError::Conflict,
        Ok(DbError::Db(error)) => Failure::from(error).into(),
        Err(failure) => failure.into(),
    }
}

impl From<Failure> for StoreError {
    fn from(failure: Failure) -> Self {
        match failure {
            Failure::Unavailable(error) => StoreError::Unavailable(error),
            Failure::Internal(error) => StoreError::Internal(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io() -> sqlx::Error {
        sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset"))
    }

    #[test]
    fn outcomes_and_caller_errors() {
        assert_eq!(DbError::NotFound.outcome(), Outcome::Success);
        assert_eq!(DbError::InvalidParent.outcome(), Outcome::Success);
        assert_eq!(DbError::Conflict.outcome(), Outcome::Success);
        assert_eq!(classify(io()).outcome(), Outcome::RETRYABLE);
        assert_eq!(classify_commit(io()).outcome(), Outcome::FATAL);
        assert_eq!(DbError::corrupt("bad role").outcome(), Outcome::Neutral);

        assert!(matches!(into_store_error(ResilienceError::Inner(DbError::NotFound)), StoreError::NotFound));
        assert!(matches!(into_store_error(ResilienceError::Inner(DbError::InvalidParent)), StoreError::InvalidParent));
        assert!(matches!(into_store_error(ResilienceError::Inner(classify_commit(io()))), StoreError::Unavailable(_)));
        assert!(matches!(
            into_store_error(ResilienceError::BulkheadFull { name: "db".into() }),
            StoreError::Unavailable(_)
        ));
        assert!(matches!(into_store_error(ResilienceError::Inner(DbError::corrupt("x"))), StoreError::Internal(_)));
    }
}
