//! Handling time per event with the effects layer's fakes, so the network is left out: a Spot warning
//! for a busy MPS node (read the world, mark, decide, evict two pods, request the replacement), and a
//! queue-depth pass taking a group from zero. Prints p50, p99 and max over many events.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use zerospot_effects::disruption::fake::{FakeKube, gpu_node};
use zerospot_effects::disruption::{Options, Responder};
use zerospot_effects::fake::{FakeAutoScaling, FakeQueues};
use zerospot_effects::{Autoscaler, ScalerConfig, names};

const CONFIG: &str = "pools: [{name: gpu, asg_name: gpu-asg, sharing: {mode: mps, replicas: 4}}]\nmodels:\n  - {name: llama, pool: gpu, namespace: models, service: llama, queue_url: 'https://sqs/llama'}\n  - {name: mistral, pool: gpu, namespace: models, service: mistral}\n";
const EVENTS: usize = 2000;

fn percentiles(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{name}: p50 {:?}  p99 {:?}  max {:?}  ({} events, fakes, no network)",
        at(0.5),
        at(0.99),
        samples[samples.len() - 1],
        samples.len()
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let config = ScalerConfig::from_yaml(CONFIG).unwrap();
    let mut spot = Vec::with_capacity(EVENTS);
    let mut depth = Vec::with_capacity(EVENTS);
    for i in 0..EVENTS {
        // A world of 10 nodes, one of which is interrupted.
        let aws = FakeAutoScaling::default().with_group("gpu-asg", 0, 20);
        let queues = FakeQueues::default();
        queues.set("https://sqs/llama", 3, 2);
        let kube = FakeKube::default();
        for n in 0..10 {
            let id = format!("i-{n}");
            aws.add_instance("gpu-asg", &id);
            let mut node = gpu_node(&format!("n{n}"), &id, "gpu", 4);
            node.metadata
                .annotations
                .get_or_insert_with(BTreeMap::new)
                .insert(names::ANNOTATION_IN_FLIGHT.into(), "2".into());
            kube.add_node(node);
            kube.cluster
                .add_pod(&format!("n{n}"), "models", &format!("llama-{n}"));
            kube.cluster
                .add_pod(&format!("n{n}"), "models", &format!("mistral-{n}"));
        }
        for model in ["llama", "mistral"] {
            kube.add_autoscaler(Autoscaler {
                namespace: "models".into(),
                service: model.into(),
                desired_scale: Some(10),
                actual_scale: Some(10),
            });
        }
        let responder = Responder {
            config: &config,
            aws: &aws,
            queues: &queues,
            cluster: &kube,
            inventory: &kube,
            options: Options::default(),
        };
        let event = json!({
            "version": "0", "id": format!("e-{i}"), "detail-type": "EC2 Spot Instance Interruption Warning",
            "source": "aws.ec2", "region": "us-east-1", "time": chrono::Utc::now().to_rfc3339(),
            "detail": {"instance-id": format!("i-{}", i % 10), "instance-action": "terminate"}
        });
        let started = Instant::now();
        let answer = zerospot_spot_interruption::handle(
            &responder,
            &event,
            chrono::Utc::now(),
            Duration::from_secs(900),
        )
        .await
        .unwrap();
        spot.push(started.elapsed());
        assert_eq!(answer["events"][0]["marked"].as_array().unwrap().len(), 1);

        let empty = FakeAutoScaling::default().with_group("gpu-asg", 0, 20);
        let responder = Responder {
            aws: &empty,
            ..responder
        };
        let started = Instant::now();
        let pass = responder
            .reconcile(
                chrono::Utc::now(),
                zerospot_effects::disruption::Scope::ScaleUpOnly,
            )
            .await;
        depth.push(started.elapsed());
        assert!(pass.is_ok());
    }
    percentiles("spot-interruption handling per event", spot);
    percentiles("queue-depth scale-up pass per invocation", depth);
}
