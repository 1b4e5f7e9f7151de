//! The real model the tests generate with. Self-contained (the worker crate
//! and std only) so the worker's tests include this same file.

use std::path::PathBuf;

/// The demo model that scripts/setup.sh caches.
pub fn demo_model() -> PathBuf {
    let path = bulkhead_worker::demo_model_path();
    assert!(
        path.is_file(),
        "demo model missing at {}: run scripts/setup.sh",
        path.display()
    );
    path
}
