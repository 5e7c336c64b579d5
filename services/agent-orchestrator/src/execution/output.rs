//! A run's output stream: numbered, coalesced, durable, and never in the run's way.
//!
//! The run hands its events to an [`OutputWriter`] and goes on: the writer is a task of its
//! own fed by an unbounded channel, so neither a slow client nor a slow bus ever slows the
//! run. The writer
//! - **coalesces tokens**: text produced within `AGENT_TOKEN_COALESCE` (about 30 ms) leaves
//!   as one `token` event, and any other event first flushes the text before it;
//! - **numbers events** with the run's gapless `sequence`, continuing from where the run's
//!   output stopped (after a crash-resume, from the last sequence published);
//! - publishes each event to the **event bus** on `run.<run_id>.output` (JetStream in
//!   production), with the id `<run_id>:<sequence>` so a republished event is a
//!   duplicate, not a second copy. Any replica serves any run's stream from there;
//! - then appends it to the run's **live copy** on this replica, which local readers
//!   follow without ever blocking the writer (each reader keeps its own cursor).
//!
//! An event reaches the live copy only once the bus has it, and a flush answers only once
//! the bus has everything before it. So no reader ever sees an event that a crash could
//! take back, and the sequence a run records at a checkpoint is always on the bus: a
//! replica resuming the run after a crash numbers on from the bus's last event, without a
//! gap and without reusing a number a client has already seen.
//!
//! [`RunOutputs::read`] serves a stream from the live copy when this replica has the events
//! asked for, and from the bus otherwise.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use agentmesh_events::{Event, EventBus, EventsError, SubscriptionSpec, topic};
use agentmesh_proto::agentmesh::agent::v1::{RunEvent, TokenDelta, run_event::Kind};
use agentmesh_proto::agentmesh::events::v1::RunOutputChunk;
use chrono::DateTime;
use futures::StreamExt;
use futures::stream::BoxStream;
use prost::Message;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use uuid::Uuid;

/// CloudEvents `source` of run output.
const SOURCE: &str = "agentmesh/agent-orchestrator";
/// CloudEvents `type` of run output.
const EVENT_TYPE: &str = "agentmesh.run.output";
/// How many times the writer tries to publish one event before it gives up on the bus
/// copy (local readers still have it).
const PUBLISH_ATTEMPTS: u32 = 5;
/// How long a finished run's live copy stays on this replica for late local readers
/// before they are served from the bus.
const LIVE_LINGER: Duration = Duration::from_secs(60);

