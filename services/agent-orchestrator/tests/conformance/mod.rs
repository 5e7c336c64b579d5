//! The behaviour every `OrchestratorStore` backend must have, written once.
//!
//! A backend's test file provides `async fn fixture() -> Option<Fixture>` (None = the
//! backend's server is unreachable and the test skips) and invokes
//! `conformance_tests!(fixture);`, which generates one test per behaviour below.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::any::Any;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use agentmesh_agent_orchestrator::store::{
    Admission, Admitted, AgentDefinition, AgentQuery, AgentStatus, Approval, Concurrency, JsonObject, ModelSettings,
    NewRun, OrchestratorStore, PendingToolCall, RunError, RunPrincipal, RunQuery, RunRecord, RunRequest, RunStatus,
    RunTransition, RunUsage, SavedStep, Starter, StoreError,
};
use agentmesh_events::{MemoryBus, Subscriber, SubscriptionSpec};
use agentmesh_proto::agentmesh::events::v1 as pb;
use futures::StreamExt;
use prost::Message as _;
use uuid::Uuid;

/// One backend under test.
pub struct Fixture {
    /// The store.
    pub store: Arc<dyn OrchestratorStore>,
    /// A second handle on the same data, as another replica has (memory: the same store).
    pub twin: Arc<dyn OrchestratorStore>,
    /// Where the store's events arrive.
    pub bus: MemoryBus,
    /// Dropped at the end of the test: removes the test's data.
    pub guard: Box<dyn Any + Send>,
}

/// Generates one `#[tokio::test]` per behaviour for `$fixture`.
#[macro_export]
macro_rules! conformance_tests {
    ($fixture:path) => {
        agentmesh_testkit::suite_tests!(conformance, $fixture;
            agents_round_trip_with_names_unique_per_owner, owners_are_isolated, agents_filter_search_and_page,
            admission_follows_the_session_policy, idempotency_keys_return_the_first_run,
            transitions_follow_the_lifecycle, finishing_promotes_the_next_queued_run, agent_status_follows_its_runs,
            session_runs_page_newest_first, leases_renew_and_abandoned_runs_are_claimed,
            concurrent_claimers_take_disjoint_runs, checkpoints_are_replaced,
            a_step_saves_progress_and_checkpoint_together, changes_emit_domain_events,
            an_admission_with_a_starter_starts_a_ready_run_under_the_agents_own_policy
        );
    };
}

const ALICE: &str = "alice";
const BOB: &str = "bob";
const LONG: Duration = Duration::from_secs(600);

fn object(json: serde_json::Value) -> JsonObject {
    json.as_object().cloned().unwrap()
}

fn agent(name: &str, description: &str) -> AgentDefinition {
    AgentDefinition {
        name: name.into(),
        description: Some(description.into()),
        system_prompt: Some("Be brief.".into()),
        model: ModelSettings {
            model: Some("openai/gpt-4o".into()),
            temperature: Some(0.2),
            max_tokens: Some(512),
            fallback_models: vec!["anthropic/claude".into()],
            max_steps: Some(5),
            token_budget: Some(10_000),
            history_messages: Some(20),
            top_p: Some(0.9),
        },
        tools: vec!["web_search".into()],
        approval: Approval { tools: vec!["delete_file".into()], destructive_tools: true },
        concurrency: Concurrency::Enqueue,
        metadata: object(serde_json::json!({"team": "search", "n": [1, 2.5, null]})),
    }
}

fn principal(user: &str) -> RunPrincipal {
    RunPrincipal {
        user_id: user.into(),
        tenant: Some("acme".into()),
        tier: "basic".into(),
        scopes: vec!["agents:execute".into()],
    }
}

fn new_run(user: &str, agent_id: Uuid, session_id: Uuid, key: Option<&str>) -> NewRun {
    NewRun {
        id: Uuid::now_v7(),
        agent_id,
        session_id,
        principal: principal(user),
        request: RunRequest { message: "hello".into(), cancel_on_disconnect: false },
        idempotency_key: key.map(str::to_owned),
        metadata: object(serde_json::json!({"source": "test"})),
        starter: None,
    }
}

fn agents(limit: u32) -> AgentQuery {
    AgentQuery { limit, ..AgentQuery::default() }
}

/// Admits a run that must be created; returns it and whether it may start.
async fn admit(f: &Fixture, run: NewRun, admission: Admission) -> (RunRecord, bool, Option<RunRecord>) {
    match f.store.admit_run(run, Some(admission)).await.unwrap() {
        Admitted::Created { run, ready, preempted, .. } => (run, ready, preempted.map(|run| *run)),
        Admitted::Existing(run) => panic!("expected a new run, got existing {}", run.id),
    }
}

/// A new agent of `user` and a run of it started (leased for `lease`) on a new session.
async fn running(f: &Fixture, user: &str, lease: Duration) -> RunRecord {
    let agent = f.store.create_agent(user, agent(&format!("a-{}", Uuid::now_v7()), "d")).await.unwrap();
    let (run, ready, _) = admit(f, new_run(user, agent.id, Uuid::now_v7(), None), Admission::Reject).await;
    assert!(ready);
    start(f, run.id, "replica-a", lease).await
}

async fn start(f: &Fixture, id: Uuid, owner: &str, lease: Duration) -> RunRecord {
    f.store.transition_run(id, RunTransition::Start { owner: owner.into(), lease }).await.unwrap().run
}

