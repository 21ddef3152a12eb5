//! Capacity model: GPU pools, how their GPUs are shared, the models they run, and the nodes in them.
//!
//! A *slot* is the unit a model pod asks the device plugin for: one `nvidia.com/gpu` of an exclusive pool,
//! one MPS or time-slicing replica (`nvidia.com/gpu` with `replicas: N` in the device plugin config), or one MIG
//! slice of a named profile (`nvidia.com/mig-1g.10gb`). A node of a pool offers `gpus x replicas` slots, or
//! `gpus x slices` per MIG profile.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use thiserror::Error;

/// Spot or on-demand: the capacity type of an EKS node group (`eks.amazonaws.com/capacityType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CapacityType {
    /// Spot instances: cheap, interruptible with a two-minute notice, sometimes not available.
    Spot,
    /// On-demand instances: the fallback when Spot capacity keeps failing.
    OnDemand,
}

/// How a pool's GPUs are shared between model pods (the NVIDIA device plugin's sharing strategy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Sharing {
    /// One pod per GPU.
    Exclusive,
    /// CUDA MPS: `replicas` pods per GPU run their kernels concurrently.
    Mps {
        /// Pods per GPU (`sharing.mps.resources[].replicas`).
        replicas: u32,
    },
    /// Time-slicing: `replicas` pods per GPU take turns.
    TimeSlicing {
        /// Pods per GPU (`sharing.timeSlicing.resources[].replicas`).
        replicas: u32,
    },
    /// Multi-Instance GPU: each GPU is cut into slices of named profiles.
    Mig {
        /// The slices one GPU is cut into, by profile.
        profiles: Vec<MigProfile>,
    },
}

/// One MIG profile of a pool's layout, e.g. `1g.10gb` with 7 slices per GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigProfile {
    /// Profile name as the device plugin exposes it (`nvidia.com/mig-<name>`).
    pub name: String,
    /// Slices of this profile per GPU.
    pub per_gpu: u32,
}

impl Sharing {
    /// Slots per GPU for a pod that does not ask for a MIG profile.
    fn replicas(&self) -> u32 {
        match self {
            Sharing::Exclusive => 1,
            Sharing::Mps { replicas } | Sharing::TimeSlicing { replicas } => *replicas,
            Sharing::Mig { .. } => 0,
        }
    }
}

/// A GPU node pool: one EC2 Auto Scaling group (an EKS managed node group's, or our own).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSpec {
    /// Our name for the pool (the EKS node group name, `eks.amazonaws.com/nodegroup`).
    pub name: String,
    /// The Auto Scaling group behind it.
    pub asg_name: String,
    /// Instance type, e.g. `g5.xlarge`.
    pub instance_type: String,
    /// GPUs per instance (g4dn/g5/g6 `.xlarge`: 1; `g5.12xlarge`: 4).
    pub gpus: u32,
    /// Spot or on-demand.
    pub capacity_type: CapacityType,
    /// How the GPUs are shared.
    pub sharing: Sharing,
    /// Never fewer instances than this.
    #[serde(default)]
    pub min: u32,
    /// Never more instances than this.
    pub max: u32,
    /// The pool that takes this pool's demand after repeated Spot capacity failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<String>,
}

impl PoolSpec {
    /// Slots a node of this pool offers to a pod that asks for `mig_profile` (or plain GPUs when `None`).
    pub fn slots_per_node(&self, mig_profile: Option<&str>) -> u32 {
        let per_gpu = match (&self.sharing, mig_profile) {
            (Sharing::Mig { profiles }, Some(name)) => profiles
                .iter()
                .find(|p| p.name == name)
                .map_or(0, |p| p.per_gpu),
            (Sharing::Mig { .. }, None) | (_, Some(_)) => 0,
            (sharing, None) => sharing.replicas(),
        };
        self.gpus.saturating_mul(per_gpu)
    }
}

/// A model server (one Knative Service running Ollama) and where it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Model name as clients put it in requests (`llama3.2:1b`).
    pub name: String,
    /// The pool its pods run in.
    pub pool: String,
    /// Requests one pod serves at once (Ollama's `OLLAMA_NUM_PARALLEL`, Knative's `containerConcurrency`).
    #[serde(default = "one")]
    pub concurrency: u32,
    /// Slots one pod asks for (`nvidia.com/gpu: N`); 1 for almost every model.
    #[serde(default = "one")]
    pub slots_per_pod: u32,
    /// For MIG pools: the profile a pod asks for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mig_profile: Option<String>,
}

