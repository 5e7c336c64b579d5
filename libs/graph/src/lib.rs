//! A small graph engine for agent runs: typed state, named nodes, edges that may depend on
//! the state, and a checkpoint after every step, so that a run can stop anywhere — a crash,
//! a cancel, a tool that needs approval — and go on later from where it was.
//! agent-orchestrator builds its agent loop on it (an LLM node, a tool node, back to the
//! LLM node until a final answer); the engine itself knows nothing of LLMs, tools, gRPC or
//! stores, so it is tested alone with a scripted model and fake tools.
//!
//! # The model
//!
//! A [`Graph`] is a state machine over one value of the caller's state type `S`
//! ([`GraphState`]). Each **step** runs one [`Node`] on the state, then the node's outgoing
//! edge decides where to go: always to one node ([`GraphBuilder::edge`]), to the end
//! ([`GraphBuilder::end_after`]), or wherever a router reading the new state says
//! ([`GraphBuilder::conditional`] returning a [`Route`]). A router may also **interrupt**
//! the run ([`Route::Interrupt`]): it names the node to go on with and gives a reason (e.g.
//! "these tools need approval"); the run stops, and the caller resumes it when the matter
//! is settled — at that node, or at another (a rejection path).
//!
//! After every step the engine saves a [`Checkpoint`] through the caller's
//! [`Checkpointer`]: the number of steps done, what comes next ([`Next`]) and the state. A
//! checkpoint is everything needed to go on: [`Graph::resume`] continues from one, after a
//! crash or after an interrupt, and counts steps on from it. A step whose checkpoint was
//! not saved is run again on resume, so nodes should tolerate being run twice.
//!
//! # Stopping
//!
//! Before each step the run stops if it was cancelled, if [`Limits::max_steps`] steps are
//! done (counted over the whole run, across resumes) or if the state's
//! [`GraphState::tokens_used`] has reached [`Limits::token_budget`]. The [`Outcome`] says
//! which, with the state and the number of steps done.
//!
//! # Steps are all or nothing
//!
//! A node works on a copy of the state, which replaces the state only when the node
//! succeeds. The node runs raced against the run's cancellation token: on cancel its
//! future is dropped at once (an LLM stream or tool call in flight stops with it) and the
//! run ends with the state as it was before that step. A node error likewise leaves the
//! state as it was before the step. Nodes that want to finish something cleanly on cancel
//! can watch [`Step::cancel`] themselves. A checkpoint being saved is not interrupted by a
//! cancel; the run stops before the next step.
//!
//! # Example
//!
//! ```
//! use agentmesh_graph::{
//!     CancellationToken, Checkpoint, Checkpointer, GraphBuilder, GraphState, Limits, Node, Outcome, Route, Step,
//! };
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Serialize, Deserialize)]
//! struct Count(u32);
//! impl GraphState for Count {}
//!
//! struct Increment;
//! #[async_trait::async_trait]
//! impl Node<Count, (), std::convert::Infallible> for Increment {
//!     async fn run(&self, state: &mut Count, _step: &Step<'_, ()>) -> Result<(), std::convert::Infallible> {
//!         state.0 += 1;
//!         Ok(())
//!     }
//! }
//!
//! struct Forget;
//! #[async_trait::async_trait]
//! impl Checkpointer<Count> for Forget {
//!     type Error = std::convert::Infallible;
//!     async fn save(&self, _checkpoint: &Checkpoint<Count>) -> Result<(), Self::Error> {
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let graph = GraphBuilder::new()
//!     .node("increment", Increment)
//!     .entry("increment")
//!     .conditional("increment", |count: &Count| if count.0 < 3 { Route::To("increment") } else { Route::End })
//!     .build()
//!     .unwrap();
//! let outcome = graph.run(Count(0), &(), &Limits::default(), &CancellationToken::new(), &Forget).await;
//! assert!(matches!(outcome, Outcome::Finished { state: Count(3), steps: 3 }));
//! # }
//! ```

mod builder;
mod checkpoint;
mod engine;
mod node;

pub use builder::{GraphBuilder, GraphError, Route};
pub use checkpoint::{Checkpoint, Checkpointer, Next};
pub use engine::{Graph, Limits, NodeFailure, Outcome};
pub use node::{GraphState, Node, Step};
/// The token that cancels a run, re-exported so that callers need not name tokio-util.
pub use tokio_util::sync::CancellationToken;
