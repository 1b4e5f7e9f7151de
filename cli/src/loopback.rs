//! A control-plane cluster of this binary's nodes and a nats-server, all on
//! loopback in a temporary directory: what `bench control-plane` and
//! `bench soak` measure. Nodes can be killed, stopped, restarted with another
//! environment and added; everything is killed when it is dropped.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bulkhead_control_plane::ControlPlaneClient;
use bulkhead_proto::control as pb;

/// One node: its address, data dir and process (none while it is down).
pub struct Node {
    pub addr: String,
    pub data_dir: PathBuf,
    child: Option<Child>,
}

pub struct Loopback {
    dir: tempfile::TempDir,
    pub nats_url: String,
    nats: Child,
    pub nodes: BTreeMap<u64, Node>,
    secret: bulkhead_proto::ClusterSecret,
    /// The cluster's admin, holding the token node 1 printed.
    pub admin: ControlPlaneClient,
}

/// `n` different free ports: all are bound at once before any is released,
/// so the system cannot hand out one of them twice.
fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let held = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(held
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<_, _>>()?)
}

async fn wait_port(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if Instant::now() > deadline {
            bail!("nothing listens on port {port}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

impl Loopback {
    /// Starts nats-server (JetStream) and an `n`-node cluster, each node
    /// with `extra` arguments, and waits for the admin token.
    pub async fn start(n: u64, extra: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let nats_port = free_ports(1)?[0];
        let nats = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &nats_port.to_string()])
            .arg("-sd")
            .arg(dir.path().join("nats"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nats-server (scripts/setup.sh installs it)")?;
        let mut cluster = Self {
            nats_url: format!("nats://127.0.0.1:{nats_port}"),
            nats,
            nodes: BTreeMap::new(),
            secret: bulkhead_proto::ClusterSecret::generate(),
            admin: ControlPlaneClient::new(Vec::new(), None),
            dir,
        };
        wait_port(nats_port).await?;
        let ports = free_ports(usize::try_from(n)?)?;
        let init = (1..=n)
            .zip(&ports)
            .map(|(id, p)| format!("{id}=127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut args = vec!["--init", &init];
        args.extend_from_slice(extra);
        let mut token_out = None;
        for (id, port) in (1..=n).zip(ports) {
            let out = cluster.spawn(id, &format!("127.0.0.1:{port}"), &args, &[])?;
            if id == 1 {
                token_out = out;
            }
        }
        let token = {
            let out = token_out.context("node 1 stdout")?;
            tokio::task::spawn_blocking(move || {
                use std::io::BufRead;
                std::io::BufReader::new(out)
                    .lines()
                    .map_while(Result::ok)
                    .find_map(|l| l.strip_prefix("admin token: ").map(str::to_owned))
            })
            .await?
            .context("the cluster printed no admin token")?
        };
        cluster.admin = ControlPlaneClient::new(cluster.addrs(), Some(token));
        Ok(cluster)
    }

    /// Every node's address, up or down.
    pub fn addrs(&self) -> Vec<String> {
        self.nodes.values().map(|n| n.addr.clone()).collect()
    }

    /// Starts node `id` on `addr` (its data dir kept from an earlier run)
    /// with `args` and `env`; returns its stdout.
    pub fn spawn(
        &mut self,
        id: u64,
        addr: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Option<std::process::ChildStdout>> {
        let data_dir = self.dir.path().join(format!("node{id}"));
        let mut child = Command::new(std::env::current_exe()?)
            .args(["control-plane", "--node-id", &id.to_string()])
            .args(["--listen", addr, "--nats", &self.nats_url])
            .arg("--data-dir")
            .arg(&data_dir)
            .args(args)
            .envs(env.iter().copied())
            .env("BULKHEAD_LOG", "warn")
            .env(crate::env::CLUSTER_SECRET, self.secret.expose())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let out = child.stdout.take();
        self.nodes.insert(
            id,
            Node {
                addr: addr.to_owned(),
                data_dir,
                child: Some(child),
            },
        );
        Ok(out)
    }

    /// Starts a new, empty node `id` on a free port, and adds it to the
    /// cluster; returns at once, while it catches up.
    pub async fn add(&mut self, id: u64) -> anyhow::Result<()> {
        let addr = format!("127.0.0.1:{}", free_ports(1)?[0]);
        self.spawn(id, &addr, &[], &[])?;
        self.admin
            .admin()
            .send(pb::AddNodeRequest { id, addr }, |mut c, req| async move {
                c.add_node(req).await
            })
            .await?;
        Ok(())
    }

    /// Removes node `id` from the cluster's membership.
    pub async fn remove(&mut self, id: u64) -> anyhow::Result<()> {
        self.admin
            .admin()
            .send(pb::RemoveNodeRequest { id }, |mut c, req| async move {
                c.remove_node(req).await
            })
            .await?;
        Ok(())
    }

    fn child(&mut self, id: u64) -> anyhow::Result<Child> {
        self.nodes
            .get_mut(&id)
            .and_then(|n| n.child.take())
            .with_context(|| format!("node {id} is not running"))
    }

    /// SIGKILLs node `id`.
    pub fn kill(&mut self, id: u64) -> anyhow::Result<()> {
        let mut child = self.child(id)?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Stops node `id` the way an operator does (SIGTERM), and waits for it.
    pub fn stop(&mut self, id: u64) -> anyhow::Result<()> {
        let mut child = self.child(id)?;
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()?;
        child.wait()?;
        Ok(())
    }

    /// The process id of node `id`, while it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.nodes.get(&id)?.child.as_ref().map(Child::id)
    }

    /// Node `id`'s view of the cluster.
    pub async fn status(&self, id: u64) -> anyhow::Result<pb::ClusterState> {
        let node = self.nodes.get(&id).context("no such node")?;
        Ok(ControlPlaneClient::new(vec![node.addr.clone()], None)
            .cluster()
            .call(|mut c| async move { c.cluster_status(pb::ClusterStatusRequest {}).await })
            .await?)
    }
}

impl Drop for Loopback {
    fn drop(&mut self) {
        for node in self.nodes.values_mut() {
            if let Some(c) = &mut node.child {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = self.nats.kill();
        let _ = self.nats.wait();
    }
}
