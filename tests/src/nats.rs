//! A real `nats-server` with JetStream on a free loopback port, for tests.
//! Self-contained (std only) so the worker's tests include this same file.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1, bound and released, and never one this
/// process handed out before: Linux may give a just-released port to the next
/// `bind(0)`, and two nodes told the same port make a cluster that cannot form.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free port: {e}"));
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    store: PathBuf,
    /// The user and password the server demands, if any.
    auth: Option<(String, String)>,
    /// The server's TLS certificate and key, if it speaks TLS only.
    tls: Option<(PathBuf, PathBuf)>,
    /// The address it listens on (127.0.0.1 unless placed on a host).
    addr: String,
    /// The network namespace it runs in, when placed on a host.
    netns: Option<String>,
    /// A configuration file it reads (`-c`), for what has no flag.
    config: Option<PathBuf>,
}

impl Nats {
    /// Starts a server that keeps its JetStream data in `store`.
    pub fn start(store: &Path) -> Self {
        Self::start_as(store, None)
    }

    /// Starts a server that admits only `user` with `password`.
    pub fn start_with_user(store: &Path, user: &str, password: &str) -> Self {
        Self::start_as(store, Some((user.to_owned(), password.to_owned())))
    }

    /// Starts a server that admits only the user with this NKey (its public
    /// key, `U...`): a client signs in with the seed.
    pub fn start_with_nkey(store: &Path, public_key: &str) -> Self {
        let config = store.with_extension("conf");
        std::fs::write(
            &config,
            format!("authorization {{ users = [ {{ nkey: \"{public_key}\" }} ] }}\n"),
        )
        .unwrap_or_else(|e| panic!("writing {}: {e}", config.display()));
        let mut nats = Self::loopback(store);
        nats.config = Some(config);
        nats.started()
    }

    /// Starts a server that speaks TLS only, with this certificate and key.
    pub fn start_with_tls(store: &Path, cert: &Path, key: &Path) -> Self {
        let mut nats = Self::loopback(store);
        nats.tls = Some((cert.to_path_buf(), key.to_path_buf()));
        nats.started()
    }

    fn start_as(store: &Path, auth: Option<(String, String)>) -> Self {
        let mut nats = Self::loopback(store);
        nats.auth = auth;
        nats.started()
    }

    /// A server not started yet, on a free loopback port, with nothing
    /// demanded of its clients.
    fn loopback(store: &Path) -> Self {
        Self {
            child: None,
            port: free_port(),
            store: store.to_path_buf(),
            auth: None,
            tls: None,
            addr: "127.0.0.1".to_owned(),
            netns: None,
            config: None,
        }
    }

    fn started(mut self) -> Self {
        self.restart();
        self
    }

    /// Starts a server in network namespace `netns`, listening on `addr`
    /// at port 4222 (a host of a test network), speaking TLS only when
    /// given a certificate and key.
    pub fn start_on(
        store: &Path,
        netns: &str,
        addr: &str,
        tls: Option<(PathBuf, PathBuf)>,
    ) -> Self {
        let mut nats = Self::loopback(store);
        nats.port = 4222;
        nats.tls = tls;
        nats.addr = addr.to_owned();
        nats.netns = Some(netns.to_owned());
        nats.started()
    }

    /// The URL without credentials.
    pub fn url(&self) -> String {
        format!("nats://{}:{}", self.addr, self.port)
    }

    /// The URL with the user and password, when the server demands them.
    pub fn url_with_credentials(&self) -> String {
        match &self.auth {
            Some((user, password)) => {
                format!("nats://{user}:{password}@{}:{}", self.addr, self.port)
            }
            None => self.url(),
        }
    }

    /// Starts the server again on the same port and store.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "nats-server is already running");
        let mut command = match &self.netns {
            Some(netns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", netns, "nats-server"]);
                c
            }
            None => Command::new("nats-server"),
        };
        let child = command
            .args(["-js", "-a", &self.addr, "-p", &self.port.to_string(), "-sd"])
            .arg(&self.store)
            .args(
                self.config
                    .iter()
                    .flat_map(|c| [PathBuf::from("-c"), c.clone()]),
            )
            .args(self.auth.iter().flat_map(|(u, p)| {
                [
                    "--user".to_owned(),
                    u.clone(),
                    "--pass".to_owned(),
                    p.clone(),
                ]
            }))
            .args(self.tls.iter().flat_map(|(cert, key)| {
                [
                    "--tls".to_owned(),
                    "--tlscert".to_owned(),
                    cert.display().to_string(),
                    "--tlskey".to_owned(),
                    key.display().to_string(),
                ]
            }))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("nats-server not startable ({e}): run scripts/setup.sh"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((self.addr.as_str(), self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}
