//! KV slot bookkeeping: which (tenant, session) owns which device sequence,
//! what tokens its KV cache holds, and the host-memory tier that evicted
//! sessions move to.
//!
//! This module decides; the engine carries out the decisions on a llama.cpp
//! context. It must never let a request reuse, copy or even compare against
//! KV state of another tenant: every lookup here filters on the tenant first.
//! Within a tenant, a prefix is shared only within one scope (a user, unless
//! the tenant shares prefixes across its users): a donor's tokens would show
//! in `cached_tokens`, and so tell one user about another's conversation.

use std::collections::HashMap;

use bulkhead_proto::{SessionId, TenantId};

/// Who a device slot's KV state belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    pub tenant: TenantId,
    /// `None`: left by a one-off request. Its tokens may serve as a prefix
    /// donor for the same tenant, but it is never restored as a session.
    pub session: Option<SessionId>,
    /// Whose prefixes these are within the tenant (the request's `kv_scope`):
    /// only requests of the same scope may copy them.
    pub scope: String,
}

#[derive(Debug, Default)]
pub struct DeviceSlot<T> {
    pub owner: Option<Owner>,
    /// The tokens whose KV entries this sequence holds, positions 0..len.
    pub tokens: Vec<T>,
    pub last_used: u64,
    /// A request is generating on this slot.
    pub busy: bool,
}

/// How a request gets a device slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// The session's own slot, idle on the device.
    Resident(usize),
    /// A slot to (re)fill. `evict` is set when its current idle owner must
    /// leave first (to host memory if it is a session).
    Fresh { slot: usize, evict: bool },
}

pub fn common_prefix<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The device slots of one context (one model variant).
#[derive(Debug)]
pub struct SlotTable<T> {
    pub slots: Vec<DeviceSlot<T>>,
    clock: u64,
}

impl<T: PartialEq + Clone> SlotTable<T> {
    pub fn new(n: usize) -> Self {
        Self {
            slots: (0..n)
                .map(|_| DeviceSlot {
                    owner: None,
                    tokens: Vec::new(),
                    last_used: 0,
                    busy: false,
                })
                .collect(),
            clock: 0,
        }
    }

    pub fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    /// Where a request of `tenant` / `session` should run, or `None` when
    /// every slot is busy.
    pub fn place(&self, tenant: &TenantId, session: Option<&SessionId>) -> Option<Placement> {
        if let Some(session) = session {
            let own = self.slots.iter().enumerate().filter(|(_, s)| {
                !s.busy
                    && s.owner
                        .as_ref()
                        .is_some_and(|o| &o.tenant == tenant && o.session.as_ref() == Some(session))
            });
            if let Some((i, _)) = own.max_by_key(|(_, s)| s.last_used) {
                return Some(Placement::Resident(i));
            }
        }
        // Busy slots should stay contiguous: llama.cpp decodes runs of
        // consecutive sequence ids together, and each gap costs a separate
        // graph computation per step. So a slot next to a busy one goes first.
        let apart = |i: usize| {
            let busy = |j: Option<usize>| j.and_then(|j| self.slots.get(j)).is_some_and(|s| s.busy);
            !(busy(i.checked_sub(1)) || busy(Some(i + 1)))
        };
        if let Some((i, _)) = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.busy && s.owner.is_none())
            .min_by_key(|(i, _)| (apart(*i), *i))
        {
            return Some(Placement::Fresh {
                slot: i,
                evict: false,
            });
        }
        // Then the least recently used idle slot; one-off leftovers go before
        // sessions (a session's state moves to host memory and comes back).
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.busy)
            .min_by_key(|(i, s)| {
                (
                    apart(*i),
                    s.owner.as_ref().is_some_and(|o| o.session.is_some()),
                    s.last_used,
                )
            })
            .map(|(i, _)| Placement::Fresh {
                slot: i,
                evict: true,
            })
    }

    /// The idle slot of the same tenant and scope sharing the longest prefix
    /// with `prompt`, other than `exclude`. Only those slots are looked at.
    pub fn best_donor(
        &self,
        tenant: &TenantId,
        scope: &str,
        prompt: &[T],
        exclude: usize,
    ) -> Option<(usize, usize)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(i, s)| {
                *i != exclude
                    && !s.busy
                    && s.owner
                        .as_ref()
                        .is_some_and(|o| &o.tenant == tenant && o.scope == scope)
            })
            .map(|(i, s)| (i, common_prefix(&s.tokens, prompt)))
            .filter(|(_, n)| *n > 0)
            .max_by_key(|(_, n)| *n)
    }

    /// Marks `slot` as owned by `owner` and idle again; another idle slot that
    /// claimed the same session (two overlapping requests of one session) is
    /// downgraded to a one-off leftover, so a session has one resident slot.
    pub fn release(&mut self, slot: usize, owner: Owner) {
        let now = self.tick();
        if owner.session.is_some() {
            for (i, s) in self.slots.iter_mut().enumerate() {
                if i != slot
                    && !s.busy
                    && s.owner.as_ref() == Some(&owner)
                    && let Some(o) = s.owner.as_mut()
                {
                    o.session = None;
                }
            }
        }
        let s = &mut self.slots[slot];
        s.busy = false;
        s.owner = Some(owner);
        s.last_used = now;
    }
}

