//! Usage events on their way to the control plane: every finished request's
//! event is written to a spool directory on disk first, then published to the
//! JetStream stream `BULKHEAD_USAGE` with `Nats-Msg-Id` = event id (or, in
//! the all-in-one mode, handed to the control plane in the same process), and
//! its spool file is deleted only once JetStream has acknowledged it (or the
//! control plane has committed it).
//!
//! So a NATS outage or a worker restart loses nothing (the spool is replayed)
//! and doubles nothing (JetStream drops a repeated message id inside its
//! duplicate window, and the control plane dedups on the event id too).
//!
//! The engine hands events over a bounded queue (it waits when the writer is
//! behind; nothing is dropped), and the writer commits what has queued up as
//! one spool file with one fsync (group commit). The spool has a size cap:
//! past it the worker takes no new requests (503 `usage_spool_full`) until
//! the sink has caught up, and still loses nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bulkhead_proto::usage::{LocalUsageBatch, LocalUsageSender};
use bulkhead_proto::worker::UsageEvent;

use prost::Message;
use tokio::sync::Notify;
use tokio::sync::mpsc::Receiver;

use crate::error::WorkerError;

/// Most events queued between the engine and the spool writer.
pub const USAGE_QUEUE: usize = 4_096;
/// Most events one spool file (one group commit) holds.
const GROUP_MAX: usize = 512;
/// The default size cap of the spool.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1 << 30;

/// How many bytes the spool holds, against its cap: shared by the writer,
/// the publisher (which deletes what the sink has) and the engine (which
/// refuses new requests while the spool is full).
#[derive(Debug)]
pub struct SpoolGauge {
    bytes: AtomicU64,
    cap: u64,
}

impl SpoolGauge {
    pub fn new(cap: u64) -> Self {
        Self {
            bytes: AtomicU64::new(0),
            cap,
        }
    }

    fn add(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::SeqCst);
    }

    fn sub(&self, n: u64) {
        let _ = self
            .bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| {
                Some(b.saturating_sub(n))
            });
    }

    /// `(bytes held, cap)` when the spool is at its cap.
    pub fn full(&self) -> Option<(u64, u64)> {
        let bytes = self.bytes.load(Ordering::SeqCst);
        (bytes >= self.cap).then_some((bytes, self.cap))
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }
}

/// The engine's end of the usage queue, with the spool's gauge.
#[derive(Debug, Clone)]
pub struct UsageSender {
    tx: tokio::sync::mpsc::Sender<UsageEvent>,
    gauge: Arc<SpoolGauge>,
}

impl UsageSender {
    /// Queues an event, waiting while the writer is behind (the engine
    /// thread calls it; it must not be inside an async runtime). `false`:
    /// the publisher is gone (the event is lost; the caller says so).
    pub fn send_blocking(&self, event: UsageEvent) -> bool {
        self.tx.blocking_send(event).is_ok()
    }

    /// `(bytes held, cap)` when the spool is at its cap.
    pub fn spool_full(&self) -> Option<(u64, u64)> {
        self.gauge.full()
    }
}

/// A usage queue for `gauge`'s spool: the engine's sender and the
/// publisher's receiver.
pub fn queue(gauge: Arc<SpoolGauge>) -> (UsageSender, Receiver<UsageEvent>) {
    let (tx, rx) = tokio::sync::mpsc::channel(USAGE_QUEUE);
    (UsageSender { tx, gauge }, rx)
}

/// The on-disk spool: one file per group of events, named
/// `<sequence>-<first event id>.pbs` (events length-delimited) so replay
/// keeps the original order; `.pb` files of one event each (an older
/// worker's) are read too.
pub struct Spool {
    dir: PathBuf,
    next: u64,
    gauge: Arc<SpoolGauge>,
}

