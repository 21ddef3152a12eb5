//! Request custody on the test bed: requests wait in SQS (moto) while the scaler brings a GPU node up
//! from zero, the dispatcher sends them to a stand-in model server once a model pod is Ready (kwok, real
//! apiserver), and every request gets exactly one terminal reply.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod scaler_common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, PostParams};
use scaler_common::{Scenario, start_scaler};
use tokio::sync::oneshot;
use zerospot_core::estimate::PublishedDemand;
use zerospot_core::request::{ChatMessage, Input, RawOptions, Request};
use zerospot_custody::client::submit;
use zerospot_custody::queue::{Queue, SdkQueue};
use zerospot_custody::reply::{Reply, ReplyKind};
use zerospot_effects::{Memory, Published, ScalerConfig, World, names, observe};
use zerospot_testbed::fixtures::{create_queue, gpu_pod, set_desired_capacity};
use zerospot_testbed::{StandIn, StandInOptions, eventually, unique_name};

/// A dispatcher running in this process; stopped when dropped.
struct RunningDispatcher {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RunningDispatcher {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

async fn start_dispatcher(s: &Scenario, config: &str) -> RunningDispatcher {
    let config = ScalerConfig::from_yaml(config).unwrap();
    let kube_config = s.bed.kube_config().await.unwrap();
    let aws = s.aws.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        zerospot_custody::service::run(
            config,
            kube_config,
            &aws,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            unique_name("dispatcher"),
            async {
                let _ = stopped.await;
            },
        )
        .await
        .unwrap();
    });
    RunningDispatcher {
        stop: Some(stop),
        task,
    }
}

struct Queues {
    replies: String,
    dlq: String,
}

async fn queues(s: &Scenario) -> Queues {
    Queues {
        replies: create_queue(&s.aws, "replies").await.unwrap(),
        dlq: create_queue(&s.aws, "dlq").await.unwrap(),
    }
}

/// The scenario's configuration with the models' endpoint at the stand-in and the dispatcher section;
/// the route gets at most the Ready pods' lanes (`fill_free_nodes: false`).
fn config(s: &Scenario, q: &Queues, endpoint: &str, extra: &str) -> String {
    let base = s.config(60, 600);
    let base = base.replace(
        &format!("namespace: {}, service:", s.namespace),
        &format!(
            "endpoint: \"{endpoint}\", target: route, concurrency: 4, fill_free_nodes: false, namespace: {}, service:",
            s.namespace
        ),
    );
    format!(
        "{base}dispatcher: {{reply_queues: [\"{}\"], dead_letter_queue: \"{}\", visibility_timeout_s: 10, retry_backoff_s: 1{extra}}}\n",
        q.replies, q.dlq
    )
}

fn request(model: &str, id: &str, reply_to: &str, deadline_s: i64) -> Request {
    Request {
        version: 1,
        id: id.to_owned(),
        model: model.to_owned(),
        input: Input::Chat(vec![ChatMessage {
            role: "user".into(),
            content: format!("question {id}"),
        }]),
        options: None,
        stream: false,
        reply_to: Some(reply_to.to_owned()),
        deadline: Some(Utc::now() + chrono::Duration::seconds(deadline_s)),
        attempt: 0,
    }
}

/// Reads every reply on the queue until `done` holds for what was read (or `within` passes).
async fn collect_replies(
    queue: &SdkQueue,
    url: &str,
    within: Duration,
    done: impl Fn(&[Reply]) -> bool,
) -> Vec<Reply> {
    let replies = |got: &[(Reply, u32)]| got.iter().map(|(r, _)| r.clone()).collect::<Vec<_>>();
    let got = collect_with_attempts(queue, url, within, |got| done(&replies(got))).await;
    replies(&got)
}

/// Reads replies until `n` are terminal; asserts each is a final reply and no id is answered twice.
/// Returns every reply read and the final one per id.
async fn all_answered_once(
    queue: &SdkQueue,
    url: &str,
    n: usize,
) -> (Vec<Reply>, HashMap<String, Reply>) {
    let replies = collect_replies(queue, url, Duration::from_secs(120), |r| {
        r.iter().filter(|x| x.kind.is_terminal()).count() >= n
    })
    .await;
    let mut finals: HashMap<String, Reply> = HashMap::new();
    for r in replies.iter().filter(|r| r.kind.is_terminal()) {
        assert_eq!(r.kind, ReplyKind::Final, "{r:?}");
        assert!(
            finals.insert(r.id.clone(), r.clone()).is_none(),
            "{} answered twice",
            r.id
        );
    }
    assert_eq!(finals.len(), n, "every request answered");
    (replies, finals)
}

/// Submits a request for `llama` with id `<prefix><i>` for each `i` in `range`, replies to `q.replies`.
async fn submit_many(
    sqs: &SdkQueue,
    s: &Scenario,
    q: &Queues,
    prefix: &str,
    range: std::ops::Range<usize>,
) {
    for i in range {
        submit(
            sqs,
            s.queue("llama"),
            &request("llama", &format!("{prefix}{i}"), &q.replies, 600),
        )
        .await
        .unwrap();
    }
}

