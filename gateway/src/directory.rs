//! What a gateway knows of the cluster: tenants, API keys (by hash) and the
//! workers, kept current by following the control plane's watch stream. A
//! change (a revoked key, a new worker, a tenant's new limits) reaches every
//! gateway within one watch round trip; requests read this cache, never the
//! control plane, on their way in.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bulkhead_client::ControlPlaneClient;
use bulkhead_client::hash_secret;
use bulkhead_proto::control as pb;
use futures::{FutureExt, StreamExt};
use tokio::sync::watch;

#[derive(Default)]
struct Known {
    version: u64,
    tenants: HashMap<String, Arc<pb::Tenant>>,
    /// key hash -> key
    keys: HashMap<String, pb::ApiKey>,
    /// key id -> key hash
    key_hashes: HashMap<String, String>,
    workers: HashMap<String, pb::WorkerInfo>,
}

/// Whether `worker` has loaded `model` (with `adapter`, when not empty).
fn serves(worker: &pb::WorkerInfo, model: &str, adapter: &str) -> bool {
    worker.models.iter().any(|m| m == model)
        && (adapter.is_empty()
            || worker
                .adapters
                .iter()
                .any(|a| a.strip_prefix(model).and_then(|r| r.strip_prefix(':')) == Some(adapter)))
}

/// Whether a model can take requests, as the API reports it.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct ModelStatus {
    /// `ready`, `loading` or `unavailable`.
    pub state: &'static str,
    /// 0.0 to 1.0 (1.0 when ready).
    pub progress: f32,
}

/// The caller a valid key names.
#[derive(Debug, Clone)]
pub struct Caller {
    pub tenant: Arc<pb::Tenant>,
    pub key_id: String,
    /// Set for a user's key: the caller acts as this user only and reaches
    /// only this user's sessions.
    pub user: Option<bulkhead_proto::UserId>,
}

impl Caller {
    /// The user whose sessions alone this caller may reach, as the control
    /// plane's `owner` fields take it: empty for a tenant-wide key.
    pub fn owner(&self) -> String {
        self.user
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
    }
}

pub struct Directory {
    known: RwLock<Known>,
    synced: watch::Sender<bool>,
}

impl Default for Directory {
    fn default() -> Self {
        Self {
            known: RwLock::new(Known::default()),
            synced: watch::channel(false).0,
        }
    }
}

impl Directory {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Known> {
        self.known.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the first full state has arrived.
    pub fn is_synced(&self) -> bool {
        *self.synced.borrow()
    }

