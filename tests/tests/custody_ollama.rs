//! The real model server through zerospot: two model names served by a real Ollama (CPU, Gemma 3 270M,
//! from `tests/bed/setup-ollama.sh`), requests held in SQS while the GPU group comes up from zero, and
//! `zerospot converse` running three turns between the two models through the queues.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod scaler_common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use scaler_common::{Scenario, start_scaler};
use zerospot_effects::{ScalerConfig, names};
use zerospot_testbed::fixtures::gpu_pod;
use zerospot_testbed::ollama::{Ollama, OllamaOptions};
use zerospot_testbed::unique_name;

/// The `zerospot` binary that `cargo test --workspace` builds (run alone: `cargo build -p zerospot`).
#[tokio::test]
async fn two_real_models_converse_for_three_turns_through_the_queues_from_a_group_at_zero() {
    let ollama = Ollama::start_with(
        OllamaOptions::new(&[
            (
                "mistral",
                "You are Mistral, a curious sailor. Answer in one short sentence.",
            ),
            (
                "llama2",
                "You are Llama, a patient teacher. Answer in one short sentence.",
            ),
        ])
        .num_parallel(2),
    )
    .await
    .unwrap();
    let s = Scenario::new(&["mistral", "llama2"], |o| o).await;
    let replies = zerospot_testbed::fixtures::create_queue(&s.aws, "replies")
        .await
        .unwrap();
    let base = s.config(60, 600).replace(
        &format!("namespace: {}, service:", s.namespace),
        &format!(
            "endpoint: \"{}\", target: route, concurrency: 2, namespace: {}, service:",
            ollama.endpoint(),
            s.namespace
        ),
    );
    let config_text = format!("{base}dispatcher: {{reply_queues: [\"{replies}\"]}}\n");
    let config = ScalerConfig::from_yaml(&config_text).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config_file = dir.path().join("zerospot.yaml");
    std::fs::write(&config_file, &config_text).unwrap();

    let _scaler = start_scaler(s.bed, &s.aws, &config_text).await;
    let kube_config = s.bed.kube_config().await.unwrap();
    let aws = s.aws.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let dispatcher = tokio::spawn(async move {
        zerospot_custody::service::run(
            config,
            kube_config,
            &aws,
            SocketAddr::from(([127, 0, 0, 1], 0)),
            "d".into(),
            async {
                let _ = stopped.await;
            },
        )
        .await
        .unwrap();
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(s.group_state().await.0, 0, "the group starts at zero");
    // Knative's part: each model's pod, pending until the scaler brings a node up from zero.
    for model in ["mistral", "llama2"] {
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

    let info = s.bed.info().clone();
    let bin = scaler_common::zerospot_binary();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .args(["converse", "--config"])
            .arg(&config_file)
            .args([
                "--reply-queue",
                &replies,
                "--models",
                "mistral,llama2",
                "--turns",
                "3",
            ])
            .args([
                "--topic",
                "the colour of the sea",
                "--options",
                r#"{"num_predict":24,"temperature":0}"#,
            ])
            .args(["--deadline-s", "240"])
            .envs(info.aws_env())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("--- zerospot converse ---\n{stdout}\n{stderr}");
    assert!(out.status.success(), "converse failed: {stderr}");
    let turns: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("[mistral]") || l.starts_with("[llama2]"))
        .collect();
    assert_eq!(turns.len(), 3, "{stdout}");
    assert!(
        turns[0].starts_with("[mistral]")
            && turns[1].starts_with("[llama2]")
            && turns[2].starts_with("[mistral]")
    );
    for turn in &turns {
        let said = turn.split_once("] ").map_or("", |(_, t)| t.trim());
        assert!(!said.is_empty(), "an empty turn: {stdout}");
    }
    assert!(
        stderr.matches("first token").count() == 3,
        "timings for each turn: {stderr}"
    );
    assert!(s.group_state().await.0 >= 1, "the group came up from zero");
    let _ = stop.send(());
    let _ = dispatcher.await;
}
