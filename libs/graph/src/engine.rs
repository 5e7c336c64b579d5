//! The run loop: before each step the stop checks (cancel, step limit, token budget), then
//! the node raced against cancel on a copy of the state, then the route and the
//! checkpoint. [`Graph::run`] starts it at the entry node, [`Graph::resume`] at a checkpoint.

use std::collections::HashMap;
use std::error::Error;

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::builder::{Route, Slot};
use crate::checkpoint::{Checkpoint, Checkpointer, Next};
use crate::node::{GraphState, Step};

/// The step limit when the caller sets none, as in the seed.
pub const DEFAULT_MAX_STEPS: u32 = 10;

/// When a run stops even though it has work left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most steps a run may take, counted over the whole run (across resumes).
    pub max_steps: u32,
    /// Once [`GraphState::tokens_used`] reaches this many tokens, no further step starts.
    pub token_budget: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_steps: DEFAULT_MAX_STEPS, token_budget: None }
    }
}

/// How a run ended. Every outcome carries the state and `steps`, the number of steps done
/// over the whole run (across resumes; 0 when none was).
#[derive(Debug)]
pub enum Outcome<S, E> {
    /// A route reached the end.
    Finished {
        /// The final state.
        state: S,
        /// Steps done.
        steps: u32,
    },
    /// A router interrupted the run; [`Graph::resume`] goes on from the checkpoint saved
    /// with it.
    Interrupted {
        /// The state after the last step.
        state: S,
        /// Steps done.
        steps: u32,
        /// The node to go on with, as the router named it.
        node: String,
        /// Why the run stopped, as the router gave it.
        reason: serde_json::Value,
    },
    /// [`Limits::max_steps`] steps were done and there was work left.
    StepLimit {
        /// The state after the last step.
        state: S,
        /// Steps done.
        steps: u32,
    },
    /// The state's tokens reached [`Limits::token_budget`] and there was work left.
    TokenBudget {
        /// The state after the last step.
        state: S,
        /// Steps done.
        steps: u32,
    },
    /// The run was cancelled; a step in flight was dropped and left no trace.
    Cancelled {
        /// The state after the last completed step.
        state: S,
        /// Steps completed.
        steps: u32,
    },
    /// A step failed; see [`NodeFailure`] for which state `state` is.
    Failed {
        /// For [`NodeFailure::Node`], the state before the failed step (its changes are
        /// discarded); otherwise the state after the step, which was not checkpointed.
        state: S,
        /// Steps done, not counting a failed node's step.
        steps: u32,
        /// The node the failure happened at (for [`NodeFailure::UnknownNode`] from a router,
        /// the node the router followed; from [`Graph::resume`], the name asked for).
        node: String,
        /// What failed.
        error: NodeFailure<E>,
    },
}

impl<S, E> Outcome<S, E> {
    /// The state the run ended with.
    pub fn state(&self) -> &S {
        self.parts().0
    }

    /// The number of steps done over the whole run.
    pub fn steps(&self) -> u32 {
        self.parts().1
    }

    /// The state the run ended with, taken out of the outcome.
    pub fn into_state(self) -> S {
        match self {
            Self::Finished { state, .. }
            | Self::Interrupted { state, .. }
            | Self::StepLimit { state, .. }
            | Self::TokenBudget { state, .. }
            | Self::Cancelled { state, .. }
            | Self::Failed { state, .. } => state,
        }
    }

    /// The state and the steps, which every outcome has.
    fn parts(&self) -> (&S, u32) {
        match self {
            Self::Finished { state, steps }
            | Self::Interrupted { state, steps, .. }
            | Self::StepLimit { state, steps }
            | Self::TokenBudget { state, steps }
            | Self::Cancelled { state, steps }
            | Self::Failed { state, steps, .. } => (state, *steps),
        }
    }
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeFailure<E> {
    /// The node returned an error; its step was discarded.
    #[error("node failed: {0}")]
    Node(#[source] E),
    /// A router, or the caller resuming, named a node the graph does not have.
    #[error("the graph has no node {0:?}")]
    UnknownNode(String),
    /// The checkpoint after the step could not be saved, so the run cannot go on durably.
    #[error("checkpoint could not be saved: {0}")]
    Checkpoint(#[source] Box<dyn Error + Send + Sync>),
}

/// A checked graph, built by [`GraphBuilder`](crate::GraphBuilder). It holds no run state,
/// so one graph serves any number of runs at once.
pub struct Graph<S, C, E> {
    /// The node a run starts at.
    entry: &'static str,
    /// Every node with its outgoing edge, by name.
    slots: HashMap<&'static str, Slot<S, C, E>>,
}

/// Where the loop goes on: at a node, with the steps done so far and the state.
struct Position<'g, S, C, E> {
    /// The name of the node to run next.
    name: &'static str,
    /// That node, with its outgoing edge.
    slot: &'g Slot<S, C, E>,
    /// Steps done so far.
    steps: u32,
    /// The state after the last step.
    state: S,
}

/// What a step's route leads to, once checked against the graph.
enum After<'g, S, C, E> {
    /// The run goes on at this node.
    Continue {
        /// The node's name.
        name: &'static str,
        /// The node, with its outgoing edge.
        slot: &'g Slot<S, C, E>,
    },
    /// The run is finished.
    Finish,
    /// The run stops for the caller, to go on at `node`.
    Interrupt {
        /// The node to go on with.
        node: String,
        /// Why the run stopped.
        reason: serde_json::Value,
    },
}

impl<S, C, E> After<'_, S, C, E> {
    /// How the checkpoint records it.
    fn next(&self) -> Next {
        match self {
            Self::Continue { name, .. } => Next::Node((*name).to_owned()),
            Self::Finish => Next::End,
            Self::Interrupt { node, reason } => Next::Interrupted { node: node.clone(), reason: reason.clone() },
        }
    }
}

