//! The default agent loop on the engine — a scripted model, fake tools run in parallel,
//! back to the model until a final answer — and the limits that stop it: `max_steps`, the
//! token budget, a router that names no node. A decision node plugs in without changing
//! the loop.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use agentmesh_graph::{CancellationToken, GraphBuilder, Limits, Next, NodeFailure, Outcome, Route};
use common::{
    AgentState, Message, Probe, Recorder, Reply, ScriptedModel, TOKENS_PER_REPLY, ToolCall, after_model, agent_loop,
    agent_loop_with_decision, endless_tool_calls, max_steps, run_agent, tool_output, two_rounds_then_answer,
};

fn call(id: &str, tool: &str, argument: &str) -> ToolCall {
    ToolCall { id: id.to_owned(), tool: tool.to_owned(), argument: argument.to_owned() }
}

fn result(call_id: &str, tool: &str, argument: &str) -> Message {
    Message::ToolResult { call_id: call_id.to_owned(), output: tool_output(tool, argument) }
}

#[tokio::test]
async fn the_loop_reaches_a_final_answer_after_tool_rounds() {
    let graph = agent_loop(two_rounds_then_answer(), after_model);

    let outcome = run_agent(&graph, &Limits::default(), &Recorder::new()).await;

    let Outcome::Finished { state, steps } = outcome else { panic!("not finished: {outcome:?}") };
    assert_eq!(steps, 5, "llm, tools, llm, tools, llm");
    assert_eq!(
        state.messages,
        [
            Message::ToolCalls(vec![
                call("call-0-0", "read", "a"),
                call("call-0-1", "read", "b"),
                call("call-0-2", "read", "c")
            ]),
            result("call-0-0", "read", "a"),
            result("call-0-1", "read", "b"),
            result("call-0-2", "read", "c"),
            Message::ToolCalls(vec![call("call-1-0", "search", "x"), call("call-1-1", "search", "y")]),
            result("call-1-0", "search", "x"),
            result("call-1-1", "search", "y"),
            Message::Assistant("the answer is forty two".to_owned()),
        ]
    );
    assert_eq!(state.answer.as_deref(), Some("the answer is forty two"));
    assert!(state.pending.is_empty());
    assert_eq!(state.tokens, 3 * TOKENS_PER_REPLY);
    assert_eq!(state.model_steps, [1, 3, 5], "steps are numbered from 1");
}

#[tokio::test]
async fn a_step_runs_all_its_tool_calls_at_once() {
    // Eight calls each wait for all eight at one barrier: run one after another, the first
    // would wait forever and the run would hit the deadlock guard.
    let calls = vec![
        ("read", "1"),
        ("read", "2"),
        ("read", "3"),
        ("read", "4"),
        ("write", "5"),
        ("write", "6"),
        ("read", "7"),
        ("read", "8"),
    ];
    let graph = agent_loop(vec![Reply::Calls(calls.clone()), Reply::Answer("done")], after_model);

    let outcome = run_agent(&graph, &Limits::default(), &Recorder::new()).await;

    let Outcome::Finished { state, steps: 3 } = outcome else { panic!("not finished in 3 steps: {outcome:?}") };
    let results: Vec<&Message> =
        state.messages.iter().filter(|message| matches!(message, Message::ToolResult { .. })).collect();
    let expected: Vec<Message> = calls
        .iter()
        .enumerate()
        .map(|(index, (tool, argument))| result(&format!("call-0-{index}"), tool, argument))
        .collect();
    assert_eq!(results, expected.iter().collect::<Vec<_>>(), "one result per call, in call order");
}

#[tokio::test]
async fn a_decision_node_plugs_into_the_loop() {
    let graph = agent_loop_with_decision(two_rounds_then_answer());

    let outcome = run_agent(&graph, &Limits { max_steps: 20, token_budget: None }, &Recorder::new()).await;

    let Outcome::Finished { state, steps } = outcome else { panic!("not finished: {outcome:?}") };
    assert_eq!(steps, 9, "llm, decide, tools ×2, then llm, decide, summarise");
    assert_eq!(state.summary.as_deref(), Some("5 words"));
    let (plain, _) = common::uninterrupted(two_rounds_then_answer()).await;
    assert_eq!(state.messages, plain.messages, "the loop itself is unchanged");
}

#[tokio::test]
async fn a_decision_node_ends_a_short_answer() {
    let graph = agent_loop_with_decision(vec![Reply::Answer("yes")]);

    let outcome = run_agent(&graph, &Limits::default(), &Recorder::new()).await;

    let Outcome::Finished { state, steps: 2 } = outcome else { panic!("not finished in 2 steps: {outcome:?}") };
    assert_eq!(state.summary, None);
}

