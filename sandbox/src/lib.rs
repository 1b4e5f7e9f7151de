//! The sandbox of server-side tools (DESIGN.md §13): runs a tenant's
//! untrusted Python in a fresh bubblewrap container per call, with
//!
//! - no network (a network namespace of its own, and no sockets but
//!   `AF_UNIX`);
//! - a read-only root that holds only `/usr` (the system's Python and its
//!   libraries), with no `/etc`, no home, no data dirs: nothing of bulkhead's
//!   or of another tenant's is mounted;
//! - a process namespace of its own, so `/proc` shows only the run;
//! - a per-call working directory, `/work`, whose files come back as the
//!   run's outputs;
//! - limits on CPU time, address space, processes, file size, wall time and
//!   output size, each named in the outcome when it stops the run;
//! - no capabilities, no new user namespaces, and a seccomp deny list
//!   ([`seccomp`]).
//!
//! As root, each concurrent run gets a uid of its own from a pool, so that
//! the process limit counts that run alone and its files belong to nobody
//! else. The sandbox owns the scratch directories under its root and
//! removes each when its run ends; it never runs anything outside
//! bubblewrap.

pub mod seccomp;

use std::collections::VecDeque;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The first uid of the pool runs get as root (far above any real user's).
const UID_BASE: u32 = 1_900_000;
/// How many runs may be in flight at once as root.
const UID_POOL: u32 = 64;
/// The Python every run uses: the system's, under the read-only `/usr`.
const PYTHON: &str = "/usr/bin/python3";
/// The script's name in the working directory.
const SCRIPT: &str = "main.py";

/// What one run may use. The defaults suit a chat's "compute this, write a
/// CSV" step on a small machine.
#[derive(Debug, Clone)]
pub struct Limits {
    /// CPU time of each process (`RLIMIT_CPU`).
    pub cpu: Duration,
    /// Address space of each process (`RLIMIT_AS`).
    pub memory: u64,
    /// Wall-clock time of the whole run.
    pub wall: Duration,
    /// Processes and threads at once (`RLIMIT_NPROC`).
    pub processes: u32,
    /// Bytes of stdout and stderr kept; writing more stops the run.
    pub output: usize,
    /// Size of each file written (`RLIMIT_FSIZE`), and of `/tmp` in all.
    pub file_size: u64,
    /// Output files returned at most.
    pub files: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            cpu: Duration::from_secs(10),
            memory: 512 << 20,
            wall: Duration::from_secs(15),
            processes: 32,
            output: 64 << 10,
            file_size: 16 << 20,
            files: 16,
        }
    }
}

/// The limit that stopped a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Cpu,
    Memory,
    WallTime,
    Processes,
    Output,
    FileSize,
}

impl Limit {
    /// Its name in tool results and the audit trail.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cpu => "cpu_time",
            Self::Memory => "memory",
            Self::WallTime => "wall_time",
            Self::Processes => "processes",
            Self::Output => "output_size",
            Self::FileSize => "file_size",
        }
    }
}

/// A file the run was given, or wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    /// A plain file name (no directories).
    pub name: String,
    pub bytes: Vec<u8>,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The script's exit code; `None` when a signal or the sandbox stopped it.
    pub exit_code: Option<i32>,
    /// The limit that stopped it, if one did.
    pub limit: Option<Limit>,
    /// Its output, cut at [`Limits::output`] bytes in all.
    pub stdout: String,
    pub stderr: String,
    /// Files it wrote into its working directory (at most [`Limits::files`]).
    pub files: Vec<File>,
    pub duration: Duration,
}