/// Sets the scenario's group to `n` instances and waits for their `n` Ready nodes.
async fn ready_nodes(s: &Scenario, n: usize) -> Vec<k8s_openapi::api::core::v1::Node> {
    set_desired_capacity(&s.aws, &s.group, i32::try_from(n).unwrap())
        .await
        .unwrap();
    eventually(
        &format!("{n} Ready nodes"),
        Duration::from_secs(30),
        || async {
            let nodes = s.ready_nodes().await;
            if nodes.len() == n {
                Ok(nodes)
            } else {
                Err(format!("{} so far", nodes.len()))
            }
        },
    )
    .await
    .unwrap()
}

/// Plays Knative's part for a model: its pod, asking for one MPS slot, pinned to the group's nodes.
async fn model_pod(s: &Scenario, model: &str) {
    let mut pod = gpu_pod(&unique_name(model), &s.group, 1);
    pod.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(names::LABEL_KNATIVE_SERVICE.into(), model.into());
    Api::<Pod>::namespaced(s.kube.clone(), &s.namespace)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
}

#[tokio::test]
async fn two_hundred_requests_submitted_with_the_group_at_zero_are_all_answered_once() {
    let s = Scenario::new(&["llama"], |o| o).await;
    let q = queues(&s).await;
    let standin = StandIn::start(
        StandInOptions::new(["llama"])
            .parallel(4)
            .tokens_per_reply(4),
    )
    .await
    .unwrap();
    // The pod's server: the dispatcher sends to the pod's IP (pods mode); the route (`standin`) only
    // ever sees the wake-up.
    let (pod_server, port) = pod_standin(
        StandInOptions::new(["llama"])
            .parallel(4)
            .tokens_per_reply(4),
    )
    .await;
    let pa = s.create_autoscaler("llama").await;
    let config = pods_config(&s, &q, standin.endpoint(), port, "")
        .replace("concurrency: 25", "concurrency: 4");
    let _scaler = start_scaler(s.bed, &s.aws, &config).await;
    let _dispatcher = start_dispatcher(&s, &config).await;
    let sqs = SdkQueue::new(&s.aws);
    let n = 200;
    submit_many(&sqs, &s, &q, "r", 0..n).await;
    // Nothing is dispatched while no pod is Ready; the dispatcher wakes the route instead, and Knative
    // (played here) answers the wake-up with desiredScale 1 and a pod.
    let wake = eventually(
        "a wake-up request through the route",
        Duration::from_secs(20),
        || async {
            standin
                .requests_to("/api/generate")
                .into_iter()
                .find(|r| r.json().is_ok_and(|v| v.get("prompt").is_none()))
                .ok_or_else(|| "none yet".to_owned())
        },
    )
    .await
    .unwrap();
    assert_eq!(wake.json().unwrap()["model"], "llama");
    assert!(
        standin.requests_to("/api/chat").is_empty(),
        "no request reached the model before a pod was Ready"
    );
    s.set_desired_scale(&pa, 1).await;
    model_pod(&s, "llama").await;

    let (replies, _) = all_answered_once(&sqs, &q.replies, n).await;
    assert!(
        standin.requests_to("/api/chat").is_empty(),
        "requests go to the pod, not the route"
    );
    assert_eq!(
        pod_server.requests_to("/api/chat").len(),
        n,
        "each sent once"
    );
    let sample = replies.iter().find(|r| r.id == "r7").unwrap();
    assert_eq!(sample.content, pod_server.reply_to("question r7"));
    let t = sample.timings.as_ref().unwrap();
    assert!(t.queued_s > 0.0 && t.total_s >= t.queued_s, "{t:?}");
    // The first requests waited for the pod; their replies say when it turned Ready.
    let waited: Vec<&zerospot_custody::reply::Timings> = replies
        .iter()
        .filter_map(|r| r.timings.as_ref())
        .filter(|t| t.pod_ready_s.is_some())
        .collect();
    assert!(!waited.is_empty(), "phases of a cold start reported");
    for t in waited {
        let pod_ready = t.pod_ready_s.unwrap();
        assert!(pod_ready <= t.queued_s && pod_ready > 0.0, "{t:?}");
        assert!(t.node_ready_s.is_none_or(|n| n <= pod_ready), "{t:?}");
    }
    // The group came up from zero for it, and the queue is empty.
    assert!(s.group_state().await.0 >= 1);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(sqs.waiting(s.queue("llama")).await.unwrap(), 0);
}

/// A scenario whose model already has a Ready pod on a node.
async fn warm(s: &Scenario, model: &str) {
    model_pod(s, model).await;
}

