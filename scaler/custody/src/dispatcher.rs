//! The dispatcher: holds requests in SQS until their model has a Ready pod with a free slot, sends each
//! to the model's route, streams the answer to the reply queue, and only then deletes the request.
//!
//! # Expected flow (per model)
//! 1. Count free slots ([`crate::capacity`]): the Ready pods', and with `fill_free_nodes` those of free
//!    GPU slots through the route. None free: receive nothing, so requests stay in SQS. If
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
//! 6. Each request's first delivery counts as an arrival and each final reply as a completion in the
//!    model's demand estimates, which [`crate::demand`] publishes for the scaler every 10 s.
//!
//! # Where a request goes
//! In `pods` mode (the default, [`Target::Pods`]) the dispatcher picks the pod itself, the one with
//! the most free slots, and sends to `http://<pod IP>:<pod_port>` (Knative's queue-proxy, as the
//! activator does: `pkg/activator/net/throttler.go` picks a pod tracker and the activator proxies to
//! its IP). Knowing each request's pod, it publishes exact work in flight per node and hands a request
//! back to the queue (visibility 0, its stream to the pod closed) the moment its pod terminates or
//! vanishes or its node is tainted `zerospot.io/interrupted` or vanishes, so another pod answers it
//! well within a Spot interruption's two minutes. In `route` mode it sends to the model's `endpoint`
//! and cannot know the node; such a request is retried when its stream is cut.
//!
//! With `fill_free_nodes` (the default) it also sends through the route as many requests as the free
//! GPU slots of the pool's usable nodes can take ([`capacity::free_node_lanes`]: capacity already
//! paid for that no pod holds, less what it already sent that way), after the Ready pods are full.
//! Knative's activator holds each until a pod is Ready in a free slot, and Knative (at 100 % target
//! utilisation) grows pods for them; this is the core's `demand::forwardable`, as the simulator runs
//! it. Such a request, like one in `route` mode, is attributed to the nodes of the model's pods for
//! the scaler, and retried when its stream is cut. The message stays in SQS (invisible, renewed)
//! until its reply is sent, wherever the request waits. Without a cluster
//! (`zerospot dispatcher --no-cluster`, a single GPU box) each model's `endpoint` offers `concurrency`
//! slots and is always ready.
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
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tokio::sync::{Notify, watch};
use zerospot_core::request::{Request, RequestError};
use zerospot_effects::config::{ModelApi, ModelConfig, Target, names};
use zerospot_effects::{Cluster, ScalerConfig};

use crate::capacity::{self, PodTarget};
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
    /// Requests handed back to the queue because their pod or node went away.
    pub released: AtomicU64,
    /// Receive -> first byte to the model, microseconds, of the last 4096 dispatches.
    pub dispatch_overhead_us: Mutex<VecDeque<u64>>,
}

/// Per-phase timing histograms, seconds (exported as metrics by the binary).
#[derive(Debug, Clone)]
pub struct Phases {
    /// Arrival on the queue -> dispatch.
    pub queued: Histogram,
    /// Of that, waiting for capacity (no Ready pod with a free slot).
    pub waiting_for_capacity: Histogram,
    /// Arrival on the queue -> the request's node registered (requests that waited for a node).
    pub node_registered: Histogram,
    /// Arrival on the queue -> that node Ready.
    pub node_ready: Histogram,
    /// Arrival on the queue -> the request's pod Ready (requests that waited for a pod).
    pub pod_ready: Histogram,
    /// Dispatch -> first token.
    pub first_token: Histogram,
    /// Arrival on the queue -> final reply.
    pub total: Histogram,
    /// Receive from SQS -> the request sent to the model.
    pub dispatch_overhead: Histogram,
}

impl Default for Phases {
    fn default() -> Self {
        // 5 ms .. 22 min: from a warm dispatch to a slow cold start with a long answer.
        let slow = || Histogram::new(exponential_buckets(0.005, 2.0, 19));
        Phases {
            queued: slow(),
            waiting_for_capacity: slow(),
            node_registered: slow(),
            node_ready: slow(),
            pod_ready: slow(),
            first_token: slow(),
            total: slow(),
            // 0.1 ms .. 3.3 s.
            dispatch_overhead: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
        }
    }
}

