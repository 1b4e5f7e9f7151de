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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bulkhead_proto::usage::{LocalUsageBatch, LocalUsageSender};
use bulkhead_proto::worker::UsageEvent;

use prost::Message;
use tokio::sync::Notify;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::error::WorkerError;

/// The on-disk spool: one file per event, named `<sequence>-<event id>.pb`
/// so replay keeps the original order.
pub struct Spool {
    dir: PathBuf,
    next: u64,
}

impl Spool {
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, WorkerError> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).map_err(|e| {
            WorkerError::Engine(format!("creating spool dir {}: {e}", dir.display()))
        })?;
        let mut spool = Self { dir, next: 0 };
        spool.next = spool
            .pending()?
            .iter()
            .filter_map(|p| sequence_of(p))
            .max()
            .map_or(0, |n| n + 1);
        Ok(spool)
    }

    /// Writes an event durably (fsync of the file and the directory).
    pub fn write(&mut self, event: &UsageEvent) -> Result<PathBuf, WorkerError> {
        let name = format!("{:020}-{}.pb", self.next, event.event_id);
        self.next += 1;
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let io = |e: std::io::Error| {
            WorkerError::Engine(format!("writing usage spool {}: {e}", path.display()))
        };
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(&event.encode_to_vec()).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &path).map_err(io)?;
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
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

/// Spooled event files in `dir`, oldest first.
fn pending_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "pb") && sequence_of(p).is_some())
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
    /// it; stops at the first failure.
    async fn publish(&mut self, pending: &[PathBuf]) -> Result<(), String> {
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
                    let _ = std::fs::remove_file(path);
                }
                Ok(())
            }
            Self::Local(tx) => {
                for chunk in pending.chunks(LOCAL_BATCH) {
                    send_local(tx, chunk).await?;
                }
                Ok(())
            }
        }
    }
}

async fn connect_nats(nats_url: &str) -> Option<async_nats::jetstream::Context> {
    let (options, url) = bulkhead_proto::usage::nats_options(nats_url);
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
async fn send_local(tx: &LocalUsageSender, paths: &[PathBuf]) -> Result<(), String> {
    let mut events = Vec::with_capacity(paths.len());
    let mut sent = Vec::with_capacity(paths.len());
    for path in paths {
        if let Some(event) = read_event(path)? {
            events.push(event);
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
                let _ = std::fs::remove_file(path);
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

/// Reads a spool file; a torn or foreign one is moved aside (`Ok(None)`)
/// rather than block the spool.
fn read_event(path: &Path) -> Result<Option<UsageEvent>, String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    match UsageEvent::decode(bytes.as_slice()) {
        Ok(event) => Ok(Some(event)),
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
pub async fn publish_loop(
    mut spool: Spool,
    sink: UsageSink,
    mut events: UnboundedReceiver<UsageEvent>,
) {
    let dir = spool.dir().to_path_buf();
    let notify = Arc::new(Notify::new());
    let (closed_tx, mut closed) = tokio::sync::watch::channel(false);
    let writer_notify = Arc::clone(&notify);
    let writer = std::thread::Builder::new().name("bulkhead-usage-spool".into()).spawn(move || {
        while let Some(event) = events.blocking_recv() {
            if let Err(e) = spool.write(&event) {
                tracing::error!(tenant = %event.tenant_id, event = %event.event_id, error = %e, "usage event could not be spooled");
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
            match target.publish(&pending).await {
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

async fn publish_file(js: &async_nats::jetstream::Context, path: &Path) -> Result<(), String> {
    let Some(event) = read_event(path)? else {
        return Ok(());
    };
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", event.event_id.as_str());
    headers.insert("Content-Type", "application/x-protobuf");
    let ack = js
        .publish_with_headers(event.subject(), headers, event.encode_to_vec().into())
        .await
        .map_err(|e| e.to_string())?;
    ack.await.map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spool_survives_reopen_and_keeps_order() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let mut spool = Spool::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        for id in ["b", "a", "c"] {
            let event = UsageEvent {
                event_id: id.into(),
                ..Default::default()
            };
            spool.write(&event).unwrap_or_else(|e| panic!("{e}"));
        }
        let mut reopened = Spool::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<String> = reopened
            .pending()
            .unwrap_or_else(|e| panic!("{e}"))
            .iter()
            .map(|p| {
                std::fs::read(p)
                    .map(|b| {
                        UsageEvent::decode(b.as_slice())
                            .map(|e| e.event_id)
                            .unwrap_or_default()
                    })
                    .unwrap_or_default()
            })
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

    #[tokio::test]
    async fn local_batches_leave_the_spool_only_once_committed() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let spool = Spool::open(dir.path()).unwrap_or_else(|e| panic!("{e}"));
        let (events_tx, events_rx) = tokio::sync::mpsc::unbounded_channel();
        let (local_tx, mut local_rx) = tokio::sync::mpsc::channel(4);
        let publisher = tokio::spawn(publish_loop(spool, UsageSink::Local(local_tx), events_rx));
        for id in ["e1", "e2"] {
            events_tx
                .send(UsageEvent {
                    event_id: id.into(),
                    ..Default::default()
                })
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
