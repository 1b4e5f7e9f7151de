//! Routing: among the workers that serve a tenant's model variant, the one
//! with the highest rendezvous score for (tenant, session) first, so every
//! gateway sends a session to the worker that holds its KV slot, and a
//! worker's failure moves only its own sessions.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use bulkhead_proto::Credential;
use bulkhead_proto::control as cp;
use bulkhead_proto::worker as pb;
use bulkhead_proto::worker::worker_client::WorkerClient;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

/// 64-bit FNV-1a with MurmurHash3's finalizer (FNV alone mixes the last bytes
/// poorly into the high bits): stable across processes and versions, which
/// rendezvous hashing needs (every gateway must compute the same order).
fn score(parts: &[&str]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.bytes().chain(std::iter::once(0xff)) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

/// `workers` ordered by preference for `(tenant, affinity)`.
pub fn rank(tenant: &str, affinity: &str, mut workers: Vec<cp::WorkerInfo>) -> Vec<cp::WorkerInfo> {
    workers.sort_by_cached_key(|w| {
        std::cmp::Reverse((
            score(&[tenant, affinity, &w.worker_id]),
            w.worker_id.clone(),
        ))
    });
    workers
}

/// Connections to workers, one channel per address, reused by every request.
pub struct Workers {
    credential: Credential,
    channels: Mutex<HashMap<String, Channel>>,
}

/// Calls a worker, retrying for up to 3 s while it refuses this gateway's
/// credential: a worker learns of a new gateway credential with its next
/// registration reply, which a refused call hastens.
async fn admitted<T, F, Fut>(call: F) -> Result<T, Status>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut delay = Duration::from_millis(50);
    loop {
        match call().await {
            Err(status)
                if refused_credential(&status)
                    && tokio::time::Instant::now() + delay < deadline =>
            {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(500));
            }
            other => return other,
        }
    }
}

/// Whether a worker refused this gateway's credential.
fn refused_credential(status: &Status) -> bool {
    status.code() == Code::Unauthenticated
        && status
            .metadata()
            .get(bulkhead_proto::ERROR_CODE_METADATA)
            .is_some_and(|v| v.as_bytes() == bulkhead_proto::auth::INVALID_CREDENTIAL.as_bytes())
}

/// Whether an error means the worker never took the request (it cannot be
/// reached, or it is shutting down), so the next worker may.
fn unreachable(status: &Status) -> bool {
    status.code() == Code::Unavailable
}

impl Workers {
    /// `credential`: the gateway's own, which workers check.
    pub fn new(credential: Credential) -> Self {
        Self {
            credential,
            channels: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, addr: &str) -> Result<WorkerClient<Channel>, Status> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(addr) {
            return Ok(WorkerClient::new(channel.clone()));
        }
        let endpoint = bulkhead_client::endpoint(addr)
            .map_err(|e| Status::unavailable(format!("bad worker address {addr:?}: {e}")))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let channel = endpoint.connect_lazy();
        channels.insert(addr.to_owned(), channel.clone());
        Ok(WorkerClient::new(channel))
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(message);
        self.credential.attach(&mut req);
        req
    }

    /// Starts generation on the first worker of `ranked` that takes it.
    /// Returns the stream, the worker's id, and how many workers failed first.
    pub async fn generate(
        &self,
        ranked: &[cp::WorkerInfo],
        request: &pb::GenerateRequest,
    ) -> Result<(Streaming<pb::GenerateResponse>, String, u32), Status> {
        let mut last = Status::unavailable("no worker serves this tenant's model right now");
        let mut failed = 0;
        for worker in ranked {
            let result = admitted(|| async {
                self.client(&worker.addr)?
                    .generate(self.request(request.clone()))
                    .await
            })
            .await;
            match result {
                Ok(stream) => return Ok((stream.into_inner(), worker.worker_id.clone(), failed)),
                Err(status) if unreachable(&status) => {
                    tracing::warn!(worker = %worker.worker_id, addr = %worker.addr, error = %status, "worker unreachable; trying the next");
                    failed += 1;
                    last = status;
                }
                Err(status) => return Err(status),
            }
        }
        Err(last)
    }

    /// One worker's live numbers (slots, KV memory per tenant, tokens/s).
    pub async fn stats(&self, worker: &cp::WorkerInfo) -> Result<pb::StatsResponse, Status> {
        admitted(|| async {
            let mut req = self.request(pb::StatsRequest {});
            req.set_timeout(Duration::from_secs(2));
            Ok(self.client(&worker.addr)?.stats(req).await?.into_inner())
        })
        .await
    }

    /// The exact prompt token count, from the first worker that answers.
    pub async fn count_tokens(
        &self,
        ranked: &[cp::WorkerInfo],
        request: &pb::CountTokensRequest,
    ) -> Result<pb::CountTokensResponse, Status> {
        let mut last = Status::unavailable("no worker serves this tenant's model right now");
        for worker in ranked {
            let result = admitted(|| async {
                self.client(&worker.addr)?
                    .count_tokens(self.request(request.clone()))
                    .await
            })
            .await;
            match result {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) if unreachable(&status) => last = status,
                Err(status) => return Err(status),
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(id: &str) -> cp::WorkerInfo {
        cp::WorkerInfo {
            worker_id: id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_session_keeps_its_worker_when_another_worker_leaves() {
        let all: Vec<_> = ["w1", "w2", "w3", "w4"].into_iter().map(worker).collect();
        let mut moved = 0;
        for s in 0..200 {
            let session = format!("s{s}");
            let first = rank("acme", &session, all.clone())[0].worker_id.clone();
            let order: Vec<_> = rank("acme", &session, all.clone())
                .into_iter()
                .map(|w| w.worker_id)
                .collect();
            // The same inputs give the same order (every gateway agrees).
            assert_eq!(order[0], first);
            let without_w4: Vec<_> = all
                .iter()
                .filter(|w| w.worker_id != "w4")
                .cloned()
                .collect();
            let next = rank("acme", &session, without_w4)[0].worker_id.clone();
            if first == "w4" {
                // The session moves to its second choice.
                assert_eq!(next, order[1]);
            } else {
                assert_eq!(next, first);
            }
            moved += usize::from(first != next);
        }
        // Roughly a quarter of the sessions lived on w4.
        assert!((20..=80).contains(&moved), "{moved} of 200 moved");
    }
}
