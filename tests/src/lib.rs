//! Helpers for cross-component tests that launch the real `bulkhead` binary.
//!
//! The binary is found next to the test executable (`target/<profile>/bulkhead`),
//! or at `$BULKHEAD_BIN`, and built with `cargo build -p bulkhead` when it is
//! missing. A launched process is killed when its handle drops, so a failing
//! test leaves nothing running.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};

/// Path of the `bulkhead` binary of this build, building it if needed.
pub fn bulkhead_bin() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("BULKHEAD_BIN") {
        return Ok(PathBuf::from(bin));
    }
    // target/<profile>/deps/<test-exe> -> target/<profile>/bulkhead
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .context("test executable has no target/<profile> directory")?;
    let bin = profile_dir.join("bulkhead");
    if !bin.is_file() {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "-p", "bulkhead"])
            .status()
            .context("running cargo build -p bulkhead")?;
        if !status.success() || !bin.is_file() {
            bail!("could not build the bulkhead binary at {}", bin.display());
        }
    }
    Ok(bin)
}

fn forward_lines(from: impl std::io::Read + Send + 'static, to: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if to.send(line).is_err() {
                break;
            }
        }
    });
}

/// A running `bulkhead` process whose stdout and stderr are collected line by line.
pub struct Process {
    child: Child,
    /// The command line, to name the process in a failed test's output.
    label: String,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Process {
    /// Starts `bulkhead ARGS`.
    pub fn spawn<I, S>(args: I) -> anyhow::Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Self::spawn_with_env(args, &[])
    }

    /// Starts `bulkhead ARGS` with extra environment variables (the
    /// bulkhead variables of the test's own environment are not inherited).
    pub fn spawn_with_env<I, S>(args: I, env: &[(&str, &str)]) -> anyhow::Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        Self::spawn_in(None, args, env)
    }

    /// Starts `bulkhead ARGS` with extra environment variables, in network
    /// namespace `netns` when one is given (a host of a [`lan::Lan`]).
    pub fn spawn_in<I, S>(
        netns: Option<&str>,
        args: I,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = match netns {
            // `ip netns exec` execs the program: the child is bulkhead itself.
            Some(netns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", netns]).arg(bulkhead_bin()?);
                c
            }
            None => Command::new(bulkhead_bin()?),
        };
        let args: Vec<std::ffi::OsString> =
            args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let label = args
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" ");
        // BULKHEAD_TEST_LOG raises the launched processes' log level when a
        // failure needs more than `info` to explain.
        let log = std::env::var("BULKHEAD_TEST_LOG").unwrap_or_else(|_| "info".into());
        let mut child = command
            .args(&args)
            .env("BULKHEAD_LOG", log)
            .env_remove("BULKHEAD_ADMIN_TOKEN")
            .env_remove("BULKHEAD_CONTROL_PLANE")
            .env_remove("BULKHEAD_CLUSTER_SECRET")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting bulkhead")?;
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().context("child stdout")?;
        let stderr = child.stderr.take().context("child stderr")?;
        forward_lines(stdout, tx.clone());
        forward_lines(stderr, tx);
        Ok(Self {
            child,
            label,
            lines,
            seen: Vec::new(),
        })
    }

    /// Waits for a stderr line containing `needle` and returns the text after it.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line
                        .find(needle)
                        .map(|at| line[at + needle.len()..].trim().to_owned());
                    self.seen.push(line);
                    if let Some(rest) = found {
                        return Ok(rest);
                    }
                }
                Err(_) => bail!(
                    "no line containing {needle:?} within {timeout:?}; stderr so far:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The most memory the process has held (its peak resident set, VmHWM),
    /// in KiB; None where /proc does not say.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// Every line seen so far.
    pub fn output(&self) -> String {
        self.seen.join("\n")
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM failed");
        }
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                bail!("bulkhead did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// How many of its last lines a process shows when its test fails.
const LINES_ON_FAILURE: usize = 200;

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A failing test shows what each of its processes said last, so a
        // failure seen only in CI can be explained from CI's output.
        if std::thread::panicking() {
            while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(500)) {
                self.seen.push(line);
            }
            let from = self.seen.len().saturating_sub(LINES_ON_FAILURE);
            eprintln!(
                "--- last {} lines of `bulkhead {}` (pid {}) ---\n{}\n--- end of `bulkhead {}` ---",
                self.seen.len() - from,
                self.label,
                self.child.id(),
                self.seen[from..].join("\n"),
                self.label
            );
        }
    }
}

pub mod cluster;
pub mod lan;
pub mod load;
pub mod model;
pub use model::demo_model;
pub mod nats;
pub mod scripted_worker;
pub use nats::free_port;
pub mod system;