    /// Waits until the first full state has arrived.
    pub async fn synced(&self) {
        let mut rx = self.synced.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// The tenant a plaintext key belongs to, if the key exists and is not
    /// revoked.
    pub fn authenticate(&self, plaintext: &str) -> Option<Caller> {
        let hash = hash_secret(plaintext);
        let known = self.read();
        let key = known.keys.get(&hash)?;
        if key.revoked_at_ms != 0 {
            return None;
        }
        let tenant = known.tenants.get(&key.tenant_id)?;
        Some(Caller {
            tenant: Arc::clone(tenant),
            key_id: key.key_id.clone(),
            user: (!key.user_id.is_empty())
                .then(|| bulkhead_proto::UserId::new(&key.user_id).ok())
                .flatten(),
        })
    }

    pub fn tenant(&self, id: &str) -> Option<Arc<pb::Tenant>> {
        self.read().tenants.get(id).cloned()
    }

    /// Registered workers that serve `model` (with `adapter`, when not
    /// empty). A worker whose lease lapses is dropped by the control plane,
    /// which tells every watcher; renewals are not news.
    pub fn workers_for(&self, model: &str, adapter: &str) -> Vec<pb::WorkerInfo> {
        self.read()
            .workers
            .values()
            .filter(|w| serves(w, model, adapter))
            .cloned()
            .collect()
    }

    /// How far the furthest worker that is loading `model` has got (0.0 to
    /// 1.0), if one is.
    pub fn loading(&self, model: &str) -> Option<f32> {
        self.read()
            .workers
            .values()
            .flat_map(|w| &w.loading)
            .filter(|l| l.model == model)
            .map(|l| l.progress)
            .reduce(f32::max)
    }

    /// The model `tenant` uses: its own, else `default`, else the one model
    /// the fleet serves (or, while nothing is served yet, the one it loads).
    pub fn tenant_model(&self, tenant: &pb::Tenant, default: Option<&str>) -> Option<String> {
        if !tenant.model.is_empty() {
            return Some(tenant.model.clone());
        }
        if let Some(model) = default {
            return Some(model.to_owned());
        }
        let mut candidates = self.models_served();
        if candidates.is_empty() {
            candidates = self
                .read()
                .workers
                .values()
                .flat_map(|w| w.loading.iter().map(|l| l.model.clone()))
                .collect();
        }
        match (candidates.len(), candidates.pop_first()) {
            (1, Some(model)) => Some(model),
            _ => None,
        }
    }

    /// Whether `model` can take requests: `ready` (a worker serves it),
    /// `loading` (with the furthest worker's progress) or `unavailable`.
    pub fn model_status(&self, model: &str, adapter: &str) -> ModelStatus {
        let (state, progress) = if self
            .read()
            .workers
            .values()
            .any(|w| serves(w, model, adapter))
        {
            ("ready", 1.0)
        } else if let Some(progress) = self.loading(model) {
            ("loading", progress)
        } else {
            ("unavailable", 0.0)
        };
        ModelStatus { state, progress }
    }

    /// Every registered worker, loaded or loading, by id.
    pub fn workers(&self) -> Vec<pb::WorkerInfo> {
        let mut all: Vec<_> = self.read().workers.values().cloned().collect();
        all.sort_by(|a, b| a.worker_id.cmp(&b.worker_id));
        all
    }

    /// Every model some live worker serves.
    pub fn models_served(&self) -> BTreeSet<String> {
        self.read()
            .workers
            .values()
            .flat_map(|w| w.models.iter().cloned())
            .collect()
    }

    fn apply(&self, event: pb::WatchEvent) {
        use pb::watch_event::Change;
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        if event.reset {
            *known = Known::default();
        }
        known.version = known.version.max(event.version);
        match event.change {
            Some(Change::Tenant(t)) => {
                known.tenants.insert(t.id.clone(), Arc::new(t));
            }
            Some(Change::TenantDeleted(id)) => {
                known.tenants.remove(&id);
                let gone: Vec<String> = known
                    .keys
                    .iter()
                    .filter(|(_, k)| k.tenant_id == id)
                    .map(|(hash, _)| hash.clone())
                    .collect();
                for hash in gone {
                    if let Some(key) = known.keys.remove(&hash) {
                        known.key_hashes.remove(&key.key_id);
                    }
                }
            }
            Some(Change::Key(pb::KeyState {
                key: Some(key),
                hash,
            })) => {
                if let Some(old) = known.key_hashes.insert(key.key_id.clone(), hash.clone())
                    && old != hash
                {
                    known.keys.remove(&old);
                }
                known.keys.insert(hash, key);
            }
            Some(Change::Key(_)) | None => {}
            Some(Change::Worker(w)) => {
                known.workers.insert(w.worker_id.clone(), w);
            }
            Some(Change::WorkerGone(id)) => {
                known.workers.remove(&id);
            }
        }
    }

    fn version(&self) -> u64 {
        self.read().version
    }

    /// Follows the watch stream until `stop` says so: reconnects (to any node)
    /// from the last version seen, and the control plane resyncs it in full
    /// when that version is too old.
    pub async fn follow(
        self: Arc<Self>,
        client: Arc<ControlPlaneClient>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let from = self.version();
            let opened = client
                .member()
                .call(|mut c| {
                    let mut req = client.request(pb::WatchRequest { from_version: from });
                    // A watch lasts as long as the connection does.
                    req.metadata_mut().remove("grpc-timeout");
                    async move { c.watch(req).await }
                })
                .await;
            match opened {
                Ok(mut stream) => loop {
                    tokio::select! {
                        _ = stop.changed() => return,
                        item = stream.next() => match item {
                            Some(Ok(event)) => {
                                self.apply(event);
                                // A resync arrives as a burst: apply what is
                                // already here before answering from it.
                                while let Some(Some(Ok(event))) = stream.next().now_or_never() {
                                    self.apply(event);
                                }
                                backoff = Duration::from_millis(100);
                                self.synced.send_replace(true);
                            }
                            Some(Err(status)) => {
                                tracing::warn!(error = %status, "watch stream broke; reconnecting");
                                break;
                            }
                            None => break,
                        },
                    }
                },
                Err(status) => {
                    tracing::warn!(error = %status, "cannot open the watch stream; retrying");
                }
            }
            tokio::select! {
                _ = stop.changed() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}
