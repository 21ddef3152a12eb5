//! Observe: what AWS and Kubernetes say, turned into the core's [`Snapshot`] and [`Config`].
//!
//! Pure: [`observe`] takes plain copies of the Auto Scaling groups, Nodes, Pods, PodAutoscalers and
//! queue depths, plus a small [`Memory`] the caller keeps between calls, and returns what
//! `zerospot_core::decide` needs. The scaler calls it on every change; the Lambda functions call it once
//! per event. No clock, no I/O.
//!
//! # Rules
//! - A node belongs to the pool whose Auto Scaling group holds its instance (the instance id is the last
//!   segment of `spec.providerID`, `aws:///us-east-1a/i-0abc`); labels never decide it. An instance
//!   with no Node yet is a node that is launching.
//! - GPU-ready: the Node is Ready and advertises the pool's resource (`nvidia.com/gpu`, or a
//!   `nvidia.com/mig-*` slice for MIG pools) with a count above zero. Anything less is still launching,
//!   and the launch timeout replaces it.
//! - A pool's GPUs per node and sharing come from its nodes' device-plugin labels and resources; the
//!   last shape seen is remembered, so a pool back at zero keeps it.
//! - Work in flight per node comes from the dispatcher's annotations ([`names::ANNOTATION_IN_FLIGHT`],
//!   [`names::ANNOTATION_IDLE_SINCE`]); an idle node without the latter has been idle since it was
//!   created.
//! - Disruptions come from the [`names::ANNOTATION_DISRUPTION`] annotation or the
//!   [`names::TAINT_INTERRUPTED`] taint (set by the functions) and from the group's lifecycle state
//!   (`Terminating*`).
//! - Demand per model: its queue's visible and in-flight messages, the sum of its PodAutoscalers'
//!   `desiredScale` and `actualScale` (one per revision), and its pods that are not yet scheduled.
//! - Arrival rate, gaps between arrivals, silence and service time per model come from the record the
//!   dispatcher publishes in the ConfigMap [`names::CONFIGMAP_DEMAND`]
//!   (`zerospot_core::estimate::PublishedDemand`), when it is at most [`MAX_PUBLISHED_AGE_S`] old; the
//!   silence is advanced by the record's age. A missing, stale or unreadable record, or a bad figure in
//!   it, leaves that estimate unset (the policy's fallback: queue depth and the idle window) and says so
//!   in the notes.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, Utc};
use k8s_openapi::api::core::v1::{Node as KubeNode, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use zerospot_core::estimate::PublishedDemand;
use zerospot_core::{
    Config, Disruption, ModelDemand, Node, NodeState, PoolState, Sharing, Snapshot,
};

use crate::config::{PoolShape, ScalerConfig, names};

/// An Auto Scaling group as described.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Group {
    /// Group name.
    pub name: String,
    /// `MinSize`.
    pub min: u32,
    /// `MaxSize`.
    pub max: u32,
    /// `DesiredCapacity`.
    pub desired: u32,
    /// Its instances.
    pub instances: Vec<GroupInstance>,
    /// Its tags (the Cluster Autoscaler's `node-template` tags describe its nodes before any exists).
    pub tags: BTreeMap<String, String>,
}

/// One instance of a group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupInstance {
    /// EC2 instance id.
    pub id: String,
    /// `LifecycleState`: `Pending`, `InService`, `Terminating:Wait`, ...
    pub lifecycle_state: String,
    /// `ProtectedFromScaleIn`.
    pub protected: bool,
}

impl GroupInstance {
    fn is_gone(&self) -> bool {
        let s = self.lifecycle_state.as_str();
        s == "Terminated" || s.starts_with("Detach") || s == "Standby" || s.starts_with("Warmed")
    }

    fn is_terminating(&self) -> bool {
        self.lifecycle_state.starts_with("Terminating")
    }
}

/// A queue's depth (`ApproximateNumberOfMessages`, `ApproximateNumberOfMessagesNotVisible`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDepth {
    /// Messages waiting.
    pub visible: u64,
    /// Messages received and not yet deleted (being served, or held by the dispatcher).
    pub in_flight: u64,
}

/// What a Knative PodAutoscaler says about one revision of a Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Autoscaler {
    /// Namespace.
    pub namespace: String,
    /// The Knative Service it belongs to (`serving.knative.dev/service` label).
    pub service: String,
    /// `status.desiredScale` (absent or negative: not known yet).
    pub desired_scale: Option<i64>,
    /// `status.actualScale`.
    pub actual_scale: Option<i64>,
}

