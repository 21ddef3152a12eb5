//! The dispatcher: holds requests in SQS until their model has a Ready pod with a free slot, sends each
//! to the model's route, streams the answer to the reply queue, and only then deletes the request.
//!
//! # Expected flow (per model)
//! 1. Count free slots ([`crate::capacity`]). None free: receive nothing, so requests stay in SQS. If
//!    the model has no Ready pod at all and requests wait, send a wake-up request through its Knative
//!    route (below), and wait for a pod or node change.
//! 2. Receive at most as many requests as there are free slots, hidden for `visibility_timeout_s`.
//! 3. For each: validate it (malformed, wrong model, `reply_to` not allowed: to the dead-letter queue
//!    with the reason, then deleted; deadline passed: a `timeout` reply, then deleted); send it to the
//!    model, renewing its visibility at half-time; stream pieces to `reply_to` as `chunk` replies
//!    (batched every 100 ms) and the whole answer as one `final` reply; delete it only after the final
//!    reply is sent.
//! 4. A model failure worth retrying (5xx, connection lost, stream cut) makes the request visible again
//!    after `retry_backoff_s x 2^(attempt-1)` (at once when the stream was cut, as when its node went
//!    away); after `max_attempts` it gets an `error` reply and goes to the dead-letter queue with the
//!    reason. A refusal (4xx) is not retried.
//! 5. Every second, work in flight per node is written to the Node annotations the scaler reads
//!    (`zerospot.io/in-flight`, `zerospot.io/idle-since`).
//!
//! # Waking Knative
//! Held requests never reach Knative, so by themselves they would never make it create a pod. While
//! requests wait for a model with no Ready pod, the dispatcher keeps one expendable wake-up request in
//! flight through the model's route (Ollama: `POST /api/generate {"model": NAME}`, which only loads the
//! model; OpenAI API: `GET /v1/models`), re-sent every `wake_interval_s` until a pod is Ready. In Knative
//! Serving (v0.51) the activator receives it while the revision is at zero
//! (`pkg/activator/handler/handler.go`, `ServeHTTP`), and its concurrency reporter sends a stat at once
//! for a revision it had no stats for, "to trigger an immediate scale-from-0"
//! (`pkg/activator/handler/concurrency_reporter.go`, `getOrCreateStat`); the autoscaler's decider turns
//! the observed concurrency into a desired scale (`pkg/autoscaler/scaling/autoscaler.go`, `Scale`) and
//! the KPA reconciler writes it to `PodAutoscaler.status.desiredScale`
//! (`pkg/reconciler/autoscaling/kpa/kpa.go`), which the scaler watches; the activator's throttler holds
//! the request until the revision has a Ready endpoint (`pkg/activator/net/throttler.go`, `Try`). Once
//! pods are Ready, the dispatcher fills each to its `containerConcurrency`, so Knative's target
//! utilisation asks for more pods as the backlog grows.
//!
//! # Guarantees and limits
//! - A request leaves SQS only after its terminal reply (final, error or timeout) was sent, or after it
//!   was copied to the dead-letter queue.
//! - A dispatcher that dies mid-answer loses nothing: its requests become visible again after at most
//!   the visibility timeout and are answered by the next attempt; the client's reassembly drops the
//!   earlier attempt's chunks (each reply carries its attempt).
//! - One final reply per id per dispatcher: a request it already finished is deleted, not served again.
//!   Between two dispatchers, a second final is possible only if one dies in the few milliseconds
//!   between sending a final reply and deleting the request.
//! - Graceful shutdown (SIGTERM) stops receiving and hands every request in flight back to the queue at
//!   once (visibility 0).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::reflector::Store;
use tokio::sync::{Notify, watch};
use zerospot_core::request::{Request, RequestError};
use zerospot_effects::config::{ModelApi, ModelConfig, names};
use zerospot_effects::{Cluster, ScalerConfig};