impl Spool {
    pub fn open(dir: impl Into<PathBuf>, gauge: Arc<SpoolGauge>) -> Result<Self, WorkerError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| {
            WorkerError::Engine(format!("creating spool dir {}: {e}", dir.display()))
        })?;
        let mut spool = Self {
            dir,
            next: 0,
            gauge,
        };
        let pending = spool.pending()?;
        spool.next = pending
            .iter()
            .filter_map(|p| sequence_of(p))
            .max()
            .map_or(0, |n| n + 1);
        spool
            .gauge
            .add(pending.iter().map(|p| file_size(p)).sum::<u64>());
        Ok(spool)
    }

    /// Writes one event durably.
    #[cfg(test)]
    pub fn write(&mut self, event: &UsageEvent) -> Result<PathBuf, WorkerError> {
        self.write_group(std::slice::from_ref(event))
    }

    /// Writes a group of events durably as one file: one fsync of the file
    /// and one of the directory for the whole group.
    pub fn write_group(&mut self, events: &[UsageEvent]) -> Result<PathBuf, WorkerError> {
        let first = events.first().map_or("", |e| e.event_id.as_str());
        let name = format!("{:020}-{first}.pbs", self.next);
        self.next += 1;
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let io = |e: std::io::Error| {
            WorkerError::Engine(format!("writing usage spool {}: {e}", path.display()))
        };
        let mut bytes = Vec::new();
        for event in events {
            event
                .encode_length_delimited(&mut bytes)
                .map_err(|e| WorkerError::Engine(format!("encoding a usage event: {e}")))?;
        }
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&bytes).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &path).map_err(io)?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        self.gauge.add(bytes.len() as u64);
        Ok(path)
    }

    /// Spooled event files, oldest first.
    pub fn pending(&self) -> Result<Vec<PathBuf>, WorkerError> {
        pending_in(&self.dir).map_err(|e| {
            WorkerError::Engine(format!("reading spool dir {}: {e}", self.dir.display()))
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Deletes a spool file whose events the sink has, and counts it off.
fn remove_spooled(path: &Path, gauge: &SpoolGauge) {
    let size = file_size(path);
    if std::fs::remove_file(path).is_ok() {
        gauge.sub(size);
    }
}

/// Spooled event files in `dir`, oldest first.
fn pending_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "pb" || x == "pbs") && sequence_of(p).is_some()
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Like [`pending_in`], for the publisher: an unreadable spool is logged and
/// retried on the next round.
fn pending_or_warn(dir: &Path) -> Vec<PathBuf> {
    pending_in(dir).unwrap_or_else(|e| {
        tracing::warn!(dir = %dir.display(), error = %e, "usage spool dir unreadable");
        Vec::new()
    })
}

fn sequence_of(path: &Path) -> Option<u64> {
    path.file_name()?.to_str()?.split('-').next()?.parse().ok()
}

/// Where spooled usage events go.
#[derive(Clone, Default)]
pub enum UsageSink {
    /// Nowhere: events are logged only (no spool, no publisher).
    #[default]
    None,
    /// The JetStream stream `BULKHEAD_USAGE` on this NATS server.
    Nats(String),
    /// The control plane in the same process (the all-in-one mode).
    Local(LocalUsageSender),
}

impl std::fmt::Debug for UsageSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("None"),
            // The URL may carry NATS credentials.
            Self::Nats(url) => f
                .debug_tuple("Nats")
                .field(&bulkhead_proto::usage::redacted_nats_url(url))
                .finish(),
            Self::Local(_) => f.write_str("Local"),
        }
    }
}

/// Most events sent in one in-process batch.
const LOCAL_BATCH: usize = 1_024;
/// How long to wait for the control plane to commit an in-process batch.
const LOCAL_TIMEOUT: Duration = Duration::from_secs(10);

/// The publishing end of the spool.
enum Target {
    Nats {
        /// `None` when NATS cannot be used at all (a bad URL).
        js: Option<Box<async_nats::jetstream::Context>>,
        stream_ready: bool,
    },
    Local(LocalUsageSender),
    Nowhere,
}

impl Target {
    async fn new(sink: UsageSink) -> Self {
        match sink {
            UsageSink::Nats(url) => Self::Nats {
                js: connect_nats(&url).await.map(Box::new),
                stream_ready: false,
            },
            UsageSink::Local(tx) => Self::Local(tx),
            UsageSink::None => Self::Nowhere,
        }
    }