#[tokio::test]
async fn model_errors_are_retried_with_back_off_then_the_request_goes_to_the_dlq_with_the_reason() {
    let s = Scenario::new(&["llama"], |o| o).await;
    let q = queues(&s).await;
    let standin = StandIn::start(StandInOptions::new(["llama"]).parallel(4))
        .await
        .unwrap();
    let _scaler = start_scaler(s.bed, &s.aws, &s.config(60, 600)).await;
    let _dispatcher =
        start_dispatcher(&s, &config(&s, &q, standin.endpoint(), ", max_attempts: 2")).await;
    warm(&s, "llama").await;
    standin.fail_next(10);
    let sqs = SdkQueue::new(&s.aws);
    submit(
        &sqs,
        s.queue("llama"),
        &request("llama", "doomed", &q.replies, 600),
    )
    .await
    .unwrap();
    let replies = collect_replies(&sqs, &q.replies, Duration::from_secs(90), |r| {
        r.iter().any(|x| x.kind.is_terminal())
    })
    .await;
    let last = replies.iter().find(|r| r.kind.is_terminal()).unwrap();
    assert_eq!(last.kind, ReplyKind::Error);
    assert!(last.error.as_deref().unwrap().contains("500"), "{last:?}");
    assert_eq!(standin.requests_to("/api/chat").len(), 2, "two attempts");
    let dead = sqs
        .receive(&q.dlq, 10, Duration::from_secs(2), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].attributes["zerospot-reason"].contains("attempt 2 of 2"),
        "{:?}",
        dead[0].attributes
    );
    assert!(dead[0].body.contains("\"doomed\""));
    assert_eq!(sqs.waiting(s.queue("llama")).await.unwrap(), 0);
}

#[tokio::test]
async fn a_request_whose_deadline_passes_gets_a_timeout_reply() {
    let s = Scenario::new(&["llama"], |o| o).await;
    let q = queues(&s).await;
    let standin = StandIn::start(
        StandInOptions::new(["llama"])
            .parallel(4)
            .token_latency(Duration::from_secs(1))
            .tokens_per_reply(30),
    )
    .await
    .unwrap();
    let _scaler = start_scaler(s.bed, &s.aws, &s.config(60, 600)).await;
    let _dispatcher = start_dispatcher(&s, &config(&s, &q, standin.endpoint(), "")).await;
    warm(&s, "llama").await;
    let sqs = SdkQueue::new(&s.aws);
    submit(
        &sqs,
        s.queue("llama"),
        &request("llama", "slow", &q.replies, 20),
    )
    .await
    .unwrap();
    let replies = collect_replies(&sqs, &q.replies, Duration::from_secs(60), |r| {
        r.iter().any(|x| x.kind.is_terminal())
    })
    .await;
    let last = replies.iter().find(|r| r.kind.is_terminal()).unwrap();
    assert_eq!(last.kind, ReplyKind::Timeout, "{last:?}");
    assert_eq!(last.id, "slow");
}

#[tokio::test]
async fn a_malformed_message_goes_to_the_dlq_with_the_reason_and_the_rest_are_answered() {
    let s = Scenario::new(&["llama"], |o| o).await;
    let q = queues(&s).await;
    let standin = StandIn::start(StandInOptions::new(["llama"]).parallel(4))
        .await
        .unwrap();
    let _scaler = start_scaler(s.bed, &s.aws, &s.config(60, 600)).await;
    let _dispatcher = start_dispatcher(&s, &config(&s, &q, standin.endpoint(), "")).await;
    warm(&s, "llama").await;
    let sqs = SdkQueue::new(&s.aws);
    submit(
        &sqs,
        s.queue("llama"),
        &request("llama", "before", &q.replies, 600),
    )
    .await
    .unwrap();
    sqs.send(s.queue("llama"), "{not json", &[]).await.unwrap();
    let mut elsewhere = request(
        "llama",
        "evil",
        "https://sqs.us-east-1.amazonaws.com/123456789012/not-allowed",
        600,
    );
    elsewhere.stream = true;
    submit(&sqs, s.queue("llama"), &elsewhere).await.unwrap();
    // Options pass through byte for byte, even a number f64 cannot hold.
    let mut exact = request("llama", "after", &q.replies, 600);
    let options = r#"{"temperature":0.10,"seed":7777777777777777777777777777777777777777777770.2}"#;
    exact.options = Some(RawOptions::from_json(options).unwrap());
    submit(&sqs, s.queue("llama"), &exact).await.unwrap();
    let replies = collect_replies(&sqs, &q.replies, Duration::from_secs(60), |r| {
        r.iter().filter(|x| x.kind == ReplyKind::Final).count() >= 2
    })
    .await;
    let ids: Vec<&str> = replies
        .iter()
        .filter(|r| r.kind == ReplyKind::Final)
        .map(|r| r.id.as_str())
        .collect();
    assert!(ids.contains(&"before") && ids.contains(&"after"), "{ids:?}");
    let dead = eventually(
        "two refused messages in the DLQ",
        Duration::from_secs(20),
        || async {
            let d = sqs
                .receive(&q.dlq, 10, Duration::from_secs(1), Duration::from_secs(60))
                .await
                .map_err(|e| e.to_string())?;
            if d.len() >= 2 {
                Ok(d)
            } else {
                Err(format!("{} so far", d.len()))
            }
        },
    )
    .await
    .unwrap();
    let reasons: Vec<&str> = dead
        .iter()
        .map(|m| m.attributes["zerospot-reason"].as_str())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("malformed request")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("not an allowed reply queue")),
        "{reasons:?}"
    );
    let got = standin
        .requests_to("/api/chat")
        .into_iter()
        .find(|r| String::from_utf8_lossy(&r.body).contains("question after"))
        .unwrap();
    assert!(
        String::from_utf8_lossy(&got.body).contains(&format!("\"options\":{options}")),
        "{}",
        String::from_utf8_lossy(&got.body)
    );
}

