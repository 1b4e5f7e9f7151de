//! Per-tenant rate limits on the calls that write to the control plane
//! outside admission: creating and deleting sessions, and resolving
//! `@shared:` snippets (each is a Raft entry). Admission bounds a tenant's
//! generation; without these, one tenant's key could fill the Raft log for
//! everyone. Each gateway keeps its own token bucket per tenant.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use crate::error::GatewayError;

/// Calls per second a tenant may make through one gateway, sustained.
pub const RATE_PER_SECOND: f64 = 20.0;
/// Calls a tenant may make at once after a quiet spell.
pub const BURST: f64 = 40.0;

#[derive(Debug, Default)]
pub struct Throttle {
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl Throttle {
    /// Takes one call from `tenant`'s bucket, or refuses with 429.
    pub fn take(&self, tenant: &str, what: &str) -> Result<(), GatewayError> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, at) = buckets.entry(tenant.to_owned()).or_insert((BURST, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * RATE_PER_SECOND).min(BURST);
        *at = now;
        if *tokens < 1.0 {
            return Err(GatewayError::Throttled(
                crate::i18n::Text::new("too-many-calls")
                    .arg("what", what)
                    .arg("tenant", tenant)
                    .arg("rate", RATE_PER_SECOND)
                    .arg("burst", BURST),
            ));
        }
        *tokens -= 1.0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_allowed_then_refused_per_tenant() {
        let t = Throttle::default();
        let allowed = (0..100).filter(|_| t.take("a", "session").is_ok()).count();
        // The burst, plus what refilled while the loop ran.
        assert!((40..=41).contains(&allowed), "{allowed}");
        let e = t.take("a", "session").unwrap_err();
        assert_eq!(e.status().as_u16(), 429);
        assert!(
            t.take("b", "session").is_ok(),
            "another tenant is not affected"
        );
    }
}
