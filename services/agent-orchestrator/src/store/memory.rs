//! In-process storage: the default backend of `agentmesh up`, and the reference the
//! PostgreSQL backend is compared with by the conformance suite.
//!
//! One lock guards all state, so every operation is atomic (an admission and the session
//! check it depends on cannot interleave); the lock is never held across an `.await`.
//! Data is lost on restart, which is why production refuses this backend.
//!
//! Runs are indexed as they change ([`State::put_run`]): each agent's [`RunSummary`] and
//! each session's runs, holder and queue, so executing a run costs the same however many
//! runs the store already holds.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::lifecycle::{self, RunSummary, lease_until};
use super::{
    Admission, Admitted, AgentDefinition, AgentQuery, AgentRecord, AgentStatus, NewRun, OrchestratorStore, Page,
    RunQuery, RunRecord, RunStatus, RunTransition, SavedStep, StoreError, StoredCheckpoint, Transitioned,
    contains_ignoring_case, now,
};
use crate::events::{self, EventSink};

/// The in-process backend. Cheap to share behind an `Arc`.
pub struct MemoryStore {
    state: Mutex<State>,
    sink: Arc<dyn EventSink>,
}

/// A run and when it got its session (what `claim_abandoned_runs` measures a never
/// started holder by).
struct StoredRun {
    record: RunRecord,
    held_since: Option<DateTime<Utc>>,
}

/// A session's runs, as far as this store knows it.
#[derive(Default)]
struct SessionRuns {
    /// Every run of the session (ids ascend with creation).
    runs: BTreeSet<Uuid>,
    /// The run holding the session.
    holder: Option<Uuid>,
    /// Queued runs waiting for the session, oldest first.
    queue: BTreeSet<(DateTime<Utc>, Uuid)>,
}

#[derive(Default)]
struct State {
    agents: HashMap<Uuid, AgentRecord>,
    /// Agent ids by owner and name: uniqueness per owner.
    agent_names: HashMap<(String, String), Uuid>,
    /// Runs by id; every change goes through [`State::put_run`].
    runs: HashMap<Uuid, StoredRun>,
    /// Run ids by owner and idempotency key.
    run_keys: HashMap<(String, String), Uuid>,
    checkpoints: HashMap<Uuid, StoredCheckpoint>,
    /// What each agent's derived status is computed from (agents deleted or not).
    summaries: HashMap<Uuid, RunSummary>,
    sessions: HashMap<Uuid, SessionRuns>,
}

