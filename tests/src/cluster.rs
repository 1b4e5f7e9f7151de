//! A control-plane cluster of real `bulkhead control-plane` processes on
//! loopback ports, each with its own data dir, and helpers to run admin
//! commands against it, kill and restart nodes, and find the leader.

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bulkhead_control_plane::ControlPlaneClient;
use bulkhead_proto::ClusterSecret;
use bulkhead_proto::control as pb;

use crate::lan::Lan;
use crate::{Process, bulkhead_bin, free_port};

pub struct Node {
    pub id: u64,
    pub addr: String,
    /// Founding nodes start with `--init`; a node that joins later without.
    founder: bool,
    /// The network namespace it runs in, when placed on a host.
    netns: Option<String>,
    /// Its environment beyond the cluster secret (a host's TLS identity).
    env: Vec<(String, String)>,
    dir: PathBuf,
    process: Option<Process>,
}

pub struct ControlPlanes {
    pub nodes: Vec<Node>,
    pub admin_token: String,
    /// The cluster secret (node credential) every node was started with
    /// (`BULKHEAD_CLUSTER_SECRET`); only the nodes hold it.
    pub secret: ClusterSecret,
    init: String,
    extra: Vec<String>,
    dir: tempfile::TempDir,
}

impl ControlPlanes {
    /// Starts `n` founding nodes with `extra` arguments each and waits for the
    /// admin token.
    pub fn start(n: u64, extra: &[&str]) -> anyhow::Result<Self> {
        Self::start_on(n, extra, None, &[])
    }