fn one() -> u32 {
    1
}

/// Why a node is going away before we chose to remove it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Disruption {
    /// EC2 Spot Instance Interruption Warning: terminated two minutes later.
    SpotInterruption,
    /// EC2 Instance Rebalance Recommendation: at elevated risk of interruption.
    RebalanceRecommendation,
    /// AWS Health scheduled change (retirement, maintenance) on this instance.
    ScheduledChange,
    /// EC2 reports the instance stopping, shutting down or terminated.
    Stopping,
    /// The Auto Scaling group is terminating it (terminate lifecycle action).
    Terminating,
}

impl Disruption {
    /// The snake_case name used in JSON and reasons.
    pub fn as_str(self) -> &'static str {
        match self {
            Disruption::SpotInterruption => "spot_interruption",
            Disruption::RebalanceRecommendation => "rebalance_recommendation",
            Disruption::ScheduledChange => "scheduled_change",
            Disruption::Stopping => "stopping",
            Disruption::Terminating => "terminating",
        }
    }

    /// Whether the node's pods must be evicted now (the node dies soon), rather than left to finish.
    pub fn needs_drain(self) -> bool {
        !matches!(self, Disruption::RebalanceRecommendation)
    }
}

/// Where a node is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Instance launched; the GPU is not yet usable (booting, joining, device plugin not ready).
    Launching,
    /// The node advertises its GPU slots and can run model pods.
    GpuReady,
}

/// One instance of a pool, joined with its Kubernetes Node if it has one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// EC2 instance id (from the Node's `spec.providerID`, or the Auto Scaling group).
    pub instance_id: String,
    /// Kubernetes Node name, once registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The pool (node group) it belongs to.
    pub pool: String,
    /// Launching or GPU-ready.
    pub state: NodeState,
    /// When the instance was launched.
    pub launched_at: DateTime<Utc>,
    /// Unschedulable (cordoned) by us or an operator.
    #[serde(default)]
    pub cordoned: bool,
    /// Its pods are being evicted.
    #[serde(default)]
    pub draining: bool,
    /// Set when AWS told us the node is going away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disruption: Option<Disruption>,
    /// Requests being served on this node right now.
    #[serde(default)]
    pub in_flight: u32,
    /// Since when nothing has been in flight on it; `None` while busy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_since: Option<DateTime<Utc>>,
    /// Auto Scaling instance scale-in protection.
    #[serde(default)]
    pub protected: bool,
}

impl Node {
    /// Whether new work can land here: not cordoned, not draining, not disrupted.
    pub fn schedulable(&self) -> bool {
        !self.cordoned && !self.draining && self.disruption.is_none()
    }

    /// Whether the node has been idle (nothing in flight) for at least `window` at `now`.
    pub fn idle_for(&self, window: chrono::Duration, now: DateTime<Utc>) -> bool {
        self.in_flight == 0 && self.idle_since.is_some_and(|since| now - since >= window)
    }
}