/// The scenario's configuration in `pods` mode: the dispatcher picks the pod and sends to
/// `http://<pod IP>:<pod_port>`; pod IPs are loopback addresses (the bridge's pod CIDRs) where a
/// stand-in listening on 0.0.0.0 answers. `wake` is the route the wake-up requests go to. Requests
/// go to Ready pods only (`fill_free_nodes: false`): filling free node slots through the route has
/// its own test, [`free_gpu_slots_take_requests_through_the_route_once_the_pods_are_full`].
fn pods_config(s: &Scenario, q: &Queues, wake: &str, pod_port: u16, extra: &str) -> String {
    pods_config_filling(s, q, wake, pod_port, extra, false)
}

fn pods_config_filling(
    s: &Scenario,
    q: &Queues,
    wake: &str,
    pod_port: u16,
    extra: &str,
    fill_free_nodes: bool,
) -> String {
    let base = s.config(60, 600);
    let base = base.replace(
        &format!("namespace: {}, service:", s.namespace),
        &format!(
            "endpoint: \"{wake}\", target: pods, pod_port: {pod_port}, concurrency: 25, fill_free_nodes: {fill_free_nodes}, namespace: {}, service:",
            s.namespace
        ),
    );
    format!(
        "{base}dispatcher: {{reply_queues: [\"{}\"], dead_letter_queue: \"{}\", visibility_timeout_s: 60, retry_backoff_s: 1{extra}}}\n",
        q.replies, q.dlq
    )
}

/// A stand-in answering on every local address (so on every loopback pod IP) at a free port.
async fn pod_standin(options: StandInOptions) -> (StandIn, u16) {
    let port = scaler_common::free_addr().port();
    let standin = StandIn::start(options.bind(SocketAddr::from(([0, 0, 0, 0], port))))
        .await
        .unwrap();
    (standin, port)
}

/// Plays Knative's part: a Ready model pod on `node` (placed there directly); returns its IP.
async fn model_pod_on(s: &Scenario, model: &str, node: &str) -> String {
    let mut pod = gpu_pod(&unique_name(model), &s.group, 1);
    pod.metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(names::LABEL_KNATIVE_SERVICE.into(), model.into());
    pod.spec.as_mut().unwrap().node_name = Some(node.to_owned());
    let pods = Api::<Pod>::namespaced(s.kube.clone(), &s.namespace);
    let name = pods
        .create(&PostParams::default(), &pod)
        .await
        .unwrap()
        .metadata
        .name
        .unwrap();
    eventually(
        "the pod Ready with an IP",
        Duration::from_secs(30),
        || async {
            let p = pods.get(&name).await.map_err(|e| e.to_string())?;
            let status = p.status.unwrap_or_default();
            let ready = status
                .conditions
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            match status.pod_ip {
                Some(ip) if ready => Ok(ip),
                _ => Err("not yet".to_owned()),
            }
        },
    )
    .await
    .unwrap()
}

fn in_flight_annotation(node: &k8s_openapi::api::core::v1::Node) -> Option<String> {
    node.metadata
        .annotations
        .as_ref()?
        .get(names::ANNOTATION_IN_FLIGHT)
        .cloned()
}

