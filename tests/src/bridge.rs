//! The cloud-to-cluster bridge: stands in for EC2 and the kubelet. It polls the Auto Scaling groups it is
//! given in moto and, for each instance, registers a kwok Node shaped like an EKS GPU node after a boot
//! delay; it deletes the Node once the instance is gone. It can also inject a Spot interruption: the
//! EventBridge event of the real shape, then the instance's termination two minutes (divided by a time
//! factor) later.
//!
//! Per-group node shape comes from the group's tags ([`NodeGroupSpec::tags`] writes them,
//! [`NodeGroupSpec::from_tags`] reads them), so a test creates a group the way zerospot's Terraform would
//! and the bridge follows it.
//!
//! Caveats (moto): every instance is `InService` the moment desired capacity rises, so the boot delay is
//! the only "Pending" time; instances carry no Spot marker, hence the capacity-type tag; moto accepts
//! `aws.ec2` as a PutEvents source, which real AWS reserves for itself.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use aws_sdk_autoscaling::types::AutoScalingGroup;
use k8s_openapi::api::core::v1::{Node, NodeSpec, NodeStatus};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use tokio::task::JoinHandle;

use crate::{Error, Result};

/// Tag: physical GPUs per instance (default 1).
pub const TAG_GPUS: &str = "zerospot.dev/testbed-gpus";
/// Tag: `none`, `mps:<replicas>`, `time-slicing:<replicas>` or `mig:<profile>:<slices per GPU>`.
pub const TAG_GPU_SHARING: &str = "zerospot.dev/testbed-gpu-sharing";
/// Tag: `SPOT` or `ON_DEMAND` (default), as in `eks.amazonaws.com/capacityType`.
pub const TAG_CAPACITY_TYPE: &str = "zerospot.dev/testbed-capacity-type";

/// Label: the group the node belongs to (EKS managed node group label).
pub const LABEL_NODEGROUP: &str = "eks.amazonaws.com/nodegroup";
/// Label: `SPOT` or `ON_DEMAND`.
pub const LABEL_CAPACITY_TYPE: &str = "eks.amazonaws.com/capacityType";
/// Label: EC2 instance type.
pub const LABEL_INSTANCE_TYPE: &str = "node.kubernetes.io/instance-type";
/// Label: availability zone.
pub const LABEL_ZONE: &str = "topology.kubernetes.io/zone";
/// Label: physical GPUs.
pub const LABEL_GPU_COUNT: &str = "nvidia.com/gpu.count";
/// Label: schedulable replicas per GPU (1 without sharing).
pub const LABEL_GPU_REPLICAS: &str = "nvidia.com/gpu.replicas";
/// Label: `none`, `mps`, `time-slicing` or `mig`.
pub const LABEL_GPU_SHARING: &str = "nvidia.com/gpu.sharing-strategy";
/// The GPU extended resource.
pub const RESOURCE_GPU: &str = "nvidia.com/gpu";
/// Label: set (by node feature discovery, from the PCI bus) on every GPU node, device plugin or not.
pub const LABEL_GPU_PRESENT: &str = "nvidia.com/gpu.present";
/// The annotation kwok is started to manage.
pub const KWOK_ANNOTATION: (&str, &str) = ("kwok.x-k8s.io/node", "fake");
/// The account moto answers as.
pub const MOTO_ACCOUNT: &str = "123456789012";
/// The notice EC2 gives before reclaiming a Spot instance.
pub const SPOT_NOTICE: Duration = Duration::from_secs(120);

/// How the GPUs of a node are shared, as the NVIDIA device plugin advertises it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GpuSharing {
    /// One schedulable `nvidia.com/gpu` per GPU.
    None,
    /// MPS: `replicas` schedulable `nvidia.com/gpu` per GPU.
    Mps { replicas: u32 },
    /// Time-slicing: `replicas` schedulable `nvidia.com/gpu` per GPU.
    TimeSlicing { replicas: u32 },
    /// MIG, mixed strategy: `per_gpu` slices `nvidia.com/mig-<profile>` per GPU and no `nvidia.com/gpu`.
    Mig { profile: String, per_gpu: u32 },
}

