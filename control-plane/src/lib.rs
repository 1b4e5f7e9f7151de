//! The bulkhead control plane: the Raft-replicated store (openraft + redb) of
//! tenants, API keys, sessions, the worker registry and the global quota
//! ledger (see DESIGN.md sections 1, 4, 5, 6).
//!
//! Not built yet: this crate is empty on purpose, and no command of the
//! `bulkhead` binary pretends to run a control plane until it is.