    fn usable(&self) -> bool {
        match self {
            Self::Nats { js, .. } => js.is_some(),
            Self::Local(tx) => !tx.is_closed(),
            Self::Nowhere => false,
        }
    }

    /// Publishes `pending` in order and deletes each file once the sink has
    /// all of it; stops at the first failure.
    async fn publish(&mut self, pending: &[PathBuf], gauge: &SpoolGauge) -> Result<(), String> {
        if pending.is_empty() {
            return Ok(());
        }
        match self {
            Self::Nats { js: None, .. } | Self::Nowhere => Ok(()),
            Self::Nats {
                js: Some(js),
                stream_ready,
            } => {
                if !*stream_ready {
                    *stream_ready = ensure_stream(js).await;
                    if !*stream_ready {
                        return Err("usage stream not reachable yet".into());
                    }
                }
                for path in pending {
                    publish_file(js, path)
                        .await
                        .map_err(|e| format!("{}: {e}", path.display()))?;
                    remove_spooled(path, gauge);
                }
                Ok(())
            }
            Self::Local(tx) => {
                for chunk in pending.chunks(LOCAL_BATCH) {
                    send_local(tx, chunk, gauge).await?;
                }
                Ok(())
            }
        }
    }
}

async fn connect_nats(nats_url: &str) -> Option<async_nats::jetstream::Context> {
    let (options, url) = match bulkhead_proto::usage::nats_options(nats_url) {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, "cannot use NATS; usage stays in the spool");
            return None;
        }
    };
    match options
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .max_reconnects(None)
        .connect(url.as_str())
        .await
    {
        Ok(client) => {
            let mut js = async_nats::jetstream::new(client);
            js.set_timeout(Duration::from_secs(2));
            Some(js)
        }
        Err(e) => {
            tracing::error!(url = %bulkhead_proto::usage::redacted_nats_url(nats_url), error = %e, "cannot use NATS; usage stays in the spool");
            None
        }
    }
}

/// Sends one batch of spool files to the in-process control plane and
/// deletes them once it answers that the batch is committed.
async fn send_local(
    tx: &LocalUsageSender,
    paths: &[PathBuf],
    gauge: &SpoolGauge,
) -> Result<(), String> {
    let mut events = Vec::with_capacity(paths.len());
    let mut sent = Vec::with_capacity(paths.len());
    for path in paths {
        if let Some(read) = read_events(path)? {
            events.extend(read);
            sent.push(path);
        }
    }
    if events.is_empty() {
        return Ok(());
    }
    let (done, answer) = tokio::sync::oneshot::channel();
    tx.send(LocalUsageBatch { events, done })
        .await
        .map_err(|_| "the control plane stopped taking usage".to_owned())?;
    match tokio::time::timeout(LOCAL_TIMEOUT, answer).await {
        Ok(Ok(Ok(()))) => {
            for path in sent {
                remove_spooled(path, gauge);
            }
            Ok(())
        }
        Ok(Ok(Err(e))) => Err(e),
        Ok(Err(_)) => Err("the control plane dropped the usage batch".into()),
        Err(_) => Err(format!(
            "the control plane did not commit the usage batch within {LOCAL_TIMEOUT:?}"
        )),
    }
}

