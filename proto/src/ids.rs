//! Id newtypes. A function that takes a [`TenantId`] cannot be handed a
//! [`SessionId`]; ids that reach storage keys or NATS subjects are validated
//! once, here, when they enter the system.

use std::fmt;

/// Why an id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} must not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} is longer than {max} characters")]
    TooLong { kind: &'static str, max: usize },
    #[error("{kind} may contain only ASCII letters, digits, '-', '_' and '.', got {value:?}")]
    BadChar { kind: &'static str, value: String },
}

const MAX_ID_LEN: usize = 128;

fn validate(kind: &'static str, value: &str) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if value.len() > MAX_ID_LEN {
        return Err(IdError::TooLong {
            kind,
            max: MAX_ID_LEN,
        });
    }
    let ok = value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok || value.starts_with('.') {
        return Err(IdError::BadChar {
            kind,
            value: value.to_owned(),
        });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps an id.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                validate($kind, &value)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(value: String) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }
    };
}

id_type!(
    /// A tenant: the unit of isolation, quota and billing.
    TenantId,
    "tenant id"
);
id_type!(
    /// A conversation of one tenant; KV slots are keyed by (tenant, session).
    SessionId,
    "session id"
);
id_type!(
    /// The end user a request is attributed to.
    UserId,
    "user id"
);
id_type!(
    /// One worker process.
    WorkerId,
    "worker id"
);
id_type!(
    /// One gateway process.
    GatewayId,
    "gateway id"
);
id_type!(
    /// One chat request, minted by the gateway (or the worker for direct calls).
    RequestId,
    "request id"
);
id_type!(
    /// One usage event, derived from the request id so retries deduplicate.
    EventId,
    "event id"
);

/// Fixed namespace for deriving event ids from request ids (UUID v5).
const EVENT_NAMESPACE: uuid::Uuid =
    uuid::Uuid::from_u128(0x6275_6c6b_6865_6164_2d75_7361_6765_0001);

impl RequestId {
    /// A fresh random request id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::new_v4().to_string())
    }

    /// The usage event id of this request: the same request always yields the
    /// same event id, so a worker retry or a NATS redelivery deduplicates.
    pub fn event_id(&self) -> EventId {
        EventId(uuid::Uuid::new_v5(&EVENT_NAMESPACE, self.0.as_bytes()).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_reject_what_would_break_keys_and_subjects() {
        assert!(TenantId::new("sales").is_ok());
        assert!(TenantId::new("team-a_1.eu").is_ok());
        assert_eq!(TenantId::new(""), Err(IdError::Empty { kind: "tenant id" }));
        assert!(matches!(TenantId::new("a b"), Err(IdError::BadChar { .. })));
        assert!(matches!(TenantId::new("a.*"), Err(IdError::BadChar { .. })));
        assert!(matches!(
            TenantId::new(".hidden"),
            Err(IdError::BadChar { .. })
        ));
        assert!(matches!(
            TenantId::new("x".repeat(129)),
            Err(IdError::TooLong { .. })
        ));
    }

    #[test]
    fn event_id_is_a_stable_function_of_the_request_id() {
        let a = RequestId::new("req-1").unwrap_or_else(|e| panic!("{e}"));
        let b = RequestId::new("req-2").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.event_id(), a.clone().event_id());
        assert_ne!(a.event_id(), b.event_id());
    }
}
