//! kube-apiserver can be restarted (or stopped and started) under running clients: etcd keeps the
//! objects, a client and a kube-runtime watcher made before carry on after, the other servers reconnect,
//! and the supervisor still stops the new process. Each test starts a bed of its own (an outage on the shared bed would hit every
//! other test of the binary), so these also run when `ZEROSPOT_TESTBED` points at a running bed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use zerospot_testbed::fixtures::{create_gpu_group, gpu_pod, is_running, set_desired_capacity};
use zerospot_testbed::{
    BedInfo, Bridge, BridgeOptions, Error, NodeGroupSpec, TestBed, eventually, unique_name,
};

fn config_map(name: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        ..ConfigMap::default()
    }
}

fn apiserver_pid(processes: &[(String, u32)]) -> Option<u32> {
    processes
        .iter()
        .find(|(name, _)| name == "kube-apiserver")
        .map(|(_, pid)| *pid)
}

/// Alive and not a zombie.
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

#[tokio::test]
async fn a_client_and_a_watcher_made_before_an_apiserver_restart_work_again_after_it() {
    zerospot_testbed::init_tracing();
    let bed = TestBed::start().await.unwrap();
    let client = bed.kube_client().await.unwrap();
    let namespace = bed.namespace(&client, "restart").await.unwrap();
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &namespace);

    // A watcher as a controller runs it: kube-runtime's, with its default backoff.
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let watch = tokio::spawn(
        watcher(config_maps.clone(), watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .for_each(move |event| {
                if let Ok(cm) = event {
                    let _ = seen_tx.send(cm.metadata.name.unwrap_or_default());
                }
                async {}
            }),
    );
    let wait_for = async |seen: &mut tokio::sync::mpsc::UnboundedReceiver<String>, name: &str| {
        tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(got) = seen.recv().await {
                if got == name {
                    return;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the watcher never saw {name}"));
    };
    config_maps
        .create(&PostParams::default(), &config_map("before"))
        .await
        .unwrap();
    wait_for(&mut seen, "before").await;

    let old = apiserver_pid(&bed.processes()).unwrap();
    let started = Instant::now();
    bed.restart_apiserver().await.unwrap();
    let took = started.elapsed();
    println!("kube-apiserver restarted and ready in {took:.1?}");

    let new = apiserver_pid(&bed.processes()).unwrap();
    assert_ne!(new, old);
    assert!(!alive(old), "the old kube-apiserver is gone");
    assert!(alive(new));
    let names: Vec<String> = bed.processes().into_iter().map(|(n, _)| n).collect();
    let started_with: Vec<String> = bed
        .info()
        .processes
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    assert_eq!(names, started_with, "same servers, same order");
    assert!(bed.processes().iter().all(|(_, pid)| alive(*pid)));

    // The client made before the restart: its next calls pass, and etcd kept the object.
    config_maps.get("before").await.unwrap();
    config_maps
        .create(&PostParams::default(), &config_map("after"))
        .await
        .unwrap();
    // The watcher reconnects by itself and sees what was created after the restart.
    wait_for(&mut seen, "after").await;
    watch.abort();

    // The controller manager works again (it makes a new namespace's ServiceAccount), and so do the
    // scheduler and kwok: a GPU node registered after the restart runs a GPU pod.
    let namespace = bed.namespace(&client, "after-restart").await.unwrap();
    let aws = bed.aws_config().await;
    let group = unique_name("after-restart");
    create_gpu_group(&aws, &group, "g5.xlarge", &NodeGroupSpec::gpus(1), 1)
        .await
        .unwrap();
    let _bridge = Bridge::spawn(&aws, client.clone(), BridgeOptions::new([group.clone()]));
    set_desired_capacity(&aws, &group, 1).await.unwrap();
    let pods = Api::<Pod>::namespaced(client.clone(), &namespace);
    pods.create(&PostParams::default(), &gpu_pod("model", &group, 1))
        .await
        .unwrap();
    eventually("the GPU pod to run", Duration::from_secs(60), || async {
        let pod = pods.get("model").await.map_err(|e| e.to_string())?;
        if is_running(&pod) {
            Ok(())
        } else {
            Err(format!("{:?}", pod.status.and_then(|s| s.phase)))
        }
    })
    .await
    .unwrap();

    // bed.json names the new process, so other processes can still attach.
    let info: BedInfo =
        serde_json::from_str(&std::fs::read_to_string(bed.bed_json()).unwrap()).unwrap();
    assert_eq!(apiserver_pid(&info.processes), Some(new));

    drop(bed);
    assert!(
        !alive(new),
        "dropping the bed stops the restarted kube-apiserver"
    );
}

#[tokio::test]
async fn while_the_apiserver_is_stopped_calls_fail_and_once_it_is_started_they_pass() {
    zerospot_testbed::init_tracing();
    let bed = TestBed::start().await.unwrap();
    let mut config = bed.kube_config().await.unwrap();
    config.connect_timeout = Some(Duration::from_secs(2));
    let client = kube::Client::try_from(config).unwrap();
    let namespace = bed.namespace(&client, "stopped").await.unwrap();
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &namespace);
    config_maps
        .create(&PostParams::default(), &config_map("kept"))
        .await
        .unwrap();

    // A bed this process only attached to may not be stopped or started.
    let attached = TestBed::attach(&bed.bed_json()).unwrap();
    match attached.restart_apiserver().await {
        Err(Error::NotOwned { .. }) => {}
        other => panic!("an attached bed must refuse, got {other:?}"),
    }

    bed.stop_apiserver().await.unwrap();
    assert_eq!(apiserver_pid(&bed.processes()), None);
    match config_maps.get("kept").await {
        Err(kube::Error::HyperError(_) | kube::Error::Service(_)) => {}
        other => panic!("with kube-apiserver stopped a call must fail to connect, got {other:?}"),
    }
    let others_alive = bed.processes().iter().all(|(_, pid)| alive(*pid));
    assert!(others_alive, "the other servers keep running");
    bed.stop_apiserver().await.unwrap(); // stopping it again does nothing

    bed.start_apiserver().await.unwrap();
    let got = eventually(
        "the stopped-then-started apiserver to answer",
        Duration::from_secs(5),
        || config_maps.get("kept"),
    )
    .await
    .unwrap();
    assert_eq!(got.metadata.name.as_deref(), Some("kept"));
    assert!(
        TestBed::attach(&bed.bed_json()).is_ok(),
        "bed.json is current"
    );
}