use crate::capacity;
use crate::model::{ModelClient, ModelError};
use crate::queue::{Message, Queue};
use crate::reply::{Reply, ReplyKind, Timings};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Counters the dispatcher keeps (exported as metrics by the binary).
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests received from SQS.
    pub received: AtomicU64,
    /// Final replies sent.
    pub answered: AtomicU64,
    /// Requests retried after a model failure.
    pub retried: AtomicU64,
    /// Requests given up (error reply and dead-letter queue).
    pub failed: AtomicU64,
    /// Requests refused (malformed, wrong model, reply queue not allowed) to the dead-letter queue.
    pub refused: AtomicU64,
    /// Timeout replies.
    pub timed_out: AtomicU64,
    /// Wake-up requests sent.
    pub wakes: AtomicU64,
    /// Receive -> first byte to the model, microseconds, of the last 4096 dispatches.
    pub dispatch_overhead_us: Mutex<VecDeque<u64>>,
}

/// Shared state of one dispatcher.
#[derive(Debug, Default)]
pub struct State {
    in_flight: Mutex<HashMap<String, u32>>,
    completed: Mutex<(HashSet<String>, VecDeque<String>)>,
    changed: Notify,
    /// Counters.
    pub stats: Stats,
    /// When each model last went from no Ready pod to some.
    capacity_since: Mutex<HashMap<String, DateTime<Utc>>>,
}

impl State {
    fn in_flight(&self, model: &str) -> u32 {
        lock(&self.in_flight).get(model).copied().unwrap_or(0)
    }

    fn add(&self, model: &str, delta: i64) {
        let mut m = lock(&self.in_flight);
        let v = m.entry(model.to_owned()).or_default();
        *v = u32::try_from((i64::from(*v) + delta).max(0)).unwrap_or(0);
        drop(m);
        self.changed.notify_waiters();
    }

    fn finished(&self, id: &str) -> bool {
        lock(&self.completed).0.contains(id)
    }

    fn mark_finished(&self, id: &str) {
        let mut c = lock(&self.completed);
        if c.0.insert(id.to_owned()) {
            c.1.push_back(id.to_owned());
            while c.1.len() > 100_000 {
                if let Some(old) = c.1.pop_front() {
                    c.0.remove(&old);
                }
            }
        }
    }

    /// Wakes the model loops (a pod or node changed).
    pub fn poke(&self) {
        self.changed.notify_waiters();
    }

    /// Requests in flight per model.
    pub fn in_flight_by_model(&self) -> HashMap<String, u32> {
        lock(&self.in_flight).clone()
    }
}

/// The Kubernetes caches the dispatcher reads.
#[derive(Debug, Clone)]
pub struct Caches {
    /// Nodes.
    pub nodes: Store<Node>,
    /// Model pods.
    pub pods: Store<Pod>,
}

/// A dispatcher and everything it acts through.
pub struct Dispatcher {
    /// Configuration (models and the `dispatcher` section).
    pub config: ScalerConfig,
    /// SQS.
    pub queue: Arc<dyn Queue>,
    /// Kubernetes (Node annotations).
    pub cluster: Arc<dyn Cluster>,
    /// Model servers.
    pub model: ModelClient,
    /// Pods and nodes.
    pub caches: Caches,
    /// Shared state.
    pub state: Arc<State>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher").finish_non_exhaustive()
    }
}

struct Job {
    model: ModelConfig,
    message: Message,
    received_at: Instant,
}

impl Dispatcher {
    /// Runs until `shutdown` turns true; then hands every request in flight back to the queue.
    pub async fn run(self: Arc<Self>, shutdown: watch::Receiver<bool>) {
        let mut tasks = Vec::new();
        for model in self.config.models.clone() {
            if model.queue_url.is_none() {
                tracing::warn!(model = model.name, "no queue_url: nothing to dispatch");
                continue;
            }
            tasks.push(tokio::spawn(
                self.clone().model_loop(model, shutdown.clone()),
            ));
        }
        tasks.push(tokio::spawn(
            self.clone().publish_in_flight(shutdown.clone()),
        ));
        for t in tasks {
            let _ = t.await;
        }
        // Handlers see the shutdown too and release their requests; wait for them to finish.
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.state.in_flight_by_model().values().any(|v| *v > 0) && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::info!("dispatcher stopped");
    }

    fn pods_and_nodes(&self) -> (Vec<Arc<Pod>>, Vec<Arc<Node>>) {
        (self.caches.pods.state(), self.caches.nodes.state())
    }