async fn status_of(f: &Fixture, user: &str, agent_id: Uuid) -> AgentStatus {
    f.store.get_agent(user, agent_id).await.unwrap().status
}

fn json_text(value: serde_json::Value) -> String {
    value.to_string()
}

fn usage(n: u64) -> RunUsage {
    RunUsage { prompt_tokens: n, completion_tokens: n / 2, cached_tokens: 1, reasoning_tokens: 2 }
}

fn invalid(result: Result<impl std::fmt::Debug, StoreError>) -> RunRecord {
    match result {
        Err(StoreError::InvalidTransition(run)) => *run,
        other => panic!("expected an invalid transition, got {other:?}"),
    }
}

fn ids(runs: &[RunRecord]) -> Vec<Uuid> {
    runs.iter().map(|run| run.id).collect()
}

pub async fn agents_round_trip_with_names_unique_per_owner(f: &Fixture) {
    let created = f.store.create_agent(ALICE, agent("helper", "Helps")).await.unwrap();
    assert_eq!(created.id.get_version_num(), 7);
    assert_eq!((created.user_id.as_str(), created.status), (ALICE, AgentStatus::Idle));
    assert_eq!(created.created_at, created.updated_at);
    assert_eq!(f.store.get_agent(ALICE, created.id).await.unwrap(), created, "reads back exactly as created");

    let taken = f.store.create_agent(ALICE, agent("helper", "again")).await;
    assert!(matches!(taken, Err(StoreError::NameTaken(ref name)) if name == "helper"), "{taken:?}");
    let bobs = f.store.create_agent(BOB, agent("helper", "Bob's")).await.unwrap();
    assert_ne!(bobs.id, created.id, "names are unique per owner only");

    let minimal = AgentDefinition {
        name: "renamed".into(),
        description: None,
        system_prompt: None,
        model: ModelSettings::default(),
        tools: vec![],
        approval: Approval::default(),
        concurrency: Concurrency::Reject,
        metadata: JsonObject::new(),
    };
    let updated = f.store.update_agent(ALICE, created.id, minimal.clone()).await.unwrap();
    assert_eq!(updated.definition, minimal);
    assert_eq!(updated.created_at, created.created_at);
    assert!(updated.updated_at >= created.updated_at);
    assert_eq!(f.store.get_agent(ALICE, created.id).await.unwrap(), updated);
    // The old name is free again, the new one taken.
    let other = f.store.create_agent(ALICE, agent("helper", "new")).await.unwrap();
    let clash = f.store.update_agent(ALICE, other.id, minimal.clone()).await;
    assert!(matches!(clash, Err(StoreError::NameTaken(_))), "{clash:?}");
    // Keeping one's own name is no clash.
    f.store.update_agent(ALICE, created.id, minimal).await.unwrap();

    let deleted = f.store.delete_agent(ALICE, created.id).await.unwrap();
    assert_eq!(deleted.id, created.id);
    assert!(matches!(f.store.get_agent(ALICE, created.id).await, Err(StoreError::NotFound)));
    assert!(matches!(f.store.delete_agent(ALICE, created.id).await, Err(StoreError::NotFound)));
    let missing = f.store.update_agent(ALICE, Uuid::now_v7(), agent("x", "x")).await;
    assert!(matches!(missing, Err(StoreError::NotFound)));
}

pub async fn owners_are_isolated(f: &Fixture) {
    let mine = f.store.create_agent(ALICE, agent("private", "mine")).await.unwrap();
    assert!(matches!(f.store.get_agent(BOB, mine.id).await, Err(StoreError::NotFound)));
    assert!(matches!(f.store.update_agent(BOB, mine.id, agent("stolen", "x")).await, Err(StoreError::NotFound)));
    assert!(matches!(f.store.delete_agent(BOB, mine.id).await, Err(StoreError::NotFound)));
    let page = f.store.list_agents(BOB, &agents(10)).await.unwrap();
    assert_eq!((page.items.len(), page.total), (0, 0));

    let session = Uuid::now_v7();
    let stolen = f.store.admit_run(new_run(BOB, mine.id, session, None), Some(Admission::Reject)).await;
    assert!(matches!(stolen, Err(StoreError::NotFound)), "{stolen:?}");
    let (run, _, _) = admit(f, new_run(ALICE, mine.id, session, Some("k1")), Admission::Reject).await;
    assert!(matches!(f.store.get_run(BOB, run.id).await, Err(StoreError::NotFound)));
    assert_eq!(f.store.get_run(ALICE, run.id).await.unwrap(), run);
    assert_eq!(f.store.load_run(run.id).await.unwrap(), run, "the executing replica reads any run");
    assert_eq!(f.store.find_run_by_key(BOB, "k1").await.unwrap(), None);
    let page = f.store.list_session_runs(BOB, session, &RunQuery { limit: 10, ..RunQuery::default() }).await.unwrap();
    assert_eq!((page.items.len(), page.total), (0, 0));
    assert!(f.store.list_unfinished_runs(BOB, mine.id).await.unwrap().is_empty());
    assert_eq!(ids(&f.store.list_unfinished_runs(ALICE, mine.id).await.unwrap()), [run.id]);
    assert!(matches!(f.store.get_run(ALICE, Uuid::now_v7()).await, Err(StoreError::NotFound)));
}

