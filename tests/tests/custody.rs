//! Request custody on the test bed: requests wait in SQS (moto) while the scaler brings a GPU node up
//! from zero, the dispatcher sends them to a stand-in model server once a model pod is Ready (kwok, real
//! apiserver), and every request gets exactly one terminal reply.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod scaler_common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use scaler_common::{Scenario, start_scaler};
use tokio::sync::oneshot;
use zerospot_core::request::{ChatMessage, Input, RawOptions, Request};
use zerospot_custody::client::submit;
use zerospot_custody::queue::{Queue, SdkQueue};
use zerospot_custody::reply::{Reply, ReplyKind};
use zerospot_effects::{ScalerConfig, names};
use zerospot_testbed::fixtures::gpu_pod;
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
    let sqs = aws_sdk_sqs::Client::new(&s.aws);
    let make = async |name: &str| {
        sqs.create_queue()
            .queue_name(unique_name(name))
            .send()
            .await
            .unwrap()
            .queue_url()
            .unwrap()
            .to_owned()
    };
    Queues {
        replies: make("replies").await,
        dlq: make("dlq").await,
    }
}

/// The scenario's configuration with the models' endpoint at the stand-in and the dispatcher section.
fn config(s: &Scenario, q: &Queues, endpoint: &str, extra: &str) -> String {
    let base = s.config(60, 600);
    let base = base.replace(
        &format!("namespace: {}, service:", s.namespace),
        &format!(
            "endpoint: \"{endpoint}\", concurrency: 4, namespace: {}, service:",
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
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    while started.elapsed() < within && !done(&out) {
        for m in queue
            .receive(url, 10, Duration::from_secs(1), Duration::from_secs(30))
            .await
            .unwrap()
        {
            out.push(Reply::parse(&m.body).unwrap());
            queue.delete(url, &m.receipt).await.unwrap();
        }
    }
    out
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
    let pa = s.create_autoscaler("llama").await;
    let config = config(&s, &q, standin.endpoint(), "");
    let _scaler = start_scaler(s.bed, &s.aws, &config).await;
    let _dispatcher = start_dispatcher(&s, &config).await;
    let sqs = SdkQueue::new(&s.aws);
    let n = 200;
    for i in 0..n {
        submit(
            &sqs,
            s.queue("llama"),
            &request("llama", &format!("r{i}"), &q.replies, 600),
        )
        .await
        .unwrap();
    }
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

    let replies = collect_replies(&sqs, &q.replies, Duration::from_secs(120), |r| {
        r.iter().filter(|x| x.kind.is_terminal()).count() >= n
    })
    .await;
    let mut finals: HashMap<&str, u32> = HashMap::new();
    for r in replies.iter().filter(|r| r.kind.is_terminal()) {
        assert_eq!(r.kind, ReplyKind::Final, "{r:?}");
        *finals.entry(r.id.as_str()).or_default() += 1;
    }
    assert_eq!(finals.len(), n, "every request answered");
    assert!(finals.values().all(|c| *c == 1), "none answered twice");
    let sample = replies.iter().find(|r| r.id == "r7").unwrap();
    assert_eq!(sample.content, standin.reply_to("question r7"));
    let t = sample.timings.as_ref().unwrap();
    assert!(t.queued_s > 0.0 && t.total_s >= t.queued_s, "{t:?}");
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