impl Outcome {
    /// Ran to the end and exited 0.
    pub fn succeeded(&self) -> bool {
        self.exit_code == Some(0) && self.limit.is_none()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("the sandbox cannot run on this machine: {0}")]
    Unavailable(String),
    #[error("every sandbox is busy ({UID_POOL} runs at once); try again shortly")]
    Busy,
    #[error("{0:?} is not a plain file name")]
    BadName(String),
    #[error("sandbox scratch space: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs scripts, one bubblewrap container each.
#[derive(Debug)]
pub struct Sandbox {
    root: PathBuf,
    seccomp: PathBuf,
    limits: Limits,
    /// Runs get uids of their own from [`UIDS`] (as root), else keep this
    /// process's uid.
    own_uids: bool,
    next: AtomicU64,
}

impl Sandbox {
    /// A sandbox whose scratch directories live under `root` (created, mode
    /// 0711: runs can reach their own directory, not list the others).
    pub fn new(root: &Path, limits: Limits) -> Result<Self, SandboxError> {
        for tool in ["bwrap", "prlimit"] {
            if which(tool).is_none() {
                return Err(SandboxError::Unavailable(format!(
                    "`{tool}` is not installed (Debian: apt install {})",
                    if tool == "bwrap" {
                        "bubblewrap"
                    } else {
                        "util-linux"
                    }
                )));
            }
        }
        if !Path::new(PYTHON).exists() {
            return Err(SandboxError::Unavailable(format!(
                "{PYTHON} is missing (Debian: apt install python3)"
            )));
        }
        std::fs::DirBuilder::new().recursive(true).create(root)?;
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o711))?;
        let seccomp = root.join("seccomp.bpf");
        let program = seccomp::program().map_err(SandboxError::Unavailable)?;
        std::fs::write(&seccomp, program)?;
        std::fs::set_permissions(&seccomp, std::fs::Permissions::from_mode(0o644))?;
        let own_uids = rustix::process::geteuid().is_root();
        Ok(Self {
            root: root.to_owned(),
            seccomp,
            limits,
            own_uids,
            next: AtomicU64::new(0),
        })
    }

    /// Runs `code` as `/work/main.py` with `inputs` beside it, and answers
    /// how it ended with what it printed and the files it wrote.
    pub async fn run_python(&self, code: &str, inputs: &[File]) -> Result<Outcome, SandboxError> {
        for f in inputs {
            if !plain_name(&f.name) || f.name == SCRIPT {
                return Err(SandboxError::BadName(f.name.clone()));
            }
        }
        let uid = Uid::take(self)?;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let dir = self.root.join(format!("run-{}-{n}", std::process::id()));
        let result = self.run_in(&dir, uid.0, code, inputs).await;
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(dir = %dir.display(), error = %e, "removing a sandbox run's directory failed");
        }
        result
    }

    async fn run_in(
        &self,
        dir: &Path,
        uid: Option<u32>,
        code: &str,
        inputs: &[File],
    ) -> Result<Outcome, SandboxError> {
        std::fs::DirBuilder::new().mode(0o700).create(dir)?;
        write_file(&dir.join(SCRIPT), code.as_bytes())?;
        for f in inputs {
            write_file(&dir.join(&f.name), &f.bytes)?;
        }
        if let Some(uid) = uid {
            std::os::unix::fs::chown(dir, Some(uid), Some(uid))?;
        }
        let started = Instant::now();
        let mut command = self.command(dir, uid)?;
        let mut child = command.spawn()?;
        let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(SandboxError::Unavailable("no pipes to the run".into()));
        };
        let cap = self.limits.output;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let reading = read_both(stdout, stderr, cap, &mut out, &mut err);
        let mut stopped = None;
        match tokio::time::timeout(self.limits.wall, reading).await {
            Ok(false) => {}
            Ok(true) => stopped = Some(Limit::Output),
            Err(_) => stopped = Some(Limit::WallTime),
        }
        let status = match stopped {
            Some(_) => None,
            None => tokio::time::timeout(
                self.limits.wall.saturating_sub(started.elapsed()),
                child.wait(),
            )
            .await
            .ok(),
        };
        let status = match status {
            Some(status) => status?,
            None => {
                stopped = stopped.or(Some(Limit::WallTime));
                // bwrap's death takes the whole process namespace with it.
                let _ = child.kill().await;
                child.wait().await?
            }
        };
        let duration = started.elapsed();
        out.truncate(cap);
        err.truncate(cap.saturating_sub(out.len()));
        let stdout = String::from_utf8_lossy(&out).into_owned();
        let stderr = String::from_utf8_lossy(&err).into_owned();
        // bwrap exits 128 + the signal that ended the script.
        let code = status.code();
        let signal = code.filter(|c| *c > 128).map(|c| c - 128);
        let limit = stopped.or_else(|| named_limit(signal, &stderr));
        let exit_code = if stopped.is_some() || signal.is_some() {
            None
        } else {
            code
        };
        let files = self.outputs(dir, inputs)?;
        Ok(Outcome {
            exit_code,
            limit,
            stdout,
            stderr,
            files,
            duration,
        })
    }

    fn command(
        &self,
        dir: &Path,
        uid: Option<u32>,
    ) -> Result<tokio::process::Command, SandboxError> {
        let l = &self.limits;
        // Processes already running as this uid count against the limit
        // when runs keep the caller's uid.
        let nproc = match uid {
            Some(_) => l.processes,
            None => l.processes + tasks_of_own_uid(),
        };
        let cpu = l.cpu.as_secs().max(1);
        let mut c = tokio::process::Command::new("prlimit");
        // Nothing of this process's environment (credentials) reaches the
        // sandbox, not even bwrap's own, which its `/proc/1` would show.
        c.env_clear().env("PATH", "/usr/bin:/bin");
        c.arg(format!("--cpu={cpu}:{}", cpu + 1))
            .arg(format!("--as={}", l.memory))
            .arg(format!("--nproc={nproc}"))
            .arg(format!("--fsize={}", l.file_size))
            .args(["--nofile=256", "--core=0", "--", "bwrap"])
            .args([
                "--unshare-all",
                "--unshare-user",
                "--disable-userns",
                "--die-with-parent",
                "--new-session",
                "--cap-drop",
                "ALL",
                "--hostname",
                "sandbox",
                "--ro-bind",
                "/usr",
                "/usr",
            ]);
        for top in ["bin", "sbin", "lib", "lib32", "lib64"] {
            let host = Path::new("/").join(top);
            match std::fs::read_link(&host) {
                Ok(target) => {
                    c.arg("--symlink").arg(target).arg(&host);
                }
                Err(_) if host.is_dir() => {
                    c.arg("--ro-bind").arg(&host).arg(&host);
                }
                Err(_) => {}
            }
        }
        c.args(["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"])
            .args(["--ro-bind-try", "/etc/localtime", "/etc/localtime"])
            .args(["--proc", "/proc", "--dev", "/dev"])
            .arg("--size")
            .arg(l.file_size.to_string())
            .args(["--tmpfs", "/tmp", "--bind"])
            .arg(dir)
            .args(["/work", "--chdir", "/work", "--clearenv"])
            .args(["--setenv", "PATH", "/usr/bin:/bin"])
            .args(["--setenv", "HOME", "/work"])
            .args(["--setenv", "LANG", "C.UTF-8"])
            .args(["--seccomp", "0", "--", PYTHON, "-I", "-B", SCRIPT]);
        if let Some(uid) = uid {
            c.uid(uid).gid(uid);
        }
        // bwrap reads the filter from its stdin, so the script reads nothing.
        c.stdin(std::fs::File::open(&self.seccomp)?)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        Ok(c)
    }

    /// The plain files the run left in its directory, other than its script
    /// and the inputs as they were given.
    fn outputs(&self, dir: &Path, inputs: &[File]) -> Result<Vec<File>, SandboxError> {
        let mut files = Vec::new();
        let mut entries: Vec<_> = std::fs::read_dir(dir)?.filter_map(Result::ok).collect();
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for entry in entries {
            if files.len() >= self.limits.files {
                break;
            }
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            let meta = entry.path().symlink_metadata()?;
            if name == SCRIPT || !meta.is_file() || meta.len() > self.limits.file_size {
                continue;
            }
            let bytes = std::fs::read(entry.path())?;
            if inputs.iter().any(|f| f.name == name && f.bytes == bytes) {
                continue;
            }
            files.push(File { name, bytes });
        }
        Ok(files)
    }
}

