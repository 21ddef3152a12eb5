//! The operator's configuration: pools (Auto Scaling groups), models (Knative Services and their request
//! queues), the policy's timing, and the controller's intervals. Read from YAML (or JSON, which is YAML),
//! validated before anything starts.
//!
//! What the cluster already says is not repeated here: a pool's GPUs per node and how they are shared
//! (MPS replicas, time-slicing, MIG profiles) are read from the NVIDIA device plugin's node labels
//! (`nvidia.com/gpu.count`, `nvidia.com/gpu.replicas`, `nvidia.com/gpu.sharing-strategy`, the
//! `nvidia.com/mig-*` resources), and a pool's min and max from its Auto Scaling group. A pool with no
//! node yet takes its shape from its group's node-template tags, the convention the Cluster Autoscaler
//! uses to scale node groups from zero (`k8s.io/cluster-autoscaler/node-template/label/nvidia.com/gpu.replicas`,
//! `.../resources/nvidia.com/mig-1g.10gb`; infra/ sets them). `gpus` and `sharing` here are the last
//! resort (default: 1 GPU, not shared, which can only over-provision the first node, never
//! under-provision it).
//!
//! # Demand per model: one request queue per model
//! SQS counts messages per queue, not per message attribute, so each model has its own request queue.
//! That keeps queue depth a per-model signal that anyone with `sqs:GetQueueAttributes` can read: the
//! queue-depth Lambda function scales from zero with no cluster-side component running, which a count
//! kept by the in-cluster dispatcher could not offer when the cluster side is down.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;
use zerospot_core::{CapacityType, Sharing, Timing};

/// Labels and annotations zerospot reads and writes; the one place their names are spelled.
pub mod names {
    /// EKS managed node group of a node (the default node selector of a pool).
    pub const LABEL_NODEGROUP: &str = "eks.amazonaws.com/nodegroup";
    /// EKS capacity type of a node: `SPOT` or `ON_DEMAND`.
    pub const LABEL_CAPACITY_TYPE: &str = "eks.amazonaws.com/capacityType";
    /// GPUs per node (GPU feature discovery).
    pub const LABEL_GPU_COUNT: &str = "nvidia.com/gpu.count";
    /// Replicas per GPU (device plugin sharing config).
    pub const LABEL_GPU_REPLICAS: &str = "nvidia.com/gpu.replicas";
    /// `mps`, `time-slicing` or `none` (device plugin sharing config).
    pub const LABEL_GPU_SHARING: &str = "nvidia.com/gpu.sharing-strategy";
    /// The resource a non-MIG model pod asks for.
    pub const RESOURCE_GPU: &str = "nvidia.com/gpu";
    /// Prefix of MIG resources in the device plugin's mixed strategy (`nvidia.com/mig-1g.10gb`).
    pub const RESOURCE_MIG_PREFIX: &str = "nvidia.com/mig-";
    /// The label Knative puts on a Service's revisions, PodAutoscalers and pods.
    pub const LABEL_KNATIVE_SERVICE: &str = "serving.knative.dev/service";
    /// Requests the dispatcher is serving on this node now (a non-negative integer). Written by the
    /// dispatcher whenever it changes; read by the scaler and the functions. Absent means 0.
    pub const ANNOTATION_IN_FLIGHT: &str = "zerospot.io/in-flight";
    /// When the node's in-flight count last fell to 0 (RFC 3339), written with the count. Absent on an
    /// idle node: it has been idle since it became GPU-ready.
    pub const ANNOTATION_IDLE_SINCE: &str = "zerospot.io/idle-since";
    /// Set by zerospot when it drains a node (RFC 3339 time of the drain); the node takes no new work.
    pub const ANNOTATION_DRAINING: &str = "zerospot.io/draining";
    /// Why AWS is taking the node away (`spot_interruption`, `rebalance_recommendation`,
    /// `scheduled_change`, `stopping`, `terminating`), set by whoever received the event.
    pub const ANNOTATION_DISRUPTION: &str = "zerospot.io/disruption";
    /// When the node goes away (RFC 3339), with [`ANNOTATION_DISRUPTION`].
    pub const ANNOTATION_DEADLINE: &str = "zerospot.io/deadline";
    /// The taint on an interrupted node; the dispatcher releases that node's requests when it appears.
    pub const TAINT_INTERRUPTED: &str = "zerospot.io/interrupted";
    /// The ConfigMap the dispatcher publishes its arrival-rate and service-time estimates to and the
    /// scaler reads (in `dispatcher.demand_namespace`).
    pub const CONFIGMAP_DEMAND: &str = "zerospot-demand";
    /// The key of [`CONFIGMAP_DEMAND`] holding the record (`zerospot_core::estimate::PublishedDemand` as
    /// JSON).
    pub const DEMAND_KEY: &str = "demand.json";
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScalerConfig {
    /// GPU pools, in order of preference.
    pub pools: Vec<PoolConfig>,
    /// Models and where they run.
    pub models: Vec<ModelConfig>,
    /// The policy's time limits (see `zerospot_core::Timing` for each default and why).
    #[serde(default)]
    pub timing: Timing,
    /// The controller's own intervals and limits.
    #[serde(default)]
    pub controller: ControllerConfig,
    /// The dispatcher's queues and limits.
    #[serde(default)]
    pub dispatcher: DispatcherConfig,
}

/// Which API a model server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelApi {
    /// Ollama: `/api/chat` for messages, `/api/generate` for a prompt.
    #[default]
    Ollama,
    /// OpenAI-compatible `/v1/chat/completions` (a prompt is sent as one user message).
    Openai,
}

