//! The rules of a run's life, written once for every backend: which transition applies
//! to which status and what it changes ([`apply`]), when a lease or a session hold counts
//! as abandoned ([`lease_until`], [`is_abandoned`]), and how an agent's status follows from
//! its runs ([`RunSummary`]). Backends only decide how to read and write atomically.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use super::{AgentStatus, NewRun, RunRecord, RunStatus, RunTransition, RunUsage};

/// The metadata key a cancel's reason is recorded under.
pub const CANCEL_REASON_KEY: &str = "cancel_reason";

/// `at` plus `lease` (saturating at the end of time).
pub fn lease_until(at: DateTime<Utc>, lease: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(lease)
        .ok()
        .and_then(|lease| at.checked_add_signed(lease))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// A new run as admitted at `at`: `queued`, holding its session or not; a run that holds
/// it and names a starter is started at once (`Start`, which is returned with it, for its
/// event).
pub fn admitted(run: NewRun, holds_session: bool, at: DateTime<Utc>) -> (RunRecord, Option<RunTransition>) {
    let queued = RunRecord {
        id: run.id,
        agent_id: run.agent_id,
        session_id: run.session_id,
        principal: run.principal,
        request: run.request,
        status: RunStatus::Queued,
        user_message_id: None,
        response_message_id: None,
        usage: RunUsage::default(),
        error: None,
        step_count: 0,
        pending_tool_calls: Vec::new(),
        idempotency_key: run.idempotency_key,
        last_sequence: 0,
        metadata: run.metadata,
        created_at: at,
        started_at: None,
        completed_at: None,
        lease_owner: None,
        lease_expires_at: None,
        holds_session,
    };
    let Some(starter) = run.starter.filter(|_| holds_session) else { return (queued, None) };
    let start = RunTransition::Start { owner: starter.owner, lease: starter.lease };
    match apply(&queued, &start, at) {
        Some(started) => (started, Some(start)),
        None => (queued, None),
    }
}

/// The run after `transition` at `at`, or `None` when the run's status does not allow it.
///
/// - `Start`: a queued run that holds its session → running, leased.
/// - `UserMessage`: any unfinished run records its user message.
/// - `Progress`: a running run records steps, usage and output so far.
/// - `RequireAction`: running → requires_action with its pending calls; the lease ends
///   (nobody executes a run that waits for a human).
/// - `Resume`: requires_action → running, leased again; the pending calls are cleared.
/// - `Complete`: running → completed.
/// - `Fail`, `Cancel`: any unfinished run → failed / cancelled.
///
/// A final status ends the lease, clears pending calls and releases the session (the
/// backend then promotes the session's next queued run).
pub fn apply(run: &RunRecord, transition: &RunTransition, at: DateTime<Utc>) -> Option<RunRecord> {
    let mut next = run.clone();
    match (run.status, transition) {
        (status, _) if status.is_final() => return None,
        (RunStatus::Queued, RunTransition::Start { owner, lease }) if run.holds_session => {
            next.status = RunStatus::Running;
            next.started_at = Some(run.started_at.unwrap_or(at));
            next.lease_owner = Some(owner.clone());
            next.lease_expires_at = Some(lease_until(at, *lease));
        }
        (_, RunTransition::UserMessage { message_id }) => next.user_message_id = Some(*message_id),
        (RunStatus::Running, RunTransition::Progress { step_count, usage, last_sequence }) => {
            next.step_count = *step_count;
            next.usage = *usage;
            next.last_sequence = *last_sequence;
        }
        (RunStatus::Running, RunTransition::RequireAction { pending, last_sequence }) => {
            next.status = RunStatus::RequiresAction;
            next.pending_tool_calls = pending.clone();
            next.last_sequence = *last_sequence;
            next.lease_owner = None;
            next.lease_expires_at = None;
        }
        (RunStatus::RequiresAction, RunTransition::Resume { owner, lease }) => {
            next.status = RunStatus::Running;
            next.pending_tool_calls.clear();
            next.lease_owner = Some(owner.clone());
            next.lease_expires_at = Some(lease_until(at, *lease));
        }
        (RunStatus::Running, RunTransition::Complete { response_message_id, usage, step_count, last_sequence }) => {
            next.status = RunStatus::Completed;
            next.response_message_id = *response_message_id;
            next.usage = *usage;
            next.step_count = *step_count;
            next.last_sequence = *last_sequence;
        }
        (_, RunTransition::Fail { error, last_sequence }) => {
            next.status = RunStatus::Failed;
            next.error = Some(error.clone());
            next.last_sequence = *last_sequence;
        }
        (_, RunTransition::Cancel { reason, last_sequence }) => {
            next.status = RunStatus::Cancelled;
            if let Some(reason) = reason {
                next.metadata.insert(CANCEL_REASON_KEY.to_owned(), Value::from(reason.as_str()));
            }
            next.last_sequence = *last_sequence;
        }
        _ => return None,
    }
    if next.status.is_final() {
        next.completed_at = Some(at);
        next.lease_owner = None;
        next.lease_expires_at = None;
        next.pending_tool_calls.clear();
        next.holds_session = false;
    }
    Some(next)
}

/// Whether `transition` changes only the run itself: neither its agent's derived status
/// (queued and running are both "processing") nor which run holds the session. A store
/// needs only the run's own record locked for it.
pub fn changes_only_the_run(transition: &RunTransition) -> bool {
    matches!(
        transition,
        RunTransition::Start { .. } | RunTransition::UserMessage { .. } | RunTransition::Progress { .. }
    )
}

/// Whether another replica may take `run` over at `at` ([`claim_abandoned_runs`]): a
/// running run whose lease ran out, or a queued run holding its session that nobody
/// started within `lease` of `held_since` (when it got the session) and that no claimer
/// leases now.
///
/// [`claim_abandoned_runs`]: super::OrchestratorStore::claim_abandoned_runs
pub fn is_abandoned(run: &RunRecord, held_since: Option<DateTime<Utc>>, lease: Duration, at: DateTime<Utc>) -> bool {
    let lease_over = run.lease_expires_at.is_none_or(|until| until <= at);
    match run.status {
        RunStatus::Running => lease_over,
        RunStatus::Queued => {
            run.holds_session && lease_over && held_since.is_some_and(|since| lease_until(since, lease) <= at)
        }
        _ => false,
    }
}

/// What an agent's derived status is computed from, kept up to date as its runs change
/// (so a backend need not look at every run of the agent for each change).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Runs queued or running.
    active: usize,
    /// Runs waiting for approval.
    waiting: usize,
    /// The last finished run: when, which, and how it ended.
    last_finished: Option<(DateTime<Utc>, uuid::Uuid, RunStatus)>,
}