/// A uid of the pool for one run, given back when dropped.
///
/// A uid goes back to the end of the queue: the kernel may still be
/// tearing down the last run's namespace, whose processes count against
/// that uid's process limit for a moment.
struct Uid(Option<u32>);

/// The free uids of the process (every [`Sandbox`] of it draws from them),
/// least recently used first.
static UIDS: Mutex<VecDeque<u32>> = Mutex::new(VecDeque::new());
static UIDS_FILLED: std::sync::Once = std::sync::Once::new();

impl Uid {
    fn take(sandbox: &Sandbox) -> Result<Self, SandboxError> {
        if !sandbox.own_uids {
            return Ok(Self(None));
        }
        UIDS_FILLED.call_once(|| pool().extend(UID_BASE..UID_BASE + UID_POOL));
        let uid = pool().pop_front().ok_or(SandboxError::Busy)?;
        Ok(Self(Some(uid)))
    }
}

fn pool() -> std::sync::MutexGuard<'static, VecDeque<u32>> {
    UIDS.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Drop for Uid {
    fn drop(&mut self) {
        if let Some(uid) = self.0 {
            pool().push_back(uid);
        }
    }
}

/// Which limit a run that ended by itself ran into, from how it ended.
fn named_limit(signal: Option<i32>, stderr: &str) -> Option<Limit> {
    match signal {
        Some(s) if s == libc::SIGXCPU || s == libc::SIGKILL => return Some(Limit::Cpu),
        Some(s) if s == libc::SIGXFSZ => return Some(Limit::FileSize),
        _ => {}
    }
    if stderr.contains("MemoryError") || stderr.contains("Cannot allocate memory") {
        Some(Limit::Memory)
    } else if stderr.contains("BlockingIOError") || stderr.contains("can't start new thread") {
        Some(Limit::Processes)
    } else if stderr.contains("File too large") {
        Some(Limit::FileSize)
    } else {
        None
    }
}

