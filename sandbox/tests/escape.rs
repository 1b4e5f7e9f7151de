//! The escape suite (issue 15): what a tenant's code must not reach or do
//! from inside the sandbox, each tried for real with bubblewrap and the
//! system's Python, and what the run reports when a limit stops it.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use bulkhead_sandbox::{File, Limit, Limits, Outcome, Sandbox};

/// One run at a time: the check that no sandboxed process is left counts
/// every run's uids.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Short limits, so that the bombs are stopped quickly.
fn limits() -> Limits {
    Limits {
        cpu: Duration::from_secs(2),
        memory: 256 << 20,
        wall: Duration::from_secs(6),
        processes: 16,
        output: 64 << 10,
        file_size: 4 << 20,
        files: 8,
    }
}

async fn run(root: &Path, code: &str) -> Outcome {
    let sandbox = Sandbox::new(root, limits()).unwrap();
    let outcome = sandbox.run_python(code, &[]).await.unwrap();
    println!(
        "exit {:?}, limit {:?}, {:?}\nstdout: {}\nstderr: {}",
        outcome.exit_code,
        outcome.limit,
        outcome.duration,
        outcome.stdout,
        outcome.stderr.chars().take(600).collect::<String>()
    );
    outcome
}

/// Whether any process runs as a uid of the sandbox's pool (as root).
fn pool_processes() -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(Result::ok)
        .filter_map(|p| std::fs::read_to_string(p.path().join("status")).ok())
        .filter(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().next())
                .and_then(|u| u.parse::<u32>().ok())
                .is_some_and(|u| (1_900_000..1_900_064).contains(&u))
        })
        .count()
}

/// Nothing of the run is left: no directory but the filter, no process.
fn nothing_left(root: &Path) {
    let left: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "seccomp.bpf")
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // The kernel tears a dead namespace's processes down in a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    while pool_processes() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(pool_processes(), 0, "a sandboxed process outlived its run");
}

#[tokio::test]
async fn a_run_gets_its_inputs_and_its_files_come_back() {
    let _serial = SERIAL.lock().await;
    let root = tempfile::tempdir().unwrap();
    let sandbox = Sandbox::new(root.path(), limits()).unwrap();
    let code = "import csv\nrows = list(csv.reader(open('customers.csv')))\n\
        with open('report.csv', 'w', newline='') as f:\n    w = csv.writer(f)\n    w.writerow(['name', 'total'])\n\
        \x20   for name, amount in rows: w.writerow([name.upper(), int(amount) * 2])\n\
        print(len(rows), 'customers')\n";
    let input = File {
        name: "customers.csv".into(),
        bytes: b"acme,10\nglobex,20\ninitech,30\n".to_vec(),
    };
    let out = sandbox.run_python(code, &[input]).await.unwrap();
    assert!(out.succeeded(), "{out:?}");
    assert_eq!(out.stdout, "3 customers\n");
    assert_eq!(
        out.files,
        vec![File {
            name: "report.csv".into(),
            bytes: b"name,total\r\nACME,20\r\nGLOBEX,40\r\nINITECH,60\r\n".to_vec(),
        }],
        "only what the run wrote comes back"
    );
    let bad = File {
        name: "../escape.py".into(),
        bytes: Vec::new(),
    };
    let refused = sandbox.run_python("", &[bad]).await.unwrap_err();
    assert!(
        refused.to_string().contains("not a plain file name"),
        "{refused}"
    );
    nothing_left(root.path());
}

