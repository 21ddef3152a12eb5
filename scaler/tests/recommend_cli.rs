//! `zerospot recommend-replicas` as an operator runs it: on a results file written for the test, on the
//! committed H200 measurements, and on bad input.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const HEADER: &str = "gpu,driver,date,model,weights_gb,sharing,processes,concurrency,tokens_per_s_each,\
                      tokens_per_s_total,ttft_p50_ms,ttft_p99_ms,gpu_mem_mib";

fn zerospot(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zerospot"))
        .arg("recommend-replicas")
        .args(args)
        .output()
        .unwrap()
}

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

fn write(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path.to_str().unwrap().to_owned()
}

/// A small model whose total keeps growing to 4 processes and falls at 8, and a 7B one.
fn results() -> String {
    let rows = [
        "H200,580,2026-11-29,small,0.25,mps,1,1,500.0,500.0,9,12,1500",
        "H200,580,2026-11-29,small,0.25,mps,2,1,420.0,840.0,10,14,3000",
        "H200,580,2026-11-29,small,0.25,mps,4,1,260.0,1040.0,12,20,6000",
        "H200,580,2026-11-29,small,0.25,mps,8,1,120.0,960.0,15,40,12000",
        "H200,580,2026-11-29,small,0.25,time-slicing,4,1,150.0,600.0,30,90,6000",
        "H200,580,2026-11-29,7b,7.16,mps,1,1,150.0,150.0,20,25,9000",
        "H200,580,2026-11-29,7b,7.16,mps,2,1,90.0,180.0,25,40,18000",
    ];
    format!("{HEADER}\n{}\n", rows.join("\n"))
}

#[test]
fn prints_the_replicas_with_the_most_tokens_per_second_that_keep_the_slo() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "r.csv", &results());
    let out = zerospot(&[
        "--slo-tokens-per-s",
        "200",
        "--results",
        &file,
        "--model",
        "small",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().last(), Some("replicas: 4"), "{stdout}");
    assert!(
        stdout.contains("time-slicing with 4 processes: 600.0"),
        "{stdout}"
    );
    // A stricter SLO gives fewer processes; JSON says the same with the candidates.
    let out = zerospot(&[
        "--slo-tokens-per-s",
        "300",
        "--results",
        &file,
        "--model",
        "small",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["replicas"], 2);
    assert_eq!(doc["tokens_per_s_total"], 840.0);
    let meets: Vec<bool> = doc["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["meets_slo"].as_bool().unwrap())
        .collect();
    assert_eq!(meets, [true, true, false, false]);
}

#[test]
fn an_slo_nothing_meets_exits_1_and_names_the_best_there_is() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "r.csv", &results());
    let out = zerospot(&[
        "--slo-tokens-per-s",
        "200",
        "--results",
        &file,
        "--model",
        "7b",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("no measured number of processes keeps 200 tokens/s"),
        "{err}"
    );
    assert!(err.contains("1 process(es) at 150.0"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_input_exits_2_with_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let good = write(dir.path(), "r.csv", &results());
    let broken = write(
        dir.path(),
        "broken.csv",
        &format!("{HEADER}\nH200,580,2026-11-29,small,0.25,mps,two,1,1,1,1,1,1\n"),
    );
    let missing = dir.path().join("nothing.csv");
    let cases: [(Vec<&str>, &str); 6] = [
        (
            vec![
                "--slo-tokens-per-s",
                "10",
                "--results",
                missing.to_str().unwrap(),
            ],
            "reading",
        ),
        (
            vec!["--slo-tokens-per-s", "10", "--results", &broken],
            "line 2: processes = \"two\"",
        ),
        (
            vec!["--slo-tokens-per-s", "10", "--results", &good],
            "several models (7b, small): choose one with --model",
        ),
        (
            vec![
                "--slo-tokens-per-s",
                "10",
                "--results",
                &good,
                "--model",
                "13b",
            ],
            "no rows for model \"13b\"",
        ),
        (
            vec![
                "--slo-tokens-per-s",
                "0",
                "--results",
                &good,
                "--model",
                "7b",
            ],
            "above 0",
        ),
        (
            vec![
                "--slo-tokens-per-s",
                "10",
                "--results",
                &good,
                "--model",
                "7b",
                "--concurrency",
                "4",
            ],
            "no MPS rows for 7b at concurrency 4; MPS was measured at concurrency 1",
        ),
    ];
    for (args, want) in cases {
        let out = zerospot(&args);
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err:?} lacks {want:?}");
    }
}

/// The committed H200 run: its header is the one the simulator reads, and for every model and
/// concurrency in it, and SLOs taken from its own rows, the answer is the MPS row with the most total
/// tokens/s among those whose per-request speed meets the SLO (worked out here independently).
#[test]
fn on_the_committed_h200_results_every_answer_follows_the_rule() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sim/data/gpu-sharing-h200-ollama.csv");
    let body = std::fs::read_to_string(&path).unwrap();
    let mut lines = body.lines();
    assert_eq!(
        lines.next(),
        Some(HEADER),
        "the header the simulator's loader reads"
    );
    // (model, concurrency, processes, each, total) of the MPS rows.
    let rows: Vec<(String, u32, u32, f64, f64)> = lines
        .map(|l| l.split(',').collect::<Vec<_>>())
        .filter(|f| f[5] == "mps")
        .map(|f| {
            (
                f[3].to_owned(),
                f[7].parse().unwrap(),
                f[6].parse().unwrap(),
                f[8].parse().unwrap(),
                f[9].parse().unwrap(),
            )
        })
        .collect();
    assert!(rows.len() >= 4, "MPS rows in {}", path.display());
    for (i, a) in rows.iter().enumerate() {
        assert!(
            !rows[i + 1..]
                .iter()
                .any(|b| a.0 == b.0 && a.1 == b.1 && a.2 == b.2),
            "one row per model, concurrency and process count: {a:?}"
        );
    }
    let mut asked = 0;
    for (model, c, _, _, _) in &rows {
        let mine: Vec<&(String, u32, u32, f64, f64)> =
            rows.iter().filter(|r| &r.0 == model && r.1 == *c).collect();
        for slo_row in &mine {
            let slo = slo_row.3 / f64::from(*c);
            let expected = mine
                .iter()
                .filter(|r| r.3 / f64::from(*c) >= slo)
                .max_by(|a, b| a.4.total_cmp(&b.4).then(b.2.cmp(&a.2)))
                .unwrap()
                .2;
            let out = zerospot(&[
                "--slo-tokens-per-s",
                &format!("{slo}"),
                "--results",
                path.to_str().unwrap(),
                "--model",
                model,
                "--concurrency",
                &c.to_string(),
                "--json",
            ]);
            assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
            let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(
                doc["replicas"].as_u64(),
                Some(u64::from(expected)),
                "{model} c={c} slo={slo}"
            );
            asked += 1;
        }
    }
    assert!(asked >= 4);
}
