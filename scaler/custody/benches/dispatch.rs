//! The dispatcher's own cost, against real servers: SQS is moto (the test bed's), the model is the
//! stand-in model server (tests/src/model_server.rs) answering at once.
//!
//! 1. **Dispatch overhead** with a warm model: from SQS's `ReceiveMessage` answer in the dispatcher's
//!    hands to the request arriving, whole, at the model server; 2,000 requests submitted at 200/s.
//!    Prints p50, p99, max. Target (read, not asserted): p99 < 20 ms.
//! 2. **Throughput**: one dispatcher, 64 slots, the stand-in answering at once; requests answered per
//!    second from start to the last final reply (each costs a receive share, a reply `SendMessage`
//!    and a `DeleteMessage`). Target: >= 500/s. Measured twice: with 20,000 requests queued in an
//!    in-memory queue with SQS's semantics (the dispatcher's own ceiling: moto scans every message on
//!    each receive, so a deep backlog in moto measures moto: 5,000 took minutes to drain), and end to
//!    end with moto, 1,000 requests sent by 32 clients while it runs (bound by moto).
//! 3. **Memory per request in flight**: a `zerospot dispatcher --no-cluster` process (the binary
//!    `cargo test --workspace` built, or the path given as the first argument) serving 1,000 requests
//!    the model holds open; (resident memory with them - before) / 1,000. Requests still queued cost
//!    it nothing: they are in SQS.
//!
//! Run: `cargo bench -p zerospot-custody --bench dispatch [-- PATH/TO/zerospot]` after
//! `bash tests/bed/setup.sh`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use tokio::sync::watch;
use zerospot_core::request::{ChatMessage, Input, Request};
use zerospot_custody::client::submit;
use zerospot_custody::dispatcher::{Dispatcher, State};
use zerospot_custody::model::ModelClient;
use zerospot_custody::queue::{Message, Queue, SdkQueue};
use zerospot_effects::{AwsError, ScalerConfig};
use zerospot_testbed::fixtures::create_queue;
use zerospot_testbed::{StandIn, StandInOptions, TestBed};

/// [`SdkQueue`] noting when each received request was in the dispatcher's hands.
struct Timed {
    inner: SdkQueue,
    received: Mutex<HashMap<String, Instant>>,
}