/// Reads a spool file's events (a group, or one event in an older `.pb`
/// file); a torn or foreign one is moved aside (`Ok(None)`) rather than
/// block the spool.
fn read_events(path: &Path) -> Result<Option<Vec<UsageEvent>>, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let decoded = if path.extension().is_some_and(|x| x == "pb") {
        UsageEvent::decode(bytes.as_slice()).map(|e| vec![e])
    } else {
        let mut rest = bytes.as_slice();
        let mut events = Vec::new();
        let mut result = Ok(());
        while !rest.is_empty() {
            match UsageEvent::decode_length_delimited(&mut rest) {
                Ok(e) => events.push(e),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        result.map(|()| events)
    };
    match decoded {
        Ok(events) => Ok(Some(events)),
        Err(e) => {
            let bad = path.with_extension("corrupt");
            tracing::error!(file = %path.display(), error = %e, "unreadable usage spool file moved aside");
            let _ = std::fs::rename(path, bad);
            Ok(None)
        }
    }
}

/// Runs until `events` closes: a writer thread spools each event as it
/// arrives (so an event is on disk even while the sink is unreachable), and
/// this task publishes the spool in order to `sink`, retrying with backoff.
/// On close it makes a last attempt of a few seconds; what stays unpublished
/// remains in the spool for the next start.
pub async fn publish_loop(mut spool: Spool, sink: UsageSink, mut events: Receiver<UsageEvent>) {
    let dir = spool.dir().to_path_buf();
    let gauge = Arc::clone(&spool.gauge);
    let notify = Arc::new(Notify::new());
    let (closed_tx, mut closed) = tokio::sync::watch::channel(false);
    let writer_notify = Arc::clone(&notify);
    let writer = std::thread::Builder::new().name("bulkhead-usage-spool".into()).spawn(move || {
        while let Some(first) = events.blocking_recv() {
            // Group commit: whatever queued up meanwhile goes in the same file.
            let mut group = vec![first];
            while group.len() < GROUP_MAX {
                match events.try_recv() {
                    Ok(event) => group.push(event),
                    Err(_) => break,
                }
            }
            if let Err(e) = spool.write_group(&group) {
                tracing::error!(events = group.len(), error = %e, "usage events could not be spooled");
            }
            writer_notify.notify_one();
        }
        let _ = closed_tx.send(true);
        writer_notify.notify_one();
    });
    if let Err(e) = writer {
        tracing::error!(error = %e, "usage spool writer could not start; usage events are lost");
        return;
    }
    let mut target = Target::new(sink).await;
    let mut backoff = Duration::from_millis(100);
    let mut closing_deadline: Option<tokio::time::Instant> = None;
    loop {
        let mut failed = false;
        if target.usable() {
            let pending = pending_or_warn(&dir);
            match target.publish(&pending, &gauge).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    tracing::warn!(error = %e, "usage publish failed; will retry");
                    failed = true;
                }
            }
        }
        if *closed.borrow() {
            let deadline = *closing_deadline
                .get_or_insert_with(|| tokio::time::Instant::now() + Duration::from_secs(3));
            let remaining = pending_or_warn(&dir).len();
            if remaining == 0 || tokio::time::Instant::now() >= deadline || !target.usable() {
                if remaining > 0 {
                    tracing::warn!(remaining, dir = %dir.display(), "usage events left in the spool for the next start");
                }
                return;
            }
        }
        let wait = if failed {
            backoff
        } else {
            Duration::from_secs(3600)
        };
        if failed {
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        tokio::select! {
            () = notify.notified(), if !failed => {}
            () = tokio::time::sleep(wait) => {}
            _ = closed.changed(), if !*closed.borrow() => {}
        }
    }
}

async fn ensure_stream(js: &async_nats::jetstream::Context) -> bool {
    match js
        .get_or_create_stream(bulkhead_proto::usage::stream_config())
        .await
    {
        Ok(_) => true,
        Err(e) => {
            tracing::warn!(error = %e, "usage stream not reachable yet");
            false
        }
    }
}