/// A reader could not follow a run's output.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The event bus failed.
    #[error("event bus: {0}")]
    Bus(#[from] EventsError),
    /// An event on the run's topic was not a run event.
    #[error("undecodable run output: {0}")]
    Corrupt(#[from] prost::DecodeError),
}

/// The events a run produced on this replica, for local readers.
#[derive(Debug)]
struct LiveOutput {
    /// Sequence of `events[0]`.
    first_sequence: u64,
    events: Mutex<Vec<RunEvent>>,
    /// Number of events so far, and whether the writer finished.
    progress: watch::Sender<(usize, bool)>,
}

impl LiveOutput {
    fn push(&self, event: RunEvent) {
        let len = {
            let mut events = self.events.lock().unwrap_or_else(PoisonError::into_inner);
            events.push(event);
            events.len()
        };
        self.progress.send_modify(|progress| progress.0 = len);
    }

    fn finish(&self) {
        self.progress.send_modify(|progress| progress.1 = true);
    }

    fn get(&self, index: usize) -> Option<RunEvent> {
        self.events.lock().unwrap_or_else(PoisonError::into_inner).get(index).cloned()
    }
}

/// The output streams of the runs this replica executes, and the way to everyone else's.
pub struct RunOutputs {
    live: Mutex<HashMap<Uuid, Arc<LiveOutput>>>,
    bus: Arc<dyn EventBus>,
    coalesce: Duration,
}

impl RunOutputs {
    /// Outputs published to `bus`, with tokens coalesced over `coalesce`.
    pub fn new(bus: Arc<dyn EventBus>, coalesce: Duration) -> Arc<Self> {
        Arc::new(Self { live: Mutex::new(HashMap::new()), bus, coalesce })
    }

    /// Starts writing `run_id`'s output; its next event gets `last_sequence + 1`.
    pub fn writer(self: &Arc<Self>, run_id: Uuid, last_sequence: u64) -> OutputWriter {
        let (progress, _) = watch::channel((0, false));
        let live = Arc::new(LiveOutput { first_sequence: last_sequence + 1, events: Mutex::new(Vec::new()), progress });
        self.live.lock().unwrap_or_else(PoisonError::into_inner).insert(run_id, live.clone());
        let (commands, receiver) = mpsc::unbounded_channel();
        let task = WriterTask {
            run_id,
            next_sequence: last_sequence + 1,
            pending: None,
            live,
            outputs: self.clone(),
            coalesce: self.coalesce,
        };
        tokio::spawn(task.run(receiver));
        OutputWriter { commands }
    }

    /// Starts writing the output of a run that may have published events already (by
    /// another replica, or by this one before a restart): numbering goes on after the
    /// larger of `recorded` (the run's record) and the last event on the bus.
    pub async fn resumed_writer(self: &Arc<Self>, run_id: Uuid, recorded: u64) -> Result<OutputWriter, OutputError> {
        let published = self.last_published(run_id).await?.map_or(0, |chunk| chunk.sequence);
        Ok(self.writer(run_id, recorded.max(published)))
    }

    /// The last event the bus holds of the run's output, if any.
    async fn last_published(&self, run_id: Uuid) -> Result<Option<RunOutputChunk>, OutputError> {
        let topic = topic::run_output(&run_id.to_string());
        match self.bus.last_event(&topic).await? {
            Some(event) => Ok(Some(RunOutputChunk::decode(event.data().clone())?)),
            None => Ok(None),
        }
    }

    /// Whether the bus holds the run's `run_completed` as the last event of its output.
    pub async fn is_ended(&self, run_id: Uuid) -> Result<bool, OutputError> {
        Ok(self.last_published(run_id).await?.and_then(|chunk| chunk.event).is_some_and(|event| is_last(&event)))
    }

    /// The run's events after `after`, then its live events until its `run_completed`.
    /// Served from this replica's live copy when it holds them, else from the bus.
    pub fn read(self: &Arc<Self>, run_id: Uuid, after: u64) -> BoxStream<'static, Result<RunEvent, OutputError>> {
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner).get(&run_id).cloned();
        match live {
            Some(live) if after >= live.first_sequence.saturating_sub(1) => {
                let reading =
                    Reading::Live { events: read_live(live, after), last: after, outputs: self.clone(), run_id };
                futures::stream::unfold(reading, Reading::next).boxed()
            }
            _ => self.read_bus(run_id, after),
        }
    }

    fn read_bus(&self, run_id: Uuid, after: u64) -> BoxStream<'static, Result<RunEvent, OutputError>> {
        let bus = self.bus.clone();
        let topic = topic::run_output(&run_id.to_string());
        let deliveries = async move { bus.subscribe(SubscriptionSpec::ephemeral(vec![topic])).await };
        let events = futures::stream::once(deliveries)
            .flat_map(|subscribed| match subscribed {
                Ok(deliveries) => deliveries.boxed(),
                Err(error) => futures::stream::once(async move { Err(error) }).boxed(),
            })
            .then(|delivery| async move {
                let delivery = delivery?;
                // An unacked delivery would come again; the stream reads each event once.
                delivery.ack().await?;
                let chunk = RunOutputChunk::decode(delivery.event().data().clone())?;
                Ok::<_, OutputError>(chunk.event)
            })
            .filter_map(move |event| {
                std::future::ready(match event {
                    Ok(Some(event)) if event.sequence > after || is_last(&event) => Some(Ok(event)),
                    Ok(_) => None,
                    Err(error) => Some(Err(error)),
                })
            })
            .boxed();
        // Ends right after the run's last event (or an error), without waiting for the
        // subscription to deliver anything more. A reader resuming at or past that event
        // (its client already has it) gets nothing more, instead of waiting for events
        // that will never come.
        futures::stream::unfold(Some(events), move |events| async move {
            let mut events = events?;
            let event = events.next().await?;
            if matches!(&event, Ok(event) if event.sequence <= after) {
                return None;
            }
            let ended = matches!(&event, Ok(e) if is_last(e)) || event.is_err();
            Some((event, (!ended).then_some(events)))
        })
        .boxed()
    }

    fn forget_later(self: &Arc<Self>, run_id: Uuid, live: Arc<LiveOutput>) {
        let outputs = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(LIVE_LINGER).await;
            if let Some(outputs) = outputs.upgrade() {
                let mut map = outputs.live.lock().unwrap_or_else(PoisonError::into_inner);
                if map.get(&run_id).is_some_and(|current| Arc::ptr_eq(current, &live)) {
                    map.remove(&run_id);
                }
            }
        });
    }
}

