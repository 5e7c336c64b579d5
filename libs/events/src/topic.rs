//! Topics, topic filters and the NATS subject rules they follow.
//!
//! Services name events by *topic* (`session.created`, `run.<run_id>.output`), relative
//! to the bus's subject root, so the same code publishes to `agentmesh.session.created`
//! in production and to a per-test root in tests. Topics follow NATS subject syntax:
//! dot-separated non-empty tokens without whitespace. Filters may also use the NATS
//! wildcards, as whole tokens: `*` matches exactly one token and `>` (last token only)
//! matches one or more trailing tokens. [`matches()`] implements that rule for the
//! in-process bus, so both buses select exactly the same events.

use crate::error::ValidationError;

/// Topic of the output stream of one agent run (`run.<run_id>.output`).
pub fn run_output(run_id: &str) -> String {
    format!("run.{run_id}.output")
}

/// Whether `filter` (which may contain wildcards) selects the literal `topic`.
///
/// Both are assumed valid ([`validate_filter`], [`validate_topic`]).
pub fn matches(filter: &str, topic: &str) -> bool {
    let mut topic_tokens = topic.split('.');
    for filter_token in filter.split('.') {
        if filter_token == ">" {
            return topic_tokens.next().is_some();
        }
        match topic_tokens.next() {
            Some(token) if filter_token == "*" || filter_token == token => {}
            _ => return false,
        }
    }
    topic_tokens.next().is_none()
}

/// Checks a literal topic, as an event is published on and looked up by: literal tokens
/// only.
pub fn validate_topic(topic: &str) -> Result<(), ValidationError> {
    let invalid = |reason| ValidationError::Topic { topic: topic.to_owned(), reason };
    for token in topic.split('.') {
        check_token(token).map_err(invalid)?;
        if token.contains(['*', '>']) {
            return Err(invalid("wildcards are allowed only in filters"));
        }
    }
    Ok(())
}

/// Checks a subscription filter: tokens, `*` tokens, and an optional final `>`.
pub fn validate_filter(filter: &str) -> Result<(), ValidationError> {
    let invalid = |reason| ValidationError::Filter { filter: filter.to_owned(), reason };
    let mut tokens = filter.split('.').peekable();
    while let Some(token) = tokens.next() {
        check_token(token).map_err(invalid)?;
        match token {
            "*" => {}
            ">" if tokens.peek().is_none() => {}
            ">" => return Err(invalid("`>` must be the last token")),
            _ if token.contains(['*', '>']) => {
                return Err(invalid("wildcards must be whole tokens"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Checks a subject root: like a topic, it must be literal.
pub(crate) fn validate_root(root: &str) -> Result<(), ValidationError> {
    validate_topic(root).map_err(|err| match err {
        ValidationError::Topic { topic, reason } => {
            ValidationError::Name { kind: "subject root", value: topic, reason }
        }
        other => other,
    })
}

/// The full NATS subject of `topic` (or filter) under `root`.
pub(crate) fn subject(root: &str, topic: &str) -> String {
    format!("{root}.{topic}")
}

/// The topic of a full NATS `subject`, when it lies under `root`.
pub(crate) fn strip_root<'a>(root: &str, subject: &'a str) -> Option<&'a str> {
    subject.strip_prefix(root).and_then(|rest| rest.strip_prefix('.')).filter(|topic| !topic.is_empty())
}

fn check_token(token: &str) -> Result<(), &'static str> {
    if token.is_empty() {
        return Err("tokens must not be empty");
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("tokens must not contain whitespace or control characters");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_matches_exactly_one_token() {
        assert!(matches("session.*", "session.created"));
        assert!(!matches("session.*", "message.created"));
        assert!(!matches("session.*", "session.created.extra"));
        assert!(!matches("session.*", "session"));
        assert!(matches("run.*.output", "run.r1.output"));
        assert!(!matches("run.*.output", "run.r1.completed"));
    }

    #[test]
    fn greater_than_matches_one_or_more_trailing_tokens() {
        assert!(matches(">", "session.created"));
        assert!(matches(">", "x"));
        assert!(matches("run.>", "run.r1.output"));
        assert!(!matches("run.>", "run"));
        assert!(!matches("run.>", "session.created"));
    }

    #[test]
    fn literal_filters_match_only_themselves() {
        assert!(matches("session.created", "session.created"));
        assert!(!matches("session.created", "session.deleted"));
        assert!(!matches("session.created", "session.created.v2"));
    }

    #[test]
    fn topics_reject_empty_tokens_whitespace_and_wildcards() {
        assert!(validate_topic("session.created").is_ok());
        assert!(validate_topic("run.0190f1b2-aaaa.output").is_ok());
        for bad in ["", ".", "a..b", "a.", ".a", "a b", "a\tb", "a.*", "a.>", "a*b"] {
            assert!(matches!(validate_topic(bad), Err(ValidationError::Topic { .. })), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn filters_allow_whole_token_wildcards_only() {
        for good in ["session.*", "run.*.output", ">", "run.>", "*.*"] {
            assert!(validate_filter(good).is_ok(), "{good:?} should be accepted");
        }
        for bad in ["", "a..b", "a.>.b", "a*", "a.b>", "a b"] {
            assert!(matches!(validate_filter(bad), Err(ValidationError::Filter { .. })), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn subjects_join_and_strip_the_root() {
        assert_eq!(subject("agentmesh", "session.created"), "agentmesh.session.created");
        assert_eq!(strip_root("agentmesh", "agentmesh.session.created"), Some("session.created"));
        assert_eq!(strip_root("agentmesh", "agentmeshx.session"), None);
        assert_eq!(strip_root("agentmesh", "agentmesh."), None);
        assert_eq!(strip_root("agentmesh", "other.session.created"), None);
        assert_eq!(run_output("r1"), "run.r1.output");
    }

    #[test]
    fn roots_must_be_literal() {
        assert!(validate_root("agentmesh").is_ok());
        assert!(matches!(validate_root("agentmesh.*"), Err(ValidationError::Name { kind: "subject root", .. })));
    }
}