async fn node_annotation_is(s: &Scenario, node: &str, want: &str) {
    let nodes = Api::<k8s_openapi::api::core::v1::Node>::all(s.kube.clone());
    eventually(
        &format!("{node} annotated in-flight {want}"),
        Duration::from_secs(20),
        || async {
            let n = nodes.get(node).await.map_err(|e| e.to_string())?;
            match in_flight_annotation(&n) {
                Some(v) if v == want => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_spot_interruption_during_fifty_requests_in_flight_hands_its_node_s_requests_over_at_once()
 {
    let s = Scenario::new(&["llama"], |o| o).await;
    let q = queues(&s).await;
    // 40 tokens at 300 ms: each answer takes 12 s, so a request handed over must not wait for it.
    let (standin, port) = pod_standin(
        StandInOptions::new(["llama"])
            .parallel(100)
            .token_latency(Duration::from_millis(300))
            .tokens_per_reply(40),
    )
    .await;
    let nodes = ready_nodes(&s, 3).await;
    let name = |i: usize| nodes[i].metadata.name.clone().unwrap();
    let (a, b, c) = (name(0), name(1), name(2));
    let ip_a = model_pod_on(&s, "llama", &a).await;
    let ip_b = model_pod_on(&s, "llama", &b).await;
    assert_ne!(ip_a, ip_b);
    let _dispatcher = start_dispatcher(
        &s,
        &pods_config(&s, &q, "http://127.0.0.1:9", port, ", max_attempts: 3"),
    )
    .await;
    let sqs = SdkQueue::new(&s.aws);
    let n = 50;
    submit_many(&sqs, &s, &q, "r", 0..n).await;
    let to = |ip: &str| {
        standin
            .requests_to("/api/chat")
            .into_iter()
            .filter(|r| r.local.is_some_and(|l| l.ip().to_string() == ip))
            .collect::<Vec<_>>()
    };
    eventually("50 requests running", Duration::from_secs(30), || async {
        let (na, nb) = (to(&ip_a).len(), to(&ip_b).len());
        if na + nb == n {
            Ok(())
        } else {
            Err(format!("{na} on A, {nb} on B"))
        }
    })
    .await
    .unwrap();
    assert_eq!(to(&ip_a).len(), 25, "each pod filled to its concurrency");
    assert_eq!(to(&ip_b).len(), 25);
    // Exact work in flight per node, for the scaler.
    node_annotation_is(&s, &a, "25").await;

    // The interruption warning: the spot-interruption function taints the node (see
    // zerospot_effects::disruption); here the test plays it. A replacement pod comes up on C.
    let tainted_at = std::time::Instant::now();
    Api::<k8s_openapi::api::core::v1::Node>::all(s.kube.clone())
        .patch(
            &a,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(serde_json::json!({"spec": {"taints": [
                {"key": names::TAINT_INTERRUPTED, "value": "spot", "effect": "NoSchedule"}
            ]}})),
        )
        .await
        .unwrap();
    let ip_c = model_pod_on(&s, "llama", &c).await;

    let (_, finals) = all_answered_once(&sqs, &q.replies, n).await;
    let on_a: Vec<String> = to(&ip_a)
        .iter()
        .map(|r| String::from_utf8_lossy(&r.body).into_owned())
        .collect();
    let again = to(&ip_c);
    assert_eq!(again.len(), 25, "A's 25 requests, and only they, went to C");
    for r in &again {
        let body = String::from_utf8_lossy(&r.body);
        assert!(on_a.iter().any(|b| *b == body), "{body} was not on A");
        // Handed over at once: re-sent long before the 12 s its first attempt needed, and long
        // before the 60 s visibility timeout would have brought it back.
        let after = r.at.duration_since(tainted_at);
        assert!(
            after < Duration::from_secs(8),
            "re-sent {after:?} after the taint"
        );
    }
    for (id, reply) in &finals {
        assert_eq!(reply.content, standin.reply_to(&format!("question {id}")));
        let handed_over = on_a.iter().any(|b| b.contains(&format!("question {id}\"")));
        let attempt = reply.timings.as_ref().unwrap().attempt;
        assert_eq!(attempt, u32::from(handed_over), "{id}");
    }
    // A is idle now, C carried the work; B never saw a second request.
    node_annotation_is(&s, &a, "0").await;
    assert_eq!(to(&ip_b).len(), 25);
}

/// A `zerospot dispatcher` process; killed (SIGKILL) when dropped.
struct DispatcherProcess(std::process::Child);

impl Drop for DispatcherProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_dispatcher(s: &Scenario, config: &std::path::Path, extra: &[&str]) -> DispatcherProcess {
    let info = s.bed.info();
    let log = config.with_extension(format!("{}.log", unique_name("dispatcher")));
    let child = std::process::Command::new(scaler_common::zerospot_binary())
        .args(["dispatcher", "--config"])
        .arg(config)
        .args(["--listen", "127.0.0.1:0", "--log-format", "text"])
        .args(extra)
        .env("KUBECONFIG", &info.kubeconfig)
        .envs(info.aws_env())
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    DispatcherProcess(child)
}

/// Every reply message on `url` with its `zerospot-attempt` attribute, until `done` holds.
async fn collect_with_attempts(
    queue: &SdkQueue,
    url: &str,
    within: Duration,
    done: impl Fn(&[(Reply, u32)]) -> bool,
) -> Vec<(Reply, u32)> {
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    while started.elapsed() < within && !done(&out) {
        for m in queue
            .receive(url, 10, Duration::from_secs(1), Duration::from_secs(30))
            .await
            .unwrap()
        {
            let attempt = m
                .attributes
                .get("zerospot-attempt")
                .and_then(|a| a.parse().ok())
                .unwrap_or(u32::MAX);
            out.push((Reply::parse(&m.body).unwrap(), attempt));
            queue.delete(url, &m.receipt).await.unwrap();
        }
    }
    out
}

#[tokio::test]
async fn a_dispatcher_killed_mid_stream_and_restarted_answers_every_request_exactly_once() {
    let s = Scenario::new(&["llama"], |o| o).await;
    let q = queues(&s).await;
    // 20 tokens at 250 ms: 5 s per answer, streamed in chunks every 100 ms.
    let standin = StandIn::start(
        StandInOptions::new(["llama"])
            .parallel(8)
            .token_latency(Duration::from_millis(250))
            .tokens_per_reply(20),
    )
    .await
    .unwrap();
    let _scaler = start_scaler(s.bed, &s.aws, &s.config(60, 600)).await;
    warm(&s, "llama").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("zerospot.yaml");
    // Visibility 4 s (renewed every 2 s while alive): a dead dispatcher's requests return within 4 s.
    let yaml = config(&s, &q, standin.endpoint(), "")
        .replace("visibility_timeout_s: 10", "visibility_timeout_s: 4")
        .replace("concurrency: 4", "concurrency: 8");
    std::fs::write(&file, yaml).unwrap();
    let first = spawn_dispatcher(&s, &file, &[]);
    let sqs = SdkQueue::new(&s.aws);
    let n = 16;
    for i in 0..n {
        let mut r = request("llama", &format!("k{i}"), &q.replies, 600);
        r.stream = true;
        submit(&sqs, s.queue("llama"), &r).await.unwrap();
    }
    // Mid-stream: eight answers are being generated and chunks are on the reply queue.
    eventually(
        "eight requests streaming",
        Duration::from_secs(60),
        || async {
            let got = standin.requests_to("/api/chat").len();
            if got >= 8 {
                Ok(())
            } else {
                Err(format!("{got} so far"))
            }
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    drop(first); // SIGKILL
    let killed_with = standin.requests_to("/api/chat").len();
    assert!(killed_with < n, "killed before everything was served");
    let _second = spawn_dispatcher(&s, &file, &[]);

    let replies = collect_with_attempts(&sqs, &q.replies, Duration::from_secs(120), |r| {
        r.iter().filter(|(x, _)| x.kind.is_terminal()).count() >= n
    })
    .await;
    // Let any late duplicate arrive before counting.
    let late = collect_with_attempts(&sqs, &q.replies, Duration::from_secs(6), |_| false).await;
    let all: Vec<&(Reply, u32)> = replies.iter().chain(late.iter()).collect();
    let mut finals: HashMap<&str, Vec<&Reply>> = HashMap::new();
    for (r, _) in all.iter().filter(|(r, _)| r.kind.is_terminal()) {
        finals.entry(r.id.as_str()).or_default().push(r);
    }
    assert_eq!(finals.len(), n, "every request answered");
    for (id, f) in &finals {
        assert_eq!(f.len(), 1, "{id}: one terminal reply, not {f:?}");
        assert_eq!(f[0].kind, ReplyKind::Final, "{:?}", f[0]);
        assert_eq!(f[0].content, standin.reply_to(&format!("question {id}")));
    }
    // The requests cut by the kill were answered again (a later attempt), and the last attempt's
    // chunks, put in order, are exactly the final answer.
    let retried: Vec<&&str> = finals
        .iter()
        .filter(|(_, f)| f[0].timings.as_ref().unwrap().attempt > 0)
        .map(|(id, _)| id)
        .collect();
    assert!(!retried.is_empty(), "the kill cut some answers");
    for id in retried {
        let last = finals[*id][0].timings.as_ref().unwrap().attempt;
        let mut chunks: Vec<&Reply> = all
            .iter()
            .filter(|(r, a)| r.id == **id && r.kind == ReplyKind::Chunk && *a == last)
            .map(|(r, _)| r)
            .collect();
        chunks.sort_by_key(|r| r.seq);
        chunks.dedup_by_key(|r| r.seq);
        let text: String = chunks.iter().map(|r| r.content.as_str()).collect();
        assert_eq!(text, finals[*id][0].content, "{id}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(sqs.waiting(s.queue("llama")).await.unwrap(), 0);
}

#[tokio::test]
async fn without_a_cluster_the_dispatcher_serves_fixed_endpoints_and_refuses_a_model_without_one() {
    let s = Scenario::new(&["llama"], |o| o).await;
    let q = queues(&s).await;
    let standin = StandIn::start(StandInOptions::new(["llama"]).parallel(2))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("zerospot.yaml");
    let demand_namespace = format!(", demand_namespace: {}", s.namespace);
    std::fs::write(&file, config(&s, &q, standin.endpoint(), &demand_namespace)).unwrap();
    // No pod, no node, no scaler: the endpoint alone is the capacity.
    let _dispatcher = spawn_dispatcher(&s, &file, &["--no-cluster"]);
    let sqs = SdkQueue::new(&s.aws);
    for i in 0..5 {
        submit(
            &sqs,
            s.queue("llama"),
            &request("llama", &format!("s{i}"), &q.replies, 600),
        )
        .await
        .unwrap();
    }
    let replies = collect_replies(&sqs, &q.replies, Duration::from_secs(60), |r| {
        r.iter().filter(|x| x.kind.is_terminal()).count() >= 5
    })
    .await;
    let finals: Vec<&Reply> = replies
        .iter()
        .filter(|r| r.kind == ReplyKind::Final)
        .collect();
    assert_eq!(finals.len(), 5, "{replies:?}");
    assert!(standin.peak_concurrency() <= 2, "concurrency honoured");
    assert_eq!(s.group_state().await.0, 0, "nothing scaled");
    // Without a cluster nothing is published (the dispatcher would have written within a second).
    let published = Api::<ConfigMap>::namespaced(s.kube.clone(), &s.namespace)
        .get_opt(names::CONFIGMAP_DEMAND)
        .await
        .unwrap();
    assert!(published.is_none(), "{published:?}");

    let no_endpoint = dir.path().join("bad.yaml");
    std::fs::write(
        &no_endpoint,
        config(&s, &q, standin.endpoint(), "")
            .replace(&format!("endpoint: \"{}\", ", standin.endpoint()), ""),
    )
    .unwrap();
    let mut bad = spawn_dispatcher(&s, &no_endpoint, &["--no-cluster"]);
    let status = bad.0.wait().unwrap();
    assert_eq!(status.code(), Some(2), "a configuration error, not a crash");
}

/// The dispatcher's published demand record: the ConfigMap, its `demand.json` and the record parsed;
/// why not, while it is missing or unreadable.
async fn published_demand(
    configmaps: &Api<ConfigMap>,
) -> Result<(ConfigMap, String, PublishedDemand), String> {
    let cm = configmaps
        .get_opt(names::CONFIGMAP_DEMAND)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no ConfigMap yet")?;
    let text = cm
        .data
        .as_ref()
        .and_then(|d| d.get(names::DEMAND_KEY))
        .cloned()
        .ok_or("no demand.json")?;
    let record = PublishedDemand::parse(&text).map_err(|e| e.to_string())?;
    Ok((cm, text, record))
}

#[tokio::test]
async fn the_dispatcher_publishes_demand_estimates_and_the_scaler_s_observation_carries_them() {
    let s = Scenario::new(&["llama"], |o| o).await;
    let q = queues(&s).await;
    let standin = StandIn::start(StandInOptions::new(["llama"]).parallel(4))
        .await
        .unwrap();
    let config = config(
        &s,
        &q,
        standin.endpoint(),
        &format!(", demand_namespace: {}", s.namespace),
    );
    let _scaler = start_scaler(s.bed, &s.aws, &s.config(60, 600)).await;
    let dispatcher = start_dispatcher(&s, &config).await;
    // Before any request, a record that names no model: the scaler knows the dispatcher is there.
    let configmaps = Api::<ConfigMap>::namespaced(s.kube.clone(), &s.namespace);
    eventually(
        "an empty record as soon as the dispatcher runs",
        Duration::from_secs(10),
        || async {
            let (_, _, record) = published_demand(&configmaps).await?;
            if record.models.is_empty() {
                Ok(())
            } else {
                Err(format!("names {:?}", record.models))
            }
        },
    )
    .await
    .unwrap();
    warm(&s, "llama").await;
    let sqs = SdkQueue::new(&s.aws);
    let n = 5;
    submit_many(&sqs, &s, &q, "d", 0..n).await;
    let replies = collect_replies(&sqs, &q.replies, Duration::from_secs(60), |r| {
        r.iter().filter(|x| x.kind == ReplyKind::Final).count() >= n
    })
    .await;
    assert_eq!(
        replies
            .iter()
            .filter(|x| x.kind == ReplyKind::Final)
            .count(),
        n
    );

    // Published every 10 s: wait for a record that has seen the completions (the service time leaves
    // its 5 s prior; the stand-in answers in well under a second).
    let (cm, text, record) = eventually(
        "the ConfigMap zerospot-demand with every arrival and some completions",
        Duration::from_secs(25),
        || async {
            let (cm, text, record) = published_demand(&configmaps).await?;
            // All five arrived (4 gaps; the dispatcher takes at most 4 at a time) and some finished.
            let served = record.models.iter().any(|m| {
                m.model == "llama"
                    && m.service_time_s.is_some_and(|s| s < 4.0)
                    && m.gaps.as_ref().is_some_and(|g| g.total() > 3.9)
            });
            if served {
                Ok((cm, text, record))
            } else {
                Err(format!("not yet: {text}"))
            }
        },
    )
    .await
    .unwrap();
    let managers: Vec<&str> = cm
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|f| f.manager.as_deref())
        .collect();
    assert_eq!(managers, ["zerospot-dispatcher"], "server-side applied");
    let age = (Utc::now() - record.observed_at).num_seconds();
    assert!((0..=15).contains(&age), "{age} s old");
    assert_eq!(record.models.len(), 1, "{text}");
    let llama = &record.models[0];
    assert!(llama.arrival_rate_per_s.unwrap() > 0.0, "{text}");
    assert!(llama.silent_for_s.is_some(), "{text}");
    assert_eq!(llama.queued, 0, "only the estimates are published");
    // Each of the 5 messages counted once, no more: 4 gaps, each older one weighing 1/500 less.
    let gaps = llama.gaps.as_ref().unwrap().total();
    assert!((3.95..=4.0).contains(&gaps), "{gaps}: {text}");

    // The scaler's observation built from it carries the figures, the silence advanced by its age.
    let scaler_config = ScalerConfig::from_yaml(&config).unwrap();
    let now = Utc::now();
    let queues = HashMap::new();
    let failures = HashMap::new();
    let world = World {
        groups: &[],
        nodes: &[],
        pods: &[],
        autoscalers: &[],
        queues: &queues,
        capacity_failures: &failures,
        published_demand: Published::Text(&text),
    };
    let observation = observe(&scaler_config, &world, &mut Memory::default(), now);
    let seen = observation
        .snapshot
        .demand
        .iter()
        .find(|d| d.model == "llama")
        .unwrap();
    assert_eq!(seen.arrival_rate_per_s, llama.arrival_rate_per_s);
    assert_eq!(seen.service_time_s, llama.service_time_s);
    assert_eq!(seen.gaps, llama.gaps);
    let advanced = seen.silent_for_s.unwrap() - llama.silent_for_s.unwrap();
    let age_s = (now - record.observed_at).num_milliseconds() as f64 / 1000.0;
    assert!((advanced - age_s).abs() < 1e-6, "{advanced} vs {age_s}");
    assert!(
        !observation.notes.iter().any(|n| n.contains("demand")),
        "{:?}",
        observation.notes
    );

    // A new dispatcher (a rollout, a crash) resumes from that record before it publishes: the gaps and
    // the last arrival carry on; nothing is counted twice and nothing starts blind.
    drop(dispatcher);
    let last = eventually(
        "the stopped dispatcher's last record",
        Duration::from_secs(5),
        || async { published_demand(&configmaps).await },
    )
    .await
    .unwrap()
    .2;
    let restarted_at = Utc::now();
    let _again = start_dispatcher(&s, &config).await;
    let (_, text, resumed) = eventually(
        "a record from the new dispatcher",
        Duration::from_secs(25),
        || async {
            let (cm, text, record) = published_demand(&configmaps).await?;
            if record.observed_at > restarted_at {
                Ok((cm, text, record))
            } else {
                Err(format!("still the old one: {text}"))
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(resumed.models.len(), 1, "{text}");
    let after = &resumed.models[0];
    let before = &last.models[0];
    assert_eq!(after.model, "llama");
    assert_eq!(after.gaps, before.gaps, "{text}");
    // The estimates run on milliseconds (`demand::unix_s`); the records carry nanoseconds.
    let between = (resumed.observed_at - last.observed_at)
        .num_microseconds()
        .unwrap() as f64
        / 1e6;
    let carried = after.silent_for_s.unwrap() - before.silent_for_s.unwrap();
    assert!((carried - between).abs() < 2e-3, "{carried} vs {between}");
    let service = after.service_time_s.unwrap();
    assert!(service < 4.0, "the service time carries on: {service}");
}

#[tokio::test]
async fn free_gpu_slots_take_requests_through_the_route_once_the_pods_are_full() {
    let s = Scenario::new(&["llama"], |o| o).await;
    let q = queues(&s).await;
    // Answers take about 8 s (40 tokens at 200 ms), so requests overlap.
    let slow = || {
        StandInOptions::new(["llama"])
            .parallel(100)
            .token_latency(Duration::from_millis(200))
            .tokens_per_reply(40)
    };
    let (pod_server, port) = pod_standin(slow()).await;
    // The route: in a cluster Knative's activator, which holds a request until a pod is Ready in the
    // free slot; here a stand-in that answers.
    let route = StandIn::start(slow()).await.unwrap();
    let node = ready_nodes(&s, 1).await[0].metadata.name.clone().unwrap();
    // One pod of the model on the node, which has 4 MPS slots: 3 are free.
    let ip = model_pod_on(&s, "llama", &node).await;
    let config = pods_config_filling(&s, &q, route.endpoint(), port, "", true)
        .replace("concurrency: 25", "concurrency: 2");
    let _dispatcher = start_dispatcher(&s, &config).await;
    let sqs = SdkQueue::new(&s.aws);
    let to_pod = || {
        pod_server
            .requests_to("/api/chat")
            .into_iter()
            .filter(|r| r.local.is_some_and(|l| l.ip().to_string() == ip))
            .count()
    };
    let to_route = || route.requests_to("/api/chat").len();

    // One request: the Ready pod takes it, not the route.
    submit(
        &sqs,
        s.queue("llama"),
        &request("llama", "first", &q.replies, 600),
    )
    .await
    .unwrap();
    eventually(
        "the first request at the pod",
        Duration::from_secs(20),
        || async {
            if to_pod() == 1 {
                Ok(())
            } else {
                Err(format!("{} at the pod", to_pod()))
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(to_route(), 0, "a Ready pod with a free slot comes first");

    // Then 19 more: the pod's second lane, then 3 free slots x 2 lanes through the route, and no more
    // while those run.
    let n = 20;
    submit_many(&sqs, &s, &q, "r", 1..n).await;
    eventually("8 requests running", Duration::from_secs(20), || async {
        let (p, r) = (to_pod(), to_route());
        if p == 2 && r == 6 {
            Ok(())
        } else {
            Err(format!("{p} at the pod, {r} through the route"))
        }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        (to_pod(), to_route()),
        (2, 6),
        "nothing beyond the pod's lanes and the free slots' lanes"
    );
    // The node is counted busy with its pod's 2 and the route's share (the route picks the pod: at
    // most the pods there x concurrency).
    node_annotation_is(&s, &node, "4").await;

    all_answered_once(&sqs, &q.replies, n).await;
    assert_eq!(to_pod() + to_route(), n, "each sent once");
    node_annotation_is(&s, &node, "0").await;
}
