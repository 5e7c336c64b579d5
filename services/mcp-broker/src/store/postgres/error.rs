//! What a failed database attempt means for the caller ([`StoreError`]) and for the
//! resilience policy. Which failures are transient is the library's
//! ([`agentmesh_postgres::error`]); this module adds the registry's domain outcomes:
//! a missing record, a taken name, an unknown server.

use agentmesh_postgres::Judge;
use agentmesh_postgres::error::violated_constraint;
use agentmesh_postgres::error::{Failure, attempt_error};
use agentmesh_resilience::{Outcome, ResilienceError};

use super::super::StoreError;

/// A failed attempt, as the operations report it.
#[derive(Debug, thiserror::Error)]
pub(super) enum DbError {
    /// No such record.
    #[error("not found")]
    NotFound,
    /// The name is held by another record.
    #[error("name {0:?} is taken")]
    NameTaken(String),
    /// A tool's server does not exist.
    #[error("no such MCP server")]
    UnknownServer,
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

/// A failed write of a record named `name`: a taken name or an unknown server are the
/// caller's answers, anything else is classified as usual.
pub(super) fn classify_write(error: sqlx::Error, name: &str) -> DbError {
    match violated_constraint(&error) {
        Some(("unique", constraint)) if constraint == "tools_name_key" || constraint == "mcp_servers_name_key" => {
            DbError::NameTaken(name.to_owned())
        }
        Some(("foreign_key", constraint)) if constraint == "tools_mcp_server_id_fkey" => DbError::UnknownServer,
        _ => classify(error),
    }
}

impl Judge for DbError {
    /// Missing records, taken names and unknown servers are answers from a healthy
    /// database.
    fn outcome(&self) -> Outcome {
        match self {
            DbError::NotFound | DbError::NameTaken(_) | DbError::UnknownServer => Outcome::Success,
            DbError::Db(error) => error.outcome(),
        }
    }
}

/// The caller's view of a failed call.
pub(super) fn into_store_error(error: ResilienceError<DbError>) -> StoreError {
    match attempt_error(error) {
        Ok(DbError::NotFound) => StoreError::NotFound,
        Ok(DbError::NameTaken(name)) => StoreError::NameTaken(name),
        Ok(DbError::UnknownServer) => StoreError::UnknownServer,
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
        assert_eq!(DbError::UnknownServer.outcome(), Outcome::Success);
        assert_eq!(classify(io()).outcome(), Outcome::RETRYABLE);
        assert!(matches!(into_store_error(ResilienceError::Inner(DbError::NotFound)), StoreError::NotFound));
        assert!(matches!(into_store_error(ResilienceError::Inner(classify_commit(io()))), StoreError::Unavailable(_)));
        assert!(matches!(into_store_error(ResilienceError::Inner(DbError::corrupt("x"))), StoreError::Internal(_)));
    }
}