pub async fn agents_filter_search_and_page(f: &Fixture) {
    let mut made = Vec::new();
    for (name, description) in [
        ("Alpha", "Searches the WEB"),
        ("beta", "writes code"),
        ("gamma_100%", "web and more"),
        ("delta", "plain"),
        ("epsilon", "plain"),
    ] {
        made.push(f.store.create_agent(ALICE, agent(name, description)).await.unwrap().id);
    }
    f.store.create_agent(BOB, agent("web-bob", "web")).await.unwrap();
    let newest_first: Vec<Uuid> = made.iter().rev().copied().collect();

    let all = f.store.list_agents(ALICE, &agents(10)).await.unwrap();
    assert_eq!(all.items.iter().map(|a| a.id).collect::<Vec<_>>(), newest_first);
    assert_eq!((all.total, all.has_more), (5, false));

    let search = |needle: &str| AgentQuery { search: Some(needle.into()), ..agents(10) };
    let web = f.store.list_agents(ALICE, &search("web")).await.unwrap();
    assert_eq!(web.items.iter().map(|a| a.definition.name.as_str()).collect::<Vec<_>>(), ["gamma_100%", "Alpha"]);
    let by_name = f.store.list_agents(ALICE, &search("ALPH")).await.unwrap();
    assert_eq!(by_name.total, 1);
    let literal = f.store.list_agents(ALICE, &search("0%")).await.unwrap();
    assert_eq!(literal.total, 1, "% is literal");
    assert_eq!(f.store.list_agents(ALICE, &search("ALPH_")).await.unwrap().total, 0, "_ is literal");

    // Status: a run makes its agent processing.
    admit(f, new_run(ALICE, made[1], Uuid::now_v7(), None), Admission::Reject).await;
    let processing = AgentQuery { status: Some(AgentStatus::Processing), ..agents(10) };
    let busy = f.store.list_agents(ALICE, &processing).await.unwrap();
    assert_eq!((busy.items.len(), busy.items[0].id), (1, made[1]));
    let idle = AgentQuery { status: Some(AgentStatus::Idle), ..agents(10) };
    assert_eq!(f.store.list_agents(ALICE, &idle).await.unwrap().total, 4);

    let second = f.store.list_agents(ALICE, &AgentQuery { offset: 2, ..agents(2) }).await.unwrap();
    assert_eq!(second.items.iter().map(|a| a.id).collect::<Vec<_>>(), newest_first[2..4]);
    assert_eq!((second.total, second.has_more), (5, true));

    // A cursor walks every item once, in order.
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = f.store.list_agents(ALICE, &AgentQuery { after, ..agents(2) }).await.unwrap();
        assert_eq!(page.total, 5);
        seen.extend(page.items.iter().map(|a| a.id));
        if !page.has_more {
            break;
        }
        after = page.items.last().map(|a| a.id);
    }
    assert_eq!(seen, newest_first);
}

pub async fn admission_follows_the_session_policy(f: &Fixture) {
    let helper = f.store.create_agent(ALICE, agent("helper", "d")).await.unwrap();
    let session = Uuid::now_v7();
    let (first, ready, preempted) = admit(f, new_run(ALICE, helper.id, session, None), Admission::Reject).await;
    assert!(ready && preempted.is_none() && first.holds_session);
    assert_eq!((first.status, first.started_at), (RunStatus::Queued, None));

    let busy = f.store.admit_run(new_run(ALICE, helper.id, session, None), Some(Admission::Reject)).await;
    match busy {
        Err(StoreError::SessionBusy(holder)) => assert_eq!(holder.id, first.id),
        other => panic!("expected a busy session, got {other:?}"),
    }
    let (queued, ready, _) = admit(f, new_run(ALICE, helper.id, session, None), Admission::Enqueue).await;
    assert!(!ready && !queued.holds_session);

    // Another session is free.
    let (_, ready, _) = admit(f, new_run(ALICE, helper.id, Uuid::now_v7(), None), Admission::Reject).await;
    assert!(ready);

    start(f, first.id, "replica-a", LONG).await;
    let (taker, ready, preempted) = admit(f, new_run(ALICE, helper.id, session, None), Admission::Interrupt).await;
    assert!(ready && taker.holds_session);
    let preempted = preempted.expect("the holder is returned");
    assert_eq!((preempted.id, preempted.status, preempted.holds_session), (first.id, RunStatus::Running, false));
    // Cancelling the preempted run releases nothing: the taker holds the session.
    let cancelled =
        f.store.transition_run(first.id, RunTransition::Cancel { reason: None, last_sequence: 3 }).await.unwrap();
    assert_eq!(cancelled.next, None);
    assert!(f.store.get_run(ALICE, taker.id).await.unwrap().holds_session);
    assert!(!f.store.get_run(ALICE, queued.id).await.unwrap().holds_session);

    let unknown = f.store.admit_run(new_run(ALICE, Uuid::now_v7(), session, None), Some(Admission::Enqueue)).await;
    assert!(matches!(unknown, Err(StoreError::NotFound)));
}