/// The end of a run that, at `at`, was to go on at `missing`, a node the graph does not
/// have.
fn unknown_node<S, E>(state: S, steps: u32, at: &str, missing: &str) -> Outcome<S, E> {
    Outcome::Failed { state, steps, node: at.to_owned(), error: NodeFailure::UnknownNode(missing.to_owned()) }
}

impl<S, C, E> Graph<S, C, E> {
    /// A graph of checked parts (see [`GraphBuilder::build`](crate::GraphBuilder::build)).
    pub(crate) fn new(entry: &'static str, slots: HashMap<&'static str, Slot<S, C, E>>) -> Self {
        Self { entry, slots }
    }
}

impl<S: GraphState, C, E> Graph<S, C, E> {
    /// Runs from the entry node with `state` until the end, an interrupt, a limit, a cancel
    /// or a failure, saving a checkpoint after every step.
    pub async fn run(
        &self,
        state: S,
        context: &C,
        limits: &Limits,
        cancel: &CancellationToken,
        checkpoints: &impl Checkpointer<S>,
    ) -> Outcome<S, E> {
        let Some((name, slot)) = self.lookup(self.entry) else {
            // The builder refuses an entry that is not a node.
            return unknown_node(state, 0, self.entry, self.entry);
        };
        self.drive(Position { name, slot, steps: 0, state }, context, limits, cancel, checkpoints).await
    }

    /// Goes on from `checkpoint` (the latest saved, after a crash; or one whose state the
    /// caller has edited after an interrupt). It continues at `continue_at` when given,
    /// else at the node the checkpoint records (the interrupted node for
    /// [`Next::Interrupted`]); a checkpoint of a finished run, with no `continue_at`, is
    /// [`Outcome::Finished`] at once. Steps are numbered on from `checkpoint.step`.
    pub async fn resume(
        &self,
        checkpoint: Checkpoint<S>,
        continue_at: Option<&str>,
        context: &C,
        limits: &Limits,
        cancel: &CancellationToken,
        checkpoints: &impl Checkpointer<S>,
    ) -> Outcome<S, E> {
        let Checkpoint { step: steps, next, state } = checkpoint;
        let name = match (continue_at, &next) {
            (Some(name), _) => name,
            (None, Next::Node(name) | Next::Interrupted { node: name, .. }) => name.as_str(),
            (None, Next::End) => return Outcome::Finished { state, steps },
        };
        let Some((name, slot)) = self.lookup(name) else {
            return unknown_node(state, steps, name, name);
        };
        self.drive(Position { name, slot, steps, state }, context, limits, cancel, checkpoints).await
    }

    /// The node of that name, with the graph's own copy of the name.
    fn lookup(&self, name: &str) -> Option<(&'static str, &Slot<S, C, E>)> {
        self.slots.get_key_value(name).map(|(name, slot)| (*name, slot))
    }

    /// The loop, from `position` on.
    async fn drive(
        &self,
        mut position: Position<'_, S, C, E>,
        context: &C,
        limits: &Limits,
        cancel: &CancellationToken,
        checkpoints: &impl Checkpointer<S>,
    ) -> Outcome<S, E> {
        loop {
            let Position { name, slot, steps, state } = position;
            if cancel.is_cancelled() {
                return Outcome::Cancelled { state, steps };
            }
            if steps >= limits.max_steps {
                return Outcome::StepLimit { state, steps };
            }
            if let Some(budget) = limits.token_budget
                && state.tokens_used() >= budget
            {
                return Outcome::TokenBudget { state, steps };
            }
            let number = steps + 1;
            let span = tracing::info_span!("graph_step", node = name, step = number);
            let step = Step { number, node: name, cancel, context };

            // The node works on a copy, kept only if it succeeds: a failed or cancelled step
            // leaves the state as it was.
            let mut working = state.clone();
            let result = {
                let node_run = slot.node.run(&mut working, &step).instrument(span.clone());
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => None,
                    result = node_run => Some(result),
                }
            };
            match result {
                None => {
                    span.in_scope(|| tracing::debug!("step cancelled"));
                    return Outcome::Cancelled { state, steps };
                }
                Some(Err(error)) => {
                    return Outcome::Failed { state, steps, node: name.to_owned(), error: NodeFailure::Node(error) };
                }
                Some(Ok(())) => {}
            }
            let state = working;

            let after = match slot.edge.route(&state) {
                Route::End => After::Finish,
                Route::To(to) => match self.lookup(to) {
                    Some((name, slot)) => After::Continue { name, slot },
                    None => return unknown_node(state, number, name, to),
                },
                Route::Interrupt { node, reason } => match self.lookup(node) {
                    Some(_) => After::Interrupt { node: node.to_owned(), reason },
                    None => return unknown_node(state, number, name, node),
                },
            };
            let checkpoint = Checkpoint { step: number, next: after.next(), state };
            span.in_scope(|| tracing::debug!(next = ?checkpoint.next, "step done"));
            if let Err(error) = checkpoints.save(&checkpoint).instrument(span).await {
                return Outcome::Failed {
                    state: checkpoint.state,
                    steps: number,
                    node: name.to_owned(),
                    error: NodeFailure::Checkpoint(Box::new(error)),
                };
            }
            let Checkpoint { step: steps, state, .. } = checkpoint;
            position = match after {
                After::Continue { name, slot } => Position { name, slot, steps, state },
                After::Finish => return Outcome::Finished { state, steps },
                After::Interrupt { node, reason } => return Outcome::Interrupted { state, steps, node, reason },
            };
        }
    }
}
