//! Auto Scaling groups in moto become GPU nodes in a real control plane through the bridge; the real
//! scheduler places GPU pods on them, and the Eviction API honours PodDisruptionBudgets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, EvictParams, ObjectMeta, PostParams};
use zerospot_testbed::bridge::{
    LABEL_CAPACITY_TYPE, LABEL_GPU_COUNT, LABEL_GPU_REPLICAS, LABEL_GPU_SHARING,
    LABEL_INSTANCE_TYPE, LABEL_NODEGROUP, LABEL_ZONE, RESOURCE_GPU,
};
use zerospot_testbed::fixtures::{
    create_gpu_group, gpu_pod, group_instances, group_nodes, is_ready, is_running, pod_requesting,
    set_desired_capacity,
};
use zerospot_testbed::{
    Bridge, BridgeOptions, GpuSharing, NodeGroupSpec, TestBed, eventually, unique_name,
};

const CONVERGE: Duration = Duration::from_secs(60);

/// A group with `desired` nodes of one GPU each, followed by a bridge, and its Ready nodes.
async fn one_gpu_nodes(
    bed: &TestBed,
    client: &kube::Client,
    desired: i32,
) -> (String, Bridge, Vec<Node>) {
    let aws = bed.aws_config().await;
    let group = unique_name("gpu");
    create_gpu_group(&aws, &group, "g5.xlarge", &NodeGroupSpec::gpus(1), 4)
        .await
        .unwrap();
    let bridge = Bridge::spawn(&aws, client.clone(), BridgeOptions::new([group.clone()]));
    set_desired_capacity(&aws, &group, desired).await.unwrap();
    let nodes = eventually("the group's nodes to be Ready", CONVERGE, || async {
        let nodes = group_nodes(client, &group)
            .await
            .map_err(|e| e.to_string())?;
        let ready = nodes.iter().filter(|n| is_ready(n)).count();
        if ready == usize::try_from(desired).unwrap() {
            Ok(nodes)
        } else {
            Err(format!("{ready} Ready"))
        }
    })
    .await
    .unwrap();
    (group, bridge, nodes)
}