pub async fn idempotency_keys_return_the_first_run(f: &Fixture) {
    let helper = f.store.create_agent(ALICE, agent("helper", "d")).await.unwrap();
    let (first, _, _) = admit(f, new_run(ALICE, helper.id, Uuid::now_v7(), Some("key-1")), Admission::Reject).await;
    assert_eq!(first.idempotency_key.as_deref(), Some("key-1"));
    let again =
        f.store.admit_run(new_run(ALICE, helper.id, Uuid::now_v7(), Some("key-1")), Some(Admission::Reject)).await;
    assert_eq!(again.unwrap(), Admitted::Existing(first.clone()));
    assert_eq!(f.store.find_run_by_key(ALICE, "key-1").await.unwrap(), Some(first.clone()));
    assert_eq!(f.store.find_run_by_key(ALICE, "key-2").await.unwrap(), None);
    // Keys are per owner.
    let bobs_agent = f.store.create_agent(BOB, agent("helper", "d")).await.unwrap();
    let (bobs, _, _) = admit(f, new_run(BOB, bobs_agent.id, Uuid::now_v7(), Some("key-1")), Admission::Reject).await;
    assert_ne!(bobs.id, first.id);
    // A finished run still answers its key.
    f.store.transition_run(first.id, RunTransition::Cancel { reason: None, last_sequence: 0 }).await.unwrap();
    let after =
        f.store.admit_run(new_run(ALICE, helper.id, Uuid::now_v7(), Some("key-1")), Some(Admission::Reject)).await;
    assert!(
        matches!(after.unwrap(), Admitted::Existing(run) if run.id == first.id && run.status == RunStatus::Cancelled)
    );
}

pub async fn transitions_follow_the_lifecycle(f: &Fixture) {
    let helper = f.store.create_agent(ALICE, agent("helper", "d")).await.unwrap();
    let session = Uuid::now_v7();
    let (run, _, _) = admit(f, new_run(ALICE, helper.id, session, None), Admission::Reject).await;
    let (behind, _, _) = admit(f, new_run(ALICE, helper.id, session, None), Admission::Enqueue).await;
    invalid(f.store.transition_run(behind.id, RunTransition::Start { owner: "r".into(), lease: LONG }).await);
    invalid(
        f.store
            .transition_run(run.id, RunTransition::Progress { step_count: 1, usage: usage(1), last_sequence: 1 })
            .await,
    );
    let missing =
        f.store.transition_run(Uuid::now_v7(), RunTransition::Cancel { reason: None, last_sequence: 0 }).await;
    assert!(matches!(missing, Err(StoreError::NotFound)));

    let message_id = Uuid::now_v7();
    let noted = f.store.transition_run(run.id, RunTransition::UserMessage { message_id }).await.unwrap().run;
    assert_eq!((noted.user_message_id, noted.status), (Some(message_id), RunStatus::Queued));
    let started = start(f, run.id, "replica-a", LONG).await;
    assert_eq!((started.status, started.lease_owner.as_deref()), (RunStatus::Running, Some("replica-a")));
    assert!(started.started_at.is_some() && started.lease_expires_at > started.started_at);
    invalid(f.store.transition_run(run.id, RunTransition::Start { owner: "r".into(), lease: LONG }).await);

    let progressed = f
        .store
        .transition_run(run.id, RunTransition::Progress { step_count: 2, usage: usage(10), last_sequence: 7 })
        .await
        .unwrap()
        .run;
    assert_eq!((progressed.step_count, progressed.usage, progressed.last_sequence), (2, usage(10), 7));

    let pending = vec![PendingToolCall {
        id: "call-1".into(),
        name: "delete_file".into(),
        arguments_json: r#"{"path": "/tmp/x"}"#.into(),
        step: 2,
    }];
    let waiting = f
        .store
        .transition_run(run.id, RunTransition::RequireAction { pending: pending.clone(), last_sequence: 9 })
        .await
        .unwrap()
        .run;
    assert_eq!(
        (waiting.status, waiting.pending_tool_calls.clone(), waiting.lease_owner.clone()),
        (RunStatus::RequiresAction, pending, None)
    );
    assert!(waiting.holds_session);
    assert_eq!(f.store.get_run(ALICE, run.id).await.unwrap(), waiting, "reads back as transitioned");
    let complete = RunTransition::Complete {
        response_message_id: Some(Uuid::now_v7()),
        usage: usage(20),
        step_count: 3,
        last_sequence: 15,
    };
    invalid(f.store.transition_run(run.id, complete.clone()).await);

    let resumed = f
        .store
        .transition_run(run.id, RunTransition::Resume { owner: "replica-b".into(), lease: LONG })
        .await
        .unwrap()
        .run;
    assert_eq!((resumed.status, resumed.lease_owner.as_deref()), (RunStatus::Running, Some("replica-b")));
    assert!(resumed.pending_tool_calls.is_empty());
    assert_eq!(resumed.started_at, started.started_at, "a resume is no new start");

    let done = f.store.transition_run(run.id, complete).await.unwrap();
    assert_eq!(
        (done.run.status, done.run.step_count, done.run.usage, done.run.last_sequence),
        (RunStatus::Completed, 3, usage(20), 15)
    );
    assert!(done.run.completed_at.is_some() && done.run.lease_owner.is_none() && !done.run.holds_session);
    assert_eq!(done.next.as_ref().map(|next| (next.id, next.holds_session)), Some((behind.id, true)));

    // A final run never changes again.
    for transition in [
        RunTransition::Cancel { reason: Some("late".into()), last_sequence: 16 },
        RunTransition::Fail {
            error: RunError { code: "internal_error".into(), message: "x".into(), details: JsonObject::new() },
            last_sequence: 16,
        },
        RunTransition::UserMessage { message_id: Uuid::now_v7() },
        RunTransition::Resume { owner: "r".into(), lease: LONG },
    ] {
        assert_eq!(invalid(f.store.transition_run(run.id, transition).await), done.run);
    }

    // Failing keeps the error; cancelling records the reason.
    let error = RunError {
        code: "external_service_error".into(),
        message: "llm-proxy failed".into(),
        details: object(serde_json::json!({"service_name": "llm-proxy"})),
    };
    let failed = f
        .store
        .transition_run(behind.id, RunTransition::Fail { error: error.clone(), last_sequence: 2 })
        .await
        .unwrap()
        .run;
    assert_eq!((failed.status, failed.error), (RunStatus::Failed, Some(error)));
    let (other, _, _) = admit(f, new_run(ALICE, helper.id, session, None), Admission::Reject).await;
    let cancelled = f
        .store
        .transition_run(other.id, RunTransition::Cancel { reason: Some("user asked".into()), last_sequence: 0 })
        .await
        .unwrap()
        .run;
    assert_eq!(cancelled.status, RunStatus::Cancelled);
    assert_eq!(cancelled.metadata.get("cancel_reason"), Some(&serde_json::json!("user asked")));
    assert_eq!(cancelled.metadata.get("source"), Some(&serde_json::json!("test")));
}

