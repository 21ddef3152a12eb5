//! The scaler scenarios' shared set-up: a GPU group on moto followed by the bridge, model queues,
//! PodAutoscalers, and a scaler running in this process.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use aws_config::SdkConfig;
use k8s_openapi::api::core::v1::Node;
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use tokio::sync::oneshot;
use zerospot_effects::{ScalerConfig, names};
use zerospot_testbed::fixtures::{create_gpu_group, group_nodes, is_ready};
use zerospot_testbed::{
    Bridge, BridgeOptions, GpuSharing, NodeGroupSpec, TestBed, eventually, unique_name,
};

pub const CONVERGE: Duration = Duration::from_secs(30);

/// A scaler running in this process; stopped (gracefully) when dropped.
pub struct RunningScaler {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RunningScaler {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

pub async fn start_scaler(bed: &TestBed, aws: &SdkConfig, config: &str) -> RunningScaler {
    start_scaler_with(
        bed,
        aws,
        config,
        false,
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
}

/// The `zerospot` binary `cargo test --workspace` built beside this test binary
/// (target/<profile>/deps/<test> -> target/<profile>/zerospot).
#[allow(dead_code)]
pub fn zerospot_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("zerospot");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build -p zerospot` (cargo test --workspace builds it)",
        bin.display()
    );
    bin
}

/// A free loopback port for the scaler's /metrics.
pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// [`start_scaler`] with dry-run and the metrics address chosen.
pub async fn start_scaler_with(
    bed: &TestBed,
    aws: &SdkConfig,
    config: &str,
    dry_run: bool,
    listen: SocketAddr,
) -> RunningScaler {
    let config = ScalerConfig::from_yaml(config).unwrap();
    let kube_config = bed.kube_config().await.unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let options = zerospot_controller::Options {
        config,
        dry_run,
        listen,
        identity: unique_name("scaler"),
        leader_election: false,
    };
    let aws = aws.clone();
    let task = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        zerospot_controller::run(options, kube_config, &aws, shutdown)
            .await
            .unwrap();
    });
    RunningScaler {
        stop: Some(stop),
        task,
    }
}

/// The Cluster Autoscaler's node-template tags, as infra/ puts them on a GPU group: how its nodes look
/// before one exists.
pub async fn node_template_tags(aws: &SdkConfig, group: &str, spec: &NodeGroupSpec) {
    use aws_sdk_autoscaling::types::Tag;
    let (labels, resources) = (
        spec.labels(
            group,
            &zerospot_testbed::bridge::Instance {
                id: "i-template".into(),
                zone: "us-east-1a".into(),
                instance_type: "g5.xlarge".into(),
                lifecycle_state: "InService".into(),
            },
        ),
        spec.capacity(),
    );
    let mut tags = Vec::new();
    for (k, v) in labels.iter().filter(|(k, _)| k.starts_with("nvidia.com/")) {
        tags.push((
            format!("k8s.io/cluster-autoscaler/node-template/label/{k}"),
            v.clone(),
        ));
    }
    for (k, v) in resources
        .iter()
        .filter(|(k, _)| k.starts_with("nvidia.com/"))
    {
        tags.push((
            format!("k8s.io/cluster-autoscaler/node-template/resources/{k}"),
            v.0.clone(),
        ));
    }
    let tags = tags
        .into_iter()
        .map(|(k, v)| {
            Tag::builder()
                .resource_id(group)
                .resource_type("auto-scaling-group")
                .key(k)
                .value(v)
                .propagate_at_launch(false)
                .build()
        })
        .collect();
    aws_sdk_autoscaling::Client::new(aws)
        .create_or_update_tags()
        .set_tags(Some(tags))
        .send()
        .await
        .unwrap();
}

/// One scenario: a GPU group (MPS, 4 replicas on one GPU, max 3) followed by the bridge, a namespace
/// for the models, and one request queue per model.
pub struct Scenario {
    pub bed: &'static TestBed,
    pub aws: SdkConfig,
    pub kube: kube::Client,
    pub group: String,
    pub namespace: String,
    pub queues: Vec<(String, String)>,
    _bridge: Bridge,
}

impl Scenario {
    pub async fn new(
        models: &[&str],
        bridge: impl FnOnce(BridgeOptions) -> BridgeOptions,
    ) -> Scenario {
        Self::with_sharing(models, GpuSharing::Mps { replicas: 4 }, bridge).await
    }

    /// Like [`Self::new`] with another sharing of the one GPU per node.
    pub async fn with_sharing(
        models: &[&str],
        sharing: GpuSharing,
        bridge: impl FnOnce(BridgeOptions) -> BridgeOptions,
    ) -> Scenario {
        zerospot_testbed::init_tracing();
        let bed = TestBed::shared().await.unwrap();
        let aws = bed.aws_config().await;
        let kube = bed.kube_client().await.unwrap();
        let group = unique_name("gpu");
        let spec = NodeGroupSpec::gpus(1).spot().sharing(sharing);
        create_gpu_group(&aws, &group, "g5.xlarge", &spec, 3)
            .await
            .unwrap();
        node_template_tags(&aws, &group, &spec).await;
        let namespace = bed.namespace(&kube, "models").await.unwrap();
        let mut queues = Vec::new();
        for model in models {
            let url = zerospot_testbed::fixtures::create_queue(&aws, &format!("req-{model}"))
                .await
                .unwrap();
            queues.push(((*model).to_owned(), url));
        }
        let options =
            bridge(BridgeOptions::new([group.clone()]).boot_delay(Duration::from_millis(300)));
        let bridge = Bridge::spawn(&aws, kube.clone(), options);
        Scenario {
            bed,
            aws,
            kube,
            group,
            namespace,
            queues,
            _bridge: bridge,
        }
    }

    /// The scaler's configuration: the pool (its node group label is the group's name), each model on it.
    pub fn config(&self, idle_window_s: u64, launch_timeout_s: u64) -> String {
        let mut models = String::new();
        for (model, url) in &self.queues {
            models.push_str(&format!(
                "  - {{name: {model}, pool: {g}, namespace: {ns}, service: {model}, queue_url: \"{url}\"}}\n",
                g = self.group,
                ns = self.namespace
            ));
        }
        format!(
            "pools:\n  - {{name: {g}, asg_name: {g}}}\nmodels:\n{models}timing: {{idle_window_s: {idle_window_s}, launch_timeout_s: {launch_timeout_s}}}\ncontroller: {{queue_poll_ms: 200, group_poll_ms: 500, namespace: {ns}}}\n",
            g = self.group,
            ns = self.namespace
        )
    }

    pub fn queue(&self, model: &str) -> &str {
        &self.queues.iter().find(|(m, _)| m == model).unwrap().1
    }

    pub async fn send(&self, model: &str) {
        aws_sdk_sqs::Client::new(&self.aws)
            .send_message()
            .queue_url(self.queue(model))
            .message_body(format!("{{\"model\":\"{model}\"}}"))
            .send()
            .await
            .unwrap();
    }

    pub async fn purge(&self, model: &str) {
        let sqs = aws_sdk_sqs::Client::new(&self.aws);
        sqs.purge_queue()
            .queue_url(self.queue(model))
            .send()
            .await
            .unwrap();
    }

    /// `(desired, instances, protected instances)` of the group.
    pub async fn group_state(&self) -> (i32, Vec<String>, Vec<String>) {
        let out = aws_sdk_autoscaling::Client::new(&self.aws)
            .describe_auto_scaling_groups()
            .auto_scaling_group_names(&self.group)
            .send()
            .await
            .unwrap();
        let g = &out.auto_scaling_groups()[0];
        let ids = g
            .instances()
            .iter()
            .map(|i| i.instance_id().unwrap().to_owned())
            .collect();
        let protected = g
            .instances()
            .iter()
            .filter(|i| i.protected_from_scale_in() == Some(true))
            .map(|i| i.instance_id().unwrap().to_owned())
            .collect();
        (g.desired_capacity().unwrap(), ids, protected)
    }

    pub async fn wait_desired(&self, want: i32, within: Duration) {
        eventually(&format!("desired capacity {want}"), within, || async {
            let (desired, ids, _) = self.group_state().await;
            if desired == want && ids.len() == usize::try_from(want).unwrap() {
                Ok(())
            } else {
                Err(format!("desired {desired}, instances {ids:?}"))
            }
        })
        .await
        .unwrap();
    }

    pub async fn ready_nodes(&self) -> Vec<Node> {
        group_nodes(&self.kube, &self.group)
            .await
            .unwrap()
            .into_iter()
            .filter(is_ready)
            .collect()
    }

    pub async fn annotate_node(&self, node: &str, annotations: &[(&str, &str)]) {
        let map: BTreeMap<&str, &str> = annotations.iter().copied().collect();
        Api::<Node>::all(self.kube.clone())
            .patch(
                node,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"metadata": {"annotations": map}})),
            )
            .await
            .unwrap();
    }

    /// What the dispatcher writes when a node's last request ends: nothing in flight, idle since `since`.
    pub async fn mark_idle(&self, node: &str, since: chrono::DateTime<chrono::Utc>) {
        self.annotate_node(
            node,
            &[
                (names::ANNOTATION_IN_FLIGHT, "0"),
                (names::ANNOTATION_IDLE_SINCE, &since.to_rfc3339()),
            ],
        )
        .await;
    }

    pub fn autoscalers(&self) -> Api<DynamicObject> {
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(
                "autoscaling.internal.knative.dev",
                "v1alpha1",
                "PodAutoscaler",
            ),
            "podautoscalers",
        );
        Api::namespaced_with(self.kube.clone(), &self.namespace, &resource)
    }

    /// Creates the model's PodAutoscaler (as Knative's revision reconciler does) with desiredScale 0.
    pub async fn create_autoscaler(&self, model: &str) -> String {
        let name = format!("{model}-00001");
        let pa: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "autoscaling.internal.knative.dev/v1alpha1",
            "kind": "PodAutoscaler",
            "metadata": {"name": name, "labels": {names::LABEL_KNATIVE_SERVICE: model}},
            "spec": {"protocolType": "http1",
                     "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}},
        }))
        .unwrap();
        self.autoscalers()
            .create(&PostParams::default(), &pa)
            .await
            .unwrap();
        self.set_desired_scale(&name, 0).await;
        name
    }

    /// What Knative's autoscaler does when the activator reports demand.
    pub async fn set_desired_scale(&self, pa: &str, scale: i32) {
        let status = serde_json::json!({"status": {"desiredScale": scale, "actualScale": 0,
            "metricsServiceName": pa, "serviceName": pa}});
        self.autoscalers()
            .patch_status(pa, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }
}
