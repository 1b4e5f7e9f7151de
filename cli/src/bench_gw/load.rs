//! The open-loop load of `bench gateway`: a run at a fixed rate, its
//! latency percentiles and table rows, and the search for the highest rate
//! a path sustains.

use super::*;

/// Where the highest-rate search starts, how each step grows, and where it stops.
pub(super) const SEARCH_FROM: f64 = 500.0;
pub(super) const SEARCH_STEP: f64 = 1.25;
pub(super) const SEARCH_UP_TO: f64 = 200_000.0;

/// What one open-loop run saw.
pub(super) struct Run {
    pub(super) rate: f64,
    pub(super) sent: u64,
    /// Latencies of the requests that succeeded, sorted.
    pub(super) latencies: Vec<Duration>,
    pub(super) errors: u64,
    pub(super) first_error: Option<String>,
    /// Due while `concurrency_max` requests were in flight: not sent.
    pub(super) missed: u64,
    /// How late the generator sent, sorted.
    pub(super) lags: Vec<Duration>,
    /// From the first due time to the last answer.
    pub(super) elapsed: Duration,
}

pub(super) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    // Nearest rank.
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(super) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl Run {
    pub(super) fn ok(&self) -> u64 {
        self.latencies.len() as u64
    }

    pub(super) fn achieved(&self) -> f64 {
        self.ok() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub(super) fn p(&self, p: f64) -> Duration {
        percentile(&self.latencies, p)
    }

    pub(super) fn sustained(&self, max_p99: Duration) -> bool {
        self.errors == 0
            && self.missed == 0
            && self.achieved() >= 0.95 * self.rate
            && self.p(99.0) < max_p99
    }
}

/// Sends `rate` requests per second for `duration` on a fixed timetable,
/// waits for every answer.
pub(super) async fn open_loop(
    target: &Arc<Target>,
    rate: f64,
    duration: Duration,
    concurrency_max: usize,
) -> Run {
    let n = (rate * duration.as_secs_f64()).round() as u64;
    let in_flight = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut lags = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    let mut missed = 0;
    let start = Instant::now();
    for i in 0..n {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        let sent = Instant::now();
        lags.push(sent.saturating_duration_since(due));
        if in_flight.load(Ordering::Relaxed) >= concurrency_max {
            missed += 1;
            continue;
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let (target, in_flight, tx) = (Arc::clone(target), Arc::clone(&in_flight), tx.clone());
        tokio::spawn(async move {
            let result = target.call().await.map(|done| done - sent);
            in_flight.fetch_sub(1, Ordering::Relaxed);
            let _ = tx.send(result);
        });
    }
    drop(tx);
    let mut latencies = Vec::with_capacity(lags.len());
    let (mut errors, mut first_error) = (0, None);
    while let Some(result) = rx.recv().await {
        match result {
            Ok(latency) => latencies.push(latency),
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    lags.sort_unstable();
    Run {
        rate,
        sent: n - missed,
        latencies,
        errors,
        first_error,
        missed,
        lags,
        elapsed,
    }
}

pub(super) fn print_header() {
    println!(
        "  {:<8} {:>7} {:>7} {:>6} {:>6} {:>10} {:>8} {:>8} {:>8} {:>8} {:>10}",
        "path",
        "sent",
        "ok",
        "errors",
        "missed",
        "achieved/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "lag p99 ms"
    );
}

pub(super) fn print_run(name: &str, run: &Run) {
    println!(
        "  {:<8} {:>7} {:>7} {:>6} {:>6} {:>10.0} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>10.3}",
        name,
        run.sent,
        run.ok(),
        run.errors,
        run.missed,
        run.achieved(),
        ms(run.p(50.0)),
        ms(run.p(90.0)),
        ms(run.p(99.0)),
        ms(run.p(100.0)),
        ms(percentile(&run.lags, 99.0)),
    );
    if let Some(e) = &run.first_error {
        println!("  {name}: first error: {e}");
    }
}

/// Raises the rate step by step until a step is not sustained; returns the
/// highest sustained rate.
pub(super) async fn highest_rate(
    target: &Arc<Target>,
    args: &BenchGatewayArgs,
    max_p99: Duration,
) -> Option<f64> {
    let step = Duration::from_secs(args.step_seconds);
    let mut best = None;
    let mut rate = SEARCH_FROM;
    println!("  {} (steps of {} s):", target.name(), args.step_seconds);
    print_header();
    while rate <= SEARCH_UP_TO {
        let run = open_loop(target, rate, step, args.concurrency_max).await;
        print_run(&format!("{rate:.0}/s"), &run);
        if !run.sustained(max_p99) {
            break;
        }
        best = Some(rate);
        rate *= SEARCH_STEP;
        // Let the previous step's connections and allowances settle.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    best
}

/// The median of the rates found (a round that found none counts as the
/// lowest); `None` when no round found one.
pub(super) fn median(rates: &[Option<f64>]) -> Option<f64> {
    let mut found: Vec<f64> = rates.iter().map(|r| r.unwrap_or(0.0)).collect();
    found.sort_by(f64::total_cmp);
    found.get(found.len() / 2).copied().filter(|r| *r > 0.0)
}