pub async fn finishing_promotes_the_next_queued_run(f: &Fixture) {
    let helper = f.store.create_agent(ALICE, agent("helper", "d")).await.unwrap();
    let session = Uuid::now_v7();
    let (first, _, _) = admit(f, new_run(ALICE, helper.id, session, None), Admission::Enqueue).await;
    let (second, ready2, _) = admit(f, new_run(ALICE, helper.id, session, None), Admission::Enqueue).await;
    let (third, ready3, _) = admit(f, new_run(ALICE, helper.id, session, None), Admission::Enqueue).await;
    assert!(!ready2 && !ready3);
    start(f, first.id, "r", LONG).await;
    let done =
        f.store.transition_run(first.id, RunTransition::Cancel { reason: None, last_sequence: 0 }).await.unwrap();
    assert_eq!(done.next.map(|run| run.id), Some(second.id), "oldest queued first");
    let done =
        f.store.transition_run(second.id, RunTransition::Cancel { reason: None, last_sequence: 0 }).await.unwrap();
    let next = done.next.expect("the last queued run");
    assert_eq!((next.id, next.status, next.holds_session), (third.id, RunStatus::Queued, true));
    start(f, third.id, "r", LONG).await;
    let done = f
        .store
        .transition_run(
            third.id,
            RunTransition::Complete { response_message_id: None, usage: usage(1), step_count: 1, last_sequence: 1 },
        )
        .await
        .unwrap();
    assert_eq!(done.next, None);
    let (_, ready, _) = admit(f, new_run(ALICE, helper.id, session, None), Admission::Reject).await;
    assert!(ready, "the session is free again");
}

pub async fn agent_status_follows_its_runs(f: &Fixture) {
    let helper = f.store.create_agent(ALICE, agent("helper", "d")).await.unwrap();
    let status = || status_of(f, ALICE, helper.id);
    assert_eq!(status().await, AgentStatus::Idle);
    let session = Uuid::now_v7();
    let (run, _, _) = admit(f, new_run(ALICE, helper.id, session, None), Admission::Reject).await;
    assert_eq!(status().await, AgentStatus::Processing, "queued");
    start(f, run.id, "r", LONG).await;
    assert_eq!(status().await, AgentStatus::Processing, "running");
    let call = PendingToolCall { id: "c".into(), name: "t".into(), arguments_json: "{}".into(), step: 1 };
    f.store
        .transition_run(run.id, RunTransition::RequireAction { pending: vec![call], last_sequence: 1 })
        .await
        .unwrap();
    assert_eq!(status().await, AgentStatus::Waiting);
    // A queued run of another session outranks the waiting one.
    let (other, _, _) = admit(f, new_run(ALICE, helper.id, Uuid::now_v7(), None), Admission::Reject).await;
    assert_eq!(status().await, AgentStatus::Processing);
    f.store.transition_run(other.id, RunTransition::Cancel { reason: None, last_sequence: 0 }).await.unwrap();
    assert_eq!(status().await, AgentStatus::Waiting, "waiting outranks the last outcome");
    f.store.transition_run(run.id, RunTransition::Resume { owner: "r".into(), lease: LONG }).await.unwrap();
    assert_eq!(status().await, AgentStatus::Processing);
    f.store
        .transition_run(
            run.id,
            RunTransition::Complete { response_message_id: None, usage: usage(1), step_count: 1, last_sequence: 2 },
        )
        .await
        .unwrap();
    assert_eq!(status().await, AgentStatus::Completed);

    let (failing, _, _) = admit(f, new_run(ALICE, helper.id, session, None), Admission::Reject).await;
    let error = RunError { code: "timeout_error".into(), message: "slow".into(), details: JsonObject::new() };
    f.store.transition_run(failing.id, RunTransition::Fail { error, last_sequence: 0 }).await.unwrap();
    assert_eq!(status().await, AgentStatus::Error);

    let (cancelling, _, _) = admit(f, new_run(ALICE, helper.id, session, None), Admission::Reject).await;
    f.store.transition_run(cancelling.id, RunTransition::Cancel { reason: None, last_sequence: 0 }).await.unwrap();
    assert_eq!(status().await, AgentStatus::Idle, "the last run was cancelled");
    // Status changes are not configuration changes.
    let agent = f.store.get_agent(ALICE, helper.id).await.unwrap();
    assert_eq!(agent.updated_at, helper.updated_at);
}

