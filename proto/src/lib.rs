//! Wire types shared by every bulkhead component: the generated gRPC code, the
//! usage event, and the id newtypes that keep tenants, sessions and workers apart.
//!
//! Nothing here holds state or does I/O; conversions between domain and wire
//! types live next to the wire type they convert.

pub mod auth;
pub mod clock;
#[cfg(any(test, feature = "fuzz"))]
pub mod fuzz;
pub mod ids;
pub mod json;
pub mod openai;
pub mod tools;
pub mod usage;

/// Generated code, nested as the proto packages are (`bulkhead.worker.v1`,
/// `bulkhead.control.v1`) so that cross-package references resolve.
pub mod generated {
    pub mod bulkhead {
        pub mod worker {
            pub mod v1 {
                #![allow(clippy::all, clippy::pedantic, missing_docs)]
                tonic::include_proto!("bulkhead.worker.v1");
            }
        }
        pub mod control {
            pub mod v1 {
                #![allow(clippy::all, clippy::pedantic, missing_docs)]
                tonic::include_proto!("bulkhead.control.v1");
            }
        }
    }
}

/// The control plane's services (`proto/control.proto`).
pub use generated::bulkhead::control::v1 as control;
/// The worker's service and the usage event (`proto/worker.proto`).
pub use generated::bulkhead::worker::v1 as worker;

pub use auth::{ClusterSecret, Credential};
pub use ids::{EventId, GatewayId, IdError, RequestId, SessionId, TenantId, UserId, WorkerId};

/// The JetStream stream that carries usage events.
pub const USAGE_STREAM: &str = "BULKHEAD_USAGE";
/// gRPC metadata key of an error's machine-readable code (OpenAI's
/// `error.code`, such as `adapter_not_found`), so that a caller never has to
/// read the message text to tell errors apart.
pub const ERROR_CODE_METADATA: &str = "x-bulkhead-error-code";
/// gRPC metadata key of the request field an `InvalidArgument` is about
/// (OpenAI's `error.param`), so that no caller reads it from the message.
pub const ERROR_PARAM_METADATA: &str = "x-bulkhead-error-param";
/// Subject prefix of usage events; the tenant id follows.
pub const USAGE_SUBJECT_PREFIX: &str = "bulkhead.usage";

/// `Debug` of the messages that carry a secret: the secret prints as
/// `<redacted>`.
mod redacted {
    use std::fmt;

    use crate::control::{
        AuthenticateRequest, CreatedCredential, CreatedKey, CreatedWebhook, WebhookSpec,
    };

    const REDACTED: &str = "<redacted>";

    impl fmt::Debug for CreatedKey {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("CreatedKey")
                .field("key", &self.key)
                .field("plaintext", &REDACTED)
                .finish()
        }
    }

    impl fmt::Debug for AuthenticateRequest {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("AuthenticateRequest")
                .field("plaintext", &REDACTED)
                .finish()
        }
    }

    impl fmt::Debug for CreatedWebhook {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("CreatedWebhook")
                .field("webhook", &self.webhook)
                .field("secret", &REDACTED)
                .finish()
        }
    }

    impl fmt::Debug for CreatedCredential {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("CreatedCredential")
                .field("credential", &self.credential)
                .field("secret", &REDACTED)
                .finish()
        }
    }

    impl fmt::Debug for WebhookSpec {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("WebhookSpec")
                .field("url", &self.url)
                .field("events", &self.events)
                .field("secret", &REDACTED)
                .finish()
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn secrets_do_not_print() {
            let k = CreatedKey {
                key: None,
                plaintext: "bk_secret".into(),
            };
            let w = WebhookSpec {
                url: "https://x".into(),
                events: vec![],
                secret: "whsec_secret".into(),
            };
            for text in [format!("{k:?}"), format!("{w:?}")] {
                assert!(!text.contains("secret\""), "{text}");
                assert!(text.contains("<redacted>"), "{text}");
            }
        }
    }
}
