//! What a failed database attempt means for the caller ([`StoreError`]) and for the
//! resilience policy. Which failures are transient is the library's
//! ([`agentmesh_postgres::error`]); this module adds the orchestrator's domain outcomes.

use agentmesh_postgres::Judge;
use agentmesh_postgres::error::{Failure, attempt_error, violated_constraint};
use agentmesh_resilience::{Outcome, ResilienceError};

use super::super::{RunRecord, StoreError};

/// A failed attempt, as the operations report it.
#[derive(Debug, thiserror::Error)]
pub(super) enum DbError {
    /// No such record (or another owner's).
    #[error("not found")]
    NotFound,
    /// The owner has another agent with the name.
    #[error("name {0:?} is taken")]
    NameTaken(String),
    /// Another run holds the session.
    #[error("session is busy with run {}", .0.id)]
    SessionBusy(Box<RunRecord>),
    /// The transition does not apply to the run's status.
    #[error("run {} is {:?}", .0.id, .0.status)]
    InvalidTransition(Box<RunRecord>),
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

/// A failed write of the agent named `name`: the owner's name taken is the caller's
/// answer, anything else is classified as usual.
pub(super) fn classify_agent_write(error: sqlx::Error, name: &str) -> DbError {
    match violated_constraint(&error) {
        Some(("unique", constraint)) if constraint == "agents_user_name_key" => DbError::NameTaken(name.to_owned()),
        _ => classify(error),
    }
}

/// A failed insert of a run: a concurrent admission took the idempotency key or the
/// session first, so the attempt is retried as a whole and then sees that run.
pub(super) fn classify_run_insert(error: sqlx::Error) -> DbError {
    match violated_constraint(&error) {
        Some(("unique", constraint)) if constraint == "runs_user_key" || constraint == "runs_session_holder" => {
            DbError::Db(agentmesh_postgres::DbError::Transient(error))
        }
        _ => classify(error),
    }
}

impl Judge for DbError {
    /// Domain answers come from a healthy database.
    fn outcome(&self) -> Outcome {
        match self {
            DbError::NotFound | DbError::NameTaken(_) | DbError::SessionBusy(_) | DbError::InvalidTransition(_) => {
                Outcome::Success
            }
            DbError::Db(error) => error.outcome(),
        }
    }
}

/// The caller's view of a failed call.
pub(super) fn into_store_error(error: ResilienceError<DbError>) -> StoreError {
    match attempt_error(error) {
        Ok(DbError::NotFound) => StoreError::NotFound,
        Ok(DbError::NameTaken(name)) => StoreError::NameTaken(name),
        Ok(DbError::SessionBusy(run)) => StoreError::SessionBusy(run),
        Ok(DbError::InvalidTransition(run)) => StoreError::InvalidTransition(run),
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
    fn domain_answers_do_not_count_against_the_breaker() {
        assert_eq!(DbError::NotFound.outcome(), Outcome::Success);
        assert_eq!(DbError::NameTaken("x".into()).outcome(), Outcome::Success);
        assert_eq!(classify(io()).outcome(), Outcome::RETRYABLE);
        assert!(matches!(into_store_error(ResilienceError::Inner(DbError::NotFound)), StoreError::NotFound));
        assert!(matches!(into_store_error(ResilienceError::Inner(classify_commit(io()))), StoreError::Unavailable(_)));
        assert!(matches!(into_store_error(ResilienceError::Inner(DbError::corrupt("x"))), StoreError::Internal(_)));
    }
}
