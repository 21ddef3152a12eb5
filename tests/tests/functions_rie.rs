//! The functions' real binaries under the Lambda Runtime Interface Emulator: the `bootstrap` talks to the
//! Runtime API exactly as on Lambda, and is invoked through the emulator's invoke endpoint with real
//! payloads, against the test bed (moto and the real kube-apiserver).
//!
//! Needs `bash tests/bed/setup-lambda.sh` (it builds the emulator) and `ZEROSPOT_LAMBDA_RIE` (from
//! `lambda.env`), so this target is not run by a plain `cargo test --workspace`: `.ci/test` runs it in its
//! Lambda step, after that setup (`cargo test -p zerospot-testbed --test functions_rie`). It fails,
//! never skips, when the emulator is missing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod scaler_common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use scaler_common::Scenario;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zerospot_testbed::bridge::spot_interruption_event;
use zerospot_testbed::fixtures::set_desired_capacity;
use zerospot_testbed::{eventually, unique_name};

/// Builds (or finds up to date) a function's binary with the same cargo and target folder as this test.
fn function_binary(package: &str, bin: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["build", "--quiet", "-p", package, "--bin", bin])
        .args(["--message-format", "json"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "building {package} failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == bin)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("no executable for {bin}"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The emulator running one function; its process group is stopped when dropped.
struct Emulated {
    child: tokio::process::Child,
    invoke_port: u16,
}

impl Drop for Emulated {
    fn drop(&mut self) {
        // The emulator and the bootstrap it started share the process group we gave it.
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
        }
    }
}

impl Emulated {
    fn start(s: &Scenario, bootstrap: &PathBuf, config: &str) -> Emulated {
        let rie = std::env::var("ZEROSPOT_LAMBDA_RIE").unwrap_or_else(|_| {
            panic!(
                "ZEROSPOT_LAMBDA_RIE is not set: run `bash tests/bed/setup-lambda.sh` and `source \
                 ~/.cache/zerospot/lambda.env` first"
            )
        });
        let invoke_port = free_port();
        let runtime_port = free_port();
        let info = s.bed.info();
        let mut cmd = tokio::process::Command::new(rie);
        cmd.args([
            "--runtime-interface-emulator-address",
            &format!("127.0.0.1:{invoke_port}"),
            "--runtime-api-address",
            &format!("127.0.0.1:{runtime_port}"),
        ])
        .arg(bootstrap)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("ZEROSPOT_CONFIG", config)
        .env("KUBECONFIG", &info.kubeconfig)
        .envs(info.aws_env())
        .env("AWS_LAMBDA_FUNCTION_TIMEOUT", "300")
        .env("RUST_LOG", "info")
        .process_group(0)
        .kill_on_drop(true)
        .stdin(Stdio::null());
        Emulated {
            child: cmd.spawn().unwrap(),
            invoke_port,
        }
    }

    /// POSTs `payload` to the emulator's invoke endpoint and returns the function's answer.
    async fn invoke(&self, payload: &Value) -> Result<Value, String> {
        let body = payload.to_string();
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.invoke_port))
            .await
            .map_err(|e| e.to_string())?;
        let request = format!(
            "POST /2015-03-31/functions/function/invocations HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&response);
        let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP answer")?;
        if !head.starts_with("HTTP/1.1 200") {
            return Err(format!("{head}\n{body}"));
        }
        serde_json::from_str(body.trim()).map_err(|e| format!("{e}: {body}"))
    }

    /// Invokes until the emulator listens; returns the answer and the time from `since`.
    async fn first_invoke(&self, payload: &Value, since: Instant) -> (Value, Duration) {
        let answer = eventually(
            "the emulator's first answer",
            Duration::from_secs(30),
            || self.invoke(payload),
        )
        .await
        .unwrap();
        (answer, since.elapsed())
    }
}

#[tokio::test]
async fn the_queue_depth_binary_under_the_emulator_takes_the_group_from_zero_to_one() {
    let s = Scenario::new(&["llama"], |o| o).await;
    let bootstrap = function_binary("zerospot-queue-depth", "queue-depth");
    s.send("llama").await;
    let started = Instant::now();
    let emulated = Emulated::start(&s, &bootstrap, &s.config(60, 600));
    let notification = json!({"Records": [{
        "messageId": unique_name("notification"), "receiptHandle": "rh",
        "body": "{\"model\":\"llama\"}", "attributes": {}, "messageAttributes": {},
        "md5OfBody": "", "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:123456789012:zerospot-first-request",
        "awsRegion": "us-east-1"}]});
    let (answer, cold) = emulated.first_invoke(&notification, started).await;
    println!(
        "queue-depth (debug build) under the emulator: cold start to first handled event {cold:?}"
    );
    assert_eq!(answer, json!({"batchItemFailures": []}));
    assert_eq!(s.group_state().await.0, 1);
    // Warm: the same notification again changes nothing.
    let warm = Instant::now();
    let answer = emulated.invoke(&notification).await.unwrap();
    println!("queue-depth warm invocation: {:?}", warm.elapsed());
    assert_eq!(answer, json!({"batchItemFailures": []}));
    assert_eq!(s.group_state().await.0, 1);
}

#[tokio::test]
async fn the_spot_interruption_binary_under_the_emulator_marks_the_node_and_replaces_it() {
    let s = Scenario::new(&["llama"], |o| o).await;
    let bootstrap = function_binary("zerospot-spot-interruption", "spot-interruption");
    set_desired_capacity(&s.aws, &s.group, 1).await.unwrap();
    s.wait_desired(1, scaler_common::CONVERGE).await;
    let pa = s.create_autoscaler("llama").await;
    s.set_desired_scale(&pa, 1).await;
    let node = eventually("a Ready node", scaler_common::CONVERGE, || async {
        s.ready_nodes()
            .await
            .into_iter()
            .next()
            .ok_or_else(|| "none yet".to_owned())
    })
    .await
    .unwrap();
    let name = node.metadata.name.clone().unwrap();
    s.annotate_node(
        &name,
        &[(zerospot_effects::names::ANNOTATION_IN_FLIGHT, "1")],
    )
    .await;
    let instance = s.group_state().await.1.remove(0);

    let started = Instant::now();
    let emulated = Emulated::start(&s, &bootstrap, &s.config(60, 600));
    let event = spot_interruption_event("us-east-1", &instance);
    let (answer, cold) = emulated.first_invoke(&event, started).await;
    println!(
        "spot-interruption (debug build) under the emulator: cold start to first handled event {cold:?}"
    );
    assert_eq!(answer["events"][0]["marked"], json!([name]), "{answer}");
    let node = kube::Api::<k8s_openapi::api::core::v1::Node>::all(s.kube.clone())
        .get(&name)
        .await
        .unwrap();
    assert_eq!(node.spec.unwrap().unschedulable, Some(true));
    assert_eq!(s.group_state().await.0, 2, "replacement requested");
    // A malformed payload is answered, not retried, and leaves the function running.
    let answer = emulated.invoke(&json!({"detail": 1})).await.unwrap();
    assert!(
        answer["ignored"].is_string() || answer["events"].is_array(),
        "{answer}"
    );
    let answer = emulated.invoke(&event).await.unwrap();
    assert_eq!(answer["events"][0]["marked"], json!([]), "{answer}");
}