impl GpuSharing {
    fn replicas(&self) -> u32 {
        match self {
            GpuSharing::Mps { replicas } | GpuSharing::TimeSlicing { replicas } => *replicas,
            GpuSharing::None | GpuSharing::Mig { .. } => 1,
        }
    }

    fn strategy(&self) -> &'static str {
        match self {
            GpuSharing::None => "none",
            GpuSharing::Mps { .. } => "mps",
            GpuSharing::TimeSlicing { .. } => "time-slicing",
            GpuSharing::Mig { .. } => "mig",
        }
    }

    fn to_tag(&self) -> String {
        match self {
            GpuSharing::None => "none".into(),
            GpuSharing::Mps { replicas } => format!("mps:{replicas}"),
            GpuSharing::TimeSlicing { replicas } => format!("time-slicing:{replicas}"),
            GpuSharing::Mig { profile, per_gpu } => format!("mig:{profile}:{per_gpu}"),
        }
    }

    fn from_tag(tag: &str) -> Option<Self> {
        let mut parts = tag.split(':');
        let kind = parts.next()?;
        let number = |s: Option<&str>| s.and_then(|s| s.parse::<u32>().ok()).filter(|n| *n > 0);
        match kind {
            "none" => Some(GpuSharing::None),
            "mps" => Some(GpuSharing::Mps {
                replicas: number(parts.next())?,
            }),
            "time-slicing" => Some(GpuSharing::TimeSlicing {
                replicas: number(parts.next())?,
            }),
            "mig" => {
                let profile = parts.next()?.to_owned();
                Some(GpuSharing::Mig {
                    profile,
                    per_gpu: number(parts.next())?,
                })
            }
            _ => None,
        }
    }
}

/// `SPOT` or `ON_DEMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapacityType {
    Spot,
    OnDemand,
}

impl CapacityType {
    /// The EKS label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CapacityType::Spot => "SPOT",
            CapacityType::OnDemand => "ON_DEMAND",
        }
    }
}

/// The shape of the nodes of one Auto Scaling group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeGroupSpec {
    pub gpus: u32,
    pub sharing: GpuSharing,
    pub capacity_type: CapacityType,
    pub cpu: String,
    pub memory: String,
    pub pods: u32,
}

impl NodeGroupSpec {
    /// On-demand nodes with `gpus` unshared GPUs, 8 CPUs, 32 GiB, 110 pods.
    pub fn gpus(gpus: u32) -> Self {
        Self {
            gpus,
            sharing: GpuSharing::None,
            capacity_type: CapacityType::OnDemand,
            cpu: "8".into(),
            memory: "32Gi".into(),
            pods: 110,
        }
    }

    /// Spot capacity.
    pub fn spot(mut self) -> Self {
        self.capacity_type = CapacityType::Spot;
        self
    }

    /// GPUs shared through `sharing`.
    pub fn sharing(mut self, sharing: GpuSharing) -> Self {
        self.sharing = sharing;
        self
    }

    /// The group tags that describe this spec (`PropagateAtLaunch` is irrelevant to the bridge).
    pub fn tags(&self) -> Vec<(String, String)> {
        vec![
            (TAG_GPUS.into(), self.gpus.to_string()),
            (TAG_GPU_SHARING.into(), self.sharing.to_tag()),
            (TAG_CAPACITY_TYPE.into(), self.capacity_type.as_str().into()),
        ]
    }