impl MemoryStore {
    /// An empty store whose events go to `sink`.
    pub fn new(sink: Arc<dyn EventSink>) -> Self {
        Self { state: Mutex::new(State::default()), sink }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every write checks first, then mutates without failing, so a panic cannot leave
        // a half-applied write behind the poisoned lock.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl State {
    fn owned_agent(&self, user_id: &str, id: Uuid) -> Result<&AgentRecord, StoreError> {
        self.agents.get(&id).filter(|agent| agent.user_id == user_id).ok_or(StoreError::NotFound)
    }

    fn check_name(&self, user_id: &str, name: &str, except: Option<Uuid>) -> Result<(), StoreError> {
        match self.agent_names.get(&(user_id.to_owned(), name.to_owned())) {
            Some(holder) if Some(*holder) != except => Err(StoreError::NameTaken(name.to_owned())),
            _ => Ok(()),
        }
    }

    /// Stores `run` (new or changed) and keeps the indexes in step, the agent's status
    /// included.
    fn put_run(&mut self, run: StoredRun) {
        let record = &run.record;
        let summary = self.summaries.entry(record.agent_id).or_default();
        let session = self.sessions.entry(record.session_id).or_default();
        if let Some(old) = self.runs.get(&record.id).map(|old| &old.record) {
            summary.remove(old);
            if session.holder == Some(old.id) {
                session.holder = None;
            }
            session.queue.remove(&(old.created_at, old.id));
        }
        summary.add(record);
        let status = summary.status();
        session.runs.insert(record.id);
        if record.holds_session {
            session.holder = Some(record.id);
        } else if record.status == RunStatus::Queued {
            session.queue.insert((record.created_at, record.id));
        }
        if let Some(agent) = self.agents.get_mut(&record.agent_id) {
            agent.status = status;
        }
        self.runs.insert(record.id, run);
    }

    /// Applies `transition` to run `id`, starting the session's next queued run when the
    /// run lets its session go.
    fn transition(&mut self, id: Uuid, transition: &RunTransition) -> Result<Transitioned, StoreError> {
        let current = self.runs.get(&id).ok_or(StoreError::NotFound)?;
        let at = now();
        let run = lifecycle::apply(&current.record, transition, at)
            .ok_or_else(|| StoreError::InvalidTransition(Box::new(current.record.clone())))?;
        let released = current.record.holds_session && !run.holds_session;
        let held_since = current.held_since.filter(|_| run.holds_session);
        self.put_run(StoredRun { record: run.clone(), held_since });
        let next = if released { self.promote_next(run.session_id, at) } else { None };
        Ok(Transitioned { run, next })
    }

    fn session_holder(&self, session_id: Uuid) -> Option<&RunRecord> {
        let holder = self.sessions.get(&session_id)?.holder?;
        self.runs.get(&holder).map(|run| &run.record)
    }

    /// Gives the session to its oldest queued run, if any; returns that run.
    fn promote_next(&mut self, session_id: Uuid, at: DateTime<Utc>) -> Option<RunRecord> {
        let (_, next) = *self.sessions.get(&session_id)?.queue.first()?;
        let mut record = self.runs.get(&next)?.record.clone();
        record.holds_session = true;
        self.put_run(StoredRun { record: record.clone(), held_since: Some(at) });
        Some(record)
    }
}

/// Applies offset or cursor and limit to items already in list order (id descending).
fn page<T>(items: Vec<T>, offset: u64, limit: u32, after: Option<Uuid>, id: impl Fn(&T) -> Uuid) -> Page<T> {
    let total = items.len() as u64;
    let start = match after {
        Some(cursor) => items.iter().position(|item| id(item) < cursor).unwrap_or(items.len()),
        None => usize::try_from(offset).unwrap_or(usize::MAX).min(items.len()),
    };
    let fetched = items.into_iter().skip(start).take(usize::try_from(limit).unwrap_or(usize::MAX).saturating_add(1));
    Page::from_fetched(fetched.collect(), limit, total)
}

#[async_trait]
impl OrchestratorStore for MemoryStore {
    async fn create_agent(&self, user_id: &str, agent: AgentDefinition) -> Result<AgentRecord, StoreError> {
        let created = {
            let mut state = self.state();
            state.check_name(user_id, &agent.name, None)?;
            let at = now();
            let record = AgentRecord {
                id: Uuid::now_v7(),
                user_id: user_id.to_owned(),
                definition: agent,
                status: AgentStatus::Idle,
                created_at: at,
                updated_at: at,
            };
            state.agent_names.insert((user_id.to_owned(), record.definition.name.clone()), record.id);
            state.agents.insert(record.id, record.clone());
            record
        };
        self.sink.emit(vec![events::agent_created(&created)]).await;
        Ok(created)
    }

    async fn get_agent(&self, user_id: &str, id: Uuid) -> Result<AgentRecord, StoreError> {
        self.state().owned_agent(user_id, id).cloned()
    }

    async fn list_agents(&self, user_id: &str, query: &AgentQuery) -> Result<Page<AgentRecord>, StoreError> {
        let state = self.state();
        let mut agents: Vec<AgentRecord> = state
            .agents
            .values()
            .filter(|agent| agent.user_id == user_id)
            .filter(|agent| query.status.is_none_or(|status| agent.status == status))
            .filter(|agent| {
                query.search.as_deref().is_none_or(|needle| {
                    contains_ignoring_case(&agent.definition.name, needle)
                        || agent.definition.description.as_deref().is_some_and(|d| contains_ignoring_case(d, needle))
                })
            })
            .cloned()
            .collect();
        agents.sort_by_key(|agent| std::cmp::Reverse(agent.id));
        Ok(page(agents, query.offset, query.limit, query.after, |agent| agent.id))
    }

