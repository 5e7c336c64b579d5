//! What a failed database attempt means, for the caller and for the resilience policy:
//! the single list of transient failures every service uses.
//!
//! # What is transient
//!
//! | failure | examples |
//! |---|---|
//! | SQLSTATE class 08 | connection exception, connection failure |
//! | 40001, 40P01 | serialization failure, deadlock detected |
//! | SQLSTATE class 53 | insufficient resources, too many connections |
//! | 55P03, 57014 | lock not available, statement cancelled by a timeout |
//! | 57P01, 57P02, 57P03, 57P05 | admin / crash shutdown, cannot connect now, idle session timeout |
//! | no answer | pool timeout, I/O, TLS, protocol errors, a crashed connection worker |
//!
//! 57P04 (database dropped) is not transient: repeating cannot help.
//!
//! # What is retried
//!
//! A retry is only safe when the failed attempt cannot have taken effect. A server error
//! means the statement failed and its transaction rolled back; a lost connection before
//! `COMMIT` means the server rolls back. A lost connection *while committing* (or while a
//! single-statement write awaits its answer) leaves the outcome unknown: such failures
//! are [`DbError::Ambiguous`], reported as unavailable but never retried. Steps that
//! commit are classified with [`classify_commit`], everything else with [`classify`].
//!
//! Errors of the caller's own making (decoding, constraint violations) are
//! [`DbError::Internal`], which says nothing about the database's health: the breaker
//! ignores them.

use agentmesh_resilience::{Outcome, ResilienceError};
use sqlx::error::DatabaseError;

use crate::database::SetupError;

/// A failed database attempt.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Failed without taking effect; the same attempt may succeed later.
    #[error("database unavailable: {0}")]
    Transient(#[source] sqlx::Error),
    /// The connection was lost while a write's outcome was being decided.
    #[error("database connection lost, write outcome unknown: {0}")]
    Ambiguous(#[source] sqlx::Error),
    /// A bug, corrupt data or a constraint the caller did not expect.
    #[error("database failure: {0}")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl DbError {
    /// A value read from the database that the caller cannot accept.
    pub fn corrupt(what: impl Into<String>) -> Self {
        DbError::Internal(what.into().into())
    }

    /// Whether the caller should report "unavailable, try later" rather than a failure
    /// of its own.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, DbError::Transient(_) | DbError::Ambiguous(_))
    }
}

/// How the resilience policy judges a failed attempt. Implemented by [`DbError`]; a
/// service's own error type (with domain outcomes such as "not found", which are
/// successes for the breaker) implements it to run under [`Database::run`](crate::Database::run).
pub trait Judge {
    /// Retry, count against the breaker, or neither.
    fn outcome(&self) -> Outcome;
}

impl Judge for DbError {
    fn outcome(&self) -> Outcome {
        match self {
            DbError::Transient(_) => Outcome::RETRYABLE,
            DbError::Ambiguous(_) => Outcome::FATAL,
            DbError::Internal(_) => Outcome::Neutral,
        }
    }
}

impl DbError {
    /// Whether a call run under [`Database::run`](crate::Database::run) failed for
    /// lack of the database (transient failure, timeout, open breaker, full bulkhead)
    /// rather than through a fault of the caller's.
    pub fn unavailable(error: &ResilienceError<DbError>) -> bool {
        match error {
            ResilienceError::Inner(inner) => inner.is_unavailable(),
            ResilienceError::Timeout { .. }
            | ResilienceError::CircuitOpen { .. }
            | ResilienceError::BulkheadFull { .. } => true,
        }
    }
}

/// What a caller reports for a database failure, whatever its own error type: "the
/// database is missing, try later" or "something is wrong here". A store maps it onto its
/// own two variants once (`impl From<Failure> for StoreError`) and reports every
/// connect, attempt and policy failure through it:
///
/// ```
/// use agentmesh_postgres::error::{DbError, Failure, attempt_error};
/// use agentmesh_resilience::ResilienceError;
///
/// #[derive(Debug, thiserror::Error)]
/// enum StoreError {
///     #[error("not found")]
///     NotFound,
///     #[error("storage unavailable: {0}")]
///     Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
///     #[error("storage failure: {0}")]
///     Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
/// }
///
/// impl From<Failure> for StoreError {
///     fn from(failure: Failure) -> Self {
///         match failure {
///             Failure::Unavailable(error) => StoreError::Unavailable(error),
///             Failure::Internal(error) => StoreError::Internal(error),
///         }
///     }
/// }
///
/// /// A store's attempt error: its own answers, or the database's failure.
/// #[derive(Debug, thiserror::Error)]
/// enum AttemptError {
///     #[error("not found")]
///     NotFound,
///     #[error(transparent)]
///     Db(#[from] DbError),
/// }
///
/// fn into_store_error(error: ResilienceError<AttemptError>) -> StoreError {
///     match attempt_error(error) {
///         Ok(AttemptError::NotFound) => StoreError::NotFound,
///         Ok(AttemptError::Db(error)) => Failure::from(error).into(),
///         Err(failure) => failure.into(),
///     }
/// }
///
/// let open = ResilienceError::CircuitOpen { name: "db".into(), retry_after: std::time::Duration::ZERO };
/// assert!(matches!(into_store_error(open), StoreError::Unavailable(_)));
/// ```
#[derive(Debug)]
pub enum Failure {
    /// Nothing answered in time: a transient failure, a commit of unknown outcome, or the
    /// policy's timeout, open breaker or full bulkhead.
    Unavailable(Box<dyn std::error::Error + Send + Sync>),
    /// A bug, corrupt data, a bad setting or a failed migration.
    Internal(Box<dyn std::error::Error + Send + Sync>),
}