#[tokio::test]
async fn max_steps_stops_a_run_with_work_left() {
    let graph = agent_loop(endless_tool_calls(), after_model);
    let checkpoints = Recorder::new();

    let outcome = run_agent(&graph, &max_steps(3), &checkpoints).await;

    let Outcome::StepLimit { state, steps: 3 } = outcome else { panic!("no step limit at 3: {outcome:?}") };
    assert_eq!(state.model_steps, [1, 3]);
    assert_eq!(checkpoints.steps(), [1, 2, 3]);
    assert_eq!(checkpoints.last().next, Next::Node("tools".to_owned()));
}

#[tokio::test]
async fn the_default_step_limit_is_ten() {
    assert_eq!(Limits::default(), Limits { max_steps: 10, token_budget: None });
    let graph = agent_loop(endless_tool_calls(), after_model);

    let outcome = run_agent(&graph, &Limits::default(), &Recorder::new()).await;

    assert!(matches!(outcome, Outcome::StepLimit { .. }), "{outcome:?}");
    assert_eq!(outcome.steps(), 10);
    assert_eq!(outcome.state().model_steps, [1, 3, 5, 7, 9]);
    assert_eq!(outcome.into_state().model_turns, 5);
}

#[tokio::test]
async fn a_run_that_ends_on_its_last_allowed_step_is_finished() {
    let graph = agent_loop(two_rounds_then_answer(), after_model);

    let outcome = run_agent(&graph, &max_steps(5), &Recorder::new()).await;

    assert!(matches!(outcome, Outcome::Finished { steps: 5, .. }), "{outcome:?}");
}

#[tokio::test]
async fn the_token_budget_stops_a_run_after_the_step_that_reaches_it() {
    let graph = agent_loop(endless_tool_calls(), after_model);
    let checkpoints = Recorder::new();
    let limits = Limits { token_budget: Some(2 * TOKENS_PER_REPLY), ..Limits::default() };

    let outcome = run_agent(&graph, &limits, &checkpoints).await;

    // Step 1 (llm) spends 100, step 2 runs tools, step 3 (llm) reaches 200.
    let Outcome::TokenBudget { state, steps: 3 } = outcome else { panic!("no budget stop at 3: {outcome:?}") };
    assert_eq!(state.tokens, 2 * TOKENS_PER_REPLY);
    assert_eq!(checkpoints.steps(), [1, 2, 3], "the step that reached the budget is checkpointed");
    assert_eq!(checkpoints.last().state, state);
}

#[tokio::test]
async fn a_final_answer_that_reaches_the_budget_still_finishes() {
    let graph = agent_loop(vec![Reply::Answer("done")], after_model);
    let limits = Limits { token_budget: Some(TOKENS_PER_REPLY), ..Limits::default() };

    let outcome = run_agent(&graph, &limits, &Recorder::new()).await;

    assert!(matches!(outcome, Outcome::Finished { steps: 1, .. }), "{outcome:?}");
}

#[tokio::test]
async fn a_router_that_names_no_node_fails_the_run() {
    let graph = GraphBuilder::new()
        .node("llm", ScriptedModel::new(vec![Reply::Answer("done")]))
        .entry("llm")
        .conditional("llm", |_: &AgentState| Route::To("nowhere"))
        .build()
        .unwrap();
    let checkpoints = Recorder::new();

    let outcome = run_agent(&graph, &Limits::default(), &checkpoints).await;

    let Outcome::Failed { state, steps: 1, node, error: NodeFailure::UnknownNode(missing) } = outcome else {
        panic!("no unknown-node failure: {outcome:?}")
    };
    assert_eq!((node.as_str(), missing.as_str()), ("llm", "nowhere"));
    assert_eq!(state.answer.as_deref(), Some("done"), "the step's state, not checkpointed");
    assert!(checkpoints.steps().is_empty());
}

#[test]
fn graphs_and_runs_can_move_between_threads() {
    fn assert_send_sync<T: Send + Sync>(_: &T) {}
    fn assert_send<T: Send>(_: &T) {}
    let graph = agent_loop(two_rounds_then_answer(), after_model);
    assert_send_sync(&graph);
    let (probe, limits, cancel, checkpoints) =
        (Probe::default(), Limits::default(), CancellationToken::new(), Recorder::new());
    let run = graph.run(AgentState::default(), &probe, &limits, &cancel, &checkpoints);
    assert_send(&run);
}