    async fn update_agent(&self, user_id: &str, id: Uuid, agent: AgentDefinition) -> Result<AgentRecord, StoreError> {
        let updated = {
            let mut state = self.state();
            let current = state.owned_agent(user_id, id)?.clone();
            state.check_name(user_id, &agent.name, Some(id))?;
            state.agent_names.remove(&(user_id.to_owned(), current.definition.name.clone()));
            state.agent_names.insert((user_id.to_owned(), agent.name.clone()), id);
            let record = AgentRecord { definition: agent, updated_at: now(), ..current };
            state.agents.insert(id, record.clone());
            record
        };
        self.sink.emit(vec![events::agent_updated(&updated)]).await;
        Ok(updated)
    }

    async fn delete_agent(&self, user_id: &str, id: Uuid) -> Result<AgentRecord, StoreError> {
        let deleted = {
            let mut state = self.state();
            state.owned_agent(user_id, id)?;
            let deleted = state.agents.remove(&id).ok_or(StoreError::NotFound)?;
            state.agent_names.remove(&(user_id.to_owned(), deleted.definition.name.clone()));
            deleted
        };
        self.sink.emit(vec![events::agent_deleted(&deleted)]).await;
        Ok(deleted)
    }

    async fn admit_run(&self, run: NewRun, admission: Option<Admission>) -> Result<Admitted, StoreError> {
        let (admitted, started) = {
            let mut state = self.state();
            let user_id = run.principal.user_id.clone();
            if let Some(key) = &run.idempotency_key
                && let Some(existing) = state.run_keys.get(&(user_id.clone(), key.clone()))
                && let Some(existing) = state.runs.get(existing)
            {
                return Ok(Admitted::Existing(existing.record.clone()));
            }
            let agent = state.owned_agent(&user_id, run.agent_id)?.definition.clone();
            if state.runs.contains_key(&run.id) {
                return Err(StoreError::Internal(format!("run {} already exists", run.id).into()));
            }
            let holder = state.session_holder(run.session_id).cloned();
            let (holds_session, preempted) = match (holder, admission.unwrap_or(agent.concurrency.into())) {
                (None, _) => (true, None),
                (Some(holder), Admission::Reject) => return Err(StoreError::SessionBusy(Box::new(holder))),
                (Some(_), Admission::Enqueue) => (false, None),
                (Some(holder), Admission::Interrupt) => (true, Some(holder.id)),
            };
            let at = now();
            let preempted = preempted.and_then(|id| state.runs.get(&id)).map(|stored| {
                let mut record = stored.record.clone();
                record.holds_session = false;
                record
            });
            if let Some(record) = &preempted {
                state.put_run(StoredRun { record: record.clone(), held_since: None });
            }
            let (record, start) = lifecycle::admitted(run, holds_session, at);
            let started = start.and_then(|start| events::run_transitioned(&start, &record));
            if let Some(key) = &record.idempotency_key {
                state.run_keys.insert((user_id, key.clone()), record.id);
            }
            let held_since = holds_session.then_some(at);
            state.put_run(StoredRun { record: record.clone(), held_since });
            let admitted = Admitted::Created {
                run: record,
                agent: Box::new(agent),
                ready: holds_session,
                preempted: preempted.map(Box::new),
            };
            (admitted, started)
        };
        if let Some(event) = started {
            self.sink.emit(vec![event]).await;
        }
        Ok(admitted)
    }

    async fn get_run(&self, user_id: &str, id: Uuid) -> Result<RunRecord, StoreError> {
        let state = self.state();
        let run = state.runs.get(&id).map(|run| &run.record).filter(|run| run.principal.user_id == user_id);
        run.cloned().ok_or(StoreError::NotFound)
    }

    async fn load_run(&self, id: Uuid) -> Result<RunRecord, StoreError> {
        self.state().runs.get(&id).map(|run| run.record.clone()).ok_or(StoreError::NotFound)
    }

    async fn find_run_by_key(&self, user_id: &str, key: &str) -> Result<Option<RunRecord>, StoreError> {
        let state = self.state();
        let id = state.run_keys.get(&(user_id.to_owned(), key.to_owned()));
        Ok(id.and_then(|id| state.runs.get(id)).map(|run| run.record.clone()))
    }