impl From<DbError> for Failure {
    fn from(error: DbError) -> Self {
        if error.is_unavailable() { Failure::Unavailable(Box::new(error)) } else { Failure::Internal(Box::new(error)) }
    }
}

impl From<SetupError> for Failure {
    fn from(error: SetupError) -> Self {
        if error.is_unavailable() { Failure::Unavailable(Box::new(error)) } else { Failure::Internal(Box::new(error)) }
    }
}

/// A failed call under [`Database::run`](crate::Database::run), split: the last
/// attempt's own error, for the caller to map its domain answers (and, through
/// [`Failure::from`], its database failures), or the policy's refusal (timeout, open
/// breaker, full bulkhead), which is always [`Failure::Unavailable`].
pub fn attempt_error<E>(error: ResilienceError<E>) -> Result<E, Failure>
where
    E: std::error::Error + Send + Sync + 'static,
{
    match error {
        ResilienceError::Inner(error) => Ok(error),
        refused @ (ResilienceError::Timeout { .. }
        | ResilienceError::CircuitOpen { .. }
        | ResilienceError::BulkheadFull { .. }) => Err(Failure::Unavailable(Box::new(refused))),
    }
}

/// Whether a SQLSTATE says the statement failed as a whole and may succeed if repeated.
pub fn is_transient_state(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(code, "40001" | "40P01" | "55P03" | "57014" | "57P01" | "57P02" | "57P03" | "57P05")
}

/// Whether `error` is transient (see the module documentation), wherever it happened.
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::Tls(_)
        | sqlx::Error::Io(_)
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| is_transient_state(&code)),
        _ => false,
    }
}

/// Classifies an error of a step that cannot have committed anything by itself:
/// acquiring a connection, a read, or a statement inside a transaction not yet committed.
pub fn classify(error: sqlx::Error) -> DbError {
    classify_at(error, false)
}

/// Classifies an error of a step that commits: `COMMIT` itself, or a write issued as one
/// statement outside a transaction.
pub fn classify_commit(error: sqlx::Error) -> DbError {
    classify_at(error, true)
}

fn classify_at(error: sqlx::Error, committing: bool) -> DbError {
    match error {
        // The connection broke: while committing, nobody knows whether it took effect.
        sqlx::Error::Io(_) | sqlx::Error::WorkerCrashed | sqlx::Error::Protocol(_) if committing => {
            DbError::Ambiguous(error)
        }
        ref transient if is_transient(transient) => DbError::Transient(error),
        // Includes `PoolClosed`: closed by our own shutdown, not the database's fault.
        other => DbError::Internal(Box::new(other)),
    }
}

/// The kind (`"unique"` or `"foreign_key"`) and name of the constraint a violation
/// names, if `error` is one.
pub fn violated_constraint(error: &sqlx::Error) -> Option<(&'static str, String)> {
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
        for code in ["08006", "08001", "40001", "40P01", "53300", "53100", "55P03", "57014", "57P01", "57P03", "57P05"]
        {
            assert!(is_transient_state(code), "{code}");
        }
        for code in ["23505", "23503", "42P01", "22001", "XX000", "57P04", "40002"] {
            assert!(!is_transient_state(code), "{code}");
        }
    }

    #[test]
    fn outcomes_and_availability() {
        assert_eq!(DbError::Transient(io()).outcome(), Outcome::RETRYABLE);
        assert_eq!(DbError::Ambiguous(io()).outcome(), Outcome::FATAL);
        assert_eq!(DbError::corrupt("bad").outcome(), Outcome::Neutral);
        assert!(DbError::unavailable(&ResilienceError::Inner(DbError::Ambiguous(io()))));
        assert!(DbError::unavailable(&ResilienceError::CircuitOpen {
            name: "db".into(),
            retry_after: std::time::Duration::ZERO
        }));
        assert!(!DbError::unavailable(&ResilienceError::Inner(DbError::corrupt("x"))));
    }
}
