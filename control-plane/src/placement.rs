//! Which worker loads a model that tenants use but nobody serves, and which
//! loaded models nobody needs any more.
//!
//! Computed from the registry and the tenants on every worker registration,
//! so it needs no state of its own: a model a tenant names, that no live
//! worker serves or is loading, goes to the live worker that has its file and
//! the most room for it once unneeded models are freed. Every worker asking
//! gets the same answer, so only the chosen one loads; once it registers the
//! model as loading, nobody else is chosen.

use std::collections::BTreeSet;

use crate::state::{TenantRecord, WorkerRecord};

/// What one worker is told when it registers.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// Models to load now.
    pub load: Vec<String>,
    /// Its loaded models, not pinned, that no tenant uses.
    pub unneeded: Vec<String>,
}

/// The placement for `worker_id` among `workers` (live ones; the worker
/// itself included, as just registered).
pub fn place(worker_id: &str, workers: &[WorkerRecord], tenants: &[TenantRecord]) -> Placement {
    let wanted: BTreeSet<&str> = tenants
        .iter()
        .map(|t| t.model.as_str())
        .filter(|m| !m.is_empty())
        .collect();
    let Some(me) = workers.iter().find(|w| w.worker_id == worker_id) else {
        return Placement::default();
    };
    let unneeded = |w: &WorkerRecord| -> Vec<String> {
        w.models
            .iter()
            .filter(|m| !wanted.contains(m.as_str()) && !w.pinned.contains(m))
            .cloned()
            .collect()
    };
    // Bytes a worker would have free once its unneeded models are gone.
    let room = |w: &WorkerRecord| -> u64 {
        let held: u64 = w
            .model_bytes
            .iter()
            .filter(|(m, _)| wanted.contains(m.as_str()) || w.pinned.contains(m))
            .map(|(_, b)| *b)
            .sum();
        let loading: u64 = w.loading.iter().filter_map(|(m, _)| w.files.get(m)).sum();
        w.memory_budget.saturating_sub(held.saturating_add(loading))
    };
    let mut load = Vec::new();
    for model in &wanted {
        let covered = workers.iter().any(|w| {
            w.models.iter().any(|m| m == model) || w.loading.iter().any(|(m, _)| m == model)
        });
        if covered {
            continue;
        }
        let chosen = workers
            .iter()
            .filter_map(|w| {
                let bytes = *w.files.get(*model)?;
                room(w).checked_sub(bytes).map(|left| (left, &w.worker_id))
            })
            // The most room left; the smallest id among equals.
            .max_by(|a, b| a.0.cmp(&b.0).then_with(|| b.1.cmp(a.1)));
        if chosen.is_some_and(|(_, id)| id == &me.worker_id) {
            load.push((*model).to_owned());
        }
    }
    Placement {
        load,
        unneeded: unneeded(me),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(
        id: &str,
        budget: u64,
        files: &[(&str, u64)],
        models: &[(&str, u64)],
    ) -> WorkerRecord {
        WorkerRecord {
            worker_id: id.into(),
            addr: format!("{id}:1"),
            models: models.iter().map(|(m, _)| (*m).to_owned()).collect(),
            adapters: Vec::new(),
            slots: 4,
            expires_at_ms: i64::MAX,
            loading: Vec::new(),
            context_windows: Default::default(),
            devices: Vec::new(),
            files: files.iter().map(|(m, b)| ((*m).to_owned(), *b)).collect(),
            model_bytes: models.iter().map(|(m, b)| ((*m).to_owned(), *b)).collect(),
            pinned: Vec::new(),
            memory_budget: budget,
        }
    }

    fn tenant(id: &str, model: &str) -> TenantRecord {
        TenantRecord {
            id: id.into(),
            model: model.into(),
            ..TenantRecord::default()
        }
    }

    #[test]
    fn a_model_nobody_serves_goes_to_the_worker_with_the_most_room() {
        let workers = [
            worker("w1", 100, &[("a", 40), ("b", 40)], &[("a", 40)]),
            worker("w2", 100, &[("b", 40)], &[]),
            worker("w3", 30, &[("b", 40)], &[]),
        ];
        let tenants = [tenant("t1", "a"), tenant("t2", "b")];
        assert_eq!(place("w1", &workers, &tenants), Placement::default());
        assert_eq!(place("w2", &workers, &tenants).load, vec!["b".to_owned()]);
        assert_eq!(place("w3", &workers, &tenants), Placement::default());
    }

    #[test]
    fn unused_models_are_named_and_count_as_room_but_pinned_ones_do_not() {
        let mut w = worker("w1", 50, &[("a", 40), ("b", 40)], &[("a", 40)]);
        let tenants = [tenant("t1", "b")];
        let p = place("w1", std::slice::from_ref(&w), &tenants);
        assert_eq!(p.load, vec!["b".to_owned()]);
        assert_eq!(p.unneeded, vec!["a".to_owned()]);
        w.pinned = vec!["a".into()];
        let p = place("w1", std::slice::from_ref(&w), &tenants);
        assert_eq!(
            p,
            Placement::default(),
            "a pinned model is kept, so b does not fit"
        );
    }

    #[test]
    fn a_model_being_loaded_is_not_given_to_a_second_worker() {
        let mut w1 = worker("w1", 100, &[("b", 40)], &[]);
        w1.loading = vec![("b".into(), 300)];
        let w2 = worker("w2", 100, &[("b", 40)], &[]);
        let tenants = [tenant("t", "b")];
        assert_eq!(place("w2", &[w1, w2], &tenants), Placement::default());
    }

    #[test]
    fn equal_room_goes_to_the_smallest_id() {
        let workers = [
            worker("w2", 100, &[("b", 40)], &[]),
            worker("w1", 100, &[("b", 40)], &[]),
        ];
        let tenants = [tenant("t", "b")];
        assert_eq!(place("w1", &workers, &tenants).load, vec!["b".to_owned()]);
        assert!(place("w2", &workers, &tenants).load.is_empty());
    }
}
