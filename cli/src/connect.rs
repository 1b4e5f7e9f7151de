//! How every admin command reaches the control plane: its addresses and
//! the admin token (flags or environment), and a gRPC failure in the
//! operator's words.

use std::future::Future;

use anyhow::anyhow;
use bulkhead_control_plane::ControlPlaneClient;
use bulkhead_proto::control::admin_client::AdminClient;
use clap::Args;
use tonic::transport::Channel;

use crate::env;

/// Where the control plane is and the admin token, for every admin command.
#[derive(Args, Debug, Clone)]
pub struct Connect {
    /// Control-plane node addresses, comma-separated (any node; the leader is followed).
    #[arg(long = "control-plane", env = env::CONTROL_PLANE, default_value = "127.0.0.1:7100", value_delimiter = ',', global = true)]
    control_plane: Vec<String>,
    /// The admin token printed when the cluster was initialized.
    #[arg(long, env = env::ADMIN_TOKEN, hide_env_values = true, global = true)]
    admin_token: Option<String>,
    #[command(flatten)]
    tls: Tls,
}

impl Connect {
    pub(crate) fn client(&self) -> ControlPlaneClient {
        if let Err(e) = self.tls.install() {
            eprintln!("error: {e:#}");
            std::process::exit(2);
        }
        ControlPlaneClient::new(self.control_plane.clone(), self.admin_token.clone())
    }
}

/// TLS for a process's listeners and connections (`bulkhead_client::tls`).
#[derive(Args, Debug, Clone, Default)]
pub struct Tls {
    /// This process's TLS certificate (PEM): its listeners serve TLS, and it presents the
    /// certificate when it calls another component.
    #[arg(long, env = env::TLS_CERT, global = true)]
    tls_cert: Option<std::path::PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = env::TLS_KEY, global = true)]
    tls_key: Option<std::path::PathBuf>,
    /// The CA that signs the cluster's certificates (PEM): connections to other components use
    /// TLS and check their certificates with it, and gRPC listeners demand a client certificate
    /// it signed (mTLS).
    #[arg(long, env = env::TLS_CA, global = true)]
    tls_ca: Option<std::path::PathBuf>,
}

impl Tls {
    /// Makes these this process's TLS settings.
    pub(crate) fn install(&self) -> anyhow::Result<()> {
        bulkhead_client::tls::install(&bulkhead_client::tls::TlsFiles {
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
            ca: self.tls_ca.clone(),
        })
        .map_err(|e| anyhow!(e))
    }
}

/// Sends `message` to the control plane's admin service with `method`
/// (retrying as [`bulkhead_client::client::Api::send`] does); a failure in
/// the operator's words ([`status`]).
pub(crate) async fn admin_send<M, T, F, Fut>(
    client: &ControlPlaneClient,
    message: M,
    method: F,
) -> anyhow::Result<T>
where
    M: Clone,
    F: Fn(AdminClient<Channel>, tonic::Request<M>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    client.admin().send(message, method).await.map_err(status)
}

/// A gRPC failure as the operator should read it.
pub(crate) fn status(s: tonic::Status) -> anyhow::Error {
    match s.code() {
        tonic::Code::Unauthenticated => anyhow!("refused: {}", s.message()),
        tonic::Code::Unavailable => anyhow!("control plane unavailable: {}", s.message()),
        _ => anyhow!("{}", s.message()),
    }
}
