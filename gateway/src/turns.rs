//! Group commit of session turns, and group reads of them.
//!
//! Every answer in a session appends its user and assistant turns to the
//! control plane before the answer is returned, so a turn the client has seen
//! is never lost, even if the gateway dies the next instant. One Raft entry
//! (and one fsync) per answer would bound a gateway's session traffic by the
//! log's write rate, so the appends that arrive while one batch is being
//! written wait and go together in the next one (`AppendTurnsBatch`). Reads
//! of a session's last turns do the same (`GetTurnsBatch`): one call and one
//! linearizable read for all the reads waiting. At low load a call goes
//! alone at once, at high load each carries many. A call is never delayed to
//! wait for company, and never answered before the control plane answers it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bulkhead_client::ControlPlaneClient;
use bulkhead_proto::control as cp;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

/// Most calls in one batch.
const MOST_PER_BATCH: usize = 256;

type Pending<Q, A> = (Q, oneshot::Sender<Result<A, Status>>);

/// Calls that wait together: while one batch is in flight, the calls that
/// arrive queue, and go as the next batch. Cheap to clone.
pub struct Batcher<Q, A> {
    tx: mpsc::UnboundedSender<Pending<Q, A>>,
}

impl<Q, A> Clone for Batcher<Q, A> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<Q: Send + 'static, A: Send + 'static> Batcher<Q, A> {
    /// Starts the batching task; `send` answers a batch, one result per call
    /// in order. The task ends when every handle is dropped.
    fn start<F, Fut>(mut send: F) -> Self
    where
        F: FnMut(Vec<Q>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<Result<A, Status>>> + Send,
    {
        let (tx, mut rx) = mpsc::unbounded_channel::<Pending<Q, A>>();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < MOST_PER_BATCH {
                    match rx.try_recv() {
                        Ok(p) => batch.push(p),
                        Err(_) => break,
                    }
                }
                let (calls, waiters): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
                let mut results = send(calls).await.into_iter();
                for waiter in waiters {
                    let result = results.next().unwrap_or_else(|| {
                        Err(Status::internal(
                            "the control plane answered fewer calls than sent",
                        ))
                    });
                    let _ = waiter.send(result);
                }
            }
        });
        Self { tx }
    }

    /// Makes the call; returns the control plane's answer to it.
    pub async fn call(&self, request: Q) -> Result<A, Status> {
        let (done, result) = oneshot::channel();
        self.tx
            .send((request, done))
            .map_err(|_| Status::unavailable("the gateway is stopping"))?;
        result
            .await
            .unwrap_or_else(|_| Err(Status::unavailable("the session batcher stopped")))
    }
}

/// Appends of turns, committed together.
pub type TurnWriter = Batcher<cp::AppendTurnsRequest, ()>;
/// Reads of sessions' last turns, made together.
pub type TurnReader = Batcher<cp::GetTurnsRequest, cp::TurnList>;

/// A transport failure answers every call of the batch.
fn each<A>(n: usize, status: &Status) -> Vec<Result<A, Status>> {
    (0..n).map(|_| Err(status.clone())).collect()
}

/// The writer of sessions' turns through `client`.
pub fn writer(client: Arc<ControlPlaneClient>, deadline: Duration) -> TurnWriter {
    Batcher::start(move |appends: Vec<cp::AppendTurnsRequest>| {
        let client = Arc::clone(&client);
        async move {
            let n = appends.len();
            match client
                .member()
                .send_for(
                    deadline,
                    cp::AppendTurnsBatchRequest { appends },
                    |mut c, req| async move { c.append_turns_batch(req).await },
                )
                .await
            {
                Ok(reply) => reply
                    .results
                    .into_iter()
                    .map(|r| {
                        if r.error.is_empty() {
                            Ok(())
                        } else {
                            Err(Status::aborted(r.error))
                        }
                    })
                    .collect(),
                Err(status) => each(n, &status),
            }
        }
    })
}

/// The reader of sessions' last turns through `client`.
pub fn reader(client: Arc<ControlPlaneClient>, deadline: Duration) -> TurnReader {
    Batcher::start(move |reads: Vec<cp::GetTurnsRequest>| {
        let client = Arc::clone(&client);
        async move {
            let n = reads.len();
            match client
                .member()
                .send_for(
                    deadline,
                    cp::GetTurnsBatchRequest {
                        reads: reads.clone(),
                    },
                    |mut c, req| async move { c.get_turns_batch(req).await },
                )
                .await
            {
                // A control plane from before group reads: one call each.
                Err(status) if status.code() == tonic::Code::Unimplemented => {
                    let mut answers = Vec::with_capacity(n);
                    for read in reads {
                        answers.push(
                            client
                                .member()
                                .send_for(deadline, read, |mut c, req| async move {
                                    c.get_turns(req).await
                                })
                                .await,
                        );
                    }
                    answers
                }
                Ok(reply) => reply
                    .results
                    .into_iter()
                    .map(|r| match r.turns {
                        Some(turns) => Ok(turns),
                        None => Err(Status::new(tonic::Code::from(r.code), r.error)),
                    })
                    .collect(),
                Err(status) => each(n, &status),
            }
        }
    })
}
