//! The companion scaler on the test bed: moto's Auto Scaling groups and SQS queues, a real
//! kube-apiserver with kwok GPU nodes, Knative's PodAutoscaler CRD, and `zerospot_controller::run`
//! acting on them exactly as it would on EKS.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod scaler_common;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use scaler_common::{CONVERGE, Scenario, start_scaler};
use zerospot_effects::names;
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
    s.annotate_node(
        &name,
        &[
            (names::ANNOTATION_IN_FLIGHT, "0"),
            (names::ANNOTATION_IDLE_SINCE, &served.to_rfc3339()),
        ],
    )
    .await;
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
    s.annotate_node(
        &name,
        &[
            (names::ANNOTATION_IN_FLIGHT, "0"),
            (
                names::ANNOTATION_IDLE_SINCE,
                &chrono::Utc::now().to_rfc3339(),
            ),
        ],
    )
    .await;
    s.wait_desired(0, CONVERGE).await;
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