    /// Reads a spec from group tags; missing or unreadable tags keep the defaults of `gpus(1)`.
    pub fn from_tags<'a>(tags: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut spec = Self::gpus(1);
        for (key, value) in tags {
            match key {
                TAG_GPUS => spec.gpus = value.parse().unwrap_or(spec.gpus),
                TAG_GPU_SHARING => {
                    spec.sharing = GpuSharing::from_tag(value).unwrap_or(spec.sharing);
                }
                TAG_CAPACITY_TYPE if value.eq_ignore_ascii_case("spot") => {
                    spec.capacity_type = CapacityType::Spot;
                }
                TAG_CAPACITY_TYPE => spec.capacity_type = CapacityType::OnDemand,
                _ => {}
            }
        }
        spec
    }

    /// Capacity (= allocatable) of one node whose NVIDIA device plugin never came up: cpu, memory,
    /// pods, and `nvidia.com/gpu` 0 (no MIG resources either).
    pub fn capacity_without_gpus(&self) -> BTreeMap<String, Quantity> {
        BTreeMap::from([
            ("cpu".to_owned(), Quantity(self.cpu.clone())),
            ("memory".to_owned(), Quantity(self.memory.clone())),
            ("pods".to_owned(), Quantity(self.pods.to_string())),
            (RESOURCE_GPU.to_owned(), Quantity("0".into())),
        ])
    }

    /// Capacity (= allocatable) of one node: cpu, memory, pods and the GPU resources.
    pub fn capacity(&self) -> BTreeMap<String, Quantity> {
        let mut resources = BTreeMap::from([
            ("cpu".to_owned(), Quantity(self.cpu.clone())),
            ("memory".to_owned(), Quantity(self.memory.clone())),
            ("pods".to_owned(), Quantity(self.pods.to_string())),
        ]);
        match &self.sharing {
            GpuSharing::Mig { profile, per_gpu } => {
                resources.insert(
                    format!("nvidia.com/mig-{profile}"),
                    Quantity((self.gpus * per_gpu).to_string()),
                );
                resources.insert(RESOURCE_GPU.to_owned(), Quantity("0".into()));
            }
            sharing => {
                resources.insert(
                    RESOURCE_GPU.to_owned(),
                    Quantity((self.gpus * sharing.replicas()).to_string()),
                );
            }
        }
        resources
    }

    /// The labels of a node of this group (plus the generic kubelet ones).
    pub fn labels(&self, group: &str, instance: &Instance) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::from([
            ("kubernetes.io/hostname".to_owned(), instance.node_name()),
            ("kubernetes.io/os".to_owned(), "linux".to_owned()),
            ("kubernetes.io/arch".to_owned(), "amd64".to_owned()),
            ("type".to_owned(), "kwok".to_owned()),
            (LABEL_NODEGROUP.to_owned(), group.to_owned()),
            (
                LABEL_CAPACITY_TYPE.to_owned(),
                self.capacity_type.as_str().to_owned(),
            ),
            (
                LABEL_INSTANCE_TYPE.to_owned(),
                instance.instance_type.clone(),
            ),
            (LABEL_ZONE.to_owned(), instance.zone.clone()),
            (
                "topology.kubernetes.io/region".to_owned(),
                region_of(&instance.zone),
            ),
            (LABEL_GPU_PRESENT.to_owned(), "true".to_owned()),
            (LABEL_GPU_COUNT.to_owned(), self.gpus.to_string()),
            (
                LABEL_GPU_REPLICAS.to_owned(),
                self.sharing.replicas().to_string(),
            ),
            (
                LABEL_GPU_SHARING.to_owned(),
                self.sharing.strategy().to_owned(),
            ),
        ]);
        if let GpuSharing::Mig { .. } = self.sharing {
            labels.insert("nvidia.com/mig.capable".into(), "true".into());
            labels.insert("nvidia.com/mig.strategy".into(), "mixed".into());
        }
        labels
    }

    /// The labels of a node of this group whose NVIDIA device plugin (and with it GPU feature discovery)
    /// never came up: the generic and EKS ones and `nvidia.com/gpu.present`, no other `nvidia.com/*`.
    pub fn labels_without_gpus(
        &self,
        group: &str,
        instance: &Instance,
    ) -> BTreeMap<String, String> {
        let mut labels = self.labels(group, instance);
        labels.retain(|key, _| !key.starts_with("nvidia.com/") || key == LABEL_GPU_PRESENT);
        labels
    }

    /// The Node the bridge registers for `instance` of `group`.
    pub fn node(&self, group: &str, instance: &Instance) -> Node {
        self.node_with(group, instance, true)
    }

    /// The Node the bridge registers for `instance` of `group` with [`BridgeOptions::without_gpus`]:
    /// Ready like any other, but `nvidia.com/gpu` allocatable 0 and no GPU feature labels, as when the
    /// NVIDIA device plugin never comes up.
    pub fn node_without_gpus(&self, group: &str, instance: &Instance) -> Node {
        self.node_with(group, instance, false)
    }

    fn node_with(&self, group: &str, instance: &Instance, gpus_advertised: bool) -> Node {
        let (capacity, labels) = if gpus_advertised {
            (self.capacity(), self.labels(group, instance))
        } else {
            (
                self.capacity_without_gpus(),
                self.labels_without_gpus(group, instance),
            )
        };
        Node {
            metadata: ObjectMeta {
                name: Some(instance.node_name()),
                labels: Some(labels),
                annotations: Some(BTreeMap::from([(
                    KWOK_ANNOTATION.0.to_owned(),
                    KWOK_ANNOTATION.1.to_owned(),
                )])),
                ..ObjectMeta::default()
            },
            spec: Some(NodeSpec {
                provider_id: Some(instance.provider_id()),
                pod_cidr: Some(loopback_pod_cidr()),
                ..NodeSpec::default()
            }),
            status: Some(NodeStatus {
                allocatable: Some(capacity.clone()),
                capacity: Some(capacity),
                ..NodeStatus::default()
            }),
        }
    }
}

