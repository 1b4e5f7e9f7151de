//! `bulkhead bench sandbox`: how long a sandboxed tool run takes to start
//! and end, for a script that does nothing (`pass`), so the figure is the
//! sandbox's own cost: the bubblewrap container, its limits and seccomp
//! filter, the scratch directory, and Python's start. The baseline, in the
//! same run, is the same Python started as a plain child process at its
//! defaults (`python3 -c pass`), with no sandbox.

use std::time::{Duration, Instant};

use bulkhead_sandbox::{Limits, Sandbox};

#[derive(clap::Args, Debug)]
pub struct BenchSandboxArgs {
    /// Runs of each.
    #[arg(long, default_value_t = 200)]
    runs: usize,
}

pub async fn run(args: BenchSandboxArgs) -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let limits = Limits::default();
    let sandbox = Sandbox::new(root.path(), limits.clone())?;
    // Warm the page cache for both.
    sandbox.run_python("pass", &[]).await?;
    let mut sandboxed = Vec::with_capacity(args.runs);
    let mut plain = Vec::with_capacity(args.runs);
    // Interleaved, so that a busy moment of the machine falls on both.
    for _ in 0..args.runs {
        let t = Instant::now();
        let out = sandbox.run_python("pass", &[]).await?;
        anyhow::ensure!(out.succeeded(), "a sandboxed `pass` failed: {out:?}");
        sandboxed.push(t.elapsed());
        let t = Instant::now();
        let status = tokio::process::Command::new("/usr/bin/python3")
            .args(["-c", "pass"])
            .status()
            .await?;
        anyhow::ensure!(status.success(), "python3 -c pass: {status}");
        plain.push(t.elapsed());
    }
    let (s50, s99) = percentiles(&mut sandboxed);
    let (p50, p99) = percentiles(&mut plain);
    println!(
        "sandbox: {} runs of `pass` under bubblewrap (no network, read-only /usr, own pid namespace, seccomp, \
         cpu {:?}, memory {} MiB, {} processes, wall {:?}): p50 {:.1} ms, p99 {:.1} ms",
        args.runs,
        limits.cpu,
        limits.memory >> 20,
        limits.processes,
        limits.wall,
        ms(s50),
        ms(s99)
    );
    println!(
        "baseline: {} runs of `python3 -c pass` as a plain child process (its defaults, no sandbox): p50 {:.1} ms, p99 {:.1} ms",
        args.runs,
        ms(p50),
        ms(p99)
    );
    println!(
        "ratio sandbox/baseline: p50 {:.2}, p99 {:.2}",
        ms(s50) / ms(p50),
        ms(s99) / ms(p99)
    );
    Ok(())
}

fn percentiles(v: &mut [Duration]) -> (Duration, Duration) {
    v.sort();
    let at = |q: f64| {
        let i = ((v.len() as f64 - 1.0) * q).round() as usize;
        v[i.min(v.len() - 1)]
    };
    (at(0.50), at(0.99))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