/// Publishes a spool file's events: all sent first, then every
/// acknowledgement awaited (pipelined, not one round trip per event).
async fn publish_file(js: &async_nats::jetstream::Context, path: &Path) -> Result<(), String> {
    let Some(events) = read_events(path)? else {
        return Ok(());
    };
    let mut acks = Vec::with_capacity(events.len());
    for event in &events {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", event.event_id.as_str());
        headers.insert("Content-Type", "application/x-protobuf");
        acks.push(
            js.publish_with_headers(event.subject(), headers, event.encode_to_vec().into())
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    for ack in acks {
        ack.await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_survives_reopen_and_keeps_order() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut spool = Spool::open(
            dir.path(),
            Arc::new(SpoolGauge::new(DEFAULT_SPOOL_MAX_BYTES)),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        for id in ["b", "a", "c"] {
            let event = UsageEvent {
                event_id: id.into(),
                ..Default::default()
            };
            spool.write(&event).unwrap_or_else(|e| panic!("{e}"));
        }
        let mut reopened = Spool::open(
            dir.path(),
            Arc::new(SpoolGauge::new(DEFAULT_SPOOL_MAX_BYTES)),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<String> = reopened
            .pending()
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .flat_map(|p| read_events(p).ok().flatten().unwrap_or_default())
            .map(|e| e.event_id)
            .collect();
        assert_eq!(names, ["b", "a", "c"]);
        let path = reopened
            .write(&UsageEvent {
                event_id: "d".into(),
                ..Default::default()
            })
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            path.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("00000000000000000003-"))
        );
    }

    /// A group is one file with one fsync; the gauge counts it, says when
    /// the cap is reached, and counts off what the sink took.
    #[test]
    fn a_group_is_one_file_and_the_cap_is_counted() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let gauge = Arc::new(SpoolGauge::new(200));
        let mut spool =
            Spool::open(dir.path(), Arc::clone(&gauge)).unwrap_or_else(|e| panic!("{e}"));
        let event = |id: &str| UsageEvent {
            event_id: id.into(),
            tenant_id: "acme".into(),
            prompt_preview: "x".repeat(40),
            ..Default::default()
        };
        let path = spool
            .write_group(&[event("e1"), event("e2"), event("e3")])
            .unwrap_or_else(|e| panic!("{e}"));
        let read: Vec<String> = read_events(&path)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_default()
            .into_iter()
            .map(|e| e.event_id)
            .collect();
        assert_eq!(read, ["e1", "e2", "e3"]);
        assert_eq!(pending_in(dir.path()).unwrap_or_default().len(), 1);
        assert_eq!(gauge.bytes(), file_size(&path));
        assert!(gauge.full().is_none(), "{} of 200 bytes", gauge.bytes());
        let second = spool
            .write_group(&[event("e4"), event("e5")])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            gauge.full().is_some(),
            "{} bytes past a cap of 200",
            gauge.bytes()
        );
        // An older worker's one-event file is read too.
        std::fs::write(
            dir.path().join("00000000000000000009-old.pb"),
            event("old").encode_to_vec(),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let reopened = Spool::open(dir.path(), Arc::new(SpoolGauge::new(200)))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reopened.pending().unwrap_or_default().len(), 3);
        remove_spooled(&path, &gauge);
        remove_spooled(&second, &gauge);
        assert_eq!(gauge.bytes(), 0);
        assert!(gauge.full().is_none());
    }

    #[tokio::test]
    async fn local_batches_leave_the_spool_only_once_committed() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let spool = Spool::open(
            dir.path(),
            Arc::new(SpoolGauge::new(DEFAULT_SPOOL_MAX_BYTES)),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let (events_tx, events_rx) = tokio::sync::mpsc::channel(16);
        let (local_tx, mut local_rx) = tokio::sync::mpsc::channel(4);
        let publisher = tokio::spawn(publish_loop(spool, UsageSink::Local(local_tx), events_rx));
        for id in ["e1", "e2"] {
            events_tx
                .send(UsageEvent {
                    event_id: id.into(),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        // The control plane is not ready yet: the events stay spooled and come again.
        let mut seen = Vec::new();
        let batch = local_rx.recv().await.unwrap_or_else(|| panic!("no batch"));
        seen.extend(batch.events.iter().map(|e| e.event_id.clone()));
        let _ = batch.done.send(Err("not the leader yet".into()));
        assert!(!pending_in(dir.path()).unwrap_or_default().is_empty());
        let mut committed: Vec<String> = Vec::new();
        while committed.len() < 2 {
            let batch = local_rx.recv().await.unwrap_or_else(|| panic!("no batch"));
            committed.extend(batch.events.iter().map(|e| e.event_id.clone()));
            let _ = batch.done.send(Ok(()));
        }
        assert_eq!(
            committed,
            ["e1", "e2"],
            "the refused events come again, in order"
        );
        drop(events_tx);
        publisher.await.unwrap_or_else(|e| panic!("{e}"));
        assert!(
            pending_in(dir.path()).unwrap_or_default().is_empty(),
            "committed events leave the spool"
        );
        assert!(seen.first().is_some_and(|id| id == "e1"));
    }
}