#[tokio::test]
async fn a_group_scaled_from_zero_to_two_yields_two_ready_gpu_nodes_and_back_to_zero_removes_them()
{
    let bed = TestBed::shared().await.unwrap();
    let aws = bed.aws_config().await;
    let client = bed.kube_client().await.unwrap();
    let group = unique_name("mps");
    let spec = NodeGroupSpec::gpus(4)
        .spot()
        .sharing(GpuSharing::Mps { replicas: 2 });
    create_gpu_group(&aws, &group, "g5.12xlarge", &spec, 3)
        .await
        .unwrap();
    let _bridge = Bridge::spawn(
        &aws,
        client.clone(),
        BridgeOptions::new([group.clone()]).boot_delay(Duration::from_millis(500)),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        group_nodes(&client, &group).await.unwrap().is_empty(),
        "min 0: no nodes yet"
    );

    set_desired_capacity(&aws, &group, 2).await.unwrap();
    let nodes = eventually("two Ready GPU nodes", CONVERGE, || async {
        let nodes = group_nodes(&client, &group)
            .await
            .map_err(|e| e.to_string())?;
        let ready = nodes.iter().filter(|n| is_ready(n)).count();
        if ready == 2 {
            Ok(nodes)
        } else {
            Err(format!("{} nodes, {ready} Ready", nodes.len()))
        }
    })
    .await
    .unwrap();

    let instances = group_instances(&aws, &group).await.unwrap();
    assert_eq!(instances.len(), 2);
    for node in &nodes {
        let labels = node.metadata.labels.clone().unwrap();
        assert_eq!(labels[LABEL_NODEGROUP], group);
        assert_eq!(labels[LABEL_CAPACITY_TYPE], "SPOT");
        assert_eq!(labels[LABEL_INSTANCE_TYPE], "g5.12xlarge");
        assert_eq!(labels[LABEL_GPU_COUNT], "4");
        assert_eq!(labels[LABEL_GPU_REPLICAS], "2");
        assert_eq!(labels[LABEL_GPU_SHARING], "mps");
        let provider_id = node
            .spec
            .as_ref()
            .and_then(|s| s.provider_id.clone())
            .unwrap();
        assert!(
            instances.iter().any(|(id, zone)| {
                provider_id == format!("aws:///{zone}/{id}") && labels[LABEL_ZONE] == *zone
            }),
            "{provider_id} names one of {instances:?}"
        );
        let status = node.status.clone().unwrap();
        assert_eq!(
            status.allocatable.unwrap()[RESOURCE_GPU],
            Quantity("8".into())
        );
        assert_eq!(status.capacity.unwrap()[RESOURCE_GPU], Quantity("8".into()));
    }

    set_desired_capacity(&aws, &group, 0).await.unwrap();
    eventually("the nodes to be removed", CONVERGE, || async {
        let n = group_nodes(&client, &group)
            .await
            .map_err(|e| e.to_string())?
            .len();
        if n == 0 {
            Ok(())
        } else {
            Err(format!("{n} nodes left"))
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_pod_requesting_one_gpu_is_scheduled_on_a_gpu_node_and_runs() {
    let bed = TestBed::shared().await.unwrap();
    let client = bed.kube_client().await.unwrap();
    let (group, _bridge, nodes) = one_gpu_nodes(bed, &client, 1).await;
    let namespace = bed.namespace(&client, "gpu-pod").await.unwrap();
    let pods = Api::<Pod>::namespaced(client.clone(), &namespace);

    pods.create(&PostParams::default(), &gpu_pod("model-a", &group, 1))
        .await
        .unwrap();
    let pod = eventually("the GPU pod to run", CONVERGE, || async {
        let pod = pods.get("model-a").await.map_err(|e| e.to_string())?;
        if is_running(&pod) {
            Ok(pod)
        } else {
            Err(format!("{:?}", pod.status.and_then(|s| s.phase)))
        }
    })
    .await
    .unwrap();
    assert_eq!(pod.spec.unwrap().node_name, nodes[0].metadata.name);

    // The node has one GPU: the real scheduler keeps a second GPU pod Pending as Unschedulable.
    pods.create(&PostParams::default(), &gpu_pod("model-b", &group, 1))
        .await
        .unwrap();
    eventually(
        "the second GPU pod to be Unschedulable",
        CONVERGE,
        || async {
            let pod = pods.get("model-b").await.map_err(|e| e.to_string())?;
            let status = pod.status.unwrap_or_default();
            let unschedulable = status.conditions.unwrap_or_default().iter().any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            });
            if unschedulable && pod.spec.and_then(|s| s.node_name).is_none() {
                Ok(())
            } else {
                Err(format!("phase {:?}", status.phase))
            }
        },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn eviction_succeeds_and_is_refused_with_429_while_a_disruption_budget_forbids_it() {
    let bed = TestBed::shared().await.unwrap();
    let client = bed.kube_client().await.unwrap();
    let (group, _bridge, _nodes) = one_gpu_nodes(bed, &client, 1).await;
    let namespace = bed.namespace(&client, "eviction").await.unwrap();
    let pods = Api::<Pod>::namespaced(client.clone(), &namespace);
    pods.create(&PostParams::default(), &gpu_pod("model", &group, 1))
        .await
        .unwrap();
    eventually("the pod to run", CONVERGE, || async {
        let pod = pods.get("model").await.map_err(|e| e.to_string())?;
        if is_running(&pod) {
            Ok(())
        } else {
            Err("not Running".to_owned())
        }
    })
    .await
    .unwrap();

    let pdbs = Api::<PodDisruptionBudget>::namespaced(client.clone(), &namespace);
    let pdb = PodDisruptionBudget {
        metadata: ObjectMeta {
            name: Some("model".into()),
            ..ObjectMeta::default()
        },
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([("app".to_owned(), "model".to_owned())])),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    };
    pdbs.create(&PostParams::default(), &pdb).await.unwrap();
    // The disruption controller (kube-controller-manager) must have counted the pod first.
    eventually("the budget to count one healthy pod", CONVERGE, || async {
        let pdb = pdbs.get("model").await.map_err(|e| e.to_string())?;
        let generation = pdb.metadata.generation;
        let status = pdb.status.ok_or("no status")?;
        if status.observed_generation == generation
            && status.current_healthy == 1
            && status.disruptions_allowed == 0
        {
            Ok(())
        } else {
            Err(format!("{status:?}"))
        }
    })
    .await
    .unwrap();

    // kube's default retry layer would retry the 429 for minutes: look at the first answer.
    let mut config = bed.kube_config().await.unwrap();
    config.default_retry = false;
    let no_retry = Api::<Pod>::namespaced(kube::Client::try_from(config).unwrap(), &namespace);
    match no_retry.evict("model", &EvictParams::default()).await {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 429, "{status:?}");
            assert!(
                status.message.contains("disruption budget"),
                "{}",
                status.message
            );
        }
        other => panic!("eviction must be refused while the budget forbids it, got {other:?}"),
    }
    assert!(pods.get("model").await.is_ok(), "the pod is still there");

    pdbs.delete("model", &DeleteParams::default())
        .await
        .unwrap();
    pods.evict("model", &EvictParams::default()).await.unwrap();
    eventually("the evicted pod to be gone", CONVERGE, || async {
        match pods.get_opt("model").await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(_) => Err("still there".to_owned()),
        }
    })
    .await
    .unwrap();
}

