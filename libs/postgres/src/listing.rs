//! The rows of a paged listing, read the one way every owner's listing queries are
//! written: the page (its limit plus one row, to tell whether more follow) `LEFT JOIN`ed
//! onto the count of all matches, so one statement answers both from the same snapshot.
//! Every row carries the count as `total`; a page with no items is a single row whose
//! record columns, `id` among them, are NULL.
//!
//! ```
//! use agentmesh_postgres::listing::{Listed, listed};
//! use sqlx::postgres::PgRow;
//!
//! /// `SELECT counted.total, page.* FROM (SELECT count(*) AS total FROM agents WHERE ...)
//! /// counted LEFT JOIN (SELECT id, name FROM agents WHERE ... LIMIT $1) page ON true`
//! fn agents(found: &[PgRow]) -> Result<Listed<String>, agentmesh_postgres::DbError> {
//!     listed(found, |row| {
//!         sqlx::Row::try_get::<String, _>(row, "name").map_err(agentmesh_postgres::classify)
//!     })
//! }
//! ```

use sqlx::Row as _;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use crate::error::{DbError, classify};

/// `search` as an `ILIKE` pattern matching it anywhere, with `\`, `%` and `_` taken
/// literally (the default `ESCAPE` character is `\`).
pub fn contains_pattern(search: &str) -> String {
    let mut pattern = String::with_capacity(search.len() + 2);
    pattern.push('%');
    for c in search.chars() {
        if matches!(c, '\\' | '%' | '_') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// A page size, offset or count as a `bigint` bind parameter, clamped.
pub fn bigint(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The records of a listing's rows and the number of matches in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed<T> {
    /// The records, in the rows' order (possibly one more than the page).
    pub items: Vec<T>,
    /// How many records match the listing's filters, ignoring paging.
    pub total: u64,
}

/// Reads `rows` (see the module documentation): `total` from the first row (0 without
/// rows), and `record` of every row whose `id` is not NULL.
pub fn listed<T, E>(rows: &[PgRow], mut record: impl FnMut(&PgRow) -> Result<T, E>) -> Result<Listed<T>, E>
where
    E: From<DbError>,
{
    let total: i64 = match rows.first() {
        Some(row) => row.try_get("total").map_err(classify)?,
        None => 0,
    };
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        if row.try_get::<Option<Uuid>, _>("id").map_err(classify)?.is_some() {
            items.push(record(row)?);
        }
    }
    Ok(Listed { items, total: u64::try_from(total).unwrap_or(0) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_patterns_take_wildcards_literally() {
        assert_eq!(contains_pattern("a%b_c\\"), "%a\\%b\\_c\\\\%");
        assert_eq!(contains_pattern("100%"), "%100\\%%");
        assert_eq!(contains_pattern("École"), "%École%");
    }

    #[test]
    fn counts_beyond_i64_are_clamped() {
        assert_eq!((bigint(42), bigint(u64::MAX)), (42, i64::MAX));
    }
}
