//! A run stopped part-way: a cancel while a node is blocked drops the node at once and
//! keeps the state from before that step; a cancel before the first step runs nothing; a
//! node error keeps the state from before the failed step.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;

use agentmesh_graph::{CancellationToken, GraphBuilder, Limits, NodeFailure, Outcome};
use common::{
    AgentError, AgentGraph, AgentState, Blocked, Message, Probe, Recorder, Reply, ScriptedModel, after_model,
    agent_loop, guarded, run_agent,
};

/// The model answers, then a node that never finishes.
fn answer_then_blocked() -> AgentGraph {
    GraphBuilder::new()
        .node("llm", ScriptedModel::new(vec![Reply::Answer("done")]))
        .node("stuck", Blocked)
        .entry("llm")
        .edge("llm", "stuck")
        .end_after("stuck")
        .build()
        .unwrap()
}

#[tokio::test]
async fn cancel_drops_a_blocked_node_and_keeps_the_state_from_before_its_step() {
    let graph = answer_then_blocked();
    let (probe, limits, cancel, checkpoints) =
        (Probe::default(), Limits::default(), CancellationToken::new(), Recorder::new());

    let (outcome, ()) = guarded(async {
        tokio::join!(graph.run(AgentState::default(), &probe, &limits, &cancel, &checkpoints), async {
            probe.blocked_started.notified().await;
            cancel.cancel();
        })
    })
    .await;

    let Outcome::Cancelled { state, steps: 1 } = outcome else { panic!("not cancelled after 1 step: {outcome:?}") };
    assert!(probe.blocked_dropped.load(Ordering::SeqCst), "the blocked node's future was dropped");
    assert!(!state.messages.contains(&Message::HalfWritten), "the cancelled step left no trace");
    assert_eq!(checkpoints.steps(), [1]);
    assert_eq!(checkpoints.last().state, state, "the state is that of the last completed step");
}

#[tokio::test]
async fn a_run_cancelled_before_it_starts_runs_no_step() {
    let graph = agent_loop(vec![Reply::Answer("done")], after_model);
    let (cancel, checkpoints) = (CancellationToken::new(), Recorder::new());
    cancel.cancel();
    let start = AgentState { tokens: 7, ..AgentState::default() };

    let outcome = guarded(graph.run(start.clone(), &Probe::default(), &Limits::default(), &cancel, &checkpoints)).await;

    let Outcome::Cancelled { state, steps: 0 } = outcome else { panic!("not cancelled at once: {outcome:?}") };
    assert_eq!(state, start);
    assert!(checkpoints.steps().is_empty());
}

#[tokio::test]
async fn a_node_error_fails_the_run_with_the_state_from_before_the_step() {
    // One tool round, then the model has no reply left at step 3 (after charging tokens
    // and counting its turn in the copy it was given).
    let graph = agent_loop(vec![Reply::Calls(vec![("read", "a")])], after_model);
    let checkpoints = Recorder::new();

    let outcome = run_agent(&graph, &Limits::default(), &checkpoints).await;

    let Outcome::Failed { state, steps: 2, node, error } = outcome else { panic!("no failure at step 3: {outcome:?}") };
    assert_eq!(node, "llm");
    assert!(matches!(error, NodeFailure::Node(AgentError::ScriptExhausted(1))), "{error:?}");
    assert_eq!(error.to_string(), "node failed: the script has no reply 1");
    assert_eq!(state, checkpoints.last().state, "the failed step's writes are discarded");
    assert_eq!((state.model_turns, state.tokens), (1, common::TOKENS_PER_REPLY));
}