/// Waits until exactly `running` of `names` run and the rest are Unschedulable.
async fn expect_running_and_unschedulable(pods: &Api<Pod>, names: &[String], running: usize) {
    eventually("pods to be placed or refused", CONVERGE, || async {
        let (mut run, mut refused) = (0, 0);
        for name in names {
            let pod = pods.get(name).await.map_err(|e| e.to_string())?;
            if is_running(&pod) {
                run += 1;
            }
            let conditions = pod.status.and_then(|s| s.conditions).unwrap_or_default();
            if conditions.iter().any(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            }) {
                refused += 1;
            }
        }
        if run == running && refused == names.len() - running {
            Ok(())
        } else {
            Err(format!("{run} running, {refused} unschedulable"))
        }
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_time_sliced_gpu_fits_as_many_one_gpu_pods_as_it_has_replicas() {
    let bed = TestBed::shared().await.unwrap();
    let aws = bed.aws_config().await;
    let client = bed.kube_client().await.unwrap();
    let group = unique_name("slices");
    let spec = NodeGroupSpec::gpus(1).sharing(GpuSharing::TimeSlicing { replicas: 4 });
    create_gpu_group(&aws, &group, "g6.xlarge", &spec, 1)
        .await
        .unwrap();
    let _bridge = Bridge::spawn(&aws, client.clone(), BridgeOptions::new([group.clone()]));
    set_desired_capacity(&aws, &group, 1).await.unwrap();
    let namespace = bed.namespace(&client, "slices").await.unwrap();
    let pods = Api::<Pod>::namespaced(client.clone(), &namespace);
    let names: Vec<String> = (0..5).map(|i| format!("model-{i}")).collect();
    for name in &names {
        pods.create(&PostParams::default(), &gpu_pod(name, &group, 1))
            .await
            .unwrap();
    }
    expect_running_and_unschedulable(&pods, &names, 4).await;
}

#[tokio::test]
async fn a_mig_node_runs_pods_that_request_its_slices() {
    let bed = TestBed::shared().await.unwrap();
    let aws = bed.aws_config().await;
    let client = bed.kube_client().await.unwrap();
    let group = unique_name("mig");
    let spec = NodeGroupSpec::gpus(1).sharing(GpuSharing::Mig {
        profile: "3g.40gb".into(),
        per_gpu: 2,
    });
    create_gpu_group(&aws, &group, "p4d.24xlarge", &spec, 1)
        .await
        .unwrap();
    let _bridge = Bridge::spawn(&aws, client.clone(), BridgeOptions::new([group.clone()]));
    set_desired_capacity(&aws, &group, 1).await.unwrap();
    let namespace = bed.namespace(&client, "mig").await.unwrap();
    let pods = Api::<Pod>::namespaced(client.clone(), &namespace);
    let names: Vec<String> = (0..3).map(|i| format!("slice-{i}")).collect();
    for name in &names {
        let pod = pod_requesting(name, &group, "nvidia.com/mig-3g.40gb", 1);
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    expect_running_and_unschedulable(&pods, &names, 2).await;
    // A whole GPU is not on offer on a MIG node.
    pods.create(&PostParams::default(), &gpu_pod("whole", &group, 1))
        .await
        .unwrap();
    expect_running_and_unschedulable(&pods, &["whole".to_owned()], 0).await;
}

#[tokio::test]
async fn nodes_whose_device_plugin_never_came_up_are_ready_without_gpus_and_a_gpu_pod_stays_pending()
 {
    let bed = TestBed::shared().await.unwrap();
    let aws = bed.aws_config().await;
    let client = bed.kube_client().await.unwrap();
    let group = unique_name("no-plugin");
    create_gpu_group(&aws, &group, "g5.xlarge", &NodeGroupSpec::gpus(1), 2)
        .await
        .unwrap();
    let _bridge = Bridge::spawn(
        &aws,
        client.clone(),
        BridgeOptions::new([group.clone()]).without_gpus(),
    );
    set_desired_capacity(&aws, &group, 1).await.unwrap();
    let node = eventually("the group's node to be Ready", CONVERGE, || async {
        let nodes = group_nodes(&client, &group)
            .await
            .map_err(|e| e.to_string())?;
        match nodes.into_iter().find(is_ready) {
            Some(node) => Ok(node),
            None => Err("no Ready node".to_owned()),
        }
    })
    .await
    .unwrap();
    let status = node.status.clone().unwrap();
    assert_eq!(
        status.allocatable.unwrap()[RESOURCE_GPU],
        Quantity("0".into())
    );
    assert_eq!(status.capacity.unwrap()[RESOURCE_GPU], Quantity("0".into()));
    let labels = node.metadata.labels.clone().unwrap();
    assert_eq!(labels[LABEL_NODEGROUP], group);
    assert_eq!(labels["nvidia.com/gpu.present"], "true");
    for label in [LABEL_GPU_COUNT, LABEL_GPU_REPLICAS, LABEL_GPU_SHARING] {
        assert!(!labels.contains_key(label), "{label} in {labels:?}");
    }

    let namespace = bed.namespace(&client, "no-plugin").await.unwrap();
    let pods = Api::<Pod>::namespaced(client.clone(), &namespace);
    pods.create(&PostParams::default(), &gpu_pod("model", &group, 1))
        .await
        .unwrap();
    let message = eventually(
        "the GPU pod to be Unschedulable for lack of GPUs",
        CONVERGE,
        || async {
            let pod = pods.get("model").await.map_err(|e| e.to_string())?;
            let conditions = pod.status.and_then(|s| s.conditions).unwrap_or_default();
            let conditions_text = format!("{conditions:?}");
            conditions
                .into_iter()
                .find(|c| {
                    c.type_ == "PodScheduled"
                        && c.status == "False"
                        && c.reason.as_deref() == Some("Unschedulable")
                })
                .and_then(|c| c.message)
                // Right after registration the node may still carry the not-ready taint, and the
                // scheduler says so first; it tries again once the node lifecycle controller lifts it.
                .filter(|m| m.contains("Insufficient nvidia.com/gpu"))
                .ok_or_else(|| format!("not Unschedulable for lack of GPUs yet: {conditions_text}"))
        },
    )
    .await
    .unwrap();
    assert!(message.contains("Insufficient nvidia.com/gpu"), "{message}");
}