/// How the dispatcher reaches a model's servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// Each request goes to one Ready pod the dispatcher picks, at `http://<pod IP>:<pod_port>`
    /// (Knative's queue-proxy, as the activator itself sends them). The dispatcher then knows which
    /// node serves which request: it publishes exact work in flight per node, and hands a request
    /// back to the queue the moment its pod terminates or its node is tainted `zerospot.io/interrupted`.
    #[default]
    Pods,
    /// Each request goes to `endpoint` (the Knative route, or any load balancer) and something else
    /// picks the server. In-flight work per node is then attributed conservatively, and a request on
    /// an interrupted node is retried only once its stream is cut.
    Route,
}

/// The dispatcher's settings. Each default says why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DispatcherConfig {
    /// Queues a request's `reply_to` may name (exact URLs). Anything else is refused: a client must not
    /// make the dispatcher write into any queue its role can reach. Default: none.
    pub reply_queues: Vec<String>,
    /// Where a request goes that cannot be served (malformed, refused, out of attempts), with the reason
    /// in its message attributes. Usually the request queues' redrive DLQ. Default: none (such a request
    /// is then left for SQS's own redrive after `maxReceiveCount`).
    pub dead_letter_queue: Option<String>,
    /// Visibility timeout while a request is served, seconds, renewed at half-time. Default 60 s: short
    /// enough that a crashed dispatcher's requests come back within a minute.
    pub visibility_timeout_s: u32,
    /// Attempts before a request is given up with an error reply. Default 3.
    pub max_attempts: u32,
    /// Back-off before a failed request is tried again, seconds, doubled per attempt. Default 2 s.
    pub retry_backoff_s: u32,
    /// Longest a model may take for one answer, seconds. Default 600 s.
    pub max_request_s: u64,
    /// How often the wake-up request is re-sent while requests wait for a model with no Ready pod,
    /// seconds. Default 10 s (Knative's activator holds each one until a pod is Ready).
    pub wake_interval_s: u64,
    /// Namespace of the ConfigMap `zerospot-demand`, where the dispatcher publishes each model's
    /// arrival-rate, gap and service-time estimates every 10 s and the scaler reads them. Default
    /// `zerospot`, the namespace deploy/ runs the dispatcher and the scaler in (its RBAC grants the
    /// ConfigMap there only).
    pub demand_namespace: String,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig {
            reply_queues: Vec::new(),
            dead_letter_queue: None,
            visibility_timeout_s: 60,
            max_attempts: 3,
            retry_backoff_s: 2,
            max_request_s: 600,
            wake_interval_s: 10,
            demand_namespace: "zerospot".into(),
        }
    }
}

