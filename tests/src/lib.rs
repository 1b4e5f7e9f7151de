//! Helpers for cross-component tests that launch the real `bulkhead` binary.
