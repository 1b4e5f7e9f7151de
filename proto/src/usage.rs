//! The usage event a worker publishes once per finished request.

use crate::worker::UsageEvent;

impl UsageEvent {
    /// The NATS subject of this event: `bulkhead.usage.<tenant>`.
    pub fn subject(&self) -> String {
        format!("{}.{}", crate::USAGE_SUBJECT_PREFIX, self.tenant_id)
    }
}

/// How long JetStream remembers a `Nats-Msg-Id` to drop a republished event.
pub const DUPLICATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// The most bytes of unacknowledged usage the stream holds. Past it NATS
/// refuses new events, and workers keep them in their spools until there is
/// room: nothing is dropped.
pub const STREAM_MAX_BYTES: i64 = 1 << 30;

/// The configuration of the usage stream; workers and the control plane
/// create it with exactly this, whoever comes first. A work queue: an event
/// leaves the stream once the control plane acknowledges it, so the stream
/// holds only the backlog, never the history. (A stream made before this
/// keeps its old retention; NATS cannot change a stream's retention, so
/// delete it while no event is pending to get this one.)
pub fn stream_config() -> async_nats::jetstream::stream::Config {
    use async_nats::jetstream::stream::{DiscardPolicy, RetentionPolicy, StorageType};
    async_nats::jetstream::stream::Config {
        name: crate::USAGE_STREAM.to_owned(),
        subjects: vec![format!("{}.>", crate::USAGE_SUBJECT_PREFIX)],
        storage: StorageType::File,
        retention: RetentionPolicy::WorkQueue,
        max_bytes: STREAM_MAX_BYTES,
        discard: DiscardPolicy::New,
        duplicate_window: DUPLICATE_WINDOW,
        ..Default::default()
    }
}

/// The all-in-one mode's replacement for JetStream: a worker sends a batch of
/// usage events to the control plane in the same process and waits for
/// `done` before it deletes them from its spool, exactly as it waits for a
/// JetStream ack. The control plane applies the batch with the same
/// exactly-once dedup as events from NATS.
#[derive(Debug)]
pub struct LocalUsageBatch {
    pub events: Vec<crate::worker::UsageEvent>,
    pub done: tokio::sync::oneshot::Sender<Result<(), String>>,
}

/// The sending end of the in-process usage channel.
pub type LocalUsageSender = tokio::sync::mpsc::Sender<LocalUsageBatch>;
/// The receiving end, owned by the control plane.
pub type LocalUsageReceiver = tokio::sync::mpsc::Receiver<LocalUsageBatch>;

/// The environment variable naming a CA file (PEM) that the NATS server's
/// certificate must chain to; with it, NATS connections require TLS.
pub const NATS_CA_ENV: &str = "BULKHEAD_NATS_CA";

/// The environment variable naming a file that holds an NKey seed
/// (`SU...`, from `nk -gen user`): the connection authenticates with it.
pub const NATS_NKEY_FILE_ENV: &str = "BULKHEAD_NATS_NKEY_FILE";

/// Connection options for a NATS URL that may carry credentials:
/// `nats://user:password@host:4222` (user and password) or
/// `nats://token@host:4222` (a token). Answers the options with them set
/// and the URL without them (the client would not send them otherwise, and
/// they must not end up in logs). With `BULKHEAD_NATS_NKEY_FILE` set, the
/// connection signs in with that NKey seed. With `BULKHEAD_NATS_CA` set (or
/// a `tls://` URL), the connection requires TLS and checks the server's
/// certificate against that CA. Fails only when the NKey file cannot be
/// read.
pub fn nats_options(url: &str) -> Result<(async_nats::ConnectOptions, String), String> {
    let mut options = async_nats::ConnectOptions::new();
    if let Some(path) = std::env::var_os(NATS_NKEY_FILE_ENV).filter(|v| !v.is_empty()) {
        let seed = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "{NATS_NKEY_FILE_ENV}: reading the NKey seed {}: {e}",
                std::path::Path::new(&path).display()
            )
        })?;
        options = options.nkey(seed.trim().to_owned());
    }
    if let Some(ca) = std::env::var_os(NATS_CA_ENV).filter(|v| !v.is_empty()) {
        options = options
            .add_root_certificates(std::path::PathBuf::from(ca))
            .require_tls(true);
    } else if url.starts_with("tls://") {
        options = options.require_tls(true);
    }
    let Ok(mut parsed) = url::Url::parse(url) else {
        return Ok((options, url.to_owned()));
    };
    if parsed.username().is_empty() {
        return Ok((options, url.to_owned()));
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let user = decode(parsed.username());
    options = match parsed.password() {
        Some(password) => options.user_and_password(user, decode(password)),
        None => options.token(user),
    };
    let _ = parsed.set_username("");
    let _ = parsed.set_password(None);
    Ok((options, host_url(&parsed)))
}

/// A URL as `scheme://host:port`, without credentials or a trailing slash.
fn host_url(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    }
}

/// A NATS URL with its credentials blanked, for logs.
pub fn redacted_nats_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(parsed) if !parsed.username().is_empty() => {
            let host = host_url(&parsed);
            host.replacen("://", "://<credentials>@", 1)
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_the_url() {
        let url = |u: &str| nats_options(u).map(|(_, url)| url);
        assert_eq!(
            url("nats://bulk:s%40cret@10.0.0.9:4222").as_deref(),
            Ok("nats://10.0.0.9:4222")
        );
        // A stray `%` before a multi-byte character is no panic.
        assert_eq!(url("nats://bulk:%a\u{e9}@h:1").as_deref(), Ok("nats://h:1"));
        assert_eq!(
            url("nats://tok@host:4222").as_deref(),
            Ok("nats://host:4222")
        );
        assert_eq!(url("nats://host:4222").as_deref(), Ok("nats://host:4222"));
        assert_eq!(
            redacted_nats_url("nats://bulk:secret@host:4222"),
            "nats://<credentials>@host:4222"
        );
    }
}