/// One GPU pool: an Auto Scaling group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Our name for the pool; by default also the EKS node group name its nodes are labelled with.
    pub name: String,
    /// The Auto Scaling group.
    pub asg_name: String,
    /// Label selector of the pool's nodes, for the watch; default `eks.amazonaws.com/nodegroup=<name>`.
    /// Which pool a node is in is decided by its instance's group, never by labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<String>,
    /// Spot or on-demand (default spot).
    #[serde(default = "spot")]
    pub capacity_type: CapacityType,
    /// Instance type, for reasons and metrics only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_type: Option<String>,
    /// GPUs per node until a node of the pool says (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
    /// Sharing until a node of the pool says (default exclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharing: Option<Sharing>,
    /// An upper limit below the group's own max, if wanted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<u32>,
    /// The pool that takes this pool's demand after repeated Spot capacity failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

fn spot() -> CapacityType {
    CapacityType::Spot
}

/// One model: a Knative Service running a model server, and its request queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Model name as clients put it in requests (`llama3.2:1b`).
    pub name: String,
    /// The pool its pods run in.
    pub pool: String,
    /// Namespace of its Knative Service.
    pub namespace: String,
    /// Name of its Knative Service (the `serving.knative.dev/service` label of its pods).
    pub service: String,
    /// Its request queue (one per model: see the module docs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_url: Option<String>,
    /// Requests one pod serves at once (`OLLAMA_NUM_PARALLEL`, `containerConcurrency`). Default 1.
    #[serde(default = "one")]
    pub concurrency: u32,
    /// Slots one pod asks for. Default 1.
    #[serde(default = "one")]
    pub slots_per_pod: u32,
    /// For MIG pools: the profile a pod asks for (`1g.10gb`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mig_profile: Option<String>,
    /// Where the dispatcher sends this model's requests: its Knative route
    /// (`http://llama.models.svc.cluster.local`). Default: `http://<service>.<namespace>.svc.cluster.local`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The API its server speaks. Default `ollama`.
    #[serde(default)]
    pub api: ModelApi,
    /// How requests reach its servers: `pods` (default) or `route` (see [`Target`]). In `pods` mode
    /// `endpoint` is used only for the wake-up requests that make Knative scale from zero.
    #[serde(default)]
    pub target: Target,
    /// The pods' HTTP port in `pods` mode. Default 8012: Knative's queue-proxy, which enforces
    /// `containerConcurrency` and reports the load Knative's autoscaler scales on.
    #[serde(default = "queue_proxy_port")]
    pub pod_port: u16,
    /// Whether the dispatcher also sends, through the model's route, as many requests as the free GPU
    /// slots of usable nodes could serve once Knative places pods there (capacity already paid for;
    /// the core's `demand::forwardable`). Knative sees them, in its activator or its pods' queue-proxy,
    /// and grows pods into those slots; with it the model's Knative target utilisation can be 100 %.
    /// Default true.
    #[serde(default = "yes")]
    pub fill_free_nodes: bool,
}

impl ModelConfig {
    /// The model's endpoint, explicit or the Knative route's cluster-local URL.
    pub fn endpoint(&self) -> String {
        self.endpoint.clone().unwrap_or_else(|| {
            format!(
                "http://{}.{}.svc.cluster.local",
                self.service, self.namespace
            )
        })
    }
}

fn one() -> u32 {
    1
}

fn queue_proxy_port() -> u16 {
    8012
}

fn yes() -> bool {
    true
}