impl RunSummary {
    /// Counts `run` in.
    pub fn add(&mut self, run: &RunRecord) {
        match run.status {
            RunStatus::Queued | RunStatus::Running => self.active += 1,
            RunStatus::RequiresAction => self.waiting += 1,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled => {
                let finished = (run.completed_at.unwrap_or(DateTime::<Utc>::MIN_UTC), run.id, run.status);
                if self.last_finished.is_none_or(|last| (finished.0, finished.1) > (last.0, last.1)) {
                    self.last_finished = Some(finished);
                }
            }
        }
    }

    /// Counts `run` out, before it changes. A finished run never changes, so only
    /// unfinished ones are ever removed.
    pub fn remove(&mut self, run: &RunRecord) {
        match run.status {
            RunStatus::Queued | RunStatus::Running => self.active = self.active.saturating_sub(1),
            RunStatus::RequiresAction => self.waiting = self.waiting.saturating_sub(1),
            RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled => {}
        }
    }

    /// The agent's status (see `Agent.status` in the contract): `processing` while a run
    /// is queued or running, else `waiting` while one waits for approval, else the outcome
    /// of the last finished run (`completed`, `error`, or `idle` when cancelled), else
    /// `idle`.
    pub fn status(&self) -> AgentStatus {
        if self.active > 0 {
            return AgentStatus::Processing;
        }
        if self.waiting > 0 {
            return AgentStatus::Waiting;
        }
        match self.last_finished.map(|(_, _, status)| status) {
            Some(RunStatus::Completed) => AgentStatus::Completed,
            Some(RunStatus::Failed) => AgentStatus::Error,
            _ => AgentStatus::Idle,
        }
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::store::{JsonObject, RunPrincipal, RunRequest, RunUsage, now};

    fn run(status: RunStatus, completed_at: Option<DateTime<Utc>>) -> RunRecord {
        RunRecord {
            id: Uuid::now_v7(),
            agent_id: Uuid::nil(),
            session_id: Uuid::nil(),
            principal: RunPrincipal { user_id: "u".into(), tenant: None, tier: "basic".into(), scopes: vec![] },
            request: RunRequest { message: "m".into(), cancel_on_disconnect: false },
            status,
            user_message_id: None,
            response_message_id: None,
            usage: RunUsage::default(),
            error: None,
            step_count: 0,
            pending_tool_calls: vec![],
            idempotency_key: None,
            last_sequence: 0,
            metadata: JsonObject::new(),
            created_at: now(),
            started_at: None,
            completed_at,
            lease_owner: None,
            lease_expires_at: None,
            holds_session: !status.is_final(),
        }
    }

    fn derive_status<'a>(runs: impl IntoIterator<Item = &'a RunRecord>) -> AgentStatus {
        let mut summary = RunSummary::default();
        for run in runs {
            summary.add(run);
        }
        summary.status()
    }

