//! Checkpoints and resuming: one checkpoint after every step, a failed save ends the run, a
//! run resumed from its last checkpoint (after a crash or a cancel) ends as an
//! uninterrupted one, steps count on across resumes, and an interrupt for approval resumes
//! at the recorded node (approved) or at another (rejected).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use agentmesh_graph::{CancellationToken, Limits, Next, NodeFailure, Outcome};
use common::{
    AgentState, Message, Probe, Recorder, Reply, after_model, after_model_with_approval, agent_loop, guarded,
    max_steps, resume_agent, run_agent, tool_output, two_rounds_then_answer, uninterrupted,
};
use serde_json::json;

fn node(name: &str) -> Next {
    Next::Node(name.to_owned())
}

#[tokio::test]
async fn a_checkpoint_follows_every_step() {
    let graph = agent_loop(two_rounds_then_answer(), after_model);
    let checkpoints = Recorder::new();

    let outcome = run_agent(&graph, &Limits::default(), &checkpoints).await;

    let Outcome::Finished { state, steps: 5 } = outcome else { panic!("not finished: {outcome:?}") };
    assert_eq!(checkpoints.steps(), [1, 2, 3, 4, 5]);
    assert_eq!(checkpoints.nexts(), [node("tools"), node("llm"), node("tools"), node("llm"), Next::End]);
    assert_eq!(checkpoints.last().state, state);
    let turns: Vec<usize> = checkpoints.saved().iter().map(|checkpoint| checkpoint.state.model_turns).collect();
    assert_eq!(turns, [1, 1, 2, 2, 3], "each checkpoint holds the state after its step");
}

#[tokio::test]
async fn a_failed_save_ends_the_run() {
    let graph = agent_loop(two_rounds_then_answer(), after_model);
    let checkpoints = Recorder::failing_from(3);

    let outcome = run_agent(&graph, &Limits::default(), &checkpoints).await;

    let Outcome::Failed { state, steps: 3, node, error } = outcome else { panic!("no failure at 3: {outcome:?}") };
    assert_eq!(node, "llm");
    assert!(matches!(error, NodeFailure::Checkpoint(_)), "{error:?}");
    assert_eq!(error.to_string(), "checkpoint could not be saved: checkpoint store unavailable at step 3");
    assert_eq!(state.model_turns, 2, "the state the unsaved step reached");
    assert_eq!(checkpoints.steps(), [1, 2]);
}

#[tokio::test]
async fn a_run_resumed_after_a_crash_ends_as_an_uninterrupted_one() {
    let (reference, reference_steps) = uninterrupted(two_rounds_then_answer()).await;
    let graph = agent_loop(two_rounds_then_answer(), after_model);
    for crashed_after in 1..reference_steps {
        let crashing = Recorder::failing_from(crashed_after + 1);
        let outcome = run_agent(&graph, &Limits::default(), &crashing).await;
        assert!(matches!(outcome, Outcome::Failed { error: NodeFailure::Checkpoint(_), .. }), "{outcome:?}");

        let resumed = Recorder::new();
        let outcome = resume_agent(&graph, crashing.last(), None, &Limits::default(), &resumed).await;

        let Outcome::Finished { state, steps } = outcome else { panic!("resume did not finish: {outcome:?}") };
        assert_eq!((state, steps), (reference.clone(), reference_steps), "crashed after step {crashed_after}");
        let expected: Vec<u32> = (crashed_after + 1..=reference_steps).collect();
        assert_eq!(resumed.steps(), expected, "the resumed run checkpoints the steps it runs");
    }
}

#[tokio::test]
async fn a_run_resumed_after_a_cancel_ends_as_an_uninterrupted_one() {
    let (reference, reference_steps) = uninterrupted(two_rounds_then_answer()).await;
    let graph = agent_loop(two_rounds_then_answer(), after_model);
    let cancel = CancellationToken::new();
    let checkpoints = Recorder::cancelling_after(2, cancel.clone());

    let outcome =
        guarded(graph.run(AgentState::default(), &Probe::default(), &Limits::default(), &cancel, &checkpoints)).await;
    assert!(matches!(outcome, Outcome::Cancelled { steps: 2, .. }), "{outcome:?}");
    let resumed = resume_agent(&graph, checkpoints.last(), None, &Limits::default(), &Recorder::new()).await;

    let Outcome::Finished { state, steps } = resumed else { panic!("resume did not finish: {resumed:?}") };
    assert_eq!((state, steps), (reference, reference_steps));
}

#[tokio::test]
async fn steps_count_over_the_whole_run_across_a_resume() {
    let graph = agent_loop(two_rounds_then_answer(), after_model);
    let first = Recorder::new();
    let outcome = run_agent(&graph, &max_steps(2), &first).await;
    assert!(matches!(outcome, Outcome::StepLimit { steps: 2, .. }), "{outcome:?}");

    let outcome = resume_agent(&graph, first.last(), None, &max_steps(4), &Recorder::new()).await;

    let Outcome::StepLimit { state, steps: 4 } = outcome else { panic!("no step limit at 4: {outcome:?}") };
    assert_eq!(state.model_steps, [1, 3], "the model ran at steps 1 and 3, numbered on after the resume");
}