/// Reads stdout and stderr to their ends into `out` and `err`, keeping at
/// most `cap` bytes in all; `true` (at once) when there is more.
async fn read_both(
    mut stdout: impl AsyncRead + Unpin,
    mut stderr: impl AsyncRead + Unpin,
    cap: usize,
    out: &mut Vec<u8>,
    err: &mut Vec<u8>,
) -> bool {
    let (mut a, mut b) = (vec![0u8; 16 << 10], vec![0u8; 16 << 10]);
    let (mut out_open, mut err_open) = (true, true);
    while out_open || err_open {
        tokio::select! {
            r = stdout.read(&mut a), if out_open => match r {
                Ok(0) | Err(_) => out_open = false,
                Ok(n) => out.extend_from_slice(&a[..n]),
            },
            r = stderr.read(&mut b), if err_open => match r {
                Ok(0) | Err(_) => err_open = false,
                Ok(n) => err.extend_from_slice(&b[..n]),
            },
        }
        if out.len() + err.len() > cap {
            return true;
        }
    }
    false
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), SandboxError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    f.write_all(bytes)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// A file name with no directory part, not hidden: what a run's inputs
/// must be named.
pub fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

/// Threads running as this process's uid (what `RLIMIT_NPROC` counts).
fn tasks_of_own_uid() -> u32 {
    let uid = rustix::process::getuid().as_raw().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return 0;
    };
    let mut n = 0u32;
    for p in procs.filter_map(Result::ok) {
        let Ok(status) = std::fs::read_to_string(p.path().join("status")) else {
            continue;
        };
        let mine = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|l| l.split_whitespace().next())
            == Some(uid.as_str());
        if mine {
            n += status
                .lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|t| t.trim().parse::<u32>().ok())
                .unwrap_or(1);
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain() {
        assert!(plain_name("customers.csv"));
        for bad in ["", "../x", "a/b", ".hidden", "x\0"] {
            assert!(!plain_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn limits_are_named_from_how_a_run_ended() {
        assert_eq!(named_limit(Some(libc::SIGXCPU), ""), Some(Limit::Cpu));
        assert_eq!(
            named_limit(None, "Traceback ...\nMemoryError\n"),
            Some(Limit::Memory)
        );
        assert_eq!(
            named_limit(
                None,
                "BlockingIOError: [Errno 11] Resource temporarily unavailable"
            ),
            Some(Limit::Processes)
        );
        assert_eq!(named_limit(None, "NameError: x"), None);
    }
}