    /// Like [`Self::start`], with `env` in every node's environment, and
    /// node `i` on host `cp<i>` of `lan` when one is given (port 7100 of its
    /// address, with the host's TLS identity).
    pub fn start_on(
        n: u64,
        extra: &[&str],
        lan: Option<&Lan>,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let nodes: Vec<Node> = (1..=n)
            .map(|id| {
                let host = lan.map(|lan| lan.host(&format!("cp{id}")));
                Node {
                    id,
                    addr: match host {
                        Some(h) => format!("{}:7100", h.ip),
                        None => format!("127.0.0.1:{}", free_port()),
                    },
                    founder: true,
                    netns: host.map(|h| h.netns.clone()),
                    env: lan
                        .map(|lan| lan.tls_env(&format!("cp{id}")))
                        .unwrap_or_default()
                        .into_iter()
                        .chain(env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())))
                        .collect(),
                    dir: dir.path().join(format!("node{id}")),
                    process: None,
                }
            })
            .collect();
        let init = nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.addr))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            nodes,
            admin_token: String::new(),
            secret: ClusterSecret::generate(),
            init,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            dir,
        };
        for i in 0..cluster.nodes.len() {
            cluster.spawn(i)?;
        }
        let first = cluster.nodes[0]
            .process
            .as_mut()
            .context("node 1 not running")?;
        cluster.admin_token = first.wait_for("admin token:", Duration::from_secs(30))?;
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &self.nodes[i];
        let mut args = vec![
            "control-plane".to_owned(),
            "--node-id".into(),
            node.id.to_string(),
            "--listen".into(),
            node.addr.clone(),
            "--data-dir".into(),
            node.dir.display().to_string(),
        ];
        if node.founder {
            args.extend(["--init".to_owned(), self.init.clone()]);
        }
        args.extend(self.extra.iter().cloned());
        let mut env = vec![("BULKHEAD_CLUSTER_SECRET", self.secret.expose())];
        env.extend(node.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let process = Process::spawn_in(node.netns.as_deref(), &args, &env)?;
        self.nodes[i].process = Some(process);
        Ok(())
    }

    /// Starts node `id` with no `--init`, as an operator starts a node that
    /// `bulkhead cluster add-node` then adds, and returns its index.
    pub fn start_joining(&mut self, id: u64) -> anyhow::Result<usize> {
        self.start_joining_from(id, None)
    }

    /// Like [`Self::start_joining`], on a copy of `backup` (a node's data
    /// dir, as [`Self::back_up`] took it) when one is given.
    pub fn start_joining_from(
        &mut self,
        id: u64,
        backup: Option<&std::path::Path>,
    ) -> anyhow::Result<usize> {
        let dir = self.dir.path().join(format!("node{id}"));
        if let Some(backup) = backup {
            copy_dir(backup, &dir)?;
        }
        self.nodes.push(Node {
            id,
            addr: format!("127.0.0.1:{}", free_port()),
            founder: false,
            netns: None,
            env: Vec::new(),
            dir,
            process: None,
        });
        let i = self.nodes.len() - 1;
        self.spawn(i)?;
        let process = self.nodes[i].process.as_mut().context("not running")?;
        process.wait_for("control-plane node running", Duration::from_secs(30))?;
        Ok(i)
    }

    /// Every node's address, comma-separated.
    pub fn addrs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.addr.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Runs `bulkhead ARGS` against the given addresses with the admin token.
    pub fn cli_at(&self, addrs: &str, args: &[&str]) -> anyhow::Result<Output> {
        Ok(std::process::Command::new(bulkhead_bin()?)
            .args(args)
            .env("BULKHEAD_CONTROL_PLANE", addrs)
            .env("BULKHEAD_ADMIN_TOKEN", &self.admin_token)
            .env("BULKHEAD_LOG", "warn")
            .env_remove("RUST_BACKTRACE")
            .output()?)
    }

    /// Runs `bulkhead ARGS` against the whole cluster; fails unless it succeeds.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        crate::system::admin(&self.addrs(), &self.admin_token, args)
    }

    /// A leader-following client of the whole cluster.
    pub fn client(&self) -> ControlPlaneClient {
        ControlPlaneClient::new(
            self.nodes.iter().map(|n| n.addr.clone()).collect(),
            Some(self.admin_token.clone()),
        )
    }

    /// A leader-following client with a fresh gateway credential (and no
    /// admin token), as a gateway calls.
    pub async fn member_client(&self) -> anyhow::Result<ControlPlaneClient> {
        Ok(self.client().as_caller(self.issue("gateway").await?))
    }

    /// A leader-following client with a fresh worker credential, as a
    /// worker calls.
    pub async fn fleet_client(&self) -> anyhow::Result<ControlPlaneClient> {
        Ok(self.client().as_caller(self.issue("worker").await?))
    }

    /// The secret of a fresh credential of `role`, for a process to use.
    pub async fn credential(&self, role: &str) -> anyhow::Result<String> {
        Ok(self.issue(role).await?.expose().to_owned())
    }

    async fn issue(&self, role: &str) -> anyhow::Result<bulkhead_proto::Credential> {
        static ISSUED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = ISSUED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(self
            .client()
            .issue_credential(role, &format!("test-{role}-{n}"))
            .await?)
    }

    /// What node `i` itself says about the cluster.
    pub async fn status(&self, i: usize) -> anyhow::Result<pb::ClusterState> {
        let client = ControlPlaneClient::new(vec![self.nodes[i].addr.clone()], None);
        Ok(client
            .cluster()
            .call(|mut c| async move { c.cluster_status(pb::ClusterStatusRequest {}).await })
            .await?)
    }

    /// Index of the node that a running node reports as leader, once the
    /// leader itself agrees.
    pub async fn leader(&self, timeout: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            for (i, node) in self.nodes.iter().enumerate() {
                if node.process.is_none() {
                    continue;
                }
                if let Ok(s) = self.status(i).await
                    && s.state == "leader"
                {
                    return Ok(i);
                }
            }
            if Instant::now() > deadline {
                bail!("no leader within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILLs node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut p) = self.nodes[i].process.take() {
            p.kill();
        }
    }

    /// SIGKILLs node `i` and deletes its data dir, as a lost disk would.
    pub fn wipe(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        std::fs::remove_dir_all(&self.nodes[i].dir)?;
        Ok(())
    }

    /// What node `i`'s process has printed so far (once collected by a wait).
    pub fn output(&mut self, i: usize) -> String {
        match self.nodes[i].process.as_mut() {
            Some(p) => {
                let _ = p.wait_for("\u{0}never", Duration::from_millis(200));
                p.output()
            }
            None => String::new(),
        }
    }

    /// Node `i`'s current snapshot file.
    pub fn snapshot_path(&self, i: usize) -> PathBuf {
        self.nodes[i].dir.join("snapshots/current.jsonl")
    }

    /// The peak memory of node `i`'s process so far, in KiB.
    pub fn peak_rss_kib(&self, i: usize) -> Option<u64> {
        self.nodes[i].process.as_ref()?.peak_rss_kib()
    }

    /// Backs node `i` up as an operator would: stops it (SIGTERM), copies
    /// its data dir to `to`, and starts it again.
    pub fn back_up(&mut self, i: usize, to: &std::path::Path) -> anyhow::Result<()> {
        if let Some(mut p) = self.nodes[i].process.take() {
            p.terminate(Duration::from_secs(30))?;
        }
        copy_dir(&self.nodes[i].dir, to)?;
        self.spawn(i)
    }

    /// Starts node `i` again on its data dir.
    pub fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.kill(i);
        self.spawn(i)
    }
}

/// `cp -a from to`.
fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()?;
    if !status.success() {
        bail!("cp -a {} {} failed", from.display(), to.display());
    }
    Ok(())
}
