//! The `zerospot` binary as an operator runs it: exit codes, output lines, errors.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn zerospot(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_zerospot"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn fixture(name: &str) -> String {
    format!("{}/core/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn explain_event_prints_one_line_per_event_in_an_sqs_batch() {
    let out = zerospot(
        &["explain-event", &fixture("sqs-receive-message-output.json")],
        None,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = lines(&out);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["kind"], "spot_interruption_warning");
    assert_eq!(
        lines[0]["instance_ids"],
        serde_json::json!(["i-1234567890abcdef0"])
    );
    assert_eq!(lines[0]["action"], "cordon_and_drain");
    assert!(lines[0]["reason"].as_str().unwrap().contains("two minutes"));
    assert_eq!(lines[1]["kind"], "rebalance_recommendation");
}

#[test]
fn explain_event_reads_standard_input_and_exits_0_for_ignored_events() {
    let ev = r#"{"source":"aws.s3","detail-type":"Object Created","detail":{}}"#;
    let out = zerospot(&["explain-event", "-"], Some(ev));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(lines(&out)[0]["kind"], "ignored");
    assert_eq!(lines(&out)[0]["action"], "none");
}

#[test]
fn explain_event_exits_2_with_one_line_on_malformed_input() {
    let out = zerospot(&["explain-event"], Some("{\"detail-type\": 3"));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("zerospot: not JSON"), "{err}");
    let out = zerospot(&["explain-event", "/no/such/file.json"], None);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn plan_on_the_example_snapshot_replaces_the_interrupted_node() {
    let out = zerospot(&["plan", "--compact"], None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let decision = &lines(&out)[0];
    assert_eq!(decision["pools"][0]["pool"], "gpu-spot");
    assert_eq!(decision["pools"][0]["desired"], 3);
    let actions = decision["actions"].as_array().unwrap();
    assert!(
        actions
            .iter()
            .any(|a| a["action"] == "drain" && a["instance_id"] == "i-0a1b2c3d4e5f60002")
    );
    let file = format!("{}/examples/snapshot.json", env!("CARGO_MANIFEST_DIR"));
    let from_file = zerospot(&["plan", "--compact", "--snapshot", &file], None);
    assert_eq!(
        from_file.stdout, out.stdout,
        "the embedded example is the file in the repo"
    );
}

#[test]
fn plan_refuses_an_invalid_config_with_its_reason() {
    let bad = r#"{"config":{"pools":[],"models":[{"name":"m","pool":"nope"}]}}"#;
    let out = zerospot(&["plan", "--snapshot", "-"], Some(bad));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("model \"m\" runs in pool \"nope\""));
}

#[test]
fn check_request_normalises_a_good_request_and_names_a_bad_one() {
    let good = r#"{"version":1,"id":"r1","model":"llama3.2:1b","prompt":"hi"}"#;
    let out = zerospot(
        &["check-request", "--now", "2026-11-24T00:00:00Z"],
        Some(good),
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("\"attempt\":0"));
    let bad = r#"{"version":7,"id":"r1","model":"m","prompt":"hi"}"#;
    let out = zerospot(&["check-request"], Some(bad));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown version 7"));
}

#[test]
fn config_check_prints_the_example_with_defaults_and_refuses_a_bad_file_with_exit_2() {
    let example = format!("{}/examples/scaler.yaml", env!("CARGO_MANIFEST_DIR"));
    let out = zerospot(&["config", "check", &example], None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let effective: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(effective["models"][0]["name"], "mistral");
    assert_eq!(
        effective["timing"]["backlog_drain_s"], 255,
        "defaults are filled in"
    );
    assert_eq!(effective["controller"]["lease_name"], "zerospot-scaler");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    let text = std::fs::read_to_string(&example).unwrap().replace(
        "pool: gpu-spot\n    namespace: models\n    service: llama2",
        "pool: gpu-nowhere\n    namespace: models\n    service: llama2",
    );
    std::fs::write(&bad, text).unwrap();
    let out = zerospot(&["config", "check", bad.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gpu-nowhere") && err.lines().count() == 1,
        "{err}"
    );
}