/// The controller's intervals and limits. Each default says why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ControllerConfig {
    /// How often queue depths are read. Default 1000 ms: `GetQueueAttributes` is free of charge apart
    /// from the request price (1 request per queue per second is $0.4 per queue per 30 days) and a
    /// request queued at zero is seen within a second. Doubled on each throttling answer, up to 30 s.
    pub queue_poll_ms: u64,
    /// How often the Auto Scaling groups are described when nothing else asks. Default 5000 ms:
    /// Auto Scaling's describe calls share a per-account rate limit; the controller also describes
    /// the groups right after each change it makes.
    pub group_poll_ms: u64,
    /// Decide at least this often even when nothing changed. Default 30 s: a safety net; every watch
    /// event, queue change and policy deadline (idle window, launch timeout) already triggers a decision.
    pub resync_s: u64,
    /// Grace period given to pods evicted from a node that is going anyway (a Spot interruption notice,
    /// a rebalance recommendation, a scheduled change) or being terminated. Default 30 s (Kubernetes'
    /// default). Pods on a node drained by choice (consolidation) get their own
    /// `terminationGracePeriodSeconds`, which Knative sets to the revision timeout, so that the
    /// requests in flight finish there.
    pub eviction_grace_s: u32,
    /// Namespace of the controller's Lease and of Events about Auto Scaling groups. Default `zerospot`.
    pub namespace: String,
    /// Name of the leader-election Lease. Default `zerospot-scaler`.
    pub lease_name: String,
    /// How long a leader's Lease is valid without renewal. Default 15 s (client-go's default): a
    /// killed leader is replaced within about this long.
    pub lease_duration_s: u64,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            queue_poll_ms: 1000,
            group_poll_ms: 5000,
            resync_s: 30,
            eviction_grace_s: 30,
            namespace: "zerospot".into(),
            lease_name: "zerospot-scaler".into(),
            lease_duration_s: 15,
        }
    }
}

impl ControllerConfig {
    /// [`Self::queue_poll_ms`] as a duration.
    pub fn queue_poll(&self) -> Duration {
        Duration::from_millis(self.queue_poll_ms)
    }
    /// [`Self::group_poll_ms`] as a duration.
    pub fn group_poll(&self) -> Duration {
        Duration::from_millis(self.group_poll_ms)
    }
}

/// A configuration that cannot be used, with what to fix.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not match the schema (unknown field, wrong type, missing field).
    #[error("{0}")]
    Parse(String),
    /// Pools and models do not fit together.
    #[error(transparent)]
    Core(#[from] zerospot_core::ConfigError),
    /// Something else is wrong; the message says what.
    #[error("{0}")]
    Invalid(String),
}

