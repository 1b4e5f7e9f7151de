//! Hosts on a private network: each host is a network namespace with one
//! address in 10.77.0.0/24, its `eth0` one end of a veth pair whose other
//! end is a port of a bridge in a namespace of its own (the switch). Nothing
//! is attached to the machine's own network, so traffic goes only between
//! these namespaces. A host is cut off by taking its switch port down, and
//! partitioned from some hosts by blackhole routes to them.
//!
//! Each host also gets a TLS certificate for its address from the network's
//! own CA ([`Lan::tls_env`] names them the way every role reads them), so
//! the processes placed on the hosts speak TLS and mTLS to each other.
//!
//! Creating namespaces takes root and iproute2; [`Lan::create`] says why
//! when it cannot. A test whose body must itself run on a host (its client
//! traffic) runs its own executable there again with [`Lan::run_inside`]
//! (the workspace forbids the `unsafe` a `setns` would take); the run inside
//! finds the network with [`Lan::from_env`].

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// The environment variable that describes the network to a run inside it.
const LAN_ENV: &str = "BULKHEAD_TEST_LAN";

#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    pub netns: String,
    pub ip: String,
    /// Its port on the switch.
    port: String,
}

/// A network of hosts; the namespaces go when the [`Lan`] that created
/// them drops.
#[derive(Debug)]
pub struct Lan {
    switch: String,
    pub hosts: Vec<Host>,
    /// The CA and each host's certificate and key (`<host>.pem`, `<host>.key`).
    pki: PathBuf,
    /// Set where this [`Lan`] made the network (and deletes it on drop).
    owned: Option<tempfile::TempDir>,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ip (iproute2)")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Lan {
    /// Creates a host per name, addressed 10.77.0.1, .2, ... in order.
    /// `Err` says why this machine cannot (not root, no iproute2, no
    /// network namespaces), for the test to report and skip.
    pub fn create(names: &[&str]) -> Result<Self, String> {
        let tag = format!("bh{}", std::process::id());
        let pki = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
        let mut lan = Self {
            switch: format!("{tag}-switch"),
            hosts: Vec::new(),
            pki: pki.path().to_path_buf(),
            owned: Some(pki),
        };
        ip(&["netns", "add", &lan.switch])
            .map_err(|e| format!("network namespaces are unavailable here: {e:#}"))?;
        let build = |lan: &mut Self| -> anyhow::Result<()> {
            let sw = lan.switch.clone();
            ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
            ip(&["-n", &sw, "link", "set", "br0", "up"])?;
            for (i, name) in names.iter().enumerate() {
                let host = Host {
                    name: (*name).to_owned(),
                    netns: format!("{tag}-{name}"),
                    ip: format!("10.77.0.{}", i + 1),
                    port: format!("p{}", i + 1),
                };
                ip(&["netns", "add", &host.netns])?;
                lan.hosts.push(host.clone());
                ip(&[
                    "link",
                    "add",
                    "eth0",
                    "netns",
                    &host.netns,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    &host.port,
                    "netns",
                    &sw,
                ])?;
                ip(&["-n", &sw, "link", "set", &host.port, "master", "br0", "up"])?;
                let cidr = format!("{}/24", host.ip);
                ip(&["-n", &host.netns, "addr", "add", &cidr, "dev", "eth0"])?;
                ip(&["-n", &host.netns, "link", "set", "eth0", "up"])?;
                ip(&["-n", &host.netns, "link", "set", "lo", "up"])?;
            }
            Ok(())
        };
        build(&mut lan).map_err(|e| format!("building the test network failed: {e:#}"))?;
        lan.certify()
            .map_err(|e| format!("making the test network's certificates failed: {e:#}"))?;
        Ok(lan)
    }