/// A session's KV state parked in host memory.
#[derive(Debug)]
pub struct HostEntry<S, T> {
    pub state: S,
    pub tokens: Vec<T>,
    pub bytes: u64,
    last_used: u64,
}

/// Host-memory tier for evicted sessions, bounded by a byte budget; past it
/// the least recently parked sessions are dropped (they recompute next time).
#[derive(Debug)]
pub struct HostCache<K, S, T> {
    entries: HashMap<K, HostEntry<S, T>>,
    budget: u64,
    used: u64,
    clock: u64,
}

impl<K: std::hash::Hash + Eq + Clone, S, T> HostCache<K, S, T> {
    pub fn new(budget: u64) -> Self {
        Self {
            entries: HashMap::new(),
            budget,
            used: 0,
            clock: 0,
        }
    }

    /// Parks a state; returns false when it alone exceeds the budget.
    pub fn insert(&mut self, key: K, state: S, tokens: Vec<T>, bytes: u64) -> bool {
        self.remove(&key);
        if bytes > self.budget {
            return false;
        }
        while self.used + bytes > self.budget {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.remove(&oldest);
        }
        self.clock += 1;
        self.used += bytes;
        self.entries.insert(
            key,
            HostEntry {
                state,
                tokens,
                bytes,
                last_used: self.clock,
            },
        );
        true
    }

    pub fn remove(&mut self, key: &K) -> Option<HostEntry<S, T>> {
        let entry = self.entries.remove(key)?;
        self.used -= entry.bytes;
        Some(entry)
    }

    pub fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn used_bytes(&self) -> u64 {
        self.used
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &HostEntry<S, T>)> {
        self.entries.iter()
    }