#[async_trait]
impl Queue for Timed {
    async fn receive(
        &self,
        url: &str,
        max: u32,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Message>, AwsError> {
        let got = self.inner.receive(url, max, wait, visibility).await?;
        let now = Instant::now();
        let mut r = self.received.lock().unwrap();
        for m in &got {
            if let Some(id) = m.attributes.get("zerospot-id") {
                r.entry(id.clone()).or_insert(now);
            }
        }
        Ok(got)
    }
    async fn delete(&self, url: &str, receipt: &str) -> Result<(), AwsError> {
        self.inner.delete(url, receipt).await
    }
    async fn set_visibility(&self, url: &str, receipt: &str, v: Duration) -> Result<(), AwsError> {
        self.inner.set_visibility(url, receipt, v).await
    }
    async fn send(&self, url: &str, body: &str, a: &[(&str, &str)]) -> Result<String, AwsError> {
        self.inner.send(url, body, a).await
    }
    async fn waiting(&self, url: &str) -> Result<u64, AwsError> {
        self.inner.waiting(url).await
    }
}

/// An in-memory queue with SQS's semantics for what the dispatcher uses (receive hides a message for
/// its visibility timeout and counts receives; delete by receipt; visibility changes; FIFO-ish
/// order): the dispatcher's own ceiling, without moto's per-call cost. Replies are counted, not kept.
const MEM_REQUESTS: &str = "https://sqs.us-east-1.amazonaws.com/000000000000/memory-requests";
const MEM_REPLIES: &str = "https://sqs.us-east-1.amazonaws.com/000000000000/memory-replies";

#[derive(Default)]
struct MemoryQueue {
    inner: Mutex<MemoryInner>,
}

#[derive(Default)]
struct MemoryInner {
    next: u64,
    /// id -> (body, visible from, receive count)
    messages: std::collections::BTreeMap<u64, (String, Instant, u32)>,
    replies: u64,
}

#[async_trait]
impl Queue for MemoryQueue {
    async fn receive(
        &self,
        _url: &str,
        max: u32,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<Message>, AwsError> {
        let until = Instant::now() + wait;
        loop {
            let now = Instant::now();
            let mut out = Vec::new();
            {
                let mut q = self.inner.lock().unwrap();
                for (id, (body, visible, count)) in q.messages.iter_mut() {
                    if out.len() as u32 >= max {
                        break;
                    }
                    if *visible <= now {
                        *visible = now + visibility;
                        *count += 1;
                        out.push(Message {
                            message_id: id.to_string(),
                            receipt: id.to_string(),
                            body: body.clone(),
                            receive_count: *count,
                            sent_at_ms: None,
                            attributes: std::collections::BTreeMap::new(),
                        });
                    }
                }
            }
            if !out.is_empty() || Instant::now() >= until {
                return Ok(out);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    async fn delete(&self, _url: &str, receipt: &str) -> Result<(), AwsError> {
        if let Ok(id) = receipt.parse::<u64>() {
            self.inner.lock().unwrap().messages.remove(&id);
        }
        Ok(())
    }
    async fn set_visibility(&self, _url: &str, receipt: &str, v: Duration) -> Result<(), AwsError> {
        if let Ok(id) = receipt.parse::<u64>()
            && let Some(m) = self.inner.lock().unwrap().messages.get_mut(&id)
        {
            m.1 = Instant::now() + v;
        }
        Ok(())
    }
    async fn send(&self, url: &str, body: &str, _a: &[(&str, &str)]) -> Result<String, AwsError> {
        let mut q = self.inner.lock().unwrap();
        if url == MEM_REPLIES {
            q.replies += 1;
            return Ok(q.replies.to_string());
        }
        q.next += 1;
        let id = q.next;
        q.messages.insert(id, (body.to_owned(), Instant::now(), 0));
        Ok(id.to_string())
    }
    async fn waiting(&self, _url: &str) -> Result<u64, AwsError> {
        Ok(self.inner.lock().unwrap().messages.len() as u64)
    }
}

fn request(id: &str, reply_to: &str) -> Request {
    Request {
        version: 1,
        id: id.to_owned(),
        model: "llama".into(),
        input: Input::Chat(vec![ChatMessage {
            role: "user".into(),
            content: format!("question {id}"),
        }]),
        options: None,
        stream: false,
        reply_to: Some(reply_to.to_owned()),
        deadline: Some(Utc::now() + chrono::Duration::minutes(30)),
        attempt: 0,
    }
}

fn config(queue: &str, replies: &str, endpoint: &str, concurrency: u32) -> ScalerConfig {
    ScalerConfig::from_yaml(&format!(
        "pools: [{{name: gpu, asg_name: gpu}}]\nmodels:\n  - {{name: llama, pool: gpu, namespace: m, service: llama, queue_url: \"{queue}\", endpoint: \"{endpoint}\", target: route, concurrency: {concurrency}}}\ndispatcher: {{reply_queues: [\"{replies}\"], visibility_timeout_s: 120}}\n"
    ))
    .unwrap()
}

/// A dispatcher without a cluster, running on `queue` until dropped.
struct Running {
    state: Arc<State>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    fn start(config: ScalerConfig, queue: Arc<dyn Queue>) -> Running {
        let state = Arc::new(State::default());
        let dispatcher = Arc::new(Dispatcher {
            config,
            queue,
            cluster: None,
            model: ModelClient::new(),
            caches: None,
            state: state.clone(),
        });
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(dispatcher.run(stopped));
        Running { state, stop, task }
    }

    /// Waits until `n` requests were answered, looking every `every`.
    async fn answered(&self, n: u64, every: Duration) {
        while self.state.stats.answered.load(Ordering::Relaxed) < n {
            tokio::time::sleep(every).await;
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn submit_all(sqs: &SdkQueue, url: &str, replies: &str, prefix: &str, n: usize) {
    let sqs = Arc::new(sqs.clone());
    let mut tasks = Vec::new();
    for w in 0..32 {
        let (sqs, url, replies, prefix) = (
            sqs.clone(),
            url.to_owned(),
            replies.to_owned(),
            prefix.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(32) {
                submit(
                    sqs.as_ref(),
                    &url,
                    &request(&format!("{prefix}{i}"), &replies),
                )
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let bed = TestBed::start()
        .await
        .expect("the test bed (bash tests/bed/setup.sh)");
    let aws = bed.aws_config().await;
    let q = SdkQueue::new(&aws);

    // 1. Overhead, warm model.
    let standin = StandIn::start(
        StandInOptions::new(["llama"])
            .parallel(64)
            .tokens_per_reply(4),
    )
    .await
    .unwrap();
    let (requests, replies) = (
        create_queue(&aws, "bench-req").await.unwrap(),
        create_queue(&aws, "bench-rep").await.unwrap(),
    );
    let timed = Arc::new(Timed {
        inner: q.clone(),
        received: Mutex::new(HashMap::new()),
    });
    let running = Running::start(
        config(&requests, &replies, standin.endpoint(), 64),
        timed.clone(),
    );
    let n = 2000;
    let pace = Duration::from_millis(5);
    let started = Instant::now();
    for i in 0..n {
        submit(&q, &requests, &request(&format!("o{i}"), &replies))
            .await
            .unwrap();
        let next = started + pace * (i + 1);
        tokio::time::sleep_until(next.into()).await;
    }
    running
        .answered(u64::from(n), Duration::from_millis(50))
        .await;
    let received = timed.received.lock().unwrap().clone();
    let mut overhead: Vec<f64> = standin
        .requests_to("/api/chat")
        .iter()
        .filter_map(|r| {
            let body = String::from_utf8_lossy(&r.body);
            let id = body
                .split("question ")
                .nth(1)?
                .split('"')
                .next()?
                .to_owned();
            Some(r.at.duration_since(*received.get(&id)?).as_secs_f64() * 1000.0)
        })
        .collect();
    overhead.sort_by(f64::total_cmp);
    println!(
        "dispatch overhead (receive -> request at the model), {} requests at 200/s against moto: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms (target p99 < 20 ms)",
        overhead.len(),
        quantile(&overhead, 0.5),
        quantile(&overhead, 0.99),
        overhead.last().copied().unwrap_or(0.0)
    );
    running.stop().await;

    // 2. Throughput. (a) The dispatcher's own ceiling: 20,000 requests queued in an in-memory queue
    // with SQS's semantics (moto's receive scans every message, so a deep backlog in moto measures
    // moto). (b) End to end with moto: 1,000 requests submitted by 32 clients while it runs.
    let n = 20_000;
    let memory = Arc::new(MemoryQueue::default());
    for i in 0..n {
        memory
            .send(
                MEM_REQUESTS,
                &request(&format!("t{i}"), MEM_REPLIES).to_body(),
                &[],
            )
            .await
            .unwrap();
    }
    let started = Instant::now();
    let running = Running::start(
        config(MEM_REQUESTS, MEM_REPLIES, standin.endpoint(), 64),
        memory.clone(),
    );
    running.answered(n as u64, Duration::from_millis(20)).await;
    let elapsed = started.elapsed();
    println!(
        "throughput, {n} queued requests, one dispatcher, 64 slots, stand-in model, in-memory queue: {:.0} requests/s ({:.1} s; target >= 500/s)",
        n as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    running.stop().await;

    let (requests, replies) = (
        create_queue(&aws, "bench-req").await.unwrap(),
        create_queue(&aws, "bench-rep").await.unwrap(),
    );
    let n = 1000;
    let started = Instant::now();
    let running = Running::start(
        config(&requests, &replies, standin.endpoint(), 64),
        Arc::new(q.clone()),
    );
    submit_all(&q, &requests, &replies, "e", n).await;
    let submitted = started.elapsed();
    running.answered(n as u64, Duration::from_millis(20)).await;
    let elapsed = started.elapsed();
    println!(
        "throughput end to end with moto, {n} requests from 32 clients: {:.0} requests/s answered ({:.1} s; the clients' sending took {:.1} s: moto-bound)",
        n as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        submitted.as_secs_f64()
    );
    running.stop().await;

    // 3. Memory per request in flight, in a dispatcher process of its own.
    let binary = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let target = std::env::var("CARGO_TARGET_DIR").map_or_else(
                |_| {
                    std::env::current_exe()
                        .unwrap()
                        .ancestors()
                        .nth(3)
                        .unwrap()
                        .to_path_buf()
                },
                PathBuf::from,
            );
            target.join("debug").join("zerospot")
        });
    if !binary.exists() {
        println!(
            "memory per request in flight: skipped, {} not found (cargo build -p zerospot, or pass the path)",
            binary.display()
        );
        return;
    }
    let held = 1000;
    let slow = StandIn::start(
        StandInOptions::new(["llama"])
            .parallel(held)
            .token_latency(Duration::from_secs(600))
            .tokens_per_reply(2),
    )
    .await
    .unwrap();
    let (requests, replies) = (
        create_queue(&aws, "bench-req").await.unwrap(),
        create_queue(&aws, "bench-rep").await.unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("zerospot.yaml");
    let yaml = serde_json::to_string(&config(
        &requests,
        &replies,
        slow.endpoint(),
        u32::try_from(held).unwrap(),
    ))
    .unwrap();
    std::fs::write(&file, yaml).unwrap();
    let info = bed.info();
    let listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut child = Command::new(&binary)
        .args([
            "dispatcher",
            "--no-cluster",
            "--log-format",
            "text",
            "--config",
        ])
        .arg(&file)
        .arg("--listen")
        .arg(listen.to_string())
        .envs(info.aws_env())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    // Started and idle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = rss_kib(pid);
    submit_all(&q, &requests, &replies, "m", held).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while slow.waiting() + slow.peak_concurrency() < held && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let with = rss_kib(pid);
    let running = slow.requests_to("/api/chat").len();
    let _ = child.kill();
    let _ = child.wait();
    let per = (with.saturating_sub(before)) as f64 * 1024.0 / running.max(1) as f64;
    println!(
        "memory per request in flight ({} binary): {:.1} KiB ({running} in flight: {} KiB resident, {} KiB before); requests waiting in SQS cost the dispatcher nothing",
        binary.display(),
        per / 1024.0,
        with,
        before
    );
}
