//! The anthropic provider (being written).