/// Where a reader of a live copy is: a live copy that ends before the run's
/// `run_completed` (the run stopped for approval here and may go on anywhere) is followed
/// on the bus from the last event read.
enum Reading {
    Live { events: BoxStream<'static, RunEvent>, last: u64, outputs: Arc<RunOutputs>, run_id: Uuid },
    Bus(BoxStream<'static, Result<RunEvent, OutputError>>),
    Done,
}

impl Reading {
    async fn next(self) -> Option<(Result<RunEvent, OutputError>, Reading)> {
        match self {
            Reading::Live { mut events, last, outputs, run_id } => match events.next().await {
                Some(event) if is_last(&event) => Some((Ok(event), Reading::Done)),
                Some(event) => {
                    let last = event.sequence;
                    Some((Ok(event), Reading::Live { events, last, outputs, run_id }))
                }
                None => {
                    let mut bus = outputs.read_bus(run_id, last);
                    let event = bus.next().await?;
                    Some((event, Reading::Bus(bus)))
                }
            },
            Reading::Bus(mut bus) => {
                let event = bus.next().await?;
                Some((event, Reading::Bus(bus)))
            }
            Reading::Done => None,
        }
    }
}

/// Whether `event` ends a run's stream.
fn is_last(event: &RunEvent) -> bool {
    matches!(event.kind, Some(Kind::RunCompleted(_)))
}

/// Follows a live copy from after `after` to its end, recording each event's age as the
/// bus' deliveries do.
fn read_live(live: Arc<LiveOutput>, after: u64) -> BoxStream<'static, RunEvent> {
    let start = usize::try_from(after.saturating_add(1).saturating_sub(live.first_sequence)).unwrap_or(usize::MAX);
    let progress = live.progress.subscribe();
    futures::stream::unfold((live, progress, start), |(live, mut progress, index)| async move {
        loop {
            if let Some(event) = live.get(index) {
                if let Some(created) = event
                    .time
                    .and_then(|time| DateTime::from_timestamp(time.seconds, u32::try_from(time.nanos).unwrap_or(0)))
                {
                    agentmesh_events::record_delivery_lag(EVENT_TYPE, created);
                }
                return Some((event, (live, progress, index + 1)));
            }
            let (len, finished) = *progress.borrow_and_update();
            if index < len {
                continue;
            }
            if finished || progress.changed().await.is_err() {
                return None;
            }
        }
    })
    .boxed()
}

/// What the run asks of its writer.
enum Command {
    /// A fragment of a step's answer, to coalesce.
    Token { step: u32, text: String },
    /// Any other event.
    Event(Box<Kind>),
    /// Flush, then answer with the last sequence once the bus holds it.
    Flush(oneshot::Sender<u64>),
}

/// Where a run puts its output; cheap to clone. Dropping every clone ends the writer after
/// it has written what it was given.
#[derive(Clone)]
pub struct OutputWriter {
    commands: mpsc::UnboundedSender<Command>,
}

impl OutputWriter {
    /// A fragment of the answer of `step`.
    pub fn token(&self, step: u32, text: String) {
        if !text.is_empty() {
            // A closed writer means the run is being torn down: nothing left to tell.
            let _ = self.commands.send(Command::Token { step, text });
        }
    }

    /// Any other event.
    pub fn event(&self, kind: Kind) {
        let _ = self.commands.send(Command::Event(Box::new(kind)));
    }