/// A configuration that cannot be acted on.
#[derive(Debug, Error, PartialEq)]
pub enum ConfigError {
    /// Two pools share a name.
    #[error("pool {0:?} is defined twice")]
    DuplicatePool(String),
    /// Two models share a name.
    #[error("model {0:?} is defined twice")]
    DuplicateModel(String),
    /// A pool's min is above its max.
    #[error("pool {pool:?}: min {min} is above max {max}")]
    MinAboveMax {
        /// Pool name.
        pool: String,
        /// Its min.
        min: u32,
        /// Its max.
        max: u32,
    },
    /// A pool has no GPUs per node.
    #[error("pool {0:?}: gpus must be at least 1")]
    NoGpus(String),
    /// An MPS or time-slicing pool with 0 replicas, or a MIG pool with no profile.
    #[error(
        "pool {0:?}: sharing offers no slots (replicas must be at least 1; MIG needs a profile with per_gpu >= 1)"
    )]
    NoSlots(String),
    /// A model names a pool that is not defined.
    #[error("model {model:?} runs in pool {pool:?}, which is not defined")]
    UnknownPool {
        /// Model name.
        model: String,
        /// The missing pool.
        pool: String,
    },
    /// A pool's fallback is not defined, or is the pool itself.
    #[error("pool {pool:?}: fallback {fallback:?} is not another defined pool")]
    BadFallback {
        /// Pool name.
        pool: String,
        /// The fallback named.
        fallback: String,
    },
    /// A model's concurrency or slots per pod is 0.
    #[error("model {0:?}: concurrency and slots_per_pod must be at least 1")]
    ZeroModelSize(String),
    /// A headroom knob (`headroom`, `keep_headroom`) is not a finite number from 0 to 10.
    #[error("timing.headroom and timing.keep_headroom must be numbers from 0 to 10, got {0}")]
    BadHeadroom(f64),
    /// The relaunch risk is not a finite number above 0 and at most 1.
    #[error("timing.relaunch_risk must be a number above 0 and at most 1, got {0}")]
    BadRelaunchRisk(f64),
    /// A model pod can never fit on a node of its pool.
    #[error(
        "model {model:?}: a pod needs {needs} slots but a node of pool {pool:?} offers {offers}"
    )]
    PodDoesNotFit {
        /// Model name.
        model: String,
        /// Its pool.
        pool: String,
        /// Slots a pod needs.
        needs: u32,
        /// Slots a node offers.
        offers: u32,
    },
}

