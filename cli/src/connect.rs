//! How every admin command reaches the control plane: its addresses and
//! the admin token (flags or environment), and a gRPC failure in the
//! operator's words.

use anyhow::anyhow;
use bulkhead_control_plane::ControlPlaneClient;
use clap::Args;

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
}

impl Connect {
    pub(crate) fn client(&self) -> ControlPlaneClient {
        ControlPlaneClient::new(self.control_plane.clone(), self.admin_token.clone())
    }
}

/// A gRPC failure as the operator should read it.
pub(crate) fn status(s: tonic::Status) -> anyhow::Error {
    match s.code() {
        tonic::Code::Unauthenticated => anyhow!("refused: {}", s.message()),
        tonic::Code::Unavailable => anyhow!("control plane unavailable: {}", s.message()),
        _ => anyhow!("{}", s.message()),
    }
}
