//! A client of the control plane that follows the leader: it tries the node it
//! last reached, follows the `bulkhead-leader` address a follower answers
//! with, moves on to the next known node when one is down, and retries until
//! a deadline. Used by the admin commands, and by gateways and workers.
//!
//! Each call names the service it goes to, and so the credential that
//! service takes: `client.admin()` (the admin token), `client.member()` (a
//! gateway's credential), `client.fleet()` (a worker's), `client.cluster()`
//! (open).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bulkhead_proto::Credential;
use bulkhead_proto::control::admin_client::AdminClient;
use bulkhead_proto::control::cluster_client::ClusterClient;
use bulkhead_proto::control::fleet_client::FleetClient;
use bulkhead_proto::control::member_client::MemberClient;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

use crate::LEADER_METADATA;

/// How long a call keeps retrying through elections and node failures.
pub const RETRY_FOR: Duration = Duration::from_secs(15);
/// How long one try of a call may take.
const TRY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct ControlPlaneClient {
    addrs: Vec<String>,
    /// The address that answered last (usually the leader).
    current: Mutex<String>,
    /// One connection per address, reused by every call (tonic channels
    /// reconnect by themselves) and by the clients [`Self::with_token`] makes.
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    token: Option<String>,
    credential: Option<Credential>,
}

impl std::fmt::Debug for ControlPlaneClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlaneClient")
            .field("addrs", &self.addrs)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("credential", &self.credential)
            .finish()
    }
}

impl ControlPlaneClient {
    /// `addrs`: some or all nodes' addresses (`host:port`). `token`: the admin
    /// token sent with every call.
    pub fn new(addrs: Vec<String>, token: Option<String>) -> Self {
        let first = addrs.first().cloned().unwrap_or_default();
        Self {
            addrs,
            current: Mutex::new(first),
            channels: Arc::new(Mutex::new(HashMap::new())),
            token,
            credential: None,
        }
    }

    /// A client that acts for an administrator who presented `token` (the
    /// gateway's admin API): it shares this client's connections and sends
    /// the token but never this client's credential, so the control plane
    /// judges the token alone.
    #[must_use]
    pub fn with_token(&self, token: String) -> Self {
        Self {
            addrs: self.addrs.clone(),
            current: Mutex::new(self.current()),
            channels: Arc::clone(&self.channels),
            token: Some(token),
            credential: None,
        }
    }

    /// Also sends a gateway's or worker's credential with every call.
    #[must_use]
    pub fn with_credential(mut self, credential: Credential) -> Self {
        self.credential = Some(credential);
        self
    }

    /// Issues a credential of `role` (`gateway`, `worker` or `metrics`)
    /// named `name` through the admin service.
    pub async fn issue_credential(&self, role: &str, name: &str) -> Result<Credential, Status> {
        let created = self
            .admin()
            .send(
                bulkhead_proto::control::CreateCredentialRequest {
                    role: role.to_owned(),
                    name: name.to_owned(),
                },
                |mut c, r| async move { c.create_credential(r).await },
            )
            .await?;
        Credential::new(&created.secret).map_err(Status::internal)
    }

    /// A client of the same nodes that calls as the holder of `credential`
    /// (and sends no admin token).
    #[must_use]
    pub fn as_caller(&self, credential: Credential) -> Self {
        Self::new(self.addrs.clone(), None).with_credential(credential)
    }

    /// The credential this client sends, if any.
    pub fn credential(&self) -> Option<&Credential> {
        self.credential.as_ref()
    }

    /// The operator's service (the admin token).
    pub fn admin(&self) -> Api<'_, AdminClient<Channel>> {
        Api::new(self)
    }

    /// The gateways' service (a gateway credential).
    pub fn member(&self) -> Api<'_, MemberClient<Channel>> {
        Api::new(self)
    }

    /// The workers' service (a worker credential).
    pub fn fleet(&self) -> Api<'_, FleetClient<Channel>> {
        Api::new(self)
    }

    /// The cluster's status (open).
    pub fn cluster(&self) -> Api<'_, ClusterClient<Channel>> {
        Api::new(self)
    }

    /// Wraps a message with the credentials.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut req = Request::new(message);
        req.set_timeout(TRY_TIMEOUT);
        if let Some(token) = &self.token
            && let Ok(value) = format!("Bearer {token}").parse()
        {
            req.metadata_mut().insert("authorization", value);
        }
        if let Some(credential) = &self.credential {
            credential.attach(&mut req);
        }
        req
    }

    fn current(&self) -> String {
        self.current
            .lock()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    fn set_current(&self, addr: String) {
        match self.current.lock() {
            Ok(mut c) => *c = addr,
            Err(p) => *p.into_inner() = addr,
        }
    }

    fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(channel) = channels.get(addr) {
            return Ok(channel.clone());
        }
        let channel = crate::channel(addr)?;
        channels.insert(addr.to_owned(), channel.clone());
        Ok(channel)
    }

    fn next_after(&self, addr: &str) -> String {
        let at = self.addrs.iter().position(|a| a == addr);
        let next = at.map_or(0, |i| (i + 1) % self.addrs.len().max(1));
        self.addrs.get(next).cloned().unwrap_or_default()
    }
}