/// A pod CIDR of its own for each node the bridge registers, inside 127.0.0.0/8: kwok gives the node's
/// pods IPs from it, and on Linux every 127.x.y.z is a local address, so a test can serve "pod
/// `10.1.2.3`" for real by listening at its IP (or on 0.0.0.0) and the dispatcher reaches pods by IP as
/// it would in a cluster. 127.100.0.0/24 upwards; /24 each.
pub fn loopback_pod_cidr() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % (150 * 256);
    format!("127.{}.{}.0/24", 100 + n / 256, n % 256)
}

fn region_of(zone: &str) -> String {
    zone.trim_end_matches(|c: char| c.is_ascii_lowercase())
        .to_owned()
}

/// One Auto Scaling instance as the bridge sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    pub zone: String,
    pub instance_type: String,
    pub lifecycle_state: String,
}

impl Instance {
    /// The Node name: the instance id (EKS would use the private DNS name, which moto's Auto Scaling
    /// API does not give).
    pub fn node_name(&self) -> String {
        self.id.to_ascii_lowercase()
    }

    /// `aws:///<az>/<instance-id>`, as the AWS cloud provider sets it.
    pub fn provider_id(&self) -> String {
        format!("aws:///{}/{}", self.zone, self.id)
    }

    /// Whether EC2 is running it (not terminating or terminated).
    fn is_alive(&self) -> bool {
        !(self.lifecycle_state.starts_with("Terminat")
            || self.lifecycle_state.starts_with("Detach"))
    }
}

/// Options of a [`Bridge`].
#[derive(Debug, Clone)]
pub struct BridgeOptions {
    /// The Auto Scaling groups to follow (only these: tests running side by side never see each other's).
    pub groups: Vec<String>,
    /// Time from an instance's first sighting to its Node's registration.
    pub boot_delay: Duration,
    /// How often moto is polled.
    pub poll_interval: Duration,
    /// Divides the two-minute Spot notice: 60 makes it 2 s.
    pub time_factor: f64,
    /// The EventBridge bus interruptions are put on; `None` is the default bus (where AWS puts them).
    pub event_bus: Option<String>,
    /// Register nodes without GPUs, as when the NVIDIA device plugin never comes up (see
    /// [`Self::without_gpus`]).
    pub without_gpus: bool,
}

