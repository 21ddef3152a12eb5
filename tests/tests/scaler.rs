//! The companion scaler on the test bed: moto's Auto Scaling groups and SQS queues, a real
//! kube-apiserver with kwok GPU nodes, Knative's PodAutoscaler CRD, and `zerospot_controller::run`
//! acting on them exactly as it would on EKS.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod scaler_common;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};
use scaler_common::{CONVERGE, Scenario, start_scaler};
use zerospot_effects::names;
use zerospot_effects::observe::instance_id;
use zerospot_testbed::fixtures::{gpu_pod, group_nodes};
use zerospot_testbed::{BridgeOptions, eventually, unique_name};

#[tokio::test]
async fn scales_from_zero_when_a_request_is_queued_before_any_pod_exists() {
    let s = Scenario::new(&["llama"], |o| o).await;
    let _scaler = start_scaler(s.bed, &s.aws, &s.config(60, 600)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        s.group_state().await.0,
        0,
        "nothing asked: the group stays at zero"
    );
    s.send("llama").await;
    s.wait_desired(1, CONVERGE).await;
    eventually("a Ready GPU node", CONVERGE, || async {
        let n = s.ready_nodes().await.len();
        if n == 1 {
            Ok(())
        } else {
            Err(format!("{n} ready"))
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn scales_from_zero_when_a_podautoscalers_desired_scale_goes_from_zero_to_one() {
    let s = Scenario::new(&["mistral"], |o| o).await;
    let pa = s.create_autoscaler("mistral").await;
    let _scaler = start_scaler(s.bed, &s.aws, &s.config(60, 600)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(s.group_state().await.0, 0);
    s.set_desired_scale(&pa, 1).await;
    s.wait_desired(1, CONVERGE).await;
}

#[tokio::test]
async fn packs_two_models_on_one_mps_node_without_a_second_node() {
    let s = Scenario::new(&["llama", "mistral"], |o| o).await;
    let _scaler = start_scaler(s.bed, &s.aws, &s.config(60, 600)).await;
    s.send("llama").await;
    s.send("mistral").await;
    s.wait_desired(1, CONVERGE).await;
    // Knative's pods for both models, one MPS slot each, land on the one node.
    let pods: Api<Pod> = Api::namespaced(s.kube.clone(), &s.namespace);
    for model in ["llama", "mistral"] {
        let mut pod = gpu_pod(&unique_name(model), &s.group, 1);
        pod.metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(names::LABEL_KNATIVE_SERVICE.into(), model.into());
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    let nodes = eventually("both model pods running on one node", CONVERGE, || async {
        let list = pods
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let on: Vec<String> = list
            .items
            .iter()
            .filter(|p| zerospot_testbed::fixtures::is_running(p))
            .filter_map(|p| p.spec.as_ref()?.node_name.clone())
            .collect();
        if on.len() == 2 {
            Ok(on)
        } else {
            Err(format!("running on {on:?}"))
        }
    })
    .await
    .unwrap();
    assert_eq!(nodes[0], nodes[1]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        s.group_state().await.0,
        1,
        "4 MPS slots hold both models: no second node"
    );
}

#[tokio::test]
async fn scales_to_zero_after_the_idle_window_and_not_before() {
    let s = Scenario::new(&["llama"], |o| o).await;
    let idle_window = 6;
    let _scaler = start_scaler(s.bed, &s.aws, &s.config(idle_window, 600)).await;
    s.send("llama").await;
    s.wait_desired(1, CONVERGE).await;
    let node = eventually("a Ready GPU node", CONVERGE, || async {
        s.ready_nodes()
            .await
            .into_iter()
            .next()
            .ok_or_else(|| "none yet".to_owned())
    })
    .await
    .unwrap();
    let name = node.metadata.name.clone().unwrap();
    // The request was served and the dispatcher says so; the queue is empty.
    let served = chrono::Utc::now();
    s.purge("llama").await;
    s.mark_idle(&name, served).await;
    tokio::time::sleep(Duration::from_secs(idle_window - 3)).await;
    assert_eq!(s.group_state().await.0, 1, "still within the idle window");
    s.wait_desired(0, Duration::from_secs(idle_window + 20))
        .await;
    let took = (chrono::Utc::now() - served).num_milliseconds();
    assert!(
        took >= i64::try_from(idle_window).unwrap() * 1000,
        "removed after {took} ms"
    );
    eventually("the node gone", CONVERGE, || async {
        let n = group_nodes(&s.kube, &s.group)
            .await
            .map_err(|e| e.to_string())?
            .len();
        if n == 0 {
            Ok(())
        } else {
            Err(format!("{n} nodes"))
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn never_terminates_a_node_with_a_request_in_flight_and_protects_it_from_scale_in() {
    let s = Scenario::new(&["llama"], |o| o).await;
    let idle_window = 3;
    let _scaler = start_scaler(s.bed, &s.aws, &s.config(idle_window, 600)).await;
    s.send("llama").await;
    s.wait_desired(1, CONVERGE).await;
    let node = eventually("a Ready GPU node", CONVERGE, || async {
        s.ready_nodes()
            .await
            .into_iter()
            .next()
            .ok_or_else(|| "none yet".to_owned())
    })
    .await
    .unwrap();
    let name = node.metadata.name.clone().unwrap();
    s.annotate_node(&name, &[(names::ANNOTATION_IN_FLIGHT, "1")])
        .await;
    s.purge("llama").await;
    let (_, ids, _) = s.group_state().await;
    eventually(
        "the busy instance protected from scale-in",
        CONVERGE,
        || async {
            let (_, _, protected) = s.group_state().await;
            if protected == ids {
                Ok(())
            } else {
                Err(format!("protected {protected:?}"))
            }
        },
    )
    .await
    .unwrap();
    // Well past the idle window with the request still in flight: the node stays.
    tokio::time::sleep(Duration::from_secs(idle_window * 3)).await;
    let (desired, still, _) = s.group_state().await;
    assert_eq!((desired, &still), (1, &ids));
    // The request finishes: protection lifts after the idle window, then the node goes.
    s.mark_idle(&name, chrono::Utc::now()).await;
    s.wait_desired(0, CONVERGE).await;
}

/// Whether the Node is cordoned and annotated draining, as the actuator leaves a node it drains.
async fn leaving(s: &Scenario, node: &str) -> (bool, bool) {
    let n = Api::<Node>::all(s.kube.clone()).get(node).await.unwrap();
    let cordoned = n.spec.and_then(|s| s.unschedulable) == Some(true);
    let draining = n
        .metadata
        .annotations
        .is_some_and(|a| a.contains_key(names::ANNOTATION_DRAINING));
    (cordoned, draining)
}

#[tokio::test]
async fn consolidates_the_least_loaded_busy_node_after_its_requests_and_keeps_the_busier_ones() {
    let s = Scenario::new(&["llama"], |o| o).await;
    let idle_window = 3;
    let _scaler = start_scaler(s.bed, &s.aws, &s.config(idle_window, 600)).await;
    // Knative asks for 12 pods: three nodes of 4 MPS slots.
    let pa = s.create_autoscaler("llama").await;
    s.set_desired_scale(&pa, 12).await;
    s.wait_desired(3, CONVERGE).await;
    let nodes = eventually("three Ready GPU nodes", CONVERGE, || async {
        let ready = s.ready_nodes().await;
        if ready.len() == 3 {
            Ok(ready)
        } else {
            Err(format!("{} ready", ready.len()))
        }
    })
    .await
    .unwrap();
    // The dispatcher reports 1, 2 and 3 requests in flight on them.
    let mut busy = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let name = node.metadata.name.clone().unwrap();
        s.annotate_node(
            &name,
            &[(names::ANNOTATION_IN_FLIGHT, &(i + 1).to_string())],
        )
        .await;
        busy.push((name, instance_id(node).unwrap().to_owned()));
    }
    // Demand falls to nothing new: every node is busy, so none is idle to remove, and the pool holds
    // two nodes more than the work needs. The least loaded one stops taking work.
    s.set_desired_scale(&pa, 0).await;
    let (least, least_id) = busy[0].clone();
    eventually(
        "the least-loaded node cordoned and draining",
        CONVERGE,
        || async {
            match leaving(&s, &least).await {
                (true, true) => Ok(()),
                other => Err(format!("(cordoned, draining) = {other:?}")),
            }
        },
    )
    .await
    .unwrap();
    // Its request is still running: well past the idle window it is still there, unprotected, and
    // the busier nodes take work and stay protected.
    tokio::time::sleep(Duration::from_secs(idle_window * 2)).await;
    let (desired, ids, mut protected) = s.group_state().await;
    assert_eq!(desired, 3);
    assert!(ids.contains(&least_id), "{ids:?}");
    protected.sort();
    let mut others: Vec<String> = busy[1..].iter().map(|(_, id)| id.clone()).collect();
    others.sort();
    assert_eq!(protected, others, "only the nodes that stay are protected");
    for (name, _) in &busy[1..] {
        assert_eq!(leaving(&s, name).await, (false, false), "{name} untouched");
    }
    // Its request finishes: exactly that instance goes.
    s.mark_idle(&least, chrono::Utc::now()).await;
    eventually("the consolidated instance terminated", CONVERGE, || async {
        let (desired, ids, _) = s.group_state().await;
        if desired == 2 && ids.len() == 2 && !ids.contains(&least_id) {
            Ok(())
        } else {
            Err(format!("desired {desired}, {ids:?}"))
        }
    })
    .await
    .unwrap();
    let (_, mut ids, _) = s.group_state().await;
    ids.sort();
    assert_eq!(ids, others, "the busier instances stay");
    // One at a time: with two left and no work asked for, the next least loaded (2 in flight) is
    // consolidated in turn, and the busiest is not.
    let (second, _) = &busy[1];
    eventually(
        "the next least-loaded node consolidated",
        CONVERGE,
        || async {
            match leaving(&s, second).await {
                (true, true) => Ok(()),
                other => Err(format!("(cordoned, draining) = {other:?}")),
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(leaving(&s, &busy[2].0).await, (false, false));
    tokio::time::sleep(Duration::from_secs(idle_window)).await;
    assert_eq!(
        s.group_state().await.0,
        2,
        "a busy node is never terminated"
    );
}

#[tokio::test]
async fn replaces_a_node_that_never_becomes_gpu_ready() {
    let s = Scenario::new(&["llama"], BridgeOptions::without_gpus).await;
    let launch_timeout = 4;
    let _scaler = start_scaler(s.bed, &s.aws, &s.config(60, launch_timeout)).await;
    s.send("llama").await;
    s.wait_desired(1, CONVERGE).await;
    let (_, first, _) = s.group_state().await;
    // Its node registers, but the device plugin never advertises a GPU.
    eventually("the GPU-less node registered", CONVERGE, || async {
        let n = group_nodes(&s.kube, &s.group)
            .await
            .map_err(|e| e.to_string())?
            .len();
        if n == 1 {
            Ok(())
        } else {
            Err(format!("{n} nodes"))
        }
    })
    .await
    .unwrap();
    let replaced = eventually("the stuck instance replaced", CONVERGE, || async {
        let (desired, ids, _) = s.group_state().await;
        if desired == 1 && ids.len() == 1 && ids != first {
            Ok(ids)
        } else {
            Err(format!("desired {desired}, {ids:?}"))
        }
    })
    .await
    .unwrap();
    assert_ne!(replaced, first);
}

/// GET of a loopback URL, as text (a tiny HTTP/1.0 client, enough for /metrics and /readyz).
async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    stream
        .read_to_string(&mut out)
        .await
        .map_err(|e| e.to_string())?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {out:?}"))?;
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    Ok((status, body))
}

#[tokio::test]
async fn every_action_leaves_an_event_with_its_reason_and_metrics_count_it() {
    let s = Scenario::new(&["llama"], |o| o).await;
    let addr = scaler_common::free_addr();
    let _scaler =
        scaler_common::start_scaler_with(s.bed, &s.aws, &s.config(2, 600), false, addr).await;
    eventually("/readyz ok once caches are synced", CONVERGE, || async {
        match http_get(addr, "/readyz").await? {
            (200, _) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
    s.send("llama").await;
    s.wait_desired(1, CONVERGE).await;
    let node = eventually("a Ready GPU node", CONVERGE, || async {
        s.ready_nodes()
            .await
            .into_iter()
            .next()
            .ok_or_else(|| "none yet".to_owned())
    })
    .await
    .unwrap();
    let name = node.metadata.name.clone().unwrap();
    s.purge("llama").await;
    s.annotate_node(&name, &[(names::ANNOTATION_IN_FLIGHT, "0")])
        .await;
    s.wait_desired(0, CONVERGE).await;
    // Events about the group (in the scaler's namespace) and about the node (Nodes' events live in
    // `default`), each with the action and the reason in words.
    let events =
        |ns: &str| Api::<k8s_openapi::api::events::v1::Event>::namespaced(s.kube.clone(), ns);
    let group_events = eventually("group events", CONVERGE, || async {
        let list = events(&s.namespace)
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let reasons: Vec<(String, String)> = list
            .items
            .iter()
            .filter(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(s.group.as_str())
            })
            .map(|e| {
                (
                    e.reason.clone().unwrap_or_default(),
                    e.note.clone().unwrap_or_default(),
                )
            })
            .collect();
        if reasons.iter().any(|(r, _)| r == "ScaledOut") {
            Ok(reasons)
        } else {
            Err(format!("{reasons:?}"))
        }
    })
    .await
    .unwrap();
    let (_, note) = group_events.iter().find(|(r, _)| r == "ScaledOut").unwrap();
    assert!(note.contains("0 -> 1") && note.contains("llama"), "{note}");
    let node_events = eventually("node events", CONVERGE, || async {
        let list = events("default")
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let reasons: Vec<String> = list
            .items
            .iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name.as_str()))
            .filter_map(|e| e.reason.clone())
            .collect();
        if reasons.iter().any(|r| r == "Terminating") {
            Ok(reasons)
        } else {
            Err(format!("{reasons:?}"))
        }
    })
    .await
    .unwrap();
    for reason in ["Cordoned", "Draining", "Terminating"] {
        assert!(
            node_events.iter().any(|r| r == reason),
            "{reason} missing: {node_events:?}"
        );
    }
    let (status, metrics) = http_get(addr, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    for line in [
        "zerospot_actions_total{action=\"set_desired_capacity\",outcome=\"done\"}",
        "zerospot_actions_total{action=\"terminate\",outcome=\"done\"} 1",
        "zerospot_decisions_total{outcome=\"scale_out\"}",
        "zerospot_decision_latency_seconds_count",
        &format!("zerospot_pool_nodes_desired{{pool=\"{}\"}} 0", s.group),
    ] {
        assert!(metrics.contains(line), "{line} not in:\n{metrics}");
    }
    assert_eq!(http_get(addr, "/healthz").await.unwrap().0, 200);
}

#[tokio::test]
async fn a_dry_run_decides_but_changes_nothing() {
    let s = Scenario::new(&["llama"], |o| o).await;
    let addr = scaler_common::free_addr();
    let _scaler =
        scaler_common::start_scaler_with(s.bed, &s.aws, &s.config(60, 600), true, addr).await;
    s.send("llama").await;
    let metrics = eventually("a dry-run scale-out counted", CONVERGE, || async {
        let (_, m) = http_get(addr, "/metrics").await?;
        if m.contains("zerospot_actions_total{action=\"set_desired_capacity\",outcome=\"dry_run\"}")
        {
            Ok(m)
        } else {
            Err("not yet".to_owned())
        }
    })
    .await
    .unwrap();
    assert!(!metrics.contains("outcome=\"done\""), "{metrics}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(s.group_state().await.0, 0, "nothing was changed");
}

#[tokio::test]
async fn the_simulator_and_the_bed_reach_the_same_desired_capacities_for_one_scenario() {
    use std::sync::atomic::AtomicU64;
    use zerospot_sim::{PolicyKind, Scenario as SimScenario, Workload, workload::Request};
    // The scenario: three requests for each of two models arrive at once at an empty pool of
    // one-GPU nodes with 4 MPS slots, each request a long generation; then nothing more.
    let requests: Vec<Request> = (0..6)
        .map(|i| Request {
            at: 0.0,
            model: i % 2,
            prompt_tokens: 100,
            generated_tokens: 4000,
        })
        .collect();
    let workload = Workload {
        requests,
        models: vec!["llama".into(), "mistral".into()],
        horizon_s: 3600.0,
        description: "parity".into(),
    };
    let mut sim = SimScenario::new(workload, 1);
    sim.run = vec![PolicyKind::Zerospot];
    sim.cluster.series_points = 3600;
    sim.cluster.cloud.interruption_rate_per_hour = 0.0;
    sim.cluster.cloud.capacity_failure_probability = 0.0;
    let report = zerospot_sim::run_policy(&sim, PolicyKind::Zerospot, &AtomicU64::new(0)).unwrap();
    let peak = report.series.iter().map(|p| p.nodes).max().unwrap();
    let last = report.series.last().unwrap().nodes;
    assert_eq!(report.completed, 6);

    let s = Scenario::new(&["llama", "mistral"], |o| o).await;
    let _scaler = start_scaler(s.bed, &s.aws, &s.config(3, 600)).await;
    for _ in 0..3 {
        s.send("llama").await;
        s.send("mistral").await;
    }
    s.wait_desired(i32::try_from(peak).unwrap(), CONVERGE).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        s.group_state().await.0,
        i32::try_from(peak).unwrap(),
        "the simulator's peak: {peak}"
    );
    // Served: the queues empty and nothing in flight; both end at the simulator's final count.
    s.purge("llama").await;
    s.purge("mistral").await;
    s.wait_desired(i32::try_from(last).unwrap(), CONVERGE).await;
}
