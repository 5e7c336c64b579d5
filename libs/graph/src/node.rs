//! What the engine asks of the caller's types: the state a graph carries ([`GraphState`])
//! and the work one node does in one step ([`Node`], given a [`Step`]).

use std::sync::Arc;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

/// The state a graph carries from step to step. It is cloned for every step (a node works
/// on the copy, kept only if the node succeeds) and into every checkpoint, which the
/// caller's [`Checkpointer`](crate::Checkpointer) serialises.
pub trait GraphState: Clone + Send + Sync + serde::Serialize + serde::de::DeserializeOwned + 'static {
    /// Tokens spent so far, checked against [`Limits::token_budget`](crate::Limits::token_budget)
    /// before each step. A state that does not count tokens keeps the default, 0.
    fn tokens_used(&self) -> u64 {
        0
    }
}

/// One kind of step's work: an LLM call, a batch of tool calls, a decision...
///
/// `C` is the caller's context, shared by every node of a run (clients, an event sink); `E`
/// is the caller's error type. A node that returns an error ends the run with
/// [`Outcome::Failed`](crate::Outcome::Failed), and its changes to `state` are discarded.
/// A node may be dropped mid-way when the run is cancelled, so anything it must not leave
/// half-done belongs in the state it returns, not in side effects.
#[async_trait]
pub trait Node<S, C, E>: Send + Sync {
    /// Does this step's work on `state` (a copy of the run's state, kept only on success).
    async fn run(&self, state: &mut S, step: &Step<'_, C>) -> Result<(), E>;
}

/// A shared node is a node, so one node value (or an `Arc<dyn Node>`) can serve in several
/// graphs or under several names.
#[async_trait]
impl<S: Send, C: Sync, E, N: Node<S, C, E> + ?Sized> Node<S, C, E> for Arc<N> {
    async fn run(&self, state: &mut S, step: &Step<'_, C>) -> Result<(), E> {
        N::run(self, state, step).await
    }
}

/// What a node is told about the step it runs in.
#[derive(Debug)]
pub struct Step<'a, C> {
    /// The step's number: 1 for a run's first step, counted over the whole run, including
    /// the steps done before a resume.
    pub number: u32,
    /// The name the node was added to the graph under.
    pub node: &'a str,
    /// The run's cancellation token. The engine already drops the node on cancel; a node
    /// watches this only to stop work it has handed elsewhere.
    pub cancel: &'a CancellationToken,
    /// The caller's context for this run.
    pub context: &'a C,
}