    /// A CA, and a certificate it signs for each host's address.
    fn certify(&self) -> anyhow::Result<()> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        std::fs::write(self.pki.join("ca.pem"), ca.pem())?;
        for host in &self.hosts {
            let key = KeyPair::generate()?;
            let params = CertificateParams::new(vec![host.ip.clone(), "127.0.0.1".to_owned()])?;
            let cert = params.signed_by(&key, &ca)?;
            std::fs::write(self.pki.join(format!("{}.pem", host.name)), cert.pem())?;
            std::fs::write(
                self.pki.join(format!("{}.key", host.name)),
                key.serialize_pem(),
            )?;
        }
        Ok(())
    }

    /// Makes host `name`'s identity this process's TLS settings for the
    /// control plane's clients (mTLS).
    pub fn use_tls_as(&self, name: &str) -> anyhow::Result<()> {
        let (cert, key) = self.cert_of(name);
        bulkhead_client::tls::install(&bulkhead_client::tls::TlsFiles {
            cert: Some(cert),
            key: Some(key),
            ca: Some(self.ca()),
        })
        .map_err(anyhow::Error::msg)
    }

    /// The network's CA certificate (PEM).
    pub fn ca(&self) -> PathBuf {
        self.pki.join("ca.pem")
    }

    /// Host `name`'s certificate and key files.
    pub fn cert_of(&self, name: &str) -> (PathBuf, PathBuf) {
        let host = &self.host(name).name;
        (
            self.pki.join(format!("{host}.pem")),
            self.pki.join(format!("{host}.key")),
        )
    }

    /// The environment that gives a process on host `name` its TLS
    /// identity and the network's CA, for its listeners and connections
    /// (NATS included).
    pub fn tls_env(&self, name: &str) -> Vec<(String, String)> {
        let (cert, key) = self.cert_of(name);
        let text = |p: &Path| p.display().to_string();
        vec![
            ("BULKHEAD_TLS_CERT".into(), text(&cert)),
            ("BULKHEAD_TLS_KEY".into(), text(&key)),
            ("BULKHEAD_TLS_CA".into(), text(&self.ca())),
            ("BULKHEAD_NATS_CA".into(), text(&self.ca())),
        ]
    }

    /// The network a run inside it was given (`None` outside).
    pub fn from_env() -> Option<Self> {
        let text = std::env::var(LAN_ENV).ok()?;
        let mut parts = text.split(';');
        let switch = parts.next()?.to_owned();
        let pki = PathBuf::from(parts.next()?);
        let hosts = parts
            .map(|h| {
                let f: Vec<&str> = h.split(',').collect();
                Host {
                    name: f[0].to_owned(),
                    netns: f[1].to_owned(),
                    ip: f[2].to_owned(),
                    port: f[3].to_owned(),
                }
            })
            .collect();
        Some(Self {
            switch,
            hosts,
            pki,
            owned: None,
        })
    }

    fn to_env(&self) -> String {
        let mut text = format!("{};{}", self.switch, self.pki.display());
        for h in &self.hosts {
            text.push_str(&format!(";{},{},{},{}", h.name, h.netns, h.ip, h.port));
        }
        text
    }

    /// Runs the test `test` of this test executable again on host
    /// `on`, with the network and that host's TLS identity in its
    /// environment (so the admin commands it runs use them); fails unless it
    /// passes.
    pub fn run_inside(&self, on: &str, test: &str) -> anyhow::Result<()> {
        let exe = std::env::current_exe()?;
        let status = Command::new("ip")
            .args(["netns", "exec", &self.host(on).netns])
            .arg(exe)
            .args([test, "--exact", "--nocapture", "--test-threads", "1"])
            .env(LAN_ENV, self.to_env())
            .envs(self.tls_env(on))
            .status()
            .context("running the test inside the network")?;
        if !status.success() {
            bail!("the test inside the network failed ({status})");
        }
        Ok(())
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name} on the test network"))
    }

    /// The addresses of hosts whose names start with `prefix`, in order.
    pub fn ips(&self, prefix: &str) -> Vec<String> {
        self.hosts
            .iter()
            .filter(|h| h.name.starts_with(prefix))
            .map(|h| h.ip.clone())
            .collect()
    }

    /// Takes host `name`'s link down: nothing reaches it, it reaches nothing.
    pub fn cut(&self, name: &str) -> anyhow::Result<()> {
        self.set_link(name, "down")
    }

    /// Brings host `name`'s link back.
    pub fn heal(&self, name: &str) -> anyhow::Result<()> {
        self.set_link(name, "up")
    }

    /// Sets host `name`'s port on the switch `up` or `down`.
    fn set_link(&self, name: &str, state: &str) -> anyhow::Result<()> {
        let port = &self.host(name).port;
        ip(&["-n", &self.switch, "link", "set", port, state])
    }

    /// Host `from` can no longer reach the hosts `to` (nor they it, beyond
    /// what they send it): blackhole routes on `from`.
    pub fn partition(&self, from: &str, to: &[String]) -> anyhow::Result<()> {
        self.blackholes("add", from, to)
    }

    /// Undoes [`Self::partition`].
    pub fn mend(&self, from: &str, to: &[String]) -> anyhow::Result<()> {
        self.blackholes("del", from, to)
    }

    /// `ip route add|del blackhole ADDR` on host `from`, for each of `to`.
    fn blackholes(&self, op: &str, from: &str, to: &[String]) -> anyhow::Result<()> {
        let netns = &self.host(from).netns;
        for addr in to {
            ip(&["-n", netns, "route", op, "blackhole", addr])?;
        }
        Ok(())
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        if self.owned.is_none() {
            return;
        }
        for netns in self
            .hosts
            .iter()
            .map(|h| h.netns.as_str())
            .chain([self.switch.as_str()])
        {
            let _ = ip(&["netns", "del", netns]);
        }
    }
}