impl ScalerConfig {
    /// Reads and validates a YAML (or JSON) file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text)
    }

    /// Parses and validates YAML (or JSON) text.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let config: ScalerConfig = serde_yaml_ng::from_str(text).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!("line {} column {}: ", l.line(), l.column()))
                .unwrap_or_default();
            ConfigError::Parse(format!("{at}{e}"))
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks everything that can be checked without AWS or a cluster.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.pools.is_empty() {
            return Err(ConfigError::Invalid("no pools: add at least one".into()));
        }
        // The pool/model rules of the core, with the assumed shapes.
        self.core_config(&[]).validate()?;
        if self.dispatcher.demand_namespace.trim().is_empty() {
            return Err(ConfigError::Invalid(
                "dispatcher.demand_namespace is empty: name the namespace of the zerospot-demand ConfigMap (default zerospot)".into(),
            ));
        }
        let mut queues = HashSet::new();
        let mut services = HashSet::new();
        for model in &self.models {
            if let Some(url) = &model.queue_url {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return Err(ConfigError::Invalid(format!(
                        "model {:?}: queue_url {url:?} is not a queue URL (https://sqs.<region>.amazonaws.com/<account>/<name>)",
                        model.name
                    )));
                }
                if !queues.insert(url.as_str()) {
                    return Err(ConfigError::Invalid(format!(
                        "model {:?}: queue {url:?} is already another model's; each model needs its own request queue (SQS counts per queue)",
                        model.name
                    )));
                }
            }
            if model.namespace.is_empty() || model.service.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "model {:?}: namespace and service (its Knative Service) must be set",
                    model.name
                )));
            }
            if !services.insert((model.namespace.as_str(), model.service.as_str())) {
                return Err(ConfigError::Invalid(format!(
                    "model {:?}: Knative Service {}/{} is already another model's",
                    model.name, model.namespace, model.service
                )));
            }
        }
        for pool in &self.pools {
            if pool.asg_name.is_empty() {
                return Err(ConfigError::Invalid(format!(
                    "pool {:?}: asg_name must be set",
                    pool.name
                )));
            }
        }
        let c = &self.controller;
        if c.queue_poll_ms == 0 || c.group_poll_ms == 0 || c.resync_s == 0 {
            return Err(ConfigError::Invalid(
                "controller: queue_poll_ms, group_poll_ms and resync_s must be at least 1".into(),
            ));
        }
        if c.lease_duration_s < 2 {
            return Err(ConfigError::Invalid(
                "controller: lease_duration_s must be at least 2".into(),
            ));
        }
        Ok(())
    }

    /// The pool named `name`.
    pub fn pool(&self, name: &str) -> Option<&PoolConfig> {
        self.pools.iter().find(|p| p.name == name)
    }

    /// The core's configuration, with each pool's shape and limits as observed where known
    /// (`observed`: `(pool, shape)`), else as assumed here.
    pub fn core_config(&self, observed: &[(&str, PoolShape)]) -> zerospot_core::Config {
        let pools = self
            .pools
            .iter()
            .map(|p| {
                let seen = observed.iter().find(|(n, _)| *n == p.name).map(|(_, s)| s);
                let gpus = seen.and_then(|s| s.gpus).or(p.gpus).unwrap_or(1);
                let sharing = seen
                    .and_then(|s| s.sharing.clone())
                    .or_else(|| p.sharing.clone())
                    .unwrap_or(Sharing::Exclusive);
                let (group_min, group_max) = seen
                    .and_then(|s| s.limits)
                    .unwrap_or((0, p.max.unwrap_or(u32::MAX)));
                let max = p.max.map_or(group_max, |m| m.min(group_max));
                zerospot_core::PoolSpec {
                    name: p.name.clone(),
                    asg_name: p.asg_name.clone(),
                    instance_type: p.instance_type.clone().unwrap_or_default(),
                    gpus,
                    capacity_type: p.capacity_type,
                    sharing,
                    min: group_min.min(max),
                    max,
                    fallback: p.fallback.clone(),
                }
            })
            .collect();
        let models = self
            .models
            .iter()
            .map(|m| zerospot_core::ModelSpec {
                name: m.name.clone(),
                pool: m.pool.clone(),
                concurrency: m.concurrency,
                slots_per_pod: m.slots_per_pod,
                mig_profile: m.mig_profile.clone(),
            })
            .collect();
        zerospot_core::Config {
            pools,
            models,
            timing: self.timing,
        }
    }
}

/// What was observed about a pool: its group's limits and its nodes' GPU shape.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolShape {
    /// GPUs per node, from `nvidia.com/gpu.count`.
    pub gpus: Option<u32>,
    /// Sharing, from the device plugin's labels and resources.
    pub sharing: Option<Sharing>,
    /// The group's `(MinSize, MaxSize)`.
    pub limits: Option<(u32, u32)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
pools:
  - name: gpu-spot
    asg_name: eks-gpu-spot
    sharing: {mode: mps, replicas: 4}
    fallback: gpu-ondemand
  - name: gpu-ondemand
    asg_name: eks-gpu-ondemand
    capacity_type: on_demand
models:
  - name: llama3.2:1b
    pool: gpu-spot
    namespace: models
    service: llama
    queue_url: https://sqs.us-east-1.amazonaws.com/123456789012/zerospot-llama
    concurrency: 4
timing:
  idle_window_s: 60