pub async fn session_runs_page_newest_first(f: &Fixture) {
    let helper = f.store.create_agent(ALICE, agent("helper", "d")).await.unwrap();
    let session = Uuid::now_v7();
    let mut made = Vec::new();
    for _ in 0..5 {
        let (run, _, _) = admit(f, new_run(ALICE, helper.id, session, None), Admission::Enqueue).await;
        made.push(run.id);
    }
    admit(f, new_run(ALICE, helper.id, Uuid::now_v7(), None), Admission::Enqueue).await;
    made.reverse();
    let query = |limit, offset, after| RunQuery { limit, offset, after };
    let all = f.store.list_session_runs(ALICE, session, &query(10, 0, None)).await.unwrap();
    assert_eq!((ids(&all.items), all.total, all.has_more), (made.clone(), 5, false));
    let page = f.store.list_session_runs(ALICE, session, &query(2, 1, None)).await.unwrap();
    assert_eq!((ids(&page.items), page.has_more), (made[1..3].to_vec(), true));
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = f.store.list_session_runs(ALICE, session, &query(2, 0, after)).await.unwrap();
        seen.extend(ids(&page.items));
        if !page.has_more {
            break;
        }
        after = page.items.last().map(|run| run.id);
    }
    assert_eq!(seen, made);
}

pub async fn leases_renew_and_abandoned_runs_are_claimed(f: &Fixture) {
    let live = running(f, ALICE, LONG).await;
    assert_eq!(f.store.renew_leases("replica-a", &[live.id], LONG).await.unwrap(), [live.id]);
    assert!(f.store.renew_leases("replica-b", &[live.id], LONG).await.unwrap().is_empty(), "not b's");
    assert!(f.store.claim_abandoned_runs("replica-b", LONG, 10).await.unwrap().is_empty(), "a live lease is kept");

    let dead = running(f, ALICE, Duration::ZERO).await;
    let claimed = f.store.claim_abandoned_runs("replica-b", LONG, 10).await.unwrap();
    assert_eq!(ids(&claimed), [dead.id]);
    assert_eq!((claimed[0].status, claimed[0].lease_owner.as_deref()), (RunStatus::Running, Some("replica-b")));
    assert!(f.store.claim_abandoned_runs("replica-c", LONG, 10).await.unwrap().is_empty(), "not twice");
    assert!(f.store.renew_leases("replica-a", &[dead.id], LONG).await.unwrap().is_empty(), "taken over");
    assert_eq!(f.store.renew_leases("replica-b", &[dead.id, live.id], LONG).await.unwrap(), [dead.id]);

    // A queued holder nobody started is claimed once its grace (one lease) is over.
    let helper = f.store.create_agent(ALICE, agent("unstarted", "d")).await.unwrap();
    let (queued, ready, _) = admit(f, new_run(ALICE, helper.id, Uuid::now_v7(), None), Admission::Reject).await;
    assert!(ready);
    assert!(f.store.claim_abandoned_runs("replica-c", LONG, 10).await.unwrap().is_empty(), "within its grace");
    let claimed = f.store.claim_abandoned_runs("replica-c", Duration::ZERO, 10).await.unwrap();
    assert_eq!(ids(&claimed), [queued.id]);
    assert_eq!((claimed[0].status, claimed[0].lease_owner.as_deref()), (RunStatus::Queued, Some("replica-c")));
    let started = start(f, queued.id, "replica-c", LONG).await;
    assert_eq!(started.status, RunStatus::Running);

    // Runs waiting for approval or queued behind another are nobody's to claim.
    let call = PendingToolCall { id: "c".into(), name: "t".into(), arguments_json: "{}".into(), step: 1 };
    f.store
        .transition_run(live.id, RunTransition::RequireAction { pending: vec![call], last_sequence: 1 })
        .await
        .unwrap();
    admit(f, new_run(ALICE, helper.id, started.session_id, None), Admission::Enqueue).await;
    assert!(f.store.claim_abandoned_runs("replica-d", Duration::ZERO, 10).await.unwrap().is_empty());
}

pub async fn concurrent_claimers_take_disjoint_runs(f: &Fixture) {
    let mut abandoned = BTreeSet::new();
    for _ in 0..12 {
        abandoned.insert(running(f, ALICE, Duration::ZERO).await.id);
    }
    let (one, two) = (f.store.clone(), f.twin.clone());
    let first = tokio::spawn(async move { one.claim_abandoned_runs("replica-1", LONG, 100).await });
    let second = tokio::spawn(async move { two.claim_abandoned_runs("replica-2", LONG, 100).await });
    let first: BTreeSet<Uuid> = first.await.unwrap().unwrap().iter().map(|run| run.id).collect();
    let second: BTreeSet<Uuid> = second.await.unwrap().unwrap().iter().map(|run| run.id).collect();
    assert!(first.is_disjoint(&second), "{first:?} and {second:?} overlap");
    assert_eq!(first.union(&second).copied().collect::<BTreeSet<_>>(), abandoned);
    let limited = running(f, ALICE, Duration::ZERO).await;
    running(f, ALICE, Duration::ZERO).await;
    assert_eq!(ids(&f.store.claim_abandoned_runs("replica-3", LONG, 1).await.unwrap()), [limited.id], "oldest first");
}