    async fn model_loop(self: Arc<Self>, model: ModelConfig, mut shutdown: watch::Receiver<bool>) {
        let Some(url) = model.queue_url.clone() else {
            return;
        };
        let d = &self.config.dispatcher;
        let visibility = Duration::from_secs(u64::from(d.visibility_timeout_s.max(1)));
        let mut last_wake: Option<Instant> = None;
        let wake_outstanding = Arc::new(AtomicU32::new(0));
        let mut had_capacity = false;
        let mut backoff = Duration::from_millis(200);
        while !*shutdown.borrow() {
            let (pods, nodes) = self.pods_and_nodes();
            let pod_refs: Vec<&Pod> = pods.iter().map(AsRef::as_ref).collect();
            let node_refs: Vec<&Node> = nodes.iter().map(AsRef::as_ref).collect();
            let ready = capacity::ready_pod_nodes(&model, &pod_refs, &node_refs).len();
            if ready > 0 && !had_capacity {
                lock(&self.state.capacity_since).insert(model.name.clone(), Utc::now());
            }
            had_capacity = ready > 0;
            let free = capacity::free_slots(
                &model,
                &pod_refs,
                &node_refs,
                self.state.in_flight(&model.name),
            );
            if free == 0 {
                if ready == 0 {
                    let due = last_wake.is_none_or(|t| {
                        t.elapsed() >= Duration::from_secs(d.wake_interval_s.max(1))
                    });
                    if due && wake_outstanding.load(Ordering::Acquire) == 0 {
                        match self.queue.waiting(&url).await {
                            Ok(n) if n > 0 => {
                                last_wake = Some(Instant::now());
                                self.wake(&model, wake_outstanding.clone());
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(model = model.name, error = %e, "reading the queue depth failed")
                            }
                        }
                    }
                }
                tokio::select! {
                    () = self.state.changed.notified() => {}
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            let received = tokio::select! {
                r = self.queue.receive(&url, free.min(10), Duration::from_secs(1), visibility) => r,
                _ = shutdown.changed() => continue,
            };
            match received {
                Ok(messages) => {
                    backoff = Duration::from_millis(200);
                    for message in messages {
                        self.state.stats.received.fetch_add(1, Ordering::Relaxed);
                        self.state.add(&model.name, 1);
                        let job = Job {
                            model: model.clone(),
                            message,
                            received_at: Instant::now(),
                        };
                        tokio::spawn(self.clone().handle(job, shutdown.clone()));
                    }
                }
                Err(e) => {
                    tracing::warn!(model = model.name, error = %e, "receiving requests failed; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(20));
                }
            }
        }
    }

    /// One expendable request through the model's route, so that Knative scales it from zero.
    fn wake(&self, model: &ModelConfig, outstanding: Arc<AtomicU32>) {
        self.state.stats.wakes.fetch_add(1, Ordering::Relaxed);
        let client = self.model.clone();
        let endpoint = model.endpoint();
        let limit = Duration::from_secs(self.config.dispatcher.max_request_s);
        let name = model.name.clone();
        let api = model.api;
        outstanding.fetch_add(1, Ordering::AcqRel);
        tracing::info!(
            model = name,
            endpoint,
            "requests wait and no pod is Ready: waking the route"
        );
        tokio::spawn(async move {
            let result = match api {
                ModelApi::Ollama => client.load(&endpoint, &name, limit).await,
                ModelApi::Openai => client
                    .poke(&format!("{endpoint}/v1/models"), limit)
                    .await
                    .map(|_| ()),
            };
            if let Err(e) = result {
                tracing::debug!(model = name, error = %e, "wake-up request ended");
            }
            outstanding.fetch_sub(1, Ordering::AcqRel);
        });
    }

    async fn dead_letter(&self, message: &Message, model: &str, reason: &str) -> bool {
        let Some(dlq) = &self.config.dispatcher.dead_letter_queue else {
            tracing::warn!(
                model,
                reason,
                "no dead-letter queue configured: leaving the request to SQS's redrive"
            );
            return false;
        };
        match self
            .queue
            .send(
                dlq,
                &message.body,
                &[
                    ("zerospot-reason", reason),
                    ("zerospot-model", model),
                    ("zerospot-source-id", &message.message_id),
                ],
            )
            .await
        {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(model, error = %e, "sending to the dead-letter queue failed");
                false
            }
        }
    }

    async fn send_reply(&self, to: &str, reply: &Reply) -> Result<(), zerospot_effects::AwsError> {
        self.queue
            .send(
                to,
                &reply.to_body(),
                &[
                    ("zerospot-id", &reply.id),
                    ("zerospot-kind", reply.kind.as_str()),
                ],
            )
            .await
            .map(|_| ())
    }

    fn allowed(&self, reply_to: &str) -> bool {
        self.config
            .dispatcher
            .reply_queues
            .iter()
            .any(|q| q == reply_to)
    }

    async fn handle(self: Arc<Self>, job: Job, shutdown: watch::Receiver<bool>) {
        let name = job.model.name.clone();
        self.serve(job, shutdown).await;
        self.state.add(&name, -1);
    }

    async fn refuse(&self, job: &Job, url: &str, reason: &str) {
        self.state.stats.refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(model = job.model.name, reason, "request refused");
        if self
            .dead_letter(&job.message, &job.model.name, reason)
            .await
        {
            let _ = self.queue.delete(url, &job.message.receipt).await;
        }
    }

    async fn serve(&self, job: Job, mut shutdown: watch::Receiver<bool>) {
        let Some(url) = job.model.queue_url.clone() else {
            return;
        };
        let d = &self.config.dispatcher;
        let now = Utc::now();
        let request = match Request::parse(&job.message.body, now) {
            Ok(r) => r,
            Err(RequestError::DeadlinePassed { deadline, .. }) => {
                // Answer it anyway: a timeout, not silence.
                let loose: serde_json::Value =
                    serde_json::from_str(&job.message.body).unwrap_or_default();
                let id = loose
                    .get("id")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_owned();
                let to = loose
                    .get("reply_to")
                    .and_then(|v| v.as_str())
                    .map(str::to_owned);
                match to.filter(|t| self.allowed(t)) {
                    Some(to) => {
                        let mut reply = Reply::new(&id, 0, ReplyKind::Timeout, "");
                        reply.error = Some(format!(
                            "deadline {deadline} passed before a model could answer"
                        ));
                        reply.model = Some(job.model.name.clone());
                        if self.send_reply(&to, &reply).await.is_ok() {
                            self.state.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                            let _ = self.queue.delete(&url, &job.message.receipt).await;
                        }
                    }
                    None => {
                        self.refuse(&job, &url, "deadline passed; no allowed reply_to to say so")
                            .await
                    }
                }
                return;
            }
            Err(e) => {
                self.refuse(&job, &url, &format!("malformed request: {e}"))
                    .await;
                return;
            }
        };
        if request.model != job.model.name {
            let reason = format!(
                "request for model {:?} on the queue of model {:?}",
                request.model, job.model.name
            );
            self.refuse(&job, &url, &reason).await;
            return;
        }
        let Some(reply_to) = request.reply_to.clone().filter(|r| self.allowed(r)) else {
            let reason = format!(
                "reply_to {:?} is not an allowed reply queue",
                request.reply_to.as_deref().unwrap_or("")
            );
            self.refuse(&job, &url, &reason).await;
            return;
        };
        if self.state.finished(&request.id) {
            tracing::info!(
                id = request.id,
                "already answered: duplicate delivery deleted"
            );
            let _ = self.queue.delete(&url, &job.message.receipt).await;
            return;
        }
        let attempt = job.message.receive_count.saturating_sub(1) + request.attempt;

        // Keep it hidden while it runs.
        let visibility = Duration::from_secs(u64::from(d.visibility_timeout_s.max(2)));
        let keep_hidden = {
            let queue = self.queue.clone();
            let url = url.clone();
            let receipt = job.message.receipt.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(visibility / 2).await;
                    if let Err(e) = queue.set_visibility(&url, &receipt, visibility).await {
                        tracing::warn!(error = %e, "renewing a request's visibility failed");
                    }
                }
            })
        };

