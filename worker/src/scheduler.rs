//! Scheduling decisions of the engine: which waiting request gets the next
//! free slot, and how one step's prefill budget is split between prompts.
//!
//! Fairness is per tenant: a tenant with many requests in flight must never
//! starve a tenant with one, so the next request admitted is always from the
//! tenant with the fewest active requests (oldest first among equals), and
//! prefill tokens are shared equally between the prompts being prefilled.

use std::collections::HashMap;
use std::hash::Hash;

/// Index of the waiting request to admit next: fewest active requests of its
/// tenant first, then arrival order. `waiting` is (tenant, arrival) in any order.
pub fn pick_next<T: Eq + Hash>(waiting: &[(T, u64)], active: &HashMap<T, usize>) -> Option<usize> {
    waiting
        .iter()
        .enumerate()
        .min_by_key(|(_, (tenant, arrival))| (active.get(tenant).copied().unwrap_or(0), *arrival))
        .map(|(i, _)| i)
}

/// Splits `budget` prefill tokens between prompts that still need
/// `remaining[i]` tokens: equal shares, with what a short prompt leaves over
/// going to the others (water filling).
pub fn split_prefill(budget: usize, remaining: &[usize]) -> Vec<usize> {
    let mut share = vec![0; remaining.len()];
    let mut left = budget;
    loop {
        let open: Vec<usize> = (0..remaining.len())
            .filter(|&i| share[i] < remaining[i])
            .collect();
        if open.is_empty() || left == 0 {
            return share;
        }
        let each = (left / open.len()).max(1);
        for i in open {
            let give = each.min(remaining[i] - share[i]).min(left);
            share[i] += give;
            left -= give;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tenant_with_fewer_active_requests_goes_first() {
        let waiting = vec![("busy", 1), ("busy", 2), ("quiet", 3)];
        let active = HashMap::from([("busy", 5)]);
        assert_eq!(pick_next(&waiting, &active), Some(2));
        let active = HashMap::new();
        assert_eq!(pick_next(&waiting, &active), Some(0));
        assert_eq!(pick_next::<&str>(&[], &active), None);
    }

    #[test]
    fn prefill_budget_is_shared_and_never_exceeded() {
        assert_eq!(split_prefill(100, &[1000, 1000]), vec![50, 50]);
        assert_eq!(split_prefill(100, &[10, 1000]), vec![10, 90]);
        assert_eq!(split_prefill(100, &[10, 20]), vec![10, 20]);
        assert_eq!(split_prefill(2, &[5, 5, 5]), vec![1, 1, 0]);
        assert_eq!(split_prefill(0, &[5]), vec![0]);
    }
}
