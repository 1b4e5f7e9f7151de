//! Step 7 of a chat request (DESIGN.md section 3): the worker's stream read
//! to its end, answered whole or as server-sent events, the reservation
//! settled with the exact usage, the turns appended to the session, and a
//! broken stream turned into a clean error with nothing billed.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use bulkhead_proto::control as cp;
use bulkhead_proto::openai;
use bulkhead_proto::worker as pb;
use futures::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument;

use super::{AppState, REQUEST_ID_HEADER};
use crate::error::{GatewayError, rate_limit_headers};
use crate::quota::{Budget, Permit};

pub(super) fn answer_headers(headers: &mut HeaderMap, request_id: &str, budget: Budget) {
    if let Ok(v) = HeaderValue::from_str(request_id) {
        headers.insert(REQUEST_ID_HEADER, v);
    }
    let reset_s = u64::try_from((budget.resets_at_ms - crate::now_ms()).max(0) / 1000).unwrap_or(0);
    rate_limit_headers(headers, budget.limit, budget.remaining, reset_s, None);
}
/// What is left to do once the worker has answered.
pub(super) struct Outcome {
    pub(super) state: Arc<AppState>,
    pub(super) tenant_id: String,
    pub(super) session_id: String,
    pub(super) user_id: String,
    /// Set for a user's key: the session must be this user's.
    pub(super) owner: String,
    pub(super) new_turns: Vec<cp::Turn>,
    pub(super) started: Instant,
}

impl Outcome {
    /// Step 7: the usage settles the reservation; the turns join the session.
    async fn settle(&mut self, permit: Permit, finished: &pb::Finished, text: &str) {
        self.settle_usage(permit, finished);
        self.save_turns(Vec::new(), text).await;
    }

    /// The usage settles the reservation.
    pub(super) fn settle_usage(&self, permit: Permit, finished: &pb::Finished) {
        let usage = finished.usage.unwrap_or_default();
        permit.settle(u64::from(usage.prompt_tokens) + u64::from(usage.completion_tokens));
        self.state.metrics.observe_tokens(
            &self.tenant_id,
            usage.prompt_tokens,
            usage.completion_tokens,
        );
    }

    /// The request's turns, the tool steps' (`steps`), and the answer join
    /// the session.
    pub(super) async fn save_turns(&mut self, steps: Vec<cp::Turn>, text: &str) {
        if self.session_id.is_empty() {
            return;
        }
        let mut turns = std::mem::take(&mut self.new_turns);
        turns.extend(steps);
        turns.push(cp::Turn {
            role: "assistant".into(),
            content: text.to_owned(),
            ..Default::default()
        });
        let msg = cp::AppendTurnsRequest {
            tenant_id: self.tenant_id.clone(),
            session_id: self.session_id.clone(),
            user_id: self.user_id.clone(),
            turns,
            owner: self.owner.clone(),
        };
        if let Err(e) = self.state.turns.call(msg).await {
            tracing::warn!(error = %e, "the answer could not be saved to the session");
        }
    }

    /// When the request must be done by.
    pub(super) fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::from_std(self.started + self.state.request_deadline)
    }

    fn deadline_exceeded(&self) -> GatewayError {
        GatewayError::DeadlineExceeded(format!(
            "the request ran past the gateway's deadline of {} s and was stopped; ask for fewer tokens or retry",
            self.state.request_deadline.as_secs_f32()
        ))
    }

    pub(super) fn observe(&self, status: u16) {
        self.state.metrics.observe_request(
            &self.tenant_id,
            status,
            self.started.elapsed().as_secs_f64(),
        );
    }
}

pub(super) fn usage_json(f: &pb::Finished) -> serde_json::Value {
    let u = f.usage.unwrap_or_default();
    openai::usage(u.prompt_tokens, u.completion_tokens, u.cached_tokens)
}

fn worker_broke(detail: &str) -> GatewayError {
    GatewayError::Upstream(format!(
        "the worker failed while generating ({detail}); nothing was billed, retry the request"
    ))
}

/// Reads a worker's stream to its end (the trailers that follow `Finished`)
/// off the request path (the streaming path reads it inline in its own task). Dropped earlier, the stream is reset, the trailers
/// then arrive for a stream the connection has forgotten, and after 1024 of
/// those h2 closes the connection to the worker (ENHANCE_YOUR_CALM), failing
/// every request in flight on it.
fn drain(mut stream: tonic::Streaming<pb::GenerateResponse>) {
    tokio::spawn(async move { while let Some(Ok(_)) = stream.next().await {} });
}

