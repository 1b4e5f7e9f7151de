//! The bulkhead gateway: authentication, admission against quota allowances,
//! KV-affine routing to workers, and the OpenAI-compatible API for tenants
//! (see DESIGN.md section 3).
//!
//! Not built yet: this crate is empty on purpose, and no command of the
//! `bulkhead` binary pretends to run a gateway until it is.