pub async fn checkpoints_are_replaced(f: &Fixture) {
    let run = running(f, ALICE, LONG).await;
    assert_eq!(f.store.load_checkpoint(run.id).await.unwrap(), None);
    f.store.save_checkpoint(run.id, 1, json_text(serde_json::json!({"step": 1, "messages": ["a"]}))).await.unwrap();
    let second = serde_json::json!({"step": 2, "messages": ["a", "b"], "text": "é \"quoted\" \\ end"});
    f.store.save_checkpoint(run.id, 2, json_text(second.clone())).await.unwrap();
    let saved = f.store.load_checkpoint(run.id).await.unwrap().expect("saved");
    // The same JSON back (a backend may reformat the text).
    assert_eq!((saved.step, serde_json::from_str::<serde_json::Value>(&saved.checkpoint).unwrap()), (2, second));
    let unknown = f.store.save_checkpoint(Uuid::now_v7(), 1, "{}".to_owned()).await;
    assert!(matches!(unknown, Err(StoreError::NotFound)), "{unknown:?}");
}

pub async fn a_step_saves_progress_and_checkpoint_together(f: &Fixture) {
    let run = running(f, ALICE, LONG).await;
    let step = |n: u32| SavedStep {
        step_count: n,
        usage: usage(u64::from(n) * 10),
        last_sequence: u64::from(n) * 3,
        checkpoint: json_text(serde_json::json!({"step": n})),
    };
    f.store.save_step(run.id, step(1)).await.unwrap();
    f.store.save_step(run.id, step(2)).await.unwrap();
    let now = f.store.load_run(run.id).await.unwrap();
    assert_eq!((now.step_count, now.usage, now.last_sequence), (2, usage(20), 6));
    let saved = f.store.load_checkpoint(run.id).await.unwrap().expect("saved");
    assert_eq!(
        (saved.step, serde_json::from_str::<serde_json::Value>(&saved.checkpoint).unwrap()),
        (2, serde_json::json!({"step": 2}))
    );

    // Only a running run progresses; then nothing is saved.
    f.store.transition_run(run.id, RunTransition::Cancel { reason: None, last_sequence: 6 }).await.unwrap();
    invalid(f.store.save_step(run.id, step(3)).await);
    assert_eq!(f.store.load_checkpoint(run.id).await.unwrap().expect("kept").step, 2);
    assert_eq!(f.store.load_run(run.id).await.unwrap().step_count, 2);
    let unknown = f.store.save_step(Uuid::now_v7(), step(1)).await;
    assert!(matches!(unknown, Err(StoreError::NotFound)), "{unknown:?}");
    // Nor does a finished run take a user message.
    invalid(f.store.transition_run(run.id, RunTransition::UserMessage { message_id: Uuid::now_v7() }).await);
    let unknown = f.store.transition_run(Uuid::now_v7(), RunTransition::UserMessage { message_id: Uuid::now_v7() });
    assert!(matches!(unknown.await, Err(StoreError::NotFound)));
}