    /// Keeps only the entries whose key `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        let used = &mut self.used;
        self.entries.retain(|k, e| {
            let kept = keep(k);
            if !kept {
                *used -= e.bytes;
            }
            kept
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(s: &str) -> TenantId {
        TenantId::new(s).unwrap_or_else(|e| panic!("{e}"))
    }
    fn session(s: &str) -> SessionId {
        SessionId::new(s).unwrap_or_else(|e| panic!("{e}"))
    }
    fn owner(t: &str, s: Option<&str>) -> Owner {
        Owner {
            tenant: tenant(t),
            session: s.map(session),
            scope: String::new(),
        }
    }

    #[test]
    fn a_returning_session_finds_its_own_slot() {
        let mut table = SlotTable::<u32>::new(2);
        assert_eq!(
            table.place(&tenant("a"), Some(&session("s1"))),
            Some(Placement::Fresh {
                slot: 0,
                evict: false
            })
        );
        table.slots[0].busy = true;
        table.slots[0].tokens = vec![1, 2, 3];
        table.release(0, owner("a", Some("s1")));
        assert_eq!(
            table.place(&tenant("a"), Some(&session("s1"))),
            Some(Placement::Resident(0))
        );
        // Same session id under another tenant is another session.
        assert_eq!(
            table.place(&tenant("b"), Some(&session("s1"))),
            Some(Placement::Fresh {
                slot: 1,
                evict: false
            })
        );
    }

    #[test]
    fn donors_never_cross_tenants() {
        let mut table = SlotTable::<u32>::new(3);
        table.slots[0].tokens = vec![1, 2, 3, 4];
        table.release(0, owner("a", None));
        table.slots[1].tokens = vec![1, 2, 3, 4, 5];
        table.release(1, owner("b", Some("x")));
        assert_eq!(
            table.best_donor(&tenant("a"), "", &[1, 2, 3, 4, 5], 2),
            Some((0, 4))
        );
        assert_eq!(
            table.best_donor(&tenant("c"), "", &[1, 2, 3, 4, 5], 2),
            None
        );
    }

    #[test]
    fn donors_never_cross_scopes_within_a_tenant() {
        let mut table = SlotTable::<u32>::new(3);
        table.slots[0].tokens = vec![1, 2, 3, 4];
        table.release(
            0,
            Owner {
                scope: "alice".into(),
                ..owner("a", None)
            },
        );
        let prompt = [1, 2, 3, 4, 5];
        assert_eq!(table.best_donor(&tenant("a"), "bob", &prompt, 2), None);
        assert_eq!(table.best_donor(&tenant("a"), "", &prompt, 2), None);
        assert_eq!(
            table.best_donor(&tenant("a"), "alice", &prompt, 2),
            Some((0, 4))
        );
    }

    #[test]
    fn eviction_takes_the_least_recently_used_idle_slot_and_prefers_one_offs() {
        let mut table = SlotTable::<u32>::new(3);
        table.release(0, owner("a", Some("old")));
        table.release(1, owner("a", None));
        table.release(2, owner("a", Some("new")));
        assert_eq!(
            table.place(&tenant("b"), None),
            Some(Placement::Fresh {
                slot: 1,
                evict: true
            })
        );
        table.slots[1].busy = true;
        assert_eq!(
            table.place(&tenant("b"), None),
            Some(Placement::Fresh {
                slot: 0,
                evict: true
            })
        );
        table.slots[0].busy = true;
        table.slots[2].busy = true;
        assert_eq!(table.place(&tenant("b"), None), None);
    }

    #[test]
    fn new_requests_land_next_to_running_ones() {
        let mut table = SlotTable::<u32>::new(6);
        for i in 0..6 {
            table.release(i, owner("a", Some(&format!("s{i}"))));
        }
        // s0 is the least recently used, but slots 2 and 4 sit next to the busy
        // slot 3, and slot 2 is the older of those.
        table.slots[3].busy = true;
        assert_eq!(
            table.place(&tenant("b"), None),
            Some(Placement::Fresh {
                slot: 2,
                evict: true
            })
        );
        let mut table = SlotTable::<u32>::new(6);
        table.slots[4].busy = true;
        assert_eq!(
            table.place(&tenant("b"), None),
            Some(Placement::Fresh {
                slot: 3,
                evict: false
            }),
            "a free slot next to a busy one before the lowest free slot"
        );
    }

    #[test]
    fn host_cache_keeps_to_its_budget_dropping_the_oldest() {
        let mut cache = HostCache::<&str, (), u32>::new(100);
        assert!(cache.insert("a", (), vec![], 40));
        assert!(cache.insert("b", (), vec![], 40));
        assert!(cache.insert("c", (), vec![], 40));
        assert!(!cache.contains(&"a"));
        assert!(cache.contains(&"b") && cache.contains(&"c"));
        assert_eq!(cache.used_bytes(), 80);
        assert!(!cache.insert("huge", (), vec![], 101));
        assert!(cache.remove(&"b").is_some());
        assert_eq!(cache.used_bytes(), 40);
    }
}