impl BridgeOptions {
    /// Follows `groups` with a 1 s boot delay, 200 ms polling, real time, the default bus.
    pub fn new<S: Into<String>>(groups: impl IntoIterator<Item = S>) -> Self {
        Self {
            groups: groups.into_iter().map(Into::into).collect(),
            boot_delay: Duration::from_secs(1),
            poll_interval: Duration::from_millis(200),
            time_factor: 1.0,
            event_bus: None,
            without_gpus: false,
        }
    }

    pub fn boot_delay(mut self, delay: Duration) -> Self {
        self.boot_delay = delay;
        self
    }

    pub fn time_factor(mut self, factor: f64) -> Self {
        self.time_factor = factor;
        self
    }

    pub fn event_bus(mut self, bus: impl Into<String>) -> Self {
        self.event_bus = Some(bus.into());
        self
    }

    /// The groups' nodes register (and go Ready) without GPUs, as when the NVIDIA device plugin never
    /// comes up: `nvidia.com/gpu` capacity and allocatable 0, no MIG resources, and of the `nvidia.com/*`
    /// labels only `nvidia.com/gpu.present`. A GPU pod then stays Pending on them. For one broken group
    /// next to healthy ones, run a second bridge for that group.
    pub fn without_gpus(mut self) -> Self {
        self.without_gpus = true;
        self
    }
}

/// A Spot interruption the bridge injected.
#[derive(Debug, Clone)]
pub struct SpotInterruption {
    /// The EventBridge event id PutEvents returned.
    pub event_id: String,
    pub instance_id: String,
    /// When the bridge will terminate the instance.
    pub terminates_at: Instant,
}

/// The running bridge; stops (with its pending terminations) when dropped.
#[derive(Debug)]
pub struct Bridge {
    options: BridgeOptions,
    autoscaling: aws_sdk_autoscaling::Client,
    eventbridge: aws_sdk_eventbridge::Client,
    region: String,
    task: JoinHandle<()>,
    pending: Mutex<Vec<JoinHandle<()>>>,
}

impl Bridge {
    /// Starts following `options.groups` in the current tokio runtime.
    pub fn spawn(aws: &SdkConfig, kube: Client, options: BridgeOptions) -> Self {
        let autoscaling = aws_sdk_autoscaling::Client::new(aws);
        let region = aws
            .region()
            .map_or_else(|| crate::bed::REGION.to_owned(), ToString::to_string);
        let state = Arc::new(Mutex::new(HashMap::new()));
        let task = tokio::spawn(run(
            autoscaling.clone(),
            Api::all(kube),
            options.clone(),
            state,
        ));
        Self {
            options,
            autoscaling,
            eventbridge: aws_sdk_eventbridge::Client::new(aws),
            region,
            task,
            pending: Mutex::new(Vec::new()),
        }
    }

    /// Injects a Spot interruption for `instance_id`: puts the "EC2 Spot Instance Interruption Warning"
    /// event on the configured bus now, and terminates the instance in its group (without decrementing
    /// desired capacity, as EC2 does: the group launches a replacement) after the two-minute notice
    /// divided by the time factor. The bridge then deletes its Node.
    pub async fn interrupt(&self, instance_id: &str) -> Result<SpotInterruption> {
        let detail =
            serde_json::json!({"instance-id": instance_id, "instance-action": "terminate"});
        let mut entry = aws_sdk_eventbridge::types::PutEventsRequestEntry::builder()
            .source("aws.ec2")
            .detail_type(SPOT_DETAIL_TYPE)
            .detail(detail.to_string())
            .resources(instance_arn(&self.region, instance_id));
        if let Some(bus) = &self.options.event_bus {
            entry = entry.event_bus_name(bus);
        }
        let out = self
            .eventbridge
            .put_events()
            .entries(entry.build())
            .send()
            .await
            .map_err(Error::aws("PutEvents"))?;
        let result = out.entries().first();
        let event_id = match result.and_then(|e| e.event_id()) {
            Some(id) if out.failed_entry_count() == 0 => id.to_owned(),
            _ => {
                return Err(Error::Aws {
                    call: "PutEvents",
                    message: format!("entry failed: {:?}", result.and_then(|e| e.error_message())),
                });
            }
        };
        let notice = SPOT_NOTICE.div_f64(self.options.time_factor.max(f64::MIN_POSITIVE));
        let terminates_at = Instant::now() + notice;
        let autoscaling = self.autoscaling.clone();
        let id = instance_id.to_owned();
        let handle = tokio::spawn(async move {
            tokio::time::sleep_until(terminates_at.into()).await;
            let result = autoscaling
                .terminate_instance_in_auto_scaling_group()
                .instance_id(&id)
                .should_decrement_desired_capacity(false)
                .send()
                .await;
            match result {
                Ok(_) => tracing::info!(instance = id, "spot instance reclaimed"),
                Err(e) => {
                    tracing::warn!(instance = id, error = %crate::error_chain(&e), "could not terminate")
                }
            }
        });
        lock(&self.pending).push(handle);
        tracing::info!(
            instance = instance_id,
            event_id,
            ?notice,
            "spot interruption injected"
        );
        Ok(SpotInterruption {
            event_id,
            instance_id: instance_id.to_owned(),
            terminates_at,
        })
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.task.abort();
        for handle in lock(&self.pending).drain(..) {
            handle.abort();
        }
    }
}

