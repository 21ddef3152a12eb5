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
            "fixed-best",
            "cluster-autoscaler",
            "keda",
            "karpenter",
            "hindsight-greedy"
        ]
    );
    let bound = doc["lower_bound_usd"].as_f64().expect("lower_bound_usd");
    assert!(bound > 0.0);
    let waiting = doc["bounded_wait_bound_usd"]
        .as_f64()
        .expect("bounded_wait_bound_usd");
    assert!(waiting > 0.0 && waiting <= bound);
    let flaps = doc["flap_bound_usd"].as_f64().expect("flap_bound_usd");
    assert!(flaps >= waiting, "{flaps} under {waiting}");
    assert!(doc["flap_bound_per_interruption_usd"].as_f64().is_some());
    assert_eq!(doc["workload_class"], "other");
    let goals: Vec<&str> = doc["goals"]
        .as_array()
        .expect("goals[]")
        .iter()
        .filter_map(|g| g["goal"].as_str())
        .collect();
    assert_eq!(
        goals,
        ["lost requests", "flap rate", "cost x cluster-autoscaler"]
    );
    for p in policies {
        let cost = p["cost_usd"].as_f64().expect("cost_usd");
        let vs = p["cost_vs_bound"].as_f64().expect("cost_vs_bound");
        assert!((vs - cost / bound).abs() < 1e-9, "{p}");
        assert!(p["cost_vs_oracle"].as_f64().is_some(), "today's field kept");
        for key in ["wait_warm_s", "wait_cold_s"] {
            let w = &p[key];
            for f in ["p50", "p95", "p99", "max"] {
                assert!(w[f].as_f64().is_some(), "{key}.{f} in {p}");
            }
            assert!(w["count"].as_u64().is_some(), "{key}.count");
        }
        assert_eq!(
            p["wait_warm_s"]["count"].as_u64().unwrap_or(0)
                + p["wait_cold_s"]["count"].as_u64().unwrap_or(0),
            p["completed"].as_u64().unwrap_or(0)
        );
        assert!(p["cold_starts"].as_u64().is_some());
        assert!(p["swaps"].as_u64().is_some() && p["on_demand_launches"].as_u64().is_some());
        let flap = p["flap_rate"].as_f64().expect("flap_rate");
        assert!((0.0..=1.0).contains(&flap));
    }
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
        "fixed-best",
        "cluster-autoscaler",
        "keda",
        "karpenter",
        "hindsight-greedy",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(name)),
            "{name} row in {text}"
        );
    }
    assert!(
        text.contains("lower bound on any zero-wait policy"),
        "{text}"
    );
    assert!(text.contains("zerospot's goals (other workload)"), "{text}");
    assert!(
        out.stderr.is_empty(),
        "no progress bar when stderr is not a terminal"
    );
}

#[test]
fn simulate_reads_a_measured_sharing_curve_and_names_a_bad_line() {
    let fixture = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/sim/tests/fixtures/gpu-sharing-sample.csv"
    );
    let run = |extra: &[&str]| {
        zerospot()
            .args([
                "simulate",
                "--json",
                "--requests",
                "300",
                "--policies",
                "always-on",
            ])
            .args(extra)
            .output()
            .expect("runs")
    };
    let base = run(&[]);
    let measured = run(&["--sharing", fixture, "--sharing-model", "gemma3:12b"]);
    assert!(
        measured.status.success(),
        "{}",
        String::from_utf8_lossy(&measured.stderr)
    );
    let wait = |o: &std::process::Output| {
        let doc: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
        doc["policies"][0]["queue_delay_s"].clone()
    };
    assert_ne!(wait(&base), wait(&measured), "the measured curve is used");
    // The default is the committed H200 file's 7B-shaped model with MPS: passing them explicitly changes
    // nothing; the embedded file's time-slicing rows or its other model do change the waits.
    let h200 = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/sim/data/gpu-sharing-h200-ollama.csv"
    );
    let explicit = run(&[
        "--sharing",
        h200,
        "--sharing-model",
        "llama-7b-shape-random-q8_0",
        "--sharing-mode",
        "mps",
    ]);
    assert!(explicit.status.success());
    assert_eq!(
        base.stdout, explicit.stdout,
        "the default is that file's rows"
    );
    let sliced = run(&["--sharing-mode", "time-slicing"]);
    assert!(sliced.status.success());
    assert_ne!(
        wait(&base),
        wait(&sliced),
        "time-slicing rows of the default file"
    );
    let unknown = run(&["--sharing-model", "phi"]);
    assert_eq!(unknown.status.code(), Some(2));
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(
        err.contains("scaler/sim/data/gpu-sharing-h200-ollama.csv")
            && err.contains("gemma3-270m-q4_k_m, llama-7b-shape-random-q8_0"),
        "{err}"
    );
    // Two models in the file and none named: exit 2 with the choices.
    let ambiguous = run(&["--sharing", fixture]);
    assert_eq!(ambiguous.status.code(), Some(2));
    let err = String::from_utf8_lossy(&ambiguous.stderr);
    assert!(
        err.contains("gemma3:12b, llama3.2:1b") && err.contains("--sharing-model"),
        "{err}"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        format!(
            "{}\nH200,570,2026-11-29,m,1,mps,one,1,5,5,1,1,1\n",
            zerospot_sim::SHARING_HEADER
        ),
    )
    .expect("write");
    let out = run(&["--sharing", bad.to_str().expect("path")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("line 2") && err.contains("processes \"one\""),
        "{err}"
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