/// A request being served: its model, the pod it went to (`pods` mode), and how to hand it back.
#[derive(Debug)]
struct Running {
    model: String,
    pod: Option<PodTarget>,
    release: watch::Sender<Option<&'static str>>,
}

/// Shared state of one dispatcher.
#[derive(Debug, Default)]
pub struct State {
    in_flight: Mutex<HashMap<String, u32>>,
    running: Mutex<HashMap<u64, Running>>,
    next_job: AtomicU64,
    /// Per-phase timings.
    pub phases: Phases,
    completed: Mutex<(HashSet<String>, VecDeque<String>)>,
    changed: Notify,
    /// Counters.
    pub stats: Stats,
    /// When each model last went from no Ready pod to some.
    capacity_since: Mutex<HashMap<String, DateTime<Utc>>>,
    /// Arrival-rate and service-time estimates per model ([`crate::demand`]).
    pub estimates: crate::demand::Estimates,
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

    /// Requests running on the pod with this UID.
    /// Requests running per pod UID (one pass over the running requests).
    fn running_per_pod(&self) -> HashMap<String, u32> {
        let mut out: HashMap<String, u32> = HashMap::new();
        for r in lock(&self.running).values() {
            if let Some(p) = &r.pod {
                *out.entry(p.uid.clone()).or_default() += 1;
            }
        }
        out
    }