    #[test]
    fn status_ranks_processing_then_waiting_then_the_last_outcome() {
        let at = now();
        let later = at + chrono::Duration::seconds(1);
        let completed = run(RunStatus::Completed, Some(at));
        let failed = run(RunStatus::Failed, Some(later));
        let cancelled = run(RunStatus::Cancelled, Some(at));
        assert_eq!(derive_status([]), AgentStatus::Idle);
        assert_eq!(derive_status([&completed, &failed]), AgentStatus::Error);
        assert_eq!(derive_status([&failed, &completed]), AgentStatus::Error, "by completion, not order");
        assert_eq!(derive_status([&completed, &cancelled]), AgentStatus::Idle, "a tie goes to the newer run");
        let waiting = run(RunStatus::RequiresAction, None);
        assert_eq!(derive_status([&failed, &waiting]), AgentStatus::Waiting);
        let queued = run(RunStatus::Queued, None);
        assert_eq!(derive_status([&waiting, &queued, &failed]), AgentStatus::Processing);

        // Kept up to date: a run counted out as it was, and in as it is now.
        let mut summary = RunSummary::default();
        summary.add(&failed);
        summary.add(&queued);
        assert_eq!(summary.status(), AgentStatus::Processing);
        summary.remove(&queued);
        let done = RunRecord {
            status: RunStatus::Completed,
            completed_at: Some(later + chrono::Duration::seconds(1)),
            ..queued.clone()
        };
        summary.add(&done);
        assert_eq!(summary.status(), AgentStatus::Completed);
    }

    #[test]
    fn transitions_apply_only_from_their_statuses() {
        let at = now();
        let lease = Duration::from_secs(30);
        let queued = run(RunStatus::Queued, None);
        let behind = RunRecord { holds_session: false, ..queued.clone() };
        let start = RunTransition::Start { owner: "r".into(), lease };
        assert!(apply(&behind, &start, at).is_none(), "only the holder starts");
        let running = apply(&queued, &start, at).unwrap_or_else(|| panic!("starts"));
        assert_eq!((running.status, running.lease_expires_at), (RunStatus::Running, Some(lease_until(at, lease))));
        assert!(apply(&running, &RunTransition::Resume { owner: "r".into(), lease }, at).is_none());
        let cancel = RunTransition::Cancel { reason: Some("why".into()), last_sequence: 4 };
        let cancelled = apply(&queued, &cancel, at).unwrap_or_else(|| panic!("cancels"));
        assert_eq!(cancelled.metadata.get(CANCEL_REASON_KEY), Some(&Value::from("why")));
        assert!(!cancelled.holds_session && cancelled.completed_at == Some(at));
        assert!(apply(&cancelled, &cancel, at).is_none(), "final is final");
    }

    #[test]
    fn abandonment_needs_an_expired_lease_or_an_unstarted_hold() {
        let at = now();
        let lease = Duration::from_secs(30);
        let running = RunRecord { lease_expires_at: Some(at), ..run(RunStatus::Running, None) };
        assert!(is_abandoned(&running, None, lease, at));
        let leased = RunRecord { lease_expires_at: Some(lease_until(at, lease)), ..running };
        assert!(!is_abandoned(&leased, None, lease, at));
        let queued = run(RunStatus::Queued, None);
        assert!(!is_abandoned(&queued, Some(at), lease, at), "within its grace");
        assert!(is_abandoned(&queued, Some(at), Duration::ZERO, at));
        assert!(!is_abandoned(&run(RunStatus::RequiresAction, None), Some(at), Duration::ZERO, at));
    }
}