/// A destructive call next to a harmless one, then the final answer.
fn delete_then_answer() -> Vec<Reply> {
    vec![Reply::Calls(vec![("delete_file", "/tmp/report"), ("read", "a")]), Reply::Answer("cleaned up")]
}

/// Runs [`delete_then_answer`] with approval up to its interrupt; returns the checkpoint.
async fn interrupted_for_approval() -> agentmesh_graph::Checkpoint<AgentState> {
    let graph = agent_loop(delete_then_answer(), after_model_with_approval);
    let checkpoints = Recorder::new();
    let outcome = run_agent(&graph, &Limits::default(), &checkpoints).await;

    let Outcome::Interrupted { state, steps: 1, node, reason } = outcome else {
        panic!("not interrupted after step 1: {outcome:?}")
    };
    assert_eq!(node, "tools");
    assert_eq!(reason, json!({ "approve": ["call-0-0"] }));
    assert_eq!(state.pending.len(), 2, "the calls wait, unrun");
    let checkpoint = checkpoints.last();
    assert_eq!(checkpoint.step, 1);
    assert_eq!(checkpoint.next, Next::Interrupted { node, reason });
    assert_eq!(checkpoint.state, state);
    checkpoint
}

#[tokio::test]
async fn an_approved_interrupt_resumes_at_the_recorded_node() {
    let graph = agent_loop(delete_then_answer(), after_model_with_approval);
    let mut checkpoint = interrupted_for_approval().await;
    checkpoint.state.approved = true;
    let checkpoints = Recorder::new();

    let outcome = resume_agent(&graph, checkpoint, None, &Limits::default(), &checkpoints).await;

    let Outcome::Finished { state, steps: 3 } = outcome else { panic!("not finished at 3: {outcome:?}") };
    assert!(state.messages.contains(&Message::ToolResult {
        call_id: "call-0-0".to_owned(),
        output: tool_output("delete_file", "/tmp/report"),
    }));
    assert_eq!(state.answer.as_deref(), Some("cleaned up"));
    assert_eq!(checkpoints.steps(), [2, 3]);
}

#[tokio::test]
async fn a_rejected_interrupt_resumes_at_another_node() {
    let graph = agent_loop(delete_then_answer(), after_model_with_approval);
    let mut checkpoint = interrupted_for_approval().await;
    let rejected = std::mem::take(&mut checkpoint.state.pending);
    checkpoint.state.messages.extend(
        rejected.iter().map(|call| Message::ToolResult { call_id: call.id.clone(), output: "rejected".to_owned() }),
    );

    let outcome = resume_agent(&graph, checkpoint, Some("llm"), &Limits::default(), &Recorder::new()).await;

    let Outcome::Finished { state, steps: 2 } = outcome else { panic!("not finished at 2: {outcome:?}") };
    let outputs: Vec<&str> = state
        .messages
        .iter()
        .filter_map(|message| match message {
            Message::ToolResult { output, .. } => Some(output.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(outputs, ["rejected", "rejected"], "no tool ran");
    assert_eq!(state.answer.as_deref(), Some("cleaned up"));
}

#[tokio::test]
async fn resuming_at_a_node_the_graph_lacks_fails() {
    let graph = agent_loop(delete_then_answer(), after_model_with_approval);
    let checkpoint = interrupted_for_approval().await;
    let checkpoints = Recorder::new();

    let outcome = resume_agent(&graph, checkpoint.clone(), Some("approve"), &Limits::default(), &checkpoints).await;

    let Outcome::Failed { state, steps: 1, node, error: NodeFailure::UnknownNode(missing) } = outcome else {
        panic!("no unknown-node failure: {outcome:?}")
    };
    assert_eq!((node.as_str(), missing.as_str()), ("approve", "approve"));
    assert_eq!(state, checkpoint.state);
    assert!(checkpoints.steps().is_empty());
}

#[tokio::test]
async fn resuming_a_finished_run_runs_nothing() {
    let graph = agent_loop(two_rounds_then_answer(), after_model);
    let first = Recorder::new();
    run_agent(&graph, &Limits::default(), &first).await;
    let finished = first.last();
    assert_eq!(finished.next, Next::End);
    let checkpoints = Recorder::new();

    let outcome = resume_agent(&graph, finished.clone(), None, &Limits::default(), &checkpoints).await;

    let Outcome::Finished { state, steps: 5 } = outcome else { panic!("not finished at 5: {outcome:?}") };
    assert_eq!(state, finished.state);
    assert!(checkpoints.steps().is_empty());
}