#[tokio::test]
async fn a_run_reads_no_other_files_and_sees_no_other_processes() {
    let _serial = SERIAL.lock().await;
    let root = tempfile::tempdir().unwrap();
    // Another tenant's run directory, the data dir and keys beside it.
    let other = root.path().join("run-other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("secret.txt"), "TOPSECRET other tenant").unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("keys.redb"), "TOPSECRET keys").unwrap();
    let me = std::process::id();
    let code = format!(
        "import os\n\
         for p in [{:?}, {:?}, '/etc/shadow', '/etc/passwd', '/root/.bashrc', '/proc/{me}/environ', '/proc/1/environ', '/sys/kernel/notes']:\n\
         \x20   try:\n\
         \x20       print(p, 'READ', open(p, 'rb').read(64))\n\
         \x20   except OSError as e:\n\
         \x20       print(p, 'refused', type(e).__name__)\n\
         print('pids', sorted(int(d) for d in os.listdir('/proc') if d.isdigit()))\n\
         print('root', sorted(os.listdir('/')))\n\
         for p in ['/usr/evil', '/work/../usr/evil']:\n\
         \x20   try:\n\
         \x20       open(p, 'w')\n\
         \x20       print(p, 'WROTE')\n\
         \x20   except OSError as e:\n\
         \x20       print(p, 'refused', e.strerror)\n",
        other.join("secret.txt").display().to_string(),
        data.path().join("keys.redb").display().to_string(),
    );
    let out = run(root.path(), &code).await;
    assert!(out.succeeded(), "{out:?}");
    assert!(!out.stdout.contains("TOPSECRET"), "{}", out.stdout);
    for line in out.stdout.lines().filter(|l| l.contains("READ")) {
        // bwrap's init is the namespace's pid 1, with an environment of
        // PATH alone: nothing of the gateway's.
        assert_eq!(
            line, "/proc/1/environ READ b'PATH=/usr/bin:/bin\\x00'",
            "{}",
            out.stdout
        );
    }
    assert!(!out.stdout.contains("WROTE"), "{}", out.stdout);
    // Its own process namespace: Python (and bwrap's init) alone.
    let pids = out.stdout.lines().find(|l| l.starts_with("pids")).unwrap();
    assert!(pids == "pids [1, 2]" || pids == "pids [1]", "{pids}");
    let listing = out.stdout.lines().find(|l| l.starts_with("root")).unwrap();
    for host_dir in [
        "'root'", "'home'", "'var'", "'opt'", "'srv'", "'mnt'", "'boot'",
    ] {
        assert!(!listing.contains(host_dir), "{listing}");
    }
    assert!(
        out.stdout
            .contains("/usr/evil refused Read-only file system"),
        "{}",
        out.stdout
    );
    std::fs::remove_dir_all(&other).unwrap();
    nothing_left(root.path());
}

#[tokio::test]
async fn a_run_connects_nowhere() {
    let _serial = SERIAL.lock().await;
    let root = tempfile::tempdir().unwrap();
    // What a gateway, the control plane or NATS would be on this host.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let code = format!(
        "import socket\n\
         for host, port in [('127.0.0.1', {port}), ('1.1.1.1', 53), ('::1', {port})]:\n\
         \x20   try:\n\
         \x20       socket.create_connection((host, port), timeout=2)\n\
         \x20       print(host, 'CONNECTED')\n\
         \x20   except OSError as e:\n\
         \x20       print(host, 'refused', e.strerror)\n\
         try:\n\
         \x20   socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n\
         \x20   print('packet OPENED')\n\
         except OSError as e:\n\
         \x20   print('packet refused', e.strerror)\n"
    );
    let out = run(root.path(), &code).await;
    assert!(out.succeeded(), "{out:?}");
    assert!(
        !out.stdout.contains("CONNECTED") && !out.stdout.contains("OPENED"),
        "{}",
        out.stdout
    );
    assert_eq!(
        out.stdout.matches("Operation not permitted").count(),
        4,
        "{}",
        out.stdout
    );
    assert!(listener.accept().is_err(), "the host's port was reached");
    nothing_left(root.path());
}

#[tokio::test]
async fn the_seccomp_filter_refuses_namespaces_tracing_and_mounts() {
    let _serial = SERIAL.lock().await;
    let root = tempfile::tempdir().unwrap();
    let code = "import ctypes, os\n\
        libc = ctypes.CDLL(None, use_errno=True)\n\
        for name, call in [('unshare', lambda: libc.unshare(0x00020000)),\n\
        \x20                  ('ptrace', lambda: libc.ptrace(0, 0, 0, 0)),\n\
        \x20                  ('mount', lambda: libc.mount(b'none', b'/tmp', b'tmpfs', 0, None)),\n\
        \x20                  ('keyctl', lambda: libc.syscall(250, 0, 0, 0, 0))]:\n\
        \x20   r = call()\n\
        \x20   print(name, r, os.strerror(ctypes.get_errno()))\n";
    let out = run(root.path(), code).await;
    assert!(out.succeeded(), "{out:?}");
    for call in ["unshare", "ptrace", "mount", "keyctl"] {
        assert!(
            out.stdout
                .contains(&format!("{call} -1 Operation not permitted")),
            "{call}: {}",
            out.stdout
        );
    }
    nothing_left(root.path());
}

#[tokio::test]
async fn bombs_and_loops_are_stopped_at_their_limits() {
    let _serial = SERIAL.lock().await;
    let root = tempfile::tempdir().unwrap();
    let wall = limits().wall;
    for (what, code, limit) in [
        (
            "fork bomb",
            "import os\nwhile True:\n    os.fork()\n",
            Limit::Processes,
        ),
        (
            "memory bomb",
            "chunks = []\nwhile True:\n    chunks.append(bytearray(16 << 20))\n",
            Limit::Memory,
        ),
        ("infinite loop", "while True:\n    pass\n", Limit::Cpu),
        (
            "1 GB print",
            "import sys\nline = 'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.write(line)\n",
            Limit::Output,
        ),
        (
            "a file past its size",
            "with open('big.bin', 'wb') as f:\n    f.write(bytes(64 << 20))\n",
            Limit::FileSize,
        ),
        ("sleep", "import time\ntime.sleep(3600)\n", Limit::WallTime),
    ] {
        let out = run(root.path(), code).await;
        assert_eq!(out.limit, Some(limit), "{what}: {out:?}");
        assert!(!out.succeeded(), "{what}");
        assert!(
            out.duration < wall + Duration::from_secs(3),
            "{what} took {:?}",
            out.duration
        );
        assert!(
            out.stdout.len() + out.stderr.len() <= limits().output,
            "{what}"
        );
        assert!(out.files.iter().all(|f| f.bytes.len() <= 4 << 20), "{what}");
        println!(
            "{what}: stopped by {} in {:?}",
            limit.as_str(),
            out.duration
        );
        nothing_left(root.path());
    }
}
