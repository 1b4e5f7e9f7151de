//! Group commit of session turns. Every answer in a session appends its
//! user and assistant turns to the control plane before the answer is
//! returned, so a turn the client has seen is never lost, even if the
//! gateway dies the next instant. One Raft entry (and one fsync) per answer
//! would bound a gateway's session traffic by the log's write rate, so the
//! appends that arrive while one batch is being written wait and go together
//! in the next one (`AppendTurnsBatch`): at low load an append goes alone at
//! once, at high load each Raft entry carries many. It never delays an
//! append to wait for company, and never answers one before it is committed.

use std::sync::Arc;
use std::time::Duration;

use bulkhead_control_plane::ControlPlaneClient;
use bulkhead_proto::control as cp;
use tokio::sync::{mpsc, oneshot};

/// Most appends in one Raft entry.
const MOST_PER_BATCH: usize = 256;

type Pending = (cp::AppendTurnsRequest, oneshot::Sender<Result<(), String>>);

/// Hands appends to the batching task; cheap to clone.
#[derive(Clone)]
pub struct TurnWriter {
    tx: mpsc::UnboundedSender<Pending>,
}

impl TurnWriter {
    /// Starts the batching task; it ends when every writer is dropped.
    pub fn start(client: Arc<ControlPlaneClient>, deadline: Duration) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(client, deadline, rx));
        Self { tx }
    }

    /// Appends the turns; returns once they are committed, or why not.
    pub async fn append(&self, request: cp::AppendTurnsRequest) -> Result<(), String> {
        let (done, result) = oneshot::channel();
        self.tx
            .send((request, done))
            .map_err(|_| "the gateway is stopping".to_owned())?;
        result
            .await
            .unwrap_or_else(|_| Err("the turn writer stopped".into()))
    }
}

async fn run(
    client: Arc<ControlPlaneClient>,
    deadline: Duration,
    mut rx: mpsc::UnboundedReceiver<Pending>,
) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MOST_PER_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let (appends, waiters): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let sent = client
            .send_for(
                deadline,
                cp::AppendTurnsBatchRequest { appends },
                |mut c, req| async move { c.append_turns_batch(req).await },
            )
            .await;
        match sent {
            Ok(reply) => {
                let mut results = reply.results.into_iter();
                for waiter in waiters {
                    let result = match results.next() {
                        Some(r) if r.error.is_empty() => Ok(()),
                        Some(r) => Err(r.error),
                        None => Err("the control plane answered fewer appends than sent".into()),
                    };
                    let _ = waiter.send(result);
                }
            }
            Err(status) => {
                for waiter in waiters {
                    let _ = waiter.send(Err(status.message().to_owned()));
                }
            }
        }
    }
}