    /// Requests of `model` running through its route (no pod chosen by the dispatcher).
    fn running_via_route(&self, model: &str) -> u32 {
        let n = lock(&self.running)
            .values()
            .filter(|r| r.pod.is_none() && r.model == model)
            .count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// Requests running per node, for the models dispatched to pods.
    fn running_per_node(&self) -> HashMap<String, u32> {
        let mut out: HashMap<String, u32> = HashMap::new();
        for r in lock(&self.running).values() {
            if let Some(p) = &r.pod {
                *out.entry(p.node.clone()).or_default() += 1;
            }
        }
        out
    }

    fn start_job(
        &self,
        model: &str,
        pod: Option<PodTarget>,
    ) -> (u64, watch::Receiver<Option<&'static str>>) {
        let id = self.next_job.fetch_add(1, Ordering::Relaxed);
        let (release, released) = watch::channel(None);
        lock(&self.running).insert(
            id,
            Running {
                model: model.to_owned(),
                pod,
                release,
            },
        );
        self.add(model, 1);
        (id, released)
    }

    fn end_job(&self, id: u64) {
        if let Some(r) = lock(&self.running).remove(&id) {
            self.add(&r.model, -1);
        }
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
    /// Kubernetes (Node annotations); `None` without a cluster.
    pub cluster: Option<Arc<dyn Cluster>>,
    /// Model servers.
    pub model: ModelClient,
    /// Pods and nodes; `None` without a cluster: each model's `endpoint` then offers `concurrency`
    /// slots and is always ready.
    pub caches: Option<Caches>,
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
    /// The pod it goes to (`pods` mode), else the model's endpoint.
    pod: Option<PodTarget>,
    /// Turns `Some(reason)` when its pod or node goes away.
    released: watch::Receiver<Option<&'static str>>,
}

/// Why a request stopped before its model answered.
enum Stop {
    Shutdown,
    Released(&'static str),
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
        if self.caches.is_some() {
            tasks.push(tokio::spawn(
                self.clone().publish_in_flight(shutdown.clone()),
            ));
            tasks.push(tokio::spawn(self.clone().guard_pods(shutdown.clone())));
        }
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
        match &self.caches {
            Some(c) => (c.pods.state(), c.nodes.state()),
            None => (Vec::new(), Vec::new()),
        }
    }

    /// Free slots of `model` now, per destination: one entry per pod with free slots (`pods` mode),
    /// or one for the endpoint; and how many pods are Ready at all.
    fn slots(&self, model: &ModelConfig) -> (Vec<(Option<PodTarget>, u32)>, usize) {
        let in_flight = self.state.in_flight(&model.name);
        if self.caches.is_none() {
            return (vec![(None, model.concurrency.saturating_sub(in_flight))], 1);
        }
        let (pods, nodes) = self.pods_and_nodes();
        let pod_refs: Vec<&Pod> = pods.iter().map(AsRef::as_ref).collect();
        let node_refs: Vec<&Node> = nodes.iter().map(AsRef::as_ref).collect();
        let ready = capacity::ready_pods(model, &pod_refs, &node_refs).len();
        let node_lanes = if model.fill_free_nodes {
            capacity::free_node_lanes(
                model,
                &self.config.models,
                &self.config.pools,
                &pod_refs,
                &node_refs,
            )
        } else {
            0
        };
        let slots = match model.target {
            Target::Pods => {
                let per_pod = self.state.running_per_pod();
                let mut slots: Vec<(Option<PodTarget>, u32)> =
                    capacity::free_pod_slots(model, &pod_refs, &node_refs, |uid| {
                        per_pod.get(uid).copied().unwrap_or(0)
                    })
                    .into_iter()
                    .map(|(p, free)| (Some(p), free))
                    .collect();
                // Requests sent through the route hold lanes of pods that may be Ready by now (the
                // route picked them): charge them to the free node lanes first, then to the pods.
                let mut owed = self.state.running_via_route(&model.name);
                let overflow = node_lanes.saturating_sub(owed);
                owed = owed.saturating_sub(node_lanes);
                for slot in &mut slots {
                    let paid = owed.min(slot.1);
                    slot.1 -= paid;
                    owed -= paid;
                }
                slots.retain(|s| s.1 > 0);
                if overflow > 0 {
                    slots.push((None, overflow));
                }
                slots
            }
            // The route picks the pod: the Ready pods' lanes and the free node lanes, less all in
            // flight.
            Target::Route => vec![(
                None,
                capacity::free_slots(model, &pod_refs, &node_refs, 0)
                    .saturating_add(node_lanes)
                    .saturating_sub(in_flight),
            )],
        };
        (slots, ready)
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
            let (mut slots, ready) = self.slots(&model);
            if ready > 0 && !had_capacity && self.caches.is_some() {
                lock(&self.state.capacity_since).insert(model.name.clone(), Utc::now());
            }
            had_capacity = ready > 0;
            let free: u32 = slots.iter().map(|s| s.1).sum();
            if free == 0 {
                if ready == 0 && self.caches.is_some() {
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
                        let received_at = Instant::now();
                        self.state.stats.received.fetch_add(1, Ordering::Relaxed);
                        // An arrival at its SentTimestamp, on its first delivery only.
                        self.state.estimates.arrived(
                            &model.name,
                            message
                                .sent_at_ms
                                .and_then(DateTime::<Utc>::from_timestamp_millis)
                                .unwrap_or_else(Utc::now),
                            message.receive_count,
                        );
                        // A Ready pod before the route, then the most free slots.
                        slots.sort_by_key(|s| (s.0.is_none(), std::cmp::Reverse(s.1)));
                        let Some(slot) = slots.first_mut().filter(|s| s.1 > 0) else {
                            // Capacity went away between counting and receiving: hand it back.
                            let _ = self
                                .queue
                                .set_visibility(&url, &message.receipt, Duration::ZERO)
                                .await;
                            continue;
                        };
                        slot.1 -= 1;
                        let pod = slot.0.clone();
                        let (id, released) = self.state.start_job(&model.name, pod.clone());
                        let job = Job {
                            model: model.clone(),
                            message,
                            received_at,
                            pod,
                            released,
                        };
                        tokio::spawn(self.clone().handle(id, job, shutdown.clone()));
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

    async fn handle(self: Arc<Self>, id: u64, job: Job, shutdown: watch::Receiver<bool>) {
        self.serve(job, shutdown).await;
        self.state.end_job(id);
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

    async fn serve(&self, mut job: Job, mut shutdown: watch::Receiver<bool>) {
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
        self.state
            .phases
            .dispatch_overhead
            .observe(overhead.as_secs_f64());
        let dispatched_at = Utc::now();
        let streaming = request.stream;
        let endpoint = match job.pod.as_ref().and_then(|p| p.ip.as_deref()) {
            Some(ip) if ip.contains(':') => format!("http://[{ip}]:{}", job.model.pod_port),
            Some(ip) => format!("http://{ip}:{}", job.model.pod_port),
            None => job.model.endpoint(),
        };
        let released = &mut job.released;
        let outcome = tokio::select! {
            r = self.model.complete(&endpoint, job.model.api, &request, limit, |p| {
                if streaming {
                    let _ = pieces_tx.send(p.to_owned());
                }
            }) => Ok(r),
            _ = shutdown.changed() => Err(Stop::Shutdown),
            r = released.wait_for(Option::is_some) => {
                Err(Stop::Released(r.ok().and_then(|r| *r).unwrap_or("released")))
            }
        };
        drop(pieces_tx);
        keep_hidden.abort();
        let chunks = match streamer {
            Some(s) => s.await.unwrap_or(0),
            None => 0,
        };

        let outcome = match outcome {
            Ok(outcome) => outcome,
            Err(stop) => {
                // Shutting down, or its pod or node is going away: hand it back at once, so that
                // another pod (or dispatcher) answers it. Its chunks so far carry this attempt's
                // number; the client's reassembly drops them when the next attempt starts.
                let _ = self
                    .queue
                    .set_visibility(&url, &job.message.receipt, Duration::ZERO)
                    .await;
                match stop {
                    Stop::Shutdown => tracing::info!(
                        id = request.id,
                        "shutdown: request handed back to the queue"
                    ),
                    Stop::Released(reason) => {
                        self.state.stats.released.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(
                            id = request.id,
                            reason,
                            pod = job.pod.as_ref().map(|p| p.name.as_str()),
                            node = job.pod.as_ref().map(|p| p.node.as_str()),
                            "request handed back to the queue: its pod or node is going away"
                        );
                    }
                }
                return;
            }
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
                // The lane was held from the receive to now.
                self.state.estimates.completed(
                    &job.model.name,
                    Utc::now(),
                    job.received_at.elapsed().as_secs_f64(),
                );
                let mut reply = Reply::new(&request.id, chunks, ReplyKind::Final, completion.text);
                reply.model = Some(job.model.name.clone());
                let (node_registered_s, node_ready_s, pod_ready_s) =
                    self.capacity_phases(job.pod.as_ref(), sent_at, dispatched_at);
                let timings = Timings {
                    queued_s,
                    waiting_for_capacity_s: waited,
                    node_registered_s,
                    node_ready_s,
                    pod_ready_s,
                    first_token_s: completion.first_token.map_or(0.0, |d| d.as_secs_f64()),
                    total_s: (Utc::now() - sent_at).num_milliseconds().max(0) as f64 / 1000.0,
                    attempt,
                };
                self.observe_phases(&timings);
                reply.timings = Some(timings);
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

    /// When the request waited for capacity: seconds from its arrival (`sent_at`) until its pod's node
    /// registered, that node turned Ready, and its pod turned Ready, each only when it happened after
    /// the arrival and by the dispatch (`pods` mode only: otherwise the pod is not known).
    fn capacity_phases(
        &self,
        pod: Option<&PodTarget>,
        sent_at: DateTime<Utc>,
        dispatched_at: DateTime<Utc>,
    ) -> (Option<f64>, Option<f64>, Option<f64>) {
        let (Some(target), Some(caches)) = (pod, &self.caches) else {
            return (None, None, None);
        };
        let since = |t: Option<k8s_openapi::jiff::Timestamp>| {
            t.and_then(|t| DateTime::<Utc>::from_timestamp_millis(t.as_millisecond()))
                .filter(|t| *t > sent_at && *t <= dispatched_at)
                .map(|t| (t - sent_at).num_milliseconds() as f64 / 1000.0)
        };
        let node = caches
            .nodes
            .state()
            .into_iter()
            .find(|n| n.metadata.name.as_deref() == Some(target.node.as_str()));
        let pod = caches
            .pods
            .state()
            .into_iter()
            .find(|p| p.metadata.uid.as_deref() == Some(target.uid.as_str()));
        let registered = node
            .as_ref()
            .and_then(|n| n.metadata.creation_timestamp.as_ref())
            .map(|t| t.0);
        let node_ready = node.as_ref().and_then(|n| {
            n.status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == "Ready" && c.status == "True")?
                .last_transition_time
                .as_ref()
                .map(|t| t.0)
        });
        let pod_ready = pod.as_ref().and_then(|p| {
            p.status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == "Ready" && c.status == "True")?
                .last_transition_time
                .as_ref()
                .map(|t| t.0)
        });
        (since(registered), since(node_ready), since(pod_ready))
    }

    fn observe_phases(&self, t: &Timings) {
        let p = &self.state.phases;
        p.queued.observe(t.queued_s);
        p.waiting_for_capacity.observe(t.waiting_for_capacity_s);
        p.first_token.observe(t.first_token_s);
        p.total.observe(t.total_s);
        for (h, v) in [
            (&p.node_registered, t.node_registered_s),
            (&p.node_ready, t.node_ready_s),
            (&p.pod_ready, t.pod_ready_s),
        ] {
            if let Some(v) = v {
                h.observe(v);
            }
        }
    }

    /// Hands back every request whose pod vanishes or nears its deletion deadline, or whose node is
    /// tainted `zerospot.io/interrupted` or vanishes (`pods` mode), as soon as the watches show it
    /// ([`capacity::pod_doomed`]).
    async fn guard_pods(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        while !*shutdown.borrow() {
            let (pods, nodes) = self.pods_and_nodes();
            let now = Utc::now();
            let node_refs: Vec<&Node> = nodes.iter().map(AsRef::as_ref).collect();
            let by_uid: HashMap<&str, &Pod> = pods
                .iter()
                .filter_map(|p| Some((p.metadata.uid.as_deref()?, p.as_ref())))
                .collect();
            for r in lock(&self.state.running).values() {
                let Some(target) = &r.pod else { continue };
                if r.release.borrow().is_some() {
                    continue;
                }
                let pod = by_uid.get(target.uid.as_str()).copied();
                if let Some(reason) = capacity::pod_doomed(pod, &node_refs, now) {
                    let _ = r.release.send(Some(reason));
                }
            }
            tokio::select! {
                () = self.state.changed.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(250)) => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Writes work in flight per node to the Node annotations the scaler reads, when it changes.
    async fn publish_in_flight(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let mut published: HashMap<String, u32> = HashMap::new();
        while !*shutdown.borrow() {
            let by_model = self.state.in_flight_by_model();
            let (pods, nodes) = self.pods_and_nodes();
            let pod_refs: Vec<&Pod> = pods.iter().map(AsRef::as_ref).collect();
            let routed: Vec<(&ModelConfig, u32)> = self
                .config
                .models
                .iter()
                .map(|m| match m.target {
                    Target::Route => (m, by_model.get(&m.name).copied().unwrap_or(0)),
                    // Requests sent through the route into free node slots: the route picks the pod.
                    Target::Pods => (m, self.state.running_via_route(&m.name)),
                })
                .filter(|(_, n)| *n > 0)
                .collect();
            let mut now_counts = capacity::in_flight_per_node(&routed, &pod_refs);
            // Pods of `pods`-mode models count as idle until a request runs there.
            for m in self
                .config
                .models
                .iter()
                .filter(|m| m.target == Target::Pods)
            {
                for p in pod_refs.iter().filter(|p| {
                    capacity::is_model_pod(p, m) && p.metadata.deletion_timestamp.is_none()
                }) {
                    if let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
                        now_counts.entry(node.to_owned()).or_insert(0);
                    }
                }
            }
            for (node, n) in self.state.running_per_node() {
                *now_counts.entry(node).or_insert(0) += n;
            }
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
                match cluster.annotate(node, &annotations).await {
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