impl Autoscaler {
    /// Reads a PodAutoscaler (`autoscaling.internal.knative.dev/v1alpha1`) given as JSON; `None` when it
    /// belongs to no Knative Service.
    pub fn from_json(obj: &serde_json::Value) -> Option<Autoscaler> {
        let meta = obj.get("metadata")?;
        let service = meta
            .get("labels")?
            .get(names::LABEL_KNATIVE_SERVICE)?
            .as_str()?
            .to_owned();
        let namespace = meta.get("namespace")?.as_str()?.to_owned();
        let status = obj.get("status");
        let field = |name: &str| {
            status
                .and_then(|s| s.get(name))
                .and_then(serde_json::Value::as_i64)
        };
        Some(Autoscaler {
            namespace,
            service,
            desired_scale: field("desiredScale"),
            actual_scale: field("actualScale"),
        })
    }
}

/// How old the dispatcher's published estimates may be and still be used, seconds. The dispatcher
/// publishes every 10 s, so a record this old means a dozen missed writes: the dispatcher is down or
/// cannot reach the apiserver, and its figures (the recent rate's window is 60 s) no longer describe the
/// traffic. The policy then falls back to the queue depth and the idle window, which need no estimate.
pub const MAX_PUBLISHED_AGE_S: f64 = 120.0;

/// The dispatcher's published estimates (the `demand.json` key of the ConfigMap
/// [`names::CONFIGMAP_DEMAND`]) as the caller read them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Published<'a> {
    /// Not read by this caller (the Lambda functions decide from queue depth alone): estimates unset,
    /// no note.
    #[default]
    NotRead,
    /// Read, and the ConfigMap or its key is absent (no dispatcher has published yet).
    Missing,
    /// The record's JSON text, as found.
    Text(&'a str),
}

/// Everything observed at one moment, borrowed from the caller's caches.
#[derive(Debug, Clone, Copy)]
pub struct World<'a> {
    /// The configured pools' groups (others are ignored).
    pub groups: &'a [Group],
    /// Nodes (any; those whose instance is in no configured group are ignored).
    pub nodes: &'a [&'a KubeNode],
    /// Model pods (any; those of no configured model are ignored).
    pub pods: &'a [&'a Pod],
    /// PodAutoscalers.
    pub autoscalers: &'a [Autoscaler],
    /// Queue depth per model name, where read.
    pub queues: &'a HashMap<String, QueueDepth>,
    /// Spot capacity failures per pool (from the group's failed scaling activities or launch-failure
    /// events).
    pub capacity_failures: &'a HashMap<String, Vec<DateTime<Utc>>>,
    /// The dispatcher's published estimates.
    pub published_demand: Published<'a>,
}

/// What the caller keeps from one observation to the next.
#[derive(Debug, Clone, Default)]
pub struct Memory {
    /// When each instance was first seen (its launch time, as far as we know).
    first_seen: HashMap<String, DateTime<Utc>>,
    /// The last GPU shape seen per pool.
    shapes: HashMap<String, (Option<u32>, Option<Sharing>)>,
}

/// The result of [`observe`].
#[derive(Debug, Clone)]
pub struct Observation {
    /// The core's configuration with observed shapes and limits.
    pub config: Config,
    /// The snapshot to decide on.
    pub snapshot: Snapshot,
    /// The next time the policy's answer can change with no new observation (an idle window or a launch
    /// timeout running out, or a busy node settling, an idle window after its launch, so that it may be
    /// consolidated), if any.
    pub next_deadline: Option<DateTime<Utc>>,
    /// Things an operator may want to know (a node that no group holds, a shape that changed).
    pub notes: Vec<String>,
}

/// The instance id in a Node's `spec.providerID` (`aws:///us-east-1a/i-0abc` -> `i-0abc`).
pub fn instance_id(node: &KubeNode) -> Option<&str> {
    let provider = node.spec.as_ref()?.provider_id.as_deref()?;
    let rest = provider.strip_prefix("aws://")?;
    let id = rest.rsplit('/').next()?;
    id.starts_with("i-").then_some(id)
}

fn quantity(q: &Quantity) -> u64 {
    q.0.trim().parse::<u64>().unwrap_or(0)
}