/// Reads a worker's answer whole into `reply`, to its result. On an error
/// the stream is dropped, which tells the worker to stop.
pub(super) async fn collect(
    outcome: &Outcome,
    mut stream: tonic::Streaming<pb::GenerateResponse>,
    reply: &mut openai::Reply,
) -> Result<pb::Finished, GatewayError> {
    let deadline = outcome.deadline();
    loop {
        let Ok(next) = tokio::time::timeout_at(deadline, stream.next()).await else {
            return Err(outcome.deadline_exceeded());
        };
        match next {
            Some(Ok(pb::GenerateResponse {
                kind: Some(pb::generate_response::Kind::Delta(d)),
            })) => {
                reply.delta(&d.text);
            }
            Some(Ok(pb::GenerateResponse {
                kind: Some(pb::generate_response::Kind::Finished(f)),
            })) => {
                drain(stream);
                return Ok(f);
            }
            Some(Ok(_)) => {}
            Some(Err(status)) => return Err(GatewayError::from_worker(&status)),
            None => return Err(worker_broke("the stream ended without a result")),
        }
    }
}

pub(super) async fn whole_answer(
    mut outcome: Outcome,
    permit: Permit,
    stream: tonic::Streaming<pb::GenerateResponse>,
    mut reply: openai::Reply,
    request_id: &str,
) -> Response {
    match collect(&outcome, stream, &mut reply).await {
        Ok(f) => {
            let budget = permit.budget();
            let body = reply.message(&f.finish_reason, usage_json(&f));
            outcome.settle(permit, &f, reply.content()).await;
            let mut response = axum::Json(body).into_response();
            answer_headers(response.headers_mut(), request_id, budget);
            outcome.observe(200);
            response
        }
        Err(error) => {
            // The permit is dropped unsettled: its reservation counts as spent.
            drop(permit);
            outcome.observe(error.status().as_u16());
            error.into_response()
        }
    }
}

pub(super) fn stream_answer(
    mut outcome: Outcome,
    permit: Permit,
    mut stream: tonic::Streaming<pb::GenerateResponse>,
    mut reply: openai::Reply,
    include_usage: bool,
    request_id: &str,
) -> Response {
    let first = reply.role_chunk();
    let budget = permit.budget();
    let (tx, rx) = tokio::sync::mpsc::channel::<SseEvent>(64);
    let span = tracing::Span::current();
    tokio::spawn(
        async move {
            let send = |event: SseEvent| {
                let tx = tx.clone();
                async move { tx.send(event).await.is_ok() }
            };
            let json = |value: serde_json::Value| SseEvent::default().data(value.to_string());
            if !send(json(first)).await {
                return;
            }
            let mut permit = Some(permit);
            let deadline = outcome.deadline();
            loop {
                let Ok(next) = tokio::time::timeout_at(deadline, stream.next()).await else {
                    // Dropping the stream tells the worker to stop.
                    let e = outcome.deadline_exceeded();
                    tracing::warn!(error = %e, "stream stopped at the deadline");
                    send(json(e.body())).await;
                    outcome.observe(e.status().as_u16());
                    return;
                };
                match next {
                    Some(Ok(pb::GenerateResponse {
                        kind: Some(pb::generate_response::Kind::Delta(d)),
                    })) => {
                        for chunk in reply.delta(&d.text) {
                            if !send(json(chunk)).await {
                                // The client went away: dropping the stream
                                // cancels the request on the worker.
                                outcome.observe(499);
                                return;
                            }
                        }
                    }
                    Some(Ok(pb::GenerateResponse {
                        kind: Some(pb::generate_response::Kind::Finished(f)),
                    })) => {
                        let last =
                            reply.final_chunks(&f.finish_reason, usage_json(&f), include_usage);
                        if let Some(permit) = permit.take() {
                            outcome.settle(permit, &f, reply.content()).await;
                        }
                        for chunk in last {
                            send(json(chunk)).await;
                        }
                        send(SseEvent::default().data("[DONE]")).await;
                        outcome.observe(200);
                        // The client's stream ends here: the trailers that
                        // follow `Finished` are read after, never waited on
                        // by the client (a worker slow to close its stream
                        // held answered clients for as long).
                        drop(tx);
                        while let Some(Ok(_)) = stream.next().await {}
                        return;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(status)) => {
                        let e = GatewayError::from_worker(&status);
                        let e = if matches!(e, GatewayError::Unavailable(_)) {
                            worker_broke(status.message())
                        } else {
                            e
                        };
                        tracing::warn!(error = %e, "stream broke");
                        send(json(e.body())).await;
                        outcome.observe(e.status().as_u16());
                        return;
                    }
                    None => {
                        let e = worker_broke("the stream ended without a result");
                        send(json(e.body())).await;
                        outcome.observe(e.status().as_u16());
                        return;
                    }
                }
            }
        }
        .instrument(span),
    );
    let body = ReceiverStream::new(rx).map(Ok::<_, Infallible>);
    let mut response = Sse::new(body)
        .keep_alive(KeepAlive::default())
        .into_response();
    answer_headers(response.headers_mut(), request_id, budget);
    response
}