/// A generated gRPC client of one of the control plane's services.
pub trait Service: Sized {
    fn connect(channel: Channel) -> Self;
}

macro_rules! services {
    ($($client:ident),*) => {$(
        impl Service for $client<Channel> {
            fn connect(channel: Channel) -> Self {
                $client::new(channel)
                    .max_decoding_message_size(crate::MAX_MEMBER_MESSAGE_BYTES)
                    .max_encoding_message_size(crate::MAX_MEMBER_MESSAGE_BYTES)
            }
        }
    )*};
}
services!(AdminClient, MemberClient, FleetClient, ClusterClient);

/// The calls of one service `S` through a [`ControlPlaneClient`].
pub struct Api<'a, S> {
    client: &'a ControlPlaneClient,
    service: std::marker::PhantomData<fn() -> S>,
}

impl<'a, S: Service> Api<'a, S> {
    fn new(client: &'a ControlPlaneClient) -> Self {
        Self {
            client,
            service: std::marker::PhantomData,
        }
    }

    /// Calls `f` on a node, following the leader and retrying `Unavailable`
    /// for up to [`RETRY_FOR`].
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, Status>
    where
        F: Fn(S) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_for(RETRY_FOR, f).await
    }

    /// Sends `message` with the credentials through `method` (e.g.
    /// `|mut c, req| async move { c.get_tenant(req).await }`), following the
    /// leader and retrying like [`Self::call`].
    pub async fn send<M, T, F, Fut>(&self, message: M, method: F) -> Result<T, Status>
    where
        M: Clone,
        F: Fn(S, Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.send_for(RETRY_FOR, message, method).await
    }

    /// Like [`Self::send`], giving up after `retry_for`: each try too is
    /// bounded by it.
    pub async fn send_for<M, T, F, Fut>(
        &self,
        retry_for: Duration,
        message: M,
        method: F,
    ) -> Result<T, Status>
    where
        M: Clone,
        F: Fn(S, Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call_for(retry_for, |c| {
            let mut req = self.client.request(message.clone());
            req.set_timeout(retry_for.min(TRY_TIMEOUT));
            method(c, req)
        })
        .await
    }

    /// Like [`Self::call`], retrying `Unavailable` (and a broken connection)
    /// for up to `retry_for`
    /// (a gateway's admission path cannot wait long).
    pub async fn call_for<T, F, Fut>(&self, retry_for: Duration, f: F) -> Result<T, Status>
    where
        F: Fn(S) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        if self.client.addrs.is_empty() {
            return Err(Status::invalid_argument(
                "no control-plane address given (--control-plane or BULKHEAD_CONTROL_PLANE)",
            ));
        }
        let deadline = Instant::now() + retry_for;
        let mut addr = self.client.current();
        let mut delay = Duration::from_millis(50);
        loop {
            let result = match self.client.channel(&addr) {
                Ok(channel) => f(S::connect(channel)).await,
                Err(e) => Err(Status::invalid_argument(format!(
                    "bad control-plane address {addr:?}: {e}"
                ))),
            };
            match result {
                Ok(response) => {
                    self.client.set_current(addr);
                    return Ok(response.into_inner());
                }
                Err(status) if status.code() == Code::Unavailable || is_transport(&status) => {
                    if is_transport(&status) {
                        // A kept connection to a node that died: forget it,
                        // so the next try to that address connects afresh.
                        self.client
                            .channels
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&addr);
                    }
                    let leader = status
                        .metadata()
                        .get(LEADER_METADATA)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let follow = leader.as_ref().is_some_and(|l| *l != addr);
                    addr = match leader {
                        Some(leader) if follow => leader,
                        _ => self.client.next_after(&addr),
                    };
                    // The next call starts from there too: a node cut off
                    // from the network answers nothing, and a call whose one
                    // try waited on it to its deadline would otherwise leave
                    // every later call to wait on it again.
                    self.client.set_current(addr.clone());
                    if Instant::now() >= deadline {
                        return Err(status);
                    }
                    if !follow {
                        let left = deadline.saturating_duration_since(Instant::now());
                        tokio::time::sleep(delay.min(left)).await;
                        delay = (delay * 2).min(Duration::from_millis(500));
                    }
                }
                Err(status) => return Err(status),
            }
        }
    }
}

/// Whether a call failed in the connection itself: a kept connection to a
/// node that died answers with a transport error (as `Unknown` when the
/// write breaks, `Cancelled` when the connection closes under the call)
/// rather than `Unavailable`.
fn is_transport(status: &Status) -> bool {
    std::error::Error::source(status)
        .is_some_and(|s| s.downcast_ref::<tonic::transport::Error>().is_some())
}
