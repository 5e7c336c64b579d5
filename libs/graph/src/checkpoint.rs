//! Checkpoints: what the engine hands the caller's store after every step, and what
//! [`Graph::resume`](crate::Graph::resume) goes on from.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

/// A run as it stands after a step: enough to go on from there.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint<S> {
    /// The number of the last step done (its [`Step::number`](crate::Step::number)); the
    /// next step is `step + 1`.
    pub step: u32,
    /// What comes next.
    pub next: Next,
    /// The state after that step.
    pub state: S,
}

/// What comes after a checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Next {
    /// The named node runs next.
    Node(String),
    /// The run is finished.
    End,
    /// The run stopped for the caller to settle something (e.g. approve tool calls); it
    /// goes on at `node` unless the caller names another.
    Interrupted {
        /// The node to go on with.
        node: String,
        /// Why the run stopped, as the router gave it.
        reason: serde_json::Value,
    },
}

/// Where a run's checkpoints go (a table, a key-value store, a list in a test). A save
/// that fails ends the run with [`Outcome::Failed`](crate::Outcome::Failed): a run that
/// cannot be checkpointed cannot go on durably.
#[async_trait]
pub trait Checkpointer<S>: Send + Sync {
    /// Why a save failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Stores `checkpoint`, the latest of its run (each replaces the one before).
    async fn save(&self, checkpoint: &Checkpoint<S>) -> Result<(), Self::Error>;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use serde_json::json;

    use super::*;

    #[test]
    fn checkpoints_round_trip_through_json() {
        let checkpoints = [
            Checkpoint { step: 1, next: Next::Node("tools".to_owned()), state: vec!["a".to_owned()] },
            Checkpoint { step: 2, next: Next::End, state: vec![] },
            Checkpoint {
                step: 3,
                next: Next::Interrupted { node: "tools".to_owned(), reason: json!({"approve": ["call-1"]}) },
                state: vec!["b".to_owned()],
            },
        ];
        for checkpoint in checkpoints {
            let text = serde_json::to_string(&checkpoint).unwrap();
            let back: Checkpoint<Vec<String>> = serde_json::from_str(&text).unwrap();
            assert_eq!(back, checkpoint);
        }
    }

    #[test]
    fn next_is_written_in_snake_case() {
        assert_eq!(serde_json::to_value(Next::Node("llm".to_owned())).unwrap(), json!({"node": "llm"}));
        assert_eq!(serde_json::to_value(Next::End).unwrap(), json!("end"));
        assert_eq!(
            serde_json::to_value(Next::Interrupted { node: "tools".to_owned(), reason: json!("why") }).unwrap(),
            json!({"interrupted": {"node": "tools", "reason": "why"}})
        );
    }
}
