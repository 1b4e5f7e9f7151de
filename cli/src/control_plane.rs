//! `bulkhead control-plane`: one node of the Raft-replicated control plane.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use bulkhead_control_plane::ControlPlaneConfig;
use clap::Args;

use crate::env;

#[derive(Args, Debug)]
pub struct ControlPlaneArgs {
    #[command(flatten)]
    pub tls: crate::connect::Tls,
    /// This node's id (a positive integer, unique in the cluster).
    #[arg(long)]
    node_id: u64,
    /// gRPC listen address, for other nodes and for clients.
    #[arg(long, default_value = "127.0.0.1:7100")]
    listen: SocketAddr,
    /// Address others reach this node at, when it differs from --listen (e.g. behind NAT or on 0.0.0.0).
    #[arg(long)]
    advertise: Option<String>,
    /// Directory for this node's redb database.
    #[arg(long, env = env::DATA_DIR)]
    data_dir: PathBuf,
    /// Bootstrap a new cluster of these members, ID=ADDR,ID=ADDR,... (run with the same list on every
    /// founding node; repeating it is harmless). The admin token is printed once, by the lowest id.
    #[arg(long)]
    init: Option<String>,
    /// NATS server whose BULKHEAD_USAGE stream the leader consumes.
    #[arg(long, env = env::NATS_URL)]
    nats: Option<String>,
    /// File holding the cluster secret, the node credential that the control-plane nodes
    /// share and no other host holds (or set BULKHEAD_CLUSTER_SECRET).
    #[arg(long)]
    cluster_secret_file: Option<PathBuf>,
    /// Snapshot (and purge the log) every this many entries.
    #[arg(long, default_value_t = 10_000)]
    snapshot_logs: u64,
    /// Audit records older than this many days are archived to files under
    /// <data dir>/archives/audit/ and pruned from the database (0: kept for ever). Give every
    /// node the same value: whichever leads applies it.
    #[arg(long, default_value_t = bulkhead_control_plane::DEFAULT_AUDIT_RETENTION_DAYS)]
    audit_retention_days: u32,
    /// Seconds between the leader's prunes of what is past its keeping.
    #[arg(long, default_value_t = bulkhead_control_plane::DEFAULT_PRUNE_EVERY.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    prune_every: u64,
}

/// Parses `1=host:7100,2=host:7101`.
fn parse_members(list: &str) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut members: BTreeMap<u64, String> = BTreeMap::new();
    for item in list.split(',').filter(|s| !s.trim().is_empty()) {
        let (id, addr) = item
            .trim()
            .split_once('=')
            .with_context(|| format!("--init entries look like ID=ADDR, got {item:?}"))?;
        let id: u64 = id
            .parse()
            .with_context(|| format!("--init: node id {id:?} is not a positive integer"))?;
        if id == 0 || addr.is_empty() {
            bail!("--init: entry {item:?} needs an id above 0 and an address");
        }
        if let Some((other, _)) = members.iter().find(|(_, a)| a.as_str() == addr) {
            bail!("--init gives nodes {other} and {id} the same address {addr}");
        }
        if members.insert(id, addr.to_owned()).is_some() {
            bail!("--init names node {id} twice");
        }
    }
    if members.is_empty() {
        bail!("--init needs at least one ID=ADDR");
    }
    Ok(members)
}

pub async fn run(args: ControlPlaneArgs) -> anyhow::Result<()> {
    args.tls.install()?;
    if args.node_id == 0 {
        bail!("--node-id must be above 0");
    }
    let init = args.init.as_deref().map(parse_members).transpose()?;
    let cluster_secret = env::require_cluster_secret(args.cluster_secret_file.as_deref())?;
    let listener = crate::bind("the control plane", args.listen).await?;
    let bound = listener.local_addr()?;
    let advertise = args.advertise.unwrap_or_else(|| bound.to_string());
    eprintln!("bulkhead control-plane: node {} on {bound}", args.node_id);
    let config = ControlPlaneConfig {
        node_id: args.node_id,
        advertise,
        data_dir: args.data_dir,
        init,
        nats: args.nats,
        snapshot_logs: args.snapshot_logs,
        audit_retention_days: args.audit_retention_days,
        prune_every: std::time::Duration::from_secs(args.prune_every),
        cluster_secret,
        local_usage: None,
        on_admin_token: Some(Box::new(|token| {
            // Printed once, here; the cluster keeps only its hash.
            println!("admin token: {token}");
            let _ = std::io::stdout().flush();
            eprintln!(
                "bulkhead control-plane: the admin token above is shown only once; keep it (BULKHEAD_ADMIN_TOKEN)"
            );
        })),
    };
    bulkhead_control_plane::run(config, listener, crate::shutdown_signal()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_lists_are_parsed_and_bad_ones_named() {
        let m = parse_members("1=a:1,2=b:2").unwrap();
        assert_eq!(m.get(&2).map(String::as_str), Some("b:2"));
        assert!(
            parse_members("1=a,1=b")
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        assert!(
            parse_members("x=a")
                .unwrap_err()
                .to_string()
                .contains("not a positive integer")
        );
        assert!(parse_members("0=a").is_err());
        assert!(
            parse_members("1=a:1,2=a:1")
                .unwrap_err()
                .to_string()
                .contains("nodes 1 and 2 the same address a:1")
        );
    }
}
