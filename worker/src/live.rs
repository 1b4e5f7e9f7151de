//! Models loaded and unloaded while the worker serves, as the control plane
//! places them.
//!
//! Each registration reply names the models this worker should load (a
//! tenant uses them, nobody serves them, and this worker has the file and
//! the most room) and its models no tenant uses. A model to load is read from
//! the model directories with the same progress reports as at start-up; when
//! the memory budget lacks room, unneeded models are taken out of the catalog
//! first and their memory waited for. Pinned (start-up) models are never
//! unloaded. This module never decides placement: the control plane does.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bulkhead_proto::control as pb;
use tokio::sync::watch;

use crate::catalog::{Catalog, CatalogModel, LoadProgress};

/// How long a model whose load failed is not tried again.
const RETRY_AFTER: Duration = Duration::from_secs(60);
/// How long an unloaded model's last requests may take to finish before the
/// load goes ahead regardless.
const FREE_WAIT: Duration = Duration::from_secs(60);

/// Follows the registration replies in `replies` until `stop` resolves.
pub async fn follow(
    catalog: Arc<Catalog>,
    progress: LoadProgress,
    mut replies: watch::Receiver<pb::RegisterWorkerReply>,
    stop: impl Future<Output = ()>,
) {
    let mut failed: HashMap<String, Instant> = HashMap::new();
    let work = async {
        while replies.changed().await.is_ok() {
            let reply = replies.borrow_and_update().clone();
            for name in &reply.load {
                if catalog.get(name).is_some()
                    || failed
                        .get(name)
                        .is_some_and(|at| at.elapsed() < RETRY_AFTER)
                {
                    continue;
                }
                let Some((_, bytes)) = catalog.files().remove(name) else {
                    tracing::warn!(model = %name, "told to load a model whose file is not in the model directories");
                    continue;
                };
                if !make_room(&catalog, bytes, name, &reply.unneeded).await {
                    continue;
                }
                if load(&catalog, &progress, name).await {
                    failed.remove(name);
                } else {
                    failed.insert(name.clone(), Instant::now());
                }
            }
        }
    };
    tokio::select! {
        () = work => {}
        () = stop => {}
    }
}

/// Loads `name`, reporting progress meanwhile; whether it loaded.
async fn load(catalog: &Arc<Catalog>, progress: &LoadProgress, name: &str) -> bool {
    tracing::info!(model = %name, "loading a model a tenant uses");
    progress.begin(name);
    let started = Instant::now();
    let (task_catalog, task_progress, task_name) =
        (Arc::clone(catalog), progress.clone(), name.to_owned());
    let result =
        tokio::task::spawn_blocking(move || task_catalog.load_file(&task_name, &task_progress))
            .await;
    progress.finish(name);
    match result {
        Ok(Ok(())) => {
            tracing::info!(model = %name, seconds = started.elapsed().as_secs_f32(), "model loaded");
            true
        }
        Ok(Err(e)) => {
            tracing::error!(model = %name, error = %e, "loading the model failed");
            false
        }
        Err(e) => {
            tracing::error!(model = %name, error = %e, "loading the model panicked");
            false
        }
    }
}

/// Frees unneeded, unpinned models until `bytes` more fit the budget; false
/// when they cannot.
async fn make_room(catalog: &Catalog, bytes: u64, for_model: &str, unneeded: &[String]) -> bool {
    let budget = catalog.settings().memory_budget;
    let mut freeing: Vec<Weak<CatalogModel>> = Vec::new();
    let mut held = catalog.bytes();
    for name in unneeded {
        if held.saturating_add(bytes) <= budget {
            break;
        }
        let Some(model) = catalog.get(name).filter(|m| !m.pinned) else {
            continue;
        };
        held = held.saturating_sub(model.bytes);
        drop(model);
        if let Some(gone) = catalog.remove(name) {
            tracing::info!(model = %name, to_load = %for_model, "unloading a model no tenant uses, to make room");
            freeing.push(gone);
        }
    }
    if held.saturating_add(bytes) > budget {
        tracing::warn!(model = %for_model, bytes, budget, held, "no room to load the model");
        return false;
    }
    // The engine drops an unloaded model's contexts once its last requests finish.
    let since = Instant::now();
    while freeing.iter().any(|w| w.strong_count() > 0) && since.elapsed() < FREE_WAIT {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    true
}