fn labels(node: &KubeNode) -> Option<&BTreeMap<String, String>> {
    node.metadata.labels.as_ref()
}

fn annotation<'n>(node: &'n KubeNode, key: &str) -> Option<&'n str> {
    node.metadata
        .annotations
        .as_ref()?
        .get(key)
        .map(String::as_str)
}

fn is_ready(node: &KubeNode) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Allocatable of each GPU resource (`nvidia.com/gpu`, `nvidia.com/mig-*`).
fn gpu_allocatable(node: &KubeNode) -> Vec<(&str, u64)> {
    node.status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref())
        .map(|a| {
            a.iter()
                .filter(|(k, _)| {
                    k.as_str() == names::RESOURCE_GPU || k.starts_with(names::RESOURCE_MIG_PREFIX)
                })
                .map(|(k, v)| (k.as_str(), quantity(v)))
                .collect()
        })
        .unwrap_or_default()
}

/// GPUs per node and sharing as the device plugin and GPU feature discovery describe the node.
pub fn node_shape(node: &KubeNode) -> (Option<u32>, Option<Sharing>) {
    let allocatable: Vec<(&str, u64)> = gpu_allocatable(node);
    shape_of(
        |k| labels(node).and_then(|l| l.get(k)).map(String::as_str),
        &allocatable,
    )
}

/// Tag prefix of the Cluster Autoscaler's node template labels on an Auto Scaling group.
pub const TAG_TEMPLATE_LABEL: &str = "k8s.io/cluster-autoscaler/node-template/label/";
/// Tag prefix of the Cluster Autoscaler's node template resources on an Auto Scaling group.
pub const TAG_TEMPLATE_RESOURCE: &str = "k8s.io/cluster-autoscaler/node-template/resources/";

/// The shape a group's nodes will have, from the Cluster Autoscaler's node-template tags
/// (`k8s.io/cluster-autoscaler/node-template/label/nvidia.com/gpu.replicas: "4"`,
/// `.../resources/nvidia.com/mig-1g.10gb: "7"`): what a pool at zero scales out with.
pub fn group_shape(group: &Group) -> (Option<u32>, Option<Sharing>) {
    let resources: Vec<(&str, u64)> = group
        .tags
        .iter()
        .filter_map(|(k, v)| {
            Some((
                k.strip_prefix(TAG_TEMPLATE_RESOURCE)?,
                v.trim().parse::<u64>().ok()?,
            ))
        })
        .filter(|(k, _)| k.starts_with(names::RESOURCE_MIG_PREFIX))
        .collect();
    shape_of(
        |k| {
            group
                .tags
                .get(&format!("{TAG_TEMPLATE_LABEL}{k}"))
                .map(String::as_str)
        },
        &resources,
    )
}

fn shape_of<'a>(
    label: impl Fn(&str) -> Option<&'a str>,
    allocatable: &[(&str, u64)],
) -> (Option<u32>, Option<Sharing>) {
    let gpus = label(names::LABEL_GPU_COUNT)
        .and_then(|v| v.trim().parse::<u32>().ok())
        .filter(|g| *g > 0);
    let mut profiles: Vec<zerospot_core::capacity::MigProfile> = allocatable
        .iter()
        .filter_map(|(k, n)| {
            let name = k.strip_prefix(names::RESOURCE_MIG_PREFIX)?;
            let per_gpu = u32::try_from(n / u64::from(gpus.unwrap_or(1))).ok()?;
            (per_gpu > 0).then(|| zerospot_core::capacity::MigProfile {
                name: name.to_owned(),
                per_gpu,
            })
        })
        .collect();
    if !profiles.is_empty() {
        profiles.sort_by(|a, b| a.name.cmp(&b.name));
        return (gpus, Some(Sharing::Mig { profiles }));
    }
    let replicas = label(names::LABEL_GPU_REPLICAS).and_then(|v| v.trim().parse::<u32>().ok());
    let sharing = match (label(names::LABEL_GPU_SHARING), replicas) {
        (Some("mps"), Some(r)) if r > 0 => Some(Sharing::Mps { replicas: r }),
        (Some("time-slicing"), Some(r)) if r > 0 => Some(Sharing::TimeSlicing { replicas: r }),
        (Some("none"), _) | (None, Some(1)) => Some(Sharing::Exclusive),
        _ => None,
    };
    (gpus, sharing)
}

fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn disruption_of(node: &KubeNode) -> Option<Disruption> {
    if let Some(kind) = annotation(node, names::ANNOTATION_DISRUPTION)
        && let Ok(d) =
            serde_json::from_value::<Disruption>(serde_json::Value::String(kind.trim().to_owned()))
    {
        return Some(d);
    }
    let tainted = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .is_some_and(|ts| ts.iter().any(|t| t.key == names::TAINT_INTERRUPTED));
    tainted.then_some(Disruption::SpotInterruption)
}

/// A Kubernetes timestamp as a chrono time.
pub fn from_jiff(t: k8s_openapi::jiff::Timestamp) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp(
        t.as_second(),
        u32::try_from(t.subsec_nanosecond()).unwrap_or(0),
    )
}

/// The usable estimates per model from the published record, each figure checked; what is wrong goes to
/// `notes`.
fn published_estimates(
    published: Published<'_>,
    now: DateTime<Utc>,
    notes: &mut Vec<String>,
) -> HashMap<String, ModelDemand> {
    let text = match published {
        Published::NotRead => return HashMap::new(),
        Published::Missing => {
            notes.push(format!(
                "no published demand estimates (ConfigMap {}): arrival rates and service times unset",
                names::CONFIGMAP_DEMAND
            ));
            return HashMap::new();
        }
        Published::Text(text) => text,
    };
    let record = match PublishedDemand::parse(text) {
        Ok(r) => r,
        Err(e) => {
            notes.push(format!("{e}; arrival rates and service times unset"));
            return HashMap::new();
        }
    };
    let age_s = (now - record.observed_at).num_milliseconds() as f64 / 1000.0;
    if age_s > MAX_PUBLISHED_AGE_S {
        notes.push(format!(
            "published demand estimates are {age_s:.0} s old (more than {MAX_PUBLISHED_AGE_S} s): unused"
        ));
        return HashMap::new();
    }
    if age_s < -MAX_PUBLISHED_AGE_S {
        notes.push(format!(
            "published demand estimates are dated {:.0} s in the future (clocks apart?): unused",
            -age_s
        ));
        return HashMap::new();
    }
    // A record a little in the future (clocks a few seconds apart) counts as taken now.
    let age_s = age_s.max(0.0);
    let mut out: HashMap<String, ModelDemand> = HashMap::new();
    for m in record.models {
        if out.contains_key(&m.model) {
            notes.push(format!(
                "published demand estimates name model {:?} twice; the first is used",
                m.model
            ));
            continue;
        }
        let mut bad = |field: &str, v: f64| {
            notes.push(format!(
                "published demand estimate {field} = {v} for model {:?} is not usable; unset",
                m.model
            ));
        };
        let arrival_rate_per_s = m.arrival_rate_per_s.filter(|v| {
            let ok = v.is_finite() && *v >= 0.0;
            if !ok {
                bad("arrival_rate_per_s", *v);
            }
            ok
        });
        let peak_rate_per_s = m.peak_rate_per_s.filter(|v| {
            let ok = v.is_finite() && *v >= 0.0;
            if !ok {
                bad("peak_rate_per_s", *v);
            }
            ok
        });
        let service_time_s = m.service_time_s.filter(|v| {
            let ok = v.is_finite() && *v > 0.0;
            if !ok {
                bad("service_time_s", *v);
            }
            ok
        });
        let silent_for_s = m
            .silent_for_s
            .filter(|v| {
                let ok = v.is_finite() && *v >= 0.0;
                if !ok {
                    bad("silent_for_s", *v);
                }
                ok
            })
            .map(|v| v + age_s);
        out.insert(
            m.model.clone(),
            ModelDemand {
                model: m.model,
                arrival_rate_per_s,
                peak_rate_per_s,
                service_time_s,
                silent_for_s,
                gaps: m.gaps,
                ..ModelDemand::default()
            },
        );
    }
    out
}

fn secs(s: u64) -> Duration {
    Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX / 1000))
}