"#;

    #[test]
    fn a_valid_file_parses_with_defaults_filled_in() {
        let config = ScalerConfig::from_yaml(EXAMPLE).unwrap();
        assert_eq!(config.timing.idle_window_s, 60);
        assert_eq!(config.timing.launch_timeout_s, 600);
        assert_eq!(config.controller.queue_poll_ms, 1000);
        assert_eq!(config.pools[1].capacity_type, CapacityType::OnDemand);
        assert_eq!(config.models[0].slots_per_pod, 1);
    }

    #[test]
    fn an_unknown_field_is_refused_with_its_line() {
        let err = ScalerConfig::from_yaml(&EXAMPLE.replace("concurrency: 4", "concurency: 4"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("concurency"), "{err}");
        assert!(err.contains("line "), "{err}");
    }

    #[test]
    fn two_models_on_one_queue_are_refused() {
        let text = format!(
            "{EXAMPLE}  - name: mistral\n    pool: gpu-spot\n    namespace: models\n    service: mistral\n    queue_url: https://sqs.us-east-1.amazonaws.com/123456789012/zerospot-llama\n"
        );
        let text = text.replace("timing:\n  idle_window_s: 60\n", "");
        let text = text.replacen("models:", "timing:\n  idle_window_s: 60\nmodels:", 1);
        let err = ScalerConfig::from_yaml(&text).unwrap_err().to_string();
        assert!(err.contains("its own request queue"), "{err}");
    }

    #[test]
    fn a_model_in_an_undefined_pool_is_refused() {
        let err = ScalerConfig::from_yaml(&EXAMPLE.replace("pool: gpu-spot", "pool: gpu-x"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("gpu-x"), "{err}");
    }

    #[test]
    fn a_bad_fallback_and_a_bad_queue_url_are_refused() {
        let err = ScalerConfig::from_yaml(
            &EXAMPLE.replace("fallback: gpu-ondemand", "fallback: gpu-spot"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("fallback"), "{err}");
        let err =
            ScalerConfig::from_yaml(&EXAMPLE.replace("queue_url: https://", "queue_url: sqs://"))
                .unwrap_err()
                .to_string();
        assert!(err.contains("not a queue URL"), "{err}");
    }

    #[test]
    fn the_demand_namespace_defaults_to_the_dispatcher_s_and_an_empty_one_is_refused() {
        let config = ScalerConfig::from_yaml(EXAMPLE).unwrap();
        assert_eq!(config.dispatcher.demand_namespace, "zerospot");
        let text = format!("{EXAMPLE}dispatcher:\n  demand_namespace: ops\n");
        let config = ScalerConfig::from_yaml(&text).unwrap();
        assert_eq!(config.dispatcher.demand_namespace, "ops");
        let text = format!("{EXAMPLE}dispatcher:\n  demand_namespace: \" \"\n");
        let err = ScalerConfig::from_yaml(&text).unwrap_err().to_string();
        assert!(err.contains("demand_namespace"), "{err}");
    }

    #[test]
    fn zero_intervals_are_refused() {
        let text = format!("{EXAMPLE}controller:\n  queue_poll_ms: 0\n");
        let err = ScalerConfig::from_yaml(&text).unwrap_err().to_string();
        assert!(err.contains("queue_poll_ms"), "{err}");
    }

    #[test]
    fn observed_shape_and_limits_override_the_assumptions() {
        let config = ScalerConfig::from_yaml(EXAMPLE).unwrap();
        let assumed = config.core_config(&[]);
        assert_eq!(assumed.pools[0].sharing, Sharing::Mps { replicas: 4 });
        assert_eq!(assumed.pools[1].sharing, Sharing::Exclusive);
        assert_eq!(assumed.pools[1].gpus, 1);
        let seen = PoolShape {
            gpus: Some(4),
            sharing: Some(Sharing::Mps { replicas: 8 }),
            limits: Some((1, 3)),
        };
        let core = config.core_config(&[("gpu-spot", seen)]);
        assert_eq!(core.pools[0].gpus, 4);
        assert_eq!(core.pools[0].sharing, Sharing::Mps { replicas: 8 });
        assert_eq!((core.pools[0].min, core.pools[0].max), (1, 3));
    }

    #[test]
    fn a_configured_max_caps_the_groups_max() {
        let text = EXAMPLE.replace(
            "asg_name: eks-gpu-spot\n",
            "asg_name: eks-gpu-spot\n    max: 2\n",
        );
        let config = ScalerConfig::from_yaml(&text).unwrap();
        let seen = PoolShape {
            limits: Some((0, 10)),
            ..PoolShape::default()
        };
        assert_eq!(config.core_config(&[("gpu-spot", seen)]).pools[0].max, 2);
        let seen = PoolShape {
            limits: Some((3, 10)),
            ..PoolShape::default()
        };
        let core = config.core_config(&[("gpu-spot", seen)]);
        assert_eq!((core.pools[0].min, core.pools[0].max), (2, 2));
    }
}