    /// Waits until everything given so far is numbered, on the bus and on the live copy;
    /// returns the last sequence.
    pub async fn flush(&self) -> u64 {
        let (answer, wait) = oneshot::channel();
        if self.commands.send(Command::Flush(answer)).is_err() {
            return 0;
        }
        wait.await.unwrap_or(0)
    }
}

/// Tokens waiting to leave as one event.
struct PendingTokens {
    step: u32,
    text: String,
    due: Instant,
}

struct WriterTask {
    run_id: Uuid,
    next_sequence: u64,
    pending: Option<PendingTokens>,
    live: Arc<LiveOutput>,
    outputs: Arc<RunOutputs>,
    coalesce: Duration,
}

impl WriterTask {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        let (publish, published) = mpsc::unbounded_channel();
        let publisher = tokio::spawn(publish_in_order(self.outputs.bus.clone(), self.live.clone(), published));
        loop {
            let due = self.pending.as_ref().map(|pending| pending.due);
            let command = match due {
                Some(due) => tokio::select! {
                    command = commands.recv() => command,
                    () = tokio::time::sleep_until(due) => {
                        self.flush_tokens(&publish);
                        continue;
                    }
                },
                None => commands.recv().await,
            };
            match command {
                Some(Command::Token { step, text }) => match &mut self.pending {
                    Some(pending) if pending.step == step => pending.text.push_str(&text),
                    _ => {
                        self.flush_tokens(&publish);
                        self.pending = Some(PendingTokens { step, text, due: Instant::now() + self.coalesce });
                    }
                },
                Some(Command::Event(kind)) => {
                    self.flush_tokens(&publish);
                    self.write(*kind, &publish);
                }
                Some(Command::Flush(answer)) => {
                    self.flush_tokens(&publish);
                    let _ = publish.send(Publication::Flush { answer, last_sequence: self.next_sequence - 1 });
                }
                None => break,
            }
        }
        self.flush_tokens(&publish);
        drop(publish);
        let _ = publisher.await;
        self.live.finish();
        self.outputs.forget_later(self.run_id, self.live.clone());
    }

    fn flush_tokens(&mut self, publish: &mpsc::UnboundedSender<Publication>) {
        if let Some(PendingTokens { step, text, .. }) = self.pending.take() {
            self.write(Kind::Token(TokenDelta { text, step }), publish);
        }
    }

    fn write(&mut self, kind: Kind, publish: &mpsc::UnboundedSender<Publication>) {
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let event = RunEvent {
            run_id: self.run_id.to_string(),
            sequence,
            time: Some(prost_types::Timestamp::from(std::time::SystemTime::now())),
            kind: Some(kind),
        };
        let chunk = RunOutputChunk { run_id: event.run_id.clone(), sequence, event: Some(event.clone()) };
        let envelope = Event::builder(topic::run_output(&chunk.run_id), SOURCE, EVENT_TYPE)
            .id(format!("{}:{sequence}", chunk.run_id))
            .subject(chunk.run_id.clone())
            .data_schema("agentmesh.events.v1.RunOutputChunk")
            .data(chunk.encode_to_vec())
            .build()
            .inspect_err(|error| tracing::error!(%error, run_id = %self.run_id, sequence, "run output event not built"))
            .ok();
        let _ = publish.send(Publication::Event { event: Box::new(event), envelope: envelope.map(Box::new) });
    }
}

/// What the writer hands to its publisher, in sequence order.
enum Publication {
    /// An event for the bus (its envelope, when it could be built), then the live copy.
    Event { event: Box<RunEvent>, envelope: Option<Box<Event>> },
    /// Answer `last_sequence` once everything before it is published.
    Flush { answer: oneshot::Sender<u64>, last_sequence: u64 },
}

/// Publishes the run's events to the bus one after another, so the bus holds them in
/// sequence order, and appends each to the live copy once published; retries a failing
/// publish a few times with a short backoff. An event the bus never took still goes to
/// the live copy, so that local readers are not stalled by the bus.
async fn publish_in_order(
    bus: Arc<dyn EventBus>,
    live: Arc<LiveOutput>,
    mut publications: mpsc::UnboundedReceiver<Publication>,
) {
    while let Some(publication) = publications.recv().await {
        let (event, envelope) = match publication {
            Publication::Event { event, envelope } => (event, envelope),
            Publication::Flush { answer, last_sequence } => {
                let _ = answer.send(last_sequence);
                continue;
            }
        };
        if let Some(envelope) = envelope {
            publish_with_retries(bus.as_ref(), *envelope).await;
        }
        live.push(*event);
    }
}

/// Publishes `envelope`, retrying a retryable failure a few times.
async fn publish_with_retries(bus: &dyn EventBus, envelope: Event) {
    let mut attempt = 1;
    loop {
        match bus.publish(envelope.clone()).await {
            Ok(_) => return,
            Err(error) if attempt < PUBLISH_ATTEMPTS && error.is_retryable() => {
                tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                attempt += 1;
            }
            Err(error) => {
                metrics::counter!("agentmesh_run_output_publish_failures_total").increment(1);
                tracing::error!(%error, event_id = envelope.id(), "run output event not published");
                return;
            }
        }
    }
}