/// Builds the core's view of the world. See the module docs for the rules.
pub fn observe(
    config: &ScalerConfig,
    world: &World<'_>,
    memory: &mut Memory,
    now: DateTime<Utc>,
) -> Observation {
    let mut notes = Vec::new();
    let timing = &config.timing;

    // Instances of the configured groups.
    let mut owner: HashMap<&str, (&str, &GroupInstance)> = HashMap::new();
    for pool in &config.pools {
        if let Some(group) = world.groups.iter().find(|g| g.name == pool.asg_name) {
            for instance in group.instances.iter().filter(|i| !i.is_gone()) {
                owner.insert(instance.id.as_str(), (pool.name.as_str(), instance));
            }
        }
    }
    memory
        .first_seen
        .retain(|id, _| owner.contains_key(id.as_str()));
    for id in owner.keys() {
        memory.first_seen.entry((*id).to_owned()).or_insert(now);
    }

    let by_instance: HashMap<&str, &KubeNode> = world
        .nodes
        .iter()
        .filter_map(|n| Some((instance_id(n)?, *n)))
        .collect();

    // Shapes first: whether a node is GPU-ready depends on its pool's resource.
    for pool in &config.pools {
        let mut members: Vec<(&&str, &(&str, &GroupInstance))> =
            owner.iter().filter(|(_, (p, _))| *p == pool.name).collect();
        // In instance order, so that which shape wins when nodes disagree never depends on hashing.
        members.sort_by_key(|(id, _)| **id);
        let shapes: Vec<(Option<u32>, Option<Sharing>)> = members
            .into_iter()
            .filter_map(|(id, _)| by_instance.get(id))
            .map(|n| node_shape(n))
            .filter(|(g, s)| g.is_some() || s.is_some())
            .collect();
        if let Some(first) = shapes.first() {
            if shapes.iter().any(|s| s != first) {
                notes.push(format!(
                    "pool {:?}: nodes disagree on GPU count or sharing; using {:?}",
                    pool.name, first
                ));
            }
            let previous = memory.shapes.insert(pool.name.clone(), first.clone());
            if previous.as_ref().is_some_and(|p| p != first) {
                notes.push(format!(
                    "pool {:?}: GPU shape changed to {:?}",
                    pool.name, first
                ));
            }
        }
    }
    let shapes: Vec<(&str, PoolShape)> = config
        .pools
        .iter()
        .map(|p| {
            let group = world.groups.iter().find(|g| g.name == p.asg_name);
            let from_tags = group.map(group_shape).unwrap_or((None, None));
            let (gpus, sharing) = memory.shapes.get(&p.name).cloned().unwrap_or((None, None));
            let (gpus, sharing) = (gpus.or(from_tags.0), sharing.or(from_tags.1));
            let limits = group.map(|g| (g.min, g.max));
            (
                p.name.as_str(),
                PoolShape {
                    gpus,
                    sharing,
                    limits,
                },
            )
        })
        .collect();
    let core_config = config.core_config(&shapes);

    // Nodes.
    let idle_window = secs(timing.idle_window_s);
    let launch_timeout = secs(timing.launch_timeout_s);
    let mut next_deadline: Option<DateTime<Utc>> = None;
    // A time past what chrono can hold (an absurdly long window) is no deadline at all.
    let mut later = |t: Option<DateTime<Utc>>| {
        if let Some(t) = t
            && t > now
            && next_deadline.is_none_or(|d| t < d)
        {
            next_deadline = Some(t);
        }
    };
    let mut nodes = Vec::new();
    let mut ids: Vec<&&str> = owner.keys().collect();
    ids.sort();
    for id in ids {
        let (pool, instance) = owner[*id];
        let kube = by_instance.get(*id).copied();
        let first_seen = memory.first_seen.get(*id).copied().unwrap_or(now);
        let created = kube
            .and_then(|n| n.metadata.creation_timestamp.as_ref())
            .and_then(|t| from_jiff(t.0));
        let launched_at = created.map_or(first_seen, |c| c.min(first_seen));
        let mig = core_config
            .pools
            .iter()
            .find(|p| p.name == pool)
            .is_some_and(|p| matches!(p.sharing, Sharing::Mig { .. }));
        let gpu_ready = kube.is_some_and(|n| {
            is_ready(n)
                && gpu_allocatable(n)
                    .iter()
                    .any(|(k, count)| *count > 0 && (*k == names::RESOURCE_GPU) != mig)
        });
        let in_flight = kube
            .and_then(|n| annotation(n, names::ANNOTATION_IN_FLIGHT))
            .and_then(|v| v.trim().parse::<u32>().ok())
            .unwrap_or(0);
        let idle_since = (in_flight == 0).then(|| {
            let marked = kube
                .and_then(|n| annotation(n, names::ANNOTATION_IDLE_SINCE))
                .and_then(parse_time);
            let base = created.unwrap_or(launched_at);
            marked.map_or(base, |m| m.max(base))
        });
        let mut disruption = kube.and_then(disruption_of);
        if instance.is_terminating() && disruption.is_none() {
            disruption = Some(Disruption::Terminating);
        }
        let state = if gpu_ready {
            NodeState::GpuReady
        } else {
            NodeState::Launching
        };
        match (state, idle_since) {
            (NodeState::Launching, _) => later(launched_at.checked_add_signed(launch_timeout)),
            (NodeState::GpuReady, Some(since)) => later(since.checked_add_signed(idle_window)),
            // A busy node may be consolidated once it has settled, an idle window after its launch:
            // no other change need come for the policy to take it then.
            (NodeState::GpuReady, None) => later(launched_at.checked_add_signed(idle_window)),
        }
        nodes.push(Node {
            instance_id: (*id).to_owned(),
            name: kube.and_then(|n| n.metadata.name.clone()),
            pool: pool.to_owned(),
            state,
            launched_at,
            cordoned: kube
                .and_then(|n| n.spec.as_ref())
                .and_then(|s| s.unschedulable)
                .unwrap_or(false),
            draining: kube.is_some_and(|n| annotation(n, names::ANNOTATION_DRAINING).is_some()),
            disruption,
            in_flight,
            idle_since,
            protected: instance.protected,
        });
    }

    // Pools.
    let pools = config
        .pools
        .iter()
        .map(|p| PoolState {
            pool: p.name.clone(),
            desired: world
                .groups
                .iter()
                .find(|g| g.name == p.asg_name)
                .map_or(0, |g| g.desired),
            capacity_failures: world
                .capacity_failures
                .get(&p.name)
                .cloned()
                .unwrap_or_default(),
        })
        .collect();

    // Demand.
    let mut estimates = published_estimates(world.published_demand, now, &mut notes);
    let demand = config
        .models
        .iter()
        .map(|m| {
            let depth = world.queues.get(&m.name).copied().unwrap_or_default();
            let mine = |ns: &str, svc: &str| ns == m.namespace && svc == m.service;
            let scales: Vec<&Autoscaler> = world
                .autoscalers
                .iter()
                .filter(|a| mine(&a.namespace, &a.service))
                .collect();
            let sum = |f: fn(&Autoscaler) -> Option<i64>| {
                let known: Vec<i64> = scales
                    .iter()
                    .filter_map(|a| f(a))
                    .filter(|v| *v >= 0)
                    .collect();
                (!known.is_empty())
                    .then(|| u32::try_from(known.iter().sum::<i64>()).unwrap_or(u32::MAX))
            };
            let pending = world
                .pods
                .iter()
                .filter(|p| {
                    let ns = p.metadata.namespace.as_deref().unwrap_or_default();
                    let svc = p
                        .metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(names::LABEL_KNATIVE_SERVICE))
                        .map(String::as_str)
                        .unwrap_or_default();
                    mine(ns, svc)
                        && p.metadata.deletion_timestamp.is_none()
                        && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Pending")
                        && p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none()
                })
                .count();
            let estimate = estimates.remove(&m.name).unwrap_or_default();
            ModelDemand {
                model: m.name.clone(),
                queued: depth.visible,
                in_flight: depth.in_flight,
                desired_scale: sum(|a| a.desired_scale),
                actual_scale: sum(|a| a.actual_scale),
                pending_pods: u32::try_from(pending).unwrap_or(u32::MAX),
                arrival_rate_per_s: estimate.arrival_rate_per_s,
                peak_rate_per_s: estimate.peak_rate_per_s,
                service_time_s: estimate.service_time_s,
                silent_for_s: estimate.silent_for_s,
                gaps: estimate.gaps,
            }
        })
        .collect();

    for node in world.nodes {
        if let Some(id) = instance_id(node) {
            let selected = config.pools.iter().any(|p| {
                labels(node)
                    .and_then(|l| l.get(names::LABEL_NODEGROUP))
                    .is_some_and(|g| *g == p.name)
            });
            if selected && !owner.contains_key(id) {
                notes.push(format!(
                    "node {} (instance {id}) is in no configured group; left alone",
                    node.metadata.name.as_deref().unwrap_or("?")
                ));
            }
        }
    }

    Observation {
        config: core_config,
        snapshot: Snapshot {
            pools,
            nodes,
            demand,
        },
        next_deadline,
        notes,
    }
}