/// Checks pools and models together; called by [`crate::policy::Config::validate`].
pub(crate) fn validate(pools: &[PoolSpec], models: &[ModelSpec]) -> Result<(), ConfigError> {
    let mut names = HashSet::new();
    for pool in pools {
        if !names.insert(pool.name.as_str()) {
            return Err(ConfigError::DuplicatePool(pool.name.clone()));
        }
        if pool.min > pool.max {
            return Err(ConfigError::MinAboveMax {
                pool: pool.name.clone(),
                min: pool.min,
                max: pool.max,
            });
        }
        if pool.gpus == 0 {
            return Err(ConfigError::NoGpus(pool.name.clone()));
        }
        let offers_slots = match &pool.sharing {
            Sharing::Mig { profiles } => profiles.iter().any(|p| p.per_gpu > 0),
            other => other.replicas() > 0,
        };
        if !offers_slots {
            return Err(ConfigError::NoSlots(pool.name.clone()));
        }
    }
    for pool in pools {
        if let Some(fallback) = &pool.fallback
            && (fallback == &pool.name || !names.contains(fallback.as_str()))
        {
            return Err(ConfigError::BadFallback {
                pool: pool.name.clone(),
                fallback: fallback.clone(),
            });
        }
    }
    let mut model_names = HashSet::new();
    for model in models {
        if !model_names.insert(model.name.as_str()) {
            return Err(ConfigError::DuplicateModel(model.name.clone()));
        }
        if model.concurrency == 0 || model.slots_per_pod == 0 {
            return Err(ConfigError::ZeroModelSize(model.name.clone()));
        }
        let Some(pool) = pools.iter().find(|p| p.name == model.pool) else {
            return Err(ConfigError::UnknownPool {
                model: model.name.clone(),
                pool: model.pool.clone(),
            });
        };
        let offers = pool.slots_per_node(model.mig_profile.as_deref());
        if offers < model.slots_per_pod {
            return Err(ConfigError::PodDoesNotFit {
                model: model.name.clone(),
                pool: pool.name.clone(),
                needs: model.slots_per_pod,
                offers,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(sharing: Sharing, gpus: u32) -> PoolSpec {
        PoolSpec {
            name: "p".into(),
            asg_name: "asg".into(),
            instance_type: "g5.12xlarge".into(),
            gpus,
            capacity_type: CapacityType::Spot,
            sharing,
            min: 0,
            max: 3,
            fallback: None,
        }
    }

    #[test]
    fn slots_count_gpus_times_replicas_or_mig_slices() {
        assert_eq!(pool(Sharing::Exclusive, 4).slots_per_node(None), 4);
        assert_eq!(
            pool(Sharing::Mps { replicas: 2 }, 4).slots_per_node(None),
            8
        );
        assert_eq!(
            pool(Sharing::TimeSlicing { replicas: 3 }, 1).slots_per_node(None),
            3
        );
        let mig = pool(
            Sharing::Mig {
                profiles: vec![
                    MigProfile {
                        name: "1g.10gb".into(),
                        per_gpu: 7,
                    },
                    MigProfile {
                        name: "3g.40gb".into(),
                        per_gpu: 2,
                    },
                ],
            },
            2,
        );
        assert_eq!(mig.slots_per_node(Some("1g.10gb")), 14);
        assert_eq!(mig.slots_per_node(Some("3g.40gb")), 4);
        assert_eq!(mig.slots_per_node(Some("7g.80gb")), 0);
        assert_eq!(mig.slots_per_node(None), 0);
    }

    #[test]
    fn validation_names_what_is_wrong() {
        let model = ModelSpec {
            name: "m".into(),
            pool: "nope".into(),
            concurrency: 1,
            slots_per_pod: 1,
            mig_profile: None,
        };
        let err = validate(&[pool(Sharing::Exclusive, 1)], &[model]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "model \"m\" runs in pool \"nope\", which is not defined"
        );
        let mut bad = pool(Sharing::Mps { replicas: 0 }, 1);
        assert_eq!(
            validate(&[bad.clone()], &[]),
            Err(ConfigError::NoSlots("p".into()))
        );
        bad.sharing = Sharing::Exclusive;
        bad.min = 5;
        assert!(matches!(
            validate(&[bad], &[]),
            Err(ConfigError::MinAboveMax { min: 5, max: 3, .. })
        ));
    }

    fn m(name: &str, pool: &str) -> ModelSpec {
        ModelSpec {
            name: name.into(),
            pool: pool.into(),
            concurrency: 1,
            slots_per_pod: 1,
            mig_profile: None,
        }
    }

    fn named(name: &str, sharing: Sharing) -> PoolSpec {
        PoolSpec {
            name: name.into(),
            ..pool(sharing, 1)
        }
    }

    #[test]
    fn every_validation_rule_rejects_exactly_what_it_names() {
        let ok = named("a", Sharing::Mps { replicas: 2 });
        assert_eq!(validate(std::slice::from_ref(&ok), &[m("x", "a")]), Ok(()));
        // Pools.
        assert_eq!(
            validate(&[ok.clone(), ok.clone()], &[]),
            Err(ConfigError::DuplicatePool("a".into()))
        );
        let equal = PoolSpec {
            min: 3,
            max: 3,
            ..ok.clone()
        };
        assert_eq!(validate(&[equal], &[]), Ok(()), "min = max is fine");
        let above = PoolSpec {
            min: 4,
            max: 3,
            ..ok.clone()
        };
        assert_eq!(
            validate(&[above], &[]),
            Err(ConfigError::MinAboveMax {
                pool: "a".into(),
                min: 4,
                max: 3
            })
        );
        let no_gpus = PoolSpec {
            gpus: 0,
            ..ok.clone()
        };
        assert_eq!(
            validate(&[no_gpus], &[]),
            Err(ConfigError::NoGpus("a".into()))
        );
        for sharing in [
            Sharing::Mps { replicas: 0 },
            Sharing::TimeSlicing { replicas: 0 },
            Sharing::Mig { profiles: vec![] },
            Sharing::Mig {
                profiles: vec![MigProfile {
                    name: "1g.10gb".into(),
                    per_gpu: 0,
                }],
            },
        ] {
            assert_eq!(
                validate(&[named("a", sharing.clone())], &[]),
                Err(ConfigError::NoSlots("a".into())),
                "{sharing:?}"
            );
        }
        let one_profile = Sharing::Mig {
            profiles: vec![
                MigProfile {
                    name: "7g.80gb".into(),
                    per_gpu: 0,
                },
                MigProfile {
                    name: "1g.10gb".into(),
                    per_gpu: 7,
                },
            ],
        };
        assert_eq!(validate(&[named("a", one_profile)], &[]), Ok(()));
        assert_eq!(validate(&[named("a", Sharing::Exclusive)], &[]), Ok(()));
        assert_eq!(
            validate(&[named("a", Sharing::TimeSlicing { replicas: 1 })], &[]),
            Ok(())
        );
        // Fallbacks.
        let to = |f: &str| PoolSpec {
            fallback: Some(f.into()),
            ..ok.clone()
        };
        let b = named("b", Sharing::Exclusive);
        assert_eq!(validate(&[to("b"), b.clone()], &[]), Ok(()));
        for bad in ["a", "nowhere"] {
            assert_eq!(
                validate(&[to(bad), b.clone()], &[]),
                Err(ConfigError::BadFallback {
                    pool: "a".into(),
                    fallback: bad.into()
                })
            );
        }
        // Models.
        assert_eq!(
            validate(std::slice::from_ref(&ok), &[m("x", "a"), m("x", "a")]),
            Err(ConfigError::DuplicateModel("x".into()))
        );
        for (concurrency, slots_per_pod) in [(0, 1), (1, 0)] {
            let model = ModelSpec {
                concurrency,
                slots_per_pod,
                ..m("x", "a")
            };
            assert_eq!(
                validate(std::slice::from_ref(&ok), &[model]),
                Err(ConfigError::ZeroModelSize("x".into()))
            );
        }
        let fits = ModelSpec {
            slots_per_pod: 2,
            ..m("x", "a")
        };
        assert_eq!(
            validate(std::slice::from_ref(&ok), &[fits]),
            Ok(()),
            "2 of 2 slots"
        );
        let too_big = ModelSpec {
            slots_per_pod: 3,
            ..m("x", "a")
        };
        assert_eq!(
            validate(std::slice::from_ref(&ok), &[too_big]),
            Err(ConfigError::PodDoesNotFit {
                model: "x".into(),
                pool: "a".into(),
                needs: 3,
                offers: 2
            })
        );
    }

    #[test]
    fn a_model_runs_one_request_per_pod_in_one_slot_unless_told() {
        let spec: ModelSpec =
            serde_json::from_str(r#"{"name": "m", "pool": "p"}"#).unwrap_or_else(|_| m("?", "?"));
        assert_eq!(
            (spec.name.as_str(), spec.concurrency, spec.slots_per_pod),
            ("m", 1, 1)
        );
    }

    #[test]
    fn disruptions_name_themselves_and_all_but_a_rebalance_drain() {
        let all = [
            (Disruption::SpotInterruption, "spot_interruption", true),
            (
                Disruption::RebalanceRecommendation,
                "rebalance_recommendation",
                false,
            ),
            (Disruption::ScheduledChange, "scheduled_change", true),
            (Disruption::Stopping, "stopping", true),
            (Disruption::Terminating, "terminating", true),
        ];
        for (d, name, drains) in all {
            assert_eq!(d.as_str(), name);
            assert_eq!(d.needs_drain(), drains, "{name}");
            assert_eq!(
                serde_json::to_value(d).unwrap_or_default(),
                serde_json::Value::from(name)
            );
        }
    }

    #[test]
    fn a_node_takes_work_only_when_nothing_holds_it_back_and_is_idle_from_its_mark() {
        let t0 = chrono::DateTime::<Utc>::UNIX_EPOCH;
        let node = Node {
            instance_id: "i".into(),
            name: None,
            pool: "p".into(),
            state: NodeState::GpuReady,
            launched_at: t0,
            cordoned: false,
            draining: false,
            disruption: None,
            in_flight: 0,
            idle_since: Some(t0),
            protected: false,
        };
        assert!(node.schedulable());
        for n in [
            Node {
                cordoned: true,
                ..node.clone()
            },
            Node {
                draining: true,
                ..node.clone()
            },
            Node {
                disruption: Some(Disruption::RebalanceRecommendation),
                ..node.clone()
            },
        ] {
            assert!(!n.schedulable(), "{n:?}");
        }
        let window = chrono::Duration::seconds(60);
        assert!(
            node.idle_for(window, t0 + window),
            "idle exactly the window"
        );
        assert!(!node.idle_for(window, t0 + chrono::Duration::seconds(59)));
        let busy = Node {
            in_flight: 1,
            ..node.clone()
        };
        assert!(!busy.idle_for(window, t0 + window * 10));
        let unmarked = Node {
            idle_since: None,
            ..node
        };
        assert!(!unmarked.idle_for(window, t0 + window * 10));
    }
}
