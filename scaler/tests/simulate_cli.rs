//! `zerospot simulate` end to end: the binary, its JSON, its plots and its input errors.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

fn zerospot() -> Command {
    Command::new(env!("CARGO_BIN_EXE_zerospot"))
}

#[test]
fn simulate_json_reports_every_policy_with_the_documented_fields() {
    let out = zerospot()
        .args(["simulate", "--json", "--requests", "400", "--seed", "3"])
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let policies = doc["policies"].as_array().expect("policies[]");
    let names: Vec<&str> = policies.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(
        names,
        [
            "zerospot",
            "always-on",
            "cluster-autoscaler",
            "keda",
            "karpenter",
            "oracle"
        ]
    );
    for p in policies {
        let requests = p["requests"].as_u64().expect("requests");
        assert_eq!(
            requests,
            doc["requests"].as_u64().expect("top-level requests")
        );
        assert_eq!(
            p["completed"].as_u64().unwrap_or(0) + p["lost"].as_u64().unwrap_or(0),
            requests
        );
        assert!(
            p["gpu_seconds_billed"]
                .as_f64()
                .expect("gpu_seconds_billed")
                > 0.0
        );
        assert!(p["cost_usd"].as_f64().expect("cost_usd") > 0.0);
        let d = &p["queue_delay_s"];
        let (p50, p95, p99, max) = (
            d["p50"].as_f64(),
            d["p95"].as_f64(),
            d["p99"].as_f64(),
            d["max"].as_f64(),
        );
        assert!(
            p50 <= p95 && p95 <= p99 && p99 <= max && max.is_some(),
            "{d}"
        );
    }
}

#[test]
fn simulate_with_no_arguments_prints_the_table_for_the_synthetic_day() {
    let out = zerospot().arg("simulate").output().expect("runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("synthetic bursty day"), "{text}");
    for name in [
        "zerospot",
        "always-on",
        "cluster-autoscaler",
        "keda",
        "karpenter",
        "oracle",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "{name} row in {text}"
        );
    }
    assert!(
        out.stderr.is_empty(),
        "no progress bar when stderr is not a terminal"
    );
}

#[test]
fn simulate_rejects_a_malformed_trace_with_exit_2_and_the_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("trace.csv");
    std::fs::write(
        &path,
        "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.68,374,44\n2023-11-16 18:15:47,xx,1\n",
    )
    .expect("write");
    let out = zerospot()
        .args(["simulate", "--trace"])
        .arg(&path)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 3") && err.contains("ContextTokens \"xx\""),
        "{err}"
    );
}

#[test]
fn simulate_out_writes_png_and_svg_plots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = zerospot()
        .args(["simulate", "--requests", "300", "--out"])
        .arg(dir.path())
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for stem in ["nodes", "queue", "cost"] {
        let png = std::fs::read(dir.path().join(format!("{stem}.png"))).expect("png written");
        assert!(png.starts_with(b"\x89PNG"), "{stem}.png is a PNG");
        let svg =
            std::fs::read_to_string(dir.path().join(format!("{stem}.svg"))).expect("svg written");
        assert!(
            svg.contains("<svg") && svg.contains("zerospot"),
            "{stem}.svg has a legend"
        );
    }
}