        // Stream pieces to the reply queue in batches.
        let (pieces_tx, mut pieces_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let streamer = request.stream.then(|| {
            let queue = self.queue.clone();
            let to = reply_to.clone();
            let id = request.id.clone();
            tokio::spawn(async move {
                let mut seq = 0u64;
                let mut batch = String::new();
                let mut open = true;
                while open {
                    let tick = tokio::time::sleep(Duration::from_millis(100));
                    tokio::pin!(tick);
                    loop {
                        tokio::select! {
                            piece = pieces_rx.recv() => match piece {
                                Some(p) => batch.push_str(&p),
                                None => { open = false; break; }
                            },
                            () = &mut tick => break,
                        }
                    }
                    if !batch.is_empty() {
                        let mut reply =
                            Reply::new(&id, seq, ReplyKind::Chunk, std::mem::take(&mut batch));
                        reply.timings = None;
                        let body = reply.to_body();
                        let attempt_s = attempt.to_string();
                        let _ = queue
                            .send(
                                &to,
                                &body,
                                &[
                                    ("zerospot-id", &id),
                                    ("zerospot-kind", "chunk"),
                                    ("zerospot-attempt", &attempt_s),
                                ],
                            )
                            .await;
                        seq += 1;
                    }
                }
                seq
            })
        });

        let limit = request
            .deadline
            .map(|dl| (dl - Utc::now()).to_std().unwrap_or(Duration::ZERO))
            .unwrap_or(Duration::MAX)
            .min(Duration::from_secs(d.max_request_s));
        let overhead = job.received_at.elapsed();
        push_sample(&self.state.stats.dispatch_overhead_us, overhead);
        let dispatched_at = Utc::now();
        let streaming = request.stream;
        let endpoint = job.model.endpoint();
        let outcome = tokio::select! {
            r = self.model.complete(&endpoint, job.model.api, &request, limit, |p| {
                if streaming {
                    let _ = pieces_tx.send(p.to_owned());
                }
            }) => Some(r),
            _ = shutdown.changed() => None,
        };
        drop(pieces_tx);
        keep_hidden.abort();
        let chunks = match streamer {
            Some(s) => s.await.unwrap_or(0),
            None => 0,
        };

        let Some(outcome) = outcome else {
            // Shutting down: hand it back at once.
            let _ = self
                .queue
                .set_visibility(&url, &job.message.receipt, Duration::ZERO)
                .await;
            tracing::info!(
                id = request.id,
                "shutdown: request handed back to the queue"
            );
            return;
        };
        let sent_at = job
            .message
            .sent_at_ms
            .and_then(DateTime::<Utc>::from_timestamp_millis)
            .unwrap_or(dispatched_at);
        let capacity_since = lock(&self.state.capacity_since)
            .get(&job.model.name)
            .copied();
        let queued_s = (dispatched_at - sent_at).num_milliseconds().max(0) as f64 / 1000.0;
        let waited = capacity_since.filter(|c| *c > sent_at).map_or(0.0, |c| {
            (c.min(dispatched_at) - sent_at).num_milliseconds().max(0) as f64 / 1000.0
        });
        match outcome {
            Ok(completion) => {
                let mut reply = Reply::new(&request.id, chunks, ReplyKind::Final, completion.text);
                reply.model = Some(job.model.name.clone());
                reply.timings = Some(Timings {
                    queued_s,
                    waiting_for_capacity_s: waited,
                    first_token_s: completion.first_token.map_or(0.0, |d| d.as_secs_f64()),
                    total_s: (Utc::now() - sent_at).num_milliseconds().max(0) as f64 / 1000.0,
                    attempt,
                });
                match self.send_reply(&reply_to, &reply).await {
                    Ok(()) => {
                        self.state.mark_finished(&request.id);
                        self.state.stats.answered.fetch_add(1, Ordering::Relaxed);
                        if let Err(e) = self.queue.delete(&url, &job.message.receipt).await {
                            tracing::warn!(id = request.id, error = %e, "deleting an answered request failed");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(id = request.id, error = %e, "sending the final reply failed; the request will be retried");
                        let _ = self
                            .queue
                            .set_visibility(&url, &job.message.receipt, Duration::ZERO)
                            .await;
                    }
                }
            }
            Err(ModelError::TimedOut(_)) if request.deadline.is_some_and(|dl| dl <= Utc::now()) => {
                let mut reply = Reply::new(&request.id, chunks, ReplyKind::Timeout, "");
                reply.error = Some("the deadline passed before the model finished".into());
                reply.model = Some(job.model.name.clone());
                if self.send_reply(&reply_to, &reply).await.is_ok() {
                    self.state.mark_finished(&request.id);
                    self.state.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                    let _ = self.queue.delete(&url, &job.message.receipt).await;
                }
            }
            Err(e) if !e.is_retryable() || job.message.receive_count >= d.max_attempts => {
                let reason = format!(
                    "attempt {} of {}: {e}",
                    job.message.receive_count, d.max_attempts
                );
                tracing::warn!(id = request.id, reason, "giving up on a request");
                let mut reply = Reply::new(&request.id, chunks, ReplyKind::Error, "");
                reply.error = Some(reason.clone());
                reply.model = Some(job.model.name.clone());
                let replied = self.send_reply(&reply_to, &reply).await.is_ok();
                let parked = self
                    .dead_letter(&job.message, &job.model.name, &reason)
                    .await;
                if replied {
                    self.state.mark_finished(&request.id);
                }
                if replied && (parked || self.config.dispatcher.dead_letter_queue.is_none()) {
                    self.state.stats.failed.fetch_add(1, Ordering::Relaxed);
                    let _ = self.queue.delete(&url, &job.message.receipt).await;
                }
            }
            Err(e) => {
                self.state.stats.retried.fetch_add(1, Ordering::Relaxed);
                let delay = match e {
                    // The stream was cut (a pod or node went away): try elsewhere at once.
                    ModelError::Interrupted { .. } => Duration::ZERO,
                    _ => Duration::from_secs(u64::from(d.retry_backoff_s))
                        .saturating_mul(1 << job.message.receive_count.saturating_sub(1).min(10)),
                };
                tracing::info!(id = request.id, error = %e, ?delay, "model failed; the request goes back to the queue");
                let _ = self
                    .queue
                    .set_visibility(&url, &job.message.receipt, delay)
                    .await;
            }
        }
    }

    /// Writes work in flight per node to the Node annotations the scaler reads, when it changes.
    async fn publish_in_flight(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut published: HashMap<String, u32> = HashMap::new();
        while !*shutdown.borrow() {
            let by_model = self.state.in_flight_by_model();
            let (pods, nodes) = self.pods_and_nodes();
            let pod_refs: Vec<&Pod> = pods.iter().map(AsRef::as_ref).collect();
            let node_refs: Vec<&Node> = nodes.iter().map(AsRef::as_ref).collect();
            let models: Vec<(&ModelConfig, u32)> = self
                .config
                .models
                .iter()
                .map(|m| (m, by_model.get(&m.name).copied().unwrap_or(0)))
                .collect();
            let mut now_counts = capacity::in_flight_per_node(&models, &pod_refs, &node_refs);
            for node in published.keys() {
                now_counts.entry(node.clone()).or_insert(0);
            }
            for (node, count) in &now_counts {
                let before = published.get(node).copied();
                let on_node = nodes
                    .iter()
                    .find(|n| n.metadata.name.as_deref() == Some(node.as_str()))
                    .and_then(|n| {
                        n.metadata
                            .annotations
                            .as_ref()?
                            .get(names::ANNOTATION_IN_FLIGHT)
                            .cloned()
                    });
                if before == Some(*count) && on_node.as_deref() == Some(count.to_string().as_str())
                {
                    continue;
                }
                if before.is_none() && *count == 0 && on_node.is_none() {
                    published.insert(node.clone(), 0);
                    continue;
                }
                let mut annotations = vec![(names::ANNOTATION_IN_FLIGHT, Some(count.to_string()))];
                if *count == 0 && before != Some(0) {
                    annotations.push((names::ANNOTATION_IDLE_SINCE, Some(Utc::now().to_rfc3339())));
                }
                match self.cluster.annotate(node, &annotations).await {
                    Ok(()) => {
                        published.insert(node.clone(), *count);
                    }
                    Err(e) if e.kind == zerospot_effects::cluster::KubeErrorKind::NotFound => {
                        published.remove(node);
                    }
                    Err(e) => tracing::warn!(node, error = %e, "publishing work in flight failed"),
                }
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}

fn push_sample(samples: &Mutex<VecDeque<u64>>, d: Duration) {
    let mut s = lock(samples);
    s.push_back(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    while s.len() > 4096 {
        s.pop_front();
    }
}