/// `detail-type` of the Spot interruption warning.
pub const SPOT_DETAIL_TYPE: &str = "EC2 Spot Instance Interruption Warning";

fn instance_arn(region: &str, instance_id: &str) -> String {
    format!("arn:aws:ec2:{region}:{MOTO_ACCOUNT}:instance/{instance_id}")
}

/// The whole event as EventBridge delivers it to an SQS target on real AWS (moto's delivery lacks
/// `account`); for sending straight to a queue, or as a fixture.
pub fn spot_interruption_event(region: &str, instance_id: &str) -> serde_json::Value {
    let now = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string();
    serde_json::json!({
        "version": "0",
        "id": crate::unique_name("event"),
        "detail-type": SPOT_DETAIL_TYPE,
        "source": "aws.ec2",
        "account": MOTO_ACCOUNT,
        "time": now,
        "region": region,
        "resources": [instance_arn(region, instance_id)],
        "detail": {"instance-id": instance_id, "instance-action": "terminate"},
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// First sighting of each instance, by id.
type Seen = Arc<Mutex<HashMap<String, Instant>>>;

async fn run(
    autoscaling: aws_sdk_autoscaling::Client,
    nodes: Api<Node>,
    options: BridgeOptions,
    seen: Seen,
) {
    if options.groups.is_empty() {
        return;
    }
    loop {
        if let Err(e) = reconcile(&autoscaling, &nodes, &options, &seen).await {
            tracing::warn!(error = %e, "bridge pass failed; retrying");
        }
        tokio::time::sleep(options.poll_interval).await;
    }
}

/// One pass: read the groups, register Nodes for booted instances, delete Nodes of vanished ones.
async fn reconcile(
    autoscaling: &aws_sdk_autoscaling::Client,
    nodes: &Api<Node>,
    options: &BridgeOptions,
    seen: &Seen,
) -> Result<()> {
    let groups = describe_groups(autoscaling, &options.groups).await?;
    let mut wanted: HashMap<String, (String, NodeGroupSpec, Instance)> = HashMap::new();
    for group in &groups {
        let name = group
            .auto_scaling_group_name()
            .unwrap_or_default()
            .to_owned();
        let spec = NodeGroupSpec::from_tags(
            group
                .tags()
                .iter()
                .filter_map(|t| Some((t.key()?, t.value()?))),
        );
        for i in group.instances() {
            let instance = Instance {
                id: i.instance_id().unwrap_or_default().to_owned(),
                zone: i.availability_zone().unwrap_or_default().to_owned(),
                instance_type: i.instance_type().unwrap_or("unknown").to_owned(),
                lifecycle_state: i
                    .lifecycle_state()
                    .map(|s| s.as_str().to_owned())
                    .unwrap_or_default(),
            };
            if instance.is_alive() && !instance.id.is_empty() {
                wanted.insert(instance.node_name(), (name.clone(), spec.clone(), instance));
            }
        }
    }

    let now = Instant::now();
    let due: Vec<String> = {
        let mut seen = lock(seen);
        seen.retain(|id, _| wanted.contains_key(id));
        wanted
            .keys()
            .filter(|id| now >= *seen.entry((*id).clone()).or_insert(now) + options.boot_delay)
            .cloned()
            .collect()
    };

    let selector = format!("{LABEL_NODEGROUP} in ({})", options.groups.join(","));
    let existing = nodes.list(&ListParams::default().labels(&selector)).await?;
    let existing: Vec<String> = existing
        .items
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();

    for name in &existing {
        if !wanted.contains_key(name) {
            match nodes.delete(name, &DeleteParams::default()).await {
                Ok(_) => tracing::info!(node = name, "instance gone: node deleted"),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    for name in due {
        if existing.contains(&name) {
            continue;
        }
        let Some((group, spec, instance)) = wanted.get(&name) else {
            continue;
        };
        register(nodes, group, spec, instance, options.without_gpus).await?;
    }
    Ok(())
}

async fn register(
    nodes: &Api<Node>,
    group: &str,
    spec: &NodeGroupSpec,
    instance: &Instance,
    without_gpus: bool,
) -> Result<()> {
    let node = spec.node_with(group, instance, !without_gpus);
    let name = instance.node_name();
    match nodes.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    // The kubelet reports capacity through the status subresource; do the same so kwok never fills in
    // its own defaults first.
    let status = serde_json::json!({"status": {
        "capacity": node.status.as_ref().and_then(|s| s.capacity.clone()),
        "allocatable": node.status.as_ref().and_then(|s| s.allocatable.clone()),
    }});
    nodes
        .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
        .await?;
    tracing::info!(
        node = name,
        group,
        provider_id = instance.provider_id(),
        without_gpus,
        "instance booted: node registered"
    );
    Ok(())
}

async fn describe_groups(
    autoscaling: &aws_sdk_autoscaling::Client,
    names: &[String],
) -> Result<Vec<AutoScalingGroup>> {
    let mut groups = Vec::new();
    let mut token = None;
    loop {
        let out = autoscaling
            .describe_auto_scaling_groups()
            .set_auto_scaling_group_names(Some(names.to_vec()))
            .set_next_token(token)
            .send()
            .await
            .map_err(Error::aws("DescribeAutoScalingGroups"))?;
        groups.extend(out.auto_scaling_groups().iter().cloned());
        token = out.next_token().map(ToOwned::to_owned);
        if token.is_none() {
            return Ok(groups);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance() -> Instance {
        Instance {
            id: "i-0abc".into(),
            zone: "us-east-1b".into(),
            instance_type: "g5.12xlarge".into(),
            lifecycle_state: "InService".into(),
        }
    }

    #[test]
    fn specs_round_trip_through_group_tags() {
        for spec in [
            NodeGroupSpec::gpus(4)
                .spot()
                .sharing(GpuSharing::Mps { replicas: 8 }),
            NodeGroupSpec::gpus(1).sharing(GpuSharing::TimeSlicing { replicas: 2 }),
            NodeGroupSpec::gpus(8).sharing(GpuSharing::Mig {
                profile: "1g.10gb".into(),
                per_gpu: 7,
            }),
            NodeGroupSpec::gpus(2),
        ] {
            let tags = spec.tags();
            let read = NodeGroupSpec::from_tags(tags.iter().map(|(k, v)| (k.as_str(), v.as_str())));
            assert_eq!(read, spec);
        }
    }

    #[test]
    fn an_mps_node_offers_gpus_times_replicas_and_carries_eks_labels() {
        let spec = NodeGroupSpec::gpus(4)
            .spot()
            .sharing(GpuSharing::Mps { replicas: 8 });
        let node = spec.node("gpu-group", &instance());
        let status = node.status.unwrap_or_default();
        let allocatable = status.allocatable.unwrap_or_default();
        assert_eq!(allocatable[RESOURCE_GPU], Quantity("32".into()));
        assert_eq!(
            node.spec.and_then(|s| s.provider_id).as_deref(),
            Some("aws:///us-east-1b/i-0abc")
        );
        let labels = node.metadata.labels.unwrap_or_default();
        assert_eq!(labels[LABEL_CAPACITY_TYPE], "SPOT");
        assert_eq!(labels[LABEL_GPU_SHARING], "mps");
        assert_eq!(labels[LABEL_GPU_REPLICAS], "8");
        assert_eq!(labels[LABEL_GPU_COUNT], "4");
        assert_eq!(labels[LABEL_ZONE], "us-east-1b");
        assert_eq!(labels["topology.kubernetes.io/region"], "us-east-1");
        assert_eq!(labels[LABEL_INSTANCE_TYPE], "g5.12xlarge");
        assert_eq!(labels[LABEL_NODEGROUP], "gpu-group");
    }

    #[test]
    fn a_mig_node_offers_slices_instead_of_whole_gpus() {
        let spec = NodeGroupSpec::gpus(8).sharing(GpuSharing::Mig {
            profile: "1g.10gb".into(),
            per_gpu: 7,
        });
        let capacity = spec.capacity();
        assert_eq!(capacity["nvidia.com/mig-1g.10gb"], Quantity("56".into()));
        assert_eq!(capacity[RESOURCE_GPU], Quantity("0".into()));
    }

    #[test]
    fn a_node_without_its_device_plugin_is_registered_with_zero_gpus_and_no_gpu_labels() {
        for spec in [
            NodeGroupSpec::gpus(4)
                .spot()
                .sharing(GpuSharing::Mps { replicas: 8 }),
            NodeGroupSpec::gpus(8).sharing(GpuSharing::Mig {
                profile: "1g.10gb".into(),
                per_gpu: 7,
            }),
        ] {
            let node = spec.node_without_gpus("gpu-group", &instance());
            let status = node.status.unwrap_or_default();
            let allocatable = status.allocatable.unwrap_or_default();
            assert_eq!(allocatable[RESOURCE_GPU], Quantity("0".into()));
            assert_eq!(status.capacity.unwrap_or_default(), allocatable);
            assert!(
                !allocatable.keys().any(|k| k.starts_with("nvidia.com/mig-")),
                "{allocatable:?}"
            );
            assert_eq!(allocatable["cpu"], Quantity("8".into()));
            let labels = node.metadata.labels.unwrap_or_default();
            let nvidia: Vec<&String> = labels
                .keys()
                .filter(|k| k.starts_with("nvidia.com/"))
                .collect();
            assert_eq!(nvidia, [LABEL_GPU_PRESENT]);
            assert_eq!(labels[LABEL_NODEGROUP], "gpu-group");
            assert_eq!(labels[LABEL_INSTANCE_TYPE], "g5.12xlarge");
            assert_eq!(
                node.spec.and_then(|s| s.provider_id).as_deref(),
                Some("aws:///us-east-1b/i-0abc")
            );
            let annotations = node.metadata.annotations.unwrap_or_default();
            assert_eq!(annotations[KWOK_ANNOTATION.0], KWOK_ANNOTATION.1);
        }
        assert!(BridgeOptions::new(["g"]).without_gpus().without_gpus);
        assert!(!BridgeOptions::new(["g"]).without_gpus);
    }

    #[test]
    fn the_spot_event_has_the_shape_eventbridge_delivers() {
        let event = spot_interruption_event("us-east-1", "i-0abc");
        assert_eq!(event["source"], "aws.ec2");
        assert_eq!(event["detail-type"], SPOT_DETAIL_TYPE);
        assert_eq!(event["detail"]["instance-action"], "terminate");
        assert_eq!(
            event["resources"][0],
            "arn:aws:ec2:us-east-1:123456789012:instance/i-0abc"
        );
    }
}
