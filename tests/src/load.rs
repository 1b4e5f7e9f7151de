//! Clients asking through gateways until stopped, each request streamed
//! and classified as an answer (with its tokens) or a clean error: the load
//! that drills inject faults under.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::system::{Answer, Api, MODEL, eventually};

/// What a client saw of one request.
#[derive(Debug, Clone, Copy)]
pub enum Seen {
    Answered {
        tokens: u64,
        at: Instant,
    },
    /// A refusal (429, 502, 503, 504) or a stream cut short, each with an
    /// error message.
    CleanError,
}

/// Seconds since the Unix epoch, with milliseconds.
fn unix_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!("{:.3}", now.as_secs_f64())
}

/// One streamed question; panics on anything but an answer or a clean error.
pub async fn stream_once(api: &Api, key: &str, user: &str) -> Seen {
    let req = api
        .post("/v1/chat/completions", key)
        .header("X-User-ID", user)
        .json(&json!({
            "model": MODEL, "stream": true, "max_tokens": 48, "temperature": 0,
            "messages": [{"role": "user", "content": "Write about rivers and mountains."}],
        }));
    let sent = unix_now();
    let answer: Answer = tokio::time::timeout(Duration::from_secs(30), api.send(req))
        .await
        .unwrap_or_else(|_| {
            // Which gateway, which client and when, to line up with the
            // drill's own printed phases.
            panic!(
                "a request through {} as {user}, sent at {sent} (unix s), hung for 30 s",
                api.base
            )
        })
        .expect("the connection broke without an HTTP answer");
    match (answer.status, &answer.stream_error, &answer.usage) {
        (200, None, Some(_)) => Seen::Answered {
            tokens: answer.total_tokens(),
            at: Instant::now(),
        },
        (200, Some(e), _) => {
            assert!(e["error"]["message"].as_str().is_some(), "{e:?}");
            Seen::CleanError
        }
        (429 | 502 | 503 | 504, _, _) => {
            assert!(
                answer.body["error"]["message"].as_str().is_some(),
                "{:?}",
                answer.body
            );
            Seen::CleanError
        }
        other => panic!("unexpected answer {other:?}: {:?}", answer.body),
    }
}

/// `clients` clients, client `i` on `apis[i % apis.len()]` as user
/// `user-<i>`, each asking again as soon as it has its answer (after a
/// clean error, 200 ms later).
pub struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicUsize>,
    clients: Vec<tokio::task::JoinHandle<Vec<Seen>>>,
}

impl Load {
    pub fn start(apis: &[Api], key: &str, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicUsize::new(0));
        let clients = (0..clients)
            .map(|i| {
                let api = apis[i % apis.len()].clone();
                let (key, stop, answered) =
                    (key.to_owned(), Arc::clone(&stop), Arc::clone(&answered));
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        let s = stream_once(&api, &key, &format!("user-{i}")).await;
                        match s {
                            Seen::Answered { .. } => {
                                answered.fetch_add(1, Ordering::SeqCst);
                            }
                            Seen::CleanError => {
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                        }
                        seen.push(s);
                    }
                    seen
                })
            })
            .collect();
        Self {
            stop,
            answered,
            clients,
        }
    }

    /// Answers so far.
    pub fn answered(&self) -> usize {
        self.answered.load(Ordering::SeqCst)
    }

    /// Waits until `by` more requests were answered than now.
    pub async fn grows(&self, by: usize, when: &str) {
        let target = self.answered() + by;
        if let Err(e) = eventually(
            &format!("{by} answers {when}"),
            Duration::from_secs(90),
            || async { (self.answered() >= target).then_some(()) },
        )
        .await
        {
            panic!("{e:#}");
        }
    }

    /// Stops the clients once their requests end; what they saw.
    pub async fn stop(self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        let mut seen = Vec::new();
        for c in self.clients {
            match c.await {
                Ok(s) => seen.extend(s),
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        }
        Outcome(seen)
    }
}

/// Every request a [`Load`] made, as its clients saw it.
#[derive(Debug)]
pub struct Outcome(pub Vec<Seen>);

impl Outcome {
    /// The tokens of the answered requests: what the ledger must hold.
    pub fn tokens(&self) -> u64 {
        self.0
            .iter()
            .map(|s| match s {
                Seen::Answered { tokens, .. } => *tokens,
                Seen::CleanError => 0,
            })
            .sum()
    }

    pub fn errors(&self) -> usize {
        self.0
            .iter()
            .filter(|s| matches!(s, Seen::CleanError))
            .count()
    }

    /// Requests answered after `t`.
    pub fn answered_after(&self, t: Instant) -> usize {
        self.0
            .iter()
            .filter(|s| matches!(s, Seen::Answered { at, .. } if *at > t))
            .count()
    }
}