    async fn list_session_runs(
        &self,
        user_id: &str,
        session_id: Uuid,
        query: &RunQuery,
    ) -> Result<Page<RunRecord>, StoreError> {
        let state = self.state();
        let runs: Vec<RunRecord> = state
            .sessions
            .get(&session_id)
            .into_iter()
            .flat_map(|session| session.runs.iter().rev())
            .filter_map(|id| state.runs.get(id))
            .map(|run| &run.record)
            .filter(|run| run.principal.user_id == user_id)
            .cloned()
            .collect();
        Ok(page(runs, query.offset, query.limit, query.after, |run| run.id))
    }

    async fn list_unfinished_runs(&self, user_id: &str, agent_id: Uuid) -> Result<Vec<RunRecord>, StoreError> {
        let state = self.state();
        let mut runs: Vec<RunRecord> = state
            .runs
            .values()
            .map(|run| &run.record)
            .filter(|run| run.agent_id == agent_id && run.principal.user_id == user_id && !run.status.is_final())
            .cloned()
            .collect();
        runs.sort_by_key(|run| (run.created_at, run.id));
        Ok(runs)
    }

    async fn transition_run(&self, id: Uuid, transition: RunTransition) -> Result<Transitioned, StoreError> {
        let transitioned = self.state().transition(id, &transition)?;
        if let Some(event) = events::run_transitioned(&transition, &transitioned.run) {
            self.sink.emit(vec![event]).await;
        }
        Ok(transitioned)
    }

    async fn renew_leases(&self, owner: &str, ids: &[Uuid], lease: Duration) -> Result<Vec<Uuid>, StoreError> {
        let mut state = self.state();
        let until = lease_until(now(), lease);
        let mut held = Vec::new();
        for id in ids {
            if let Some(stored) = state.runs.get_mut(id)
                && stored.record.status == RunStatus::Running
                && stored.record.lease_owner.as_deref() == Some(owner)
            {
                stored.record.lease_expires_at = Some(until);
                held.push(*id);
            }
        }
        Ok(held)
    }

    async fn claim_abandoned_runs(
        &self,
        owner: &str,
        lease: Duration,
        limit: u32,
    ) -> Result<Vec<RunRecord>, StoreError> {
        let mut state = self.state();
        let at = now();
        let mut abandoned: Vec<(DateTime<Utc>, Uuid)> = state
            .runs
            .values()
            .filter(|run| lifecycle::is_abandoned(&run.record, run.held_since, lease, at))
            .map(|run| (run.record.created_at, run.record.id))
            .collect();
        abandoned.sort();
        let until = lease_until(at, lease);
        let mut claimed = Vec::new();
        for (_, id) in abandoned.into_iter().take(limit as usize) {
            if let Some(stored) = state.runs.get_mut(&id) {
                stored.record.lease_owner = Some(owner.to_owned());
                stored.record.lease_expires_at = Some(until);
                claimed.push(stored.record.clone());
            }
        }
        Ok(claimed)
    }

    async fn save_checkpoint(&self, run_id: Uuid, step: u32, checkpoint: String) -> Result<(), StoreError> {
        let mut state = self.state();
        if !state.runs.contains_key(&run_id) {
            return Err(StoreError::NotFound);
        }
        state.checkpoints.insert(run_id, StoredCheckpoint { step, checkpoint, saved_at: now() });
        Ok(())
    }

    async fn save_step(&self, run_id: Uuid, step: SavedStep) -> Result<(), StoreError> {
        let mut state = self.state();
        // Progress emits no event.
        state.transition(run_id, &step.progress())?;
        let saved = StoredCheckpoint { step: step.step_count, checkpoint: step.checkpoint, saved_at: now() };
        state.checkpoints.insert(run_id, saved);
        Ok(())
    }

    async fn load_checkpoint(&self, run_id: Uuid) -> Result<Option<StoredCheckpoint>, StoreError> {
        Ok(self.state().checkpoints.get(&run_id).cloned())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
