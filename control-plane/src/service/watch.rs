//! The watch stream: a full snapshot of tenants, keys and workers, then
//! every change in version order, resumable from a version.

use bulkhead_proto::control as pb;
use tonic::Status;

use crate::error::ControlPlaneError;
use crate::storage::StateMachine;
use crate::store::View;

use super::*;

/// Everything a watcher caches, as one resync: a `reset` marker first.
pub(super) fn full_state(view: &View) -> Result<(u64, Vec<pb::WatchEvent>)> {
    use pb::watch_event::Change as C;
    let version = view.version()?;
    let mut events = vec![pb::WatchEvent {
        version,
        reset: true,
        change: None,
    }];
    let at = |change| pb::WatchEvent {
        version,
        reset: false,
        change: Some(change),
    };
    events.extend(
        view.tenants()?
            .into_iter()
            .map(|t| at(C::Tenant(tenant_to_pb(t)))),
    );
    events.extend(
        view.all_keys()?
            .into_iter()
            .map(|k| at(C::Key(key_state(k)))),
    );
    events.extend(
        view.workers()?
            .into_iter()
            .map(|w| at(C::Worker(worker_to_pb(w)))),
    );
    Ok((version, events))
}

/// Feeds one watcher until it goes away, or until the credential (hash)
/// that opened the stream is revoked.
pub(super) async fn watch_loop(
    sm: StateMachine,
    from: u64,
    holder: Option<String>,
    tx: tokio::sync::mpsc::Sender<Result<pb::WatchEvent, Status>>,
) {
    let mut applied = sm.applied();
    let mut at = from;
    let mut first = true;
    loop {
        if let Some(hash) = &holder {
            let in_force = sm
                .view()
                .and_then(|v| crate::credentials::by_hash(&v, hash))
                .map(|c| c.is_some());
            if !matches!(in_force, Ok(true)) {
                let _ = tx
                    .send(Err(Status::unauthenticated(
                        "the credential that opened this stream was revoked",
                    )))
                    .await;
                return;
            }
        }
        let batch = sm.view().map_err(ControlPlaneError::from).and_then(|view| {
            if first && at == 0 {
                return full_state(&view);
            }
            match view.changes_after(at)? {
                Some(changes) => {
                    let last = changes.last().map_or(at, |(v, _)| *v);
                    Ok((
                        last,
                        changes
                            .into_iter()
                            .map(|(v, c)| change_to_pb(v, c))
                            .collect(),
                    ))
                }
                None => full_state(&view),
            }
        });
        first = false;
        match batch {
            Ok((version, events)) => {
                for event in events {
                    if tx.send(Ok(event)).await.is_err() {
                        return;
                    }
                }
                at = version;
            }
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        }
        tokio::select! {
            changed = applied.changed() => if changed.is_err() { return },
            () = tx.closed() => return,
        }
    }
}