pub async fn changes_emit_domain_events(f: &Fixture) {
    let mut stream = f.bus.subscribe(SubscriptionSpec::ephemeral(vec![">".into()])).await.unwrap();
    let helper = f.store.create_agent(ALICE, agent("ev", "d")).await.unwrap();
    f.store.update_agent(ALICE, helper.id, agent("ev", "d2")).await.unwrap();
    let session = Uuid::now_v7();
    let (run, _, _) = admit(f, new_run(ALICE, helper.id, session, None), Admission::Reject).await;
    f.store.transition_run(run.id, RunTransition::UserMessage { message_id: Uuid::now_v7() }).await.unwrap();
    start(f, run.id, "r", LONG).await;
    f.store
        .transition_run(run.id, RunTransition::Progress { step_count: 1, usage: usage(1), last_sequence: 1 })
        .await
        .unwrap();
    let call = PendingToolCall { id: "c".into(), name: "t".into(), arguments_json: "{}".into(), step: 1 };
    f.store
        .transition_run(run.id, RunTransition::RequireAction { pending: vec![call], last_sequence: 2 })
        .await
        .unwrap();
    f.store.transition_run(run.id, RunTransition::Resume { owner: "r".into(), lease: LONG }).await.unwrap();
    f.store
        .transition_run(
            run.id,
            RunTransition::Complete { response_message_id: None, usage: usage(2), step_count: 2, last_sequence: 3 },
        )
        .await
        .unwrap();
    let (failing, _, _) = admit(f, new_run(ALICE, helper.id, session, None), Admission::Reject).await;
    let error = RunError { code: "timeout_error".into(), message: "slow".into(), details: JsonObject::new() };
    f.store.transition_run(failing.id, RunTransition::Fail { error, last_sequence: 0 }).await.unwrap();
    let (cancelling, _, _) = admit(f, new_run(ALICE, helper.id, session, None), Admission::Reject).await;
    f.store
        .transition_run(cancelling.id, RunTransition::Cancel { reason: Some("stop".into()), last_sequence: 0 })
        .await
        .unwrap();
    f.store.delete_agent(ALICE, helper.id).await.unwrap();

    let expected = [
        ("agentmesh.agent.created", helper.id),
        ("agentmesh.agent.updated", helper.id),
        ("agentmesh.run.started", run.id),
        ("agentmesh.run.requires_action", run.id),
        ("agentmesh.run.completed", run.id),
        ("agentmesh.run.failed", failing.id),
        ("agentmesh.run.cancelled", cancelling.id),
        ("agentmesh.agent.deleted", helper.id),
    ];
    let mut seen = Vec::new();
    while seen.len() < expected.len() {
        let delivery = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {} events arrived: {seen:?}", seen.len(), expected.len()))
            .unwrap()
            .unwrap();
        let event = delivery.event().clone();
        delivery.ack().await.unwrap();
        assert_eq!(event.source(), "agentmesh/agent-orchestrator");
        seen.push((event.event_type().to_owned(), event.subject().unwrap_or_default().parse::<Uuid>().unwrap(), event));
    }
    let kinds: Vec<(&str, Uuid)> = seen.iter().map(|(t, s, _)| (t.as_str(), *s)).collect();
    assert_eq!(kinds, expected, "one event per change, in write order, none for messages, progress and resumes");

    let created = pb::AgentCreated::decode(seen[0].2.data().clone()).unwrap().agent.unwrap();
    assert_eq!((created.name.as_str(), created.user_id.as_str()), ("ev", ALICE));
    assert_eq!(seen[0].2.data_schema(), Some("agentmesh.events.v1.AgentCreated"));
    let started = pb::RunStartedEvent::decode(seen[2].2.data().clone()).unwrap().run.unwrap();
    assert_eq!((started.status, started.session_id), (2, session.to_string()));
    assert_eq!(seen[2].2.tenant(), Some("acme"), "run events carry the run's tenant");
    let waiting = pb::RunRequiresActionEvent::decode(seen[3].2.data().clone()).unwrap().run.unwrap();
    assert_eq!(waiting.pending_tool_calls.len(), 1);
    let failed = pb::RunFailedEvent::decode(seen[5].2.data().clone()).unwrap();
    assert_eq!(failed.error.unwrap().code, 7, "timeout_error");
    let cancelled = pb::RunCancelledEvent::decode(seen[6].2.data().clone()).unwrap();
    assert_eq!(cancelled.reason.as_deref(), Some("stop"));
    let deleted = pb::AgentDeleted::decode(seen[7].2.data().clone()).unwrap();
    assert_eq!(deleted.agent_id, helper.id.to_string());
}

pub async fn an_admission_with_a_starter_starts_a_ready_run_under_the_agents_own_policy(f: &Fixture) {
    let mut stream = f.bus.subscribe(SubscriptionSpec::ephemeral(vec!["run.>".into()])).await.unwrap();
    // `agent()` enqueues behind a busy session.
    let helper = f.store.create_agent(ALICE, agent("starter", "d")).await.unwrap();
    let session = Uuid::now_v7();
    let starter = Starter { owner: "replica-a".into(), lease: LONG };
    let with_starter = || NewRun { starter: Some(starter.clone()), ..new_run(ALICE, helper.id, session, None) };

    let Admitted::Created { run: started, agent, ready, preempted } =
        f.store.admit_run(with_starter(), None).await.unwrap()
    else {
        panic!("expected a new run")
    };
    assert!(ready && preempted.is_none() && started.holds_session);
    assert_eq!(*agent, helper.definition, "the admission hands over the agent it read");
    assert_eq!(started.status, RunStatus::Running);
    assert_eq!(started.lease_owner.as_deref(), Some("replica-a"));
    assert!(started.started_at.is_some() && started.lease_expires_at.is_some());
    assert_eq!(f.store.get_run(ALICE, started.id).await.unwrap(), started);
    assert_eq!(status_of(f, ALICE, helper.id).await, AgentStatus::Processing);

    // No policy in the request: the agent's own (enqueue); a run that must wait is not started.
    let Admitted::Created { run: waiting, ready, .. } = f.store.admit_run(with_starter(), None).await.unwrap() else {
        panic!("expected a queued run")
    };
    assert!(!ready && !waiting.holds_session);
    assert_eq!((waiting.status, waiting.lease_owner, waiting.started_at), (RunStatus::Queued, None, None));
    // The request's policy wins over the agent's.
    match f.store.admit_run(with_starter(), Some(Admission::Reject)).await {
        Err(StoreError::SessionBusy(holder)) => assert_eq!(holder.id, started.id),
        other => panic!("expected a busy session, got {other:?}"),
    }

    // Only the started run announced its start.
    f.store.transition_run(started.id, RunTransition::Cancel { reason: None, last_sequence: 0 }).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let delivery = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap().unwrap().unwrap();
        let event = delivery.event().clone();
        delivery.ack().await.unwrap();
        seen.push((event.event_type().to_owned(), event.subject().unwrap_or_default().parse::<Uuid>().unwrap()));
    }
    let expected =
        [("agentmesh.run.started".to_owned(), started.id), ("agentmesh.run.cancelled".to_owned(), started.id)];
    assert_eq!(seen, expected);
}
