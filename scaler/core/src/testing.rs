//! Builders that read like the scenario, for tests, benchmarks and the simulator's fixtures.
//!
//! ```
//! use zerospot_core::testing::*;
//! let config = config(vec![spot_pool("gpu").mps(2).max(4)], vec![model("llama", "gpu")]);
//! let snapshot = snapshot().desired("gpu", 1).node(ready("i-1", "gpu").idle_since(at(0))).queued("llama", 3);
//! assert!(config.validate().is_ok());
//! assert_eq!(snapshot.nodes.len(), 1);
//! ```

use crate::Disruption;
use crate::capacity::{CapacityType, MigProfile, ModelSpec, Node, NodeState, PoolSpec, Sharing};
use crate::demand::ModelDemand;
use crate::policy::{Config, Snapshot, Timing};
use chrono::{DateTime, Duration, TimeZone, Utc};

/// A fixed epoch for tests: 2026-11-24T00:00:00Z plus `secs`.
pub fn at(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 0, 0, 0)
        .single()
        .unwrap_or_default()
        + Duration::seconds(secs)
}

/// A Spot `g5.xlarge` pool (1 GPU, exclusive, min 0, max 10) named `name`, group `<name>-asg`.
pub fn spot_pool(name: &str) -> PoolSpec {
    PoolSpec {
        name: name.into(),
        asg_name: format!("{name}-asg"),
        instance_type: "g5.xlarge".into(),
        gpus: 1,
        capacity_type: CapacityType::Spot,
        sharing: Sharing::Exclusive,
        min: 0,
        max: 10,
        fallback: None,
    }
}

/// An on-demand pool, otherwise like [`spot_pool`].
pub fn on_demand_pool(name: &str) -> PoolSpec {
    PoolSpec {
        capacity_type: CapacityType::OnDemand,
        ..spot_pool(name)
    }
}

/// Chainable changes to a [`PoolSpec`].
pub trait PoolExt: Sized {
    /// MPS with `replicas` per GPU.
    fn mps(self, replicas: u32) -> Self;
    /// MIG with `(profile, slices per GPU)`.
    fn mig(self, profiles: &[(&str, u32)]) -> Self;
    /// GPUs per node.
    fn gpus(self, gpus: u32) -> Self;
    /// Minimum size.
    fn min(self, min: u32) -> Self;
    /// Maximum size.
    fn max(self, max: u32) -> Self;
    /// Fallback pool.
    fn fallback(self, pool: &str) -> Self;
}

impl PoolExt for PoolSpec {
    fn mps(mut self, replicas: u32) -> Self {
        self.sharing = Sharing::Mps { replicas };
        self
    }
    fn mig(mut self, profiles: &[(&str, u32)]) -> Self {
        self.sharing = Sharing::Mig {
            profiles: profiles
                .iter()
                .map(|(name, per_gpu)| MigProfile {
                    name: (*name).into(),
                    per_gpu: *per_gpu,
                })
                .collect(),
        };
        self
    }
    fn gpus(mut self, gpus: u32) -> Self {
        self.gpus = gpus;
        self
    }
    fn min(mut self, min: u32) -> Self {
        self.min = min;
        self
    }
    fn max(mut self, max: u32) -> Self {
        self.max = max;
        self
    }
    fn fallback(mut self, pool: &str) -> Self {
        self.fallback = Some(pool.into());
        self
    }
}

/// A model in `pool`, one request at a time, one slot per pod.
pub fn model(name: &str, pool: &str) -> ModelSpec {
    ModelSpec {
        name: name.into(),
        pool: pool.into(),
        concurrency: 1,
        slots_per_pod: 1,
        mig_profile: None,
    }
}

/// A configuration with default timing.
pub fn config(pools: Vec<PoolSpec>, models: Vec<ModelSpec>) -> Config {
    Config {
        pools,
        models,
        timing: Timing::default(),
    }
}

/// A GPU-ready node launched at `at(0)`, busy (not idle), unprotected.
pub fn ready(instance_id: &str, pool: &str) -> Node {
    Node {
        instance_id: instance_id.into(),
        name: Some(format!("node-{instance_id}")),
        pool: pool.into(),
        state: NodeState::GpuReady,
        launched_at: at(0),
        cordoned: false,
        draining: false,
        disruption: None,
        in_flight: 0,
        idle_since: None,
        protected: false,
    }
}

/// A node still launching since `since`.
pub fn launching(instance_id: &str, pool: &str, since: DateTime<Utc>) -> Node {
    Node {
        state: NodeState::Launching,
        launched_at: since,
        name: None,
        ..ready(instance_id, pool)
    }
}

/// Chainable changes to a [`Node`].
pub trait NodeExt: Sized {
    /// Idle since `t`.
    fn idle_since(self, t: DateTime<Utc>) -> Self;
    /// `n` requests in flight.
    fn in_flight(self, n: u32) -> Self;
    /// Disrupted.
    fn disrupted(self, d: Disruption) -> Self;
    /// Scale-in protected.
    fn protected(self) -> Self;
}

impl NodeExt for Node {
    fn idle_since(mut self, t: DateTime<Utc>) -> Self {
        self.in_flight = 0;
        self.idle_since = Some(t);
        self
    }
    fn in_flight(mut self, n: u32) -> Self {
        self.in_flight = n;
        self.idle_since = None;
        self
    }
    fn disrupted(mut self, d: Disruption) -> Self {
        self.disruption = Some(d);
        self
    }
    fn protected(mut self) -> Self {
        self.protected = true;
        self
    }
}

/// An empty snapshot.
pub fn snapshot() -> Snapshot {
    Snapshot::default()
}

impl Snapshot {
    /// Sets a pool's desired capacity.
    pub fn desired(mut self, pool: &str, desired: u32) -> Self {
        self.pool_state_mut(pool).desired = desired;
        self
    }
    /// Adds a node.
    pub fn node(mut self, node: Node) -> Self {
        self.nodes.push(node);
        self
    }
    /// Adds `n` queued requests for `model`.
    pub fn queued(mut self, model: &str, n: u64) -> Self {
        self.demand_mut(model).queued += n;
        self
    }
    /// Adds `n` in-flight requests for `model`.
    pub fn in_flight(mut self, model: &str, n: u64) -> Self {
        self.demand_mut(model).in_flight += n;
        self
    }
    /// Sets the PodAutoscaler's desiredScale for `model`.
    pub fn desired_scale(mut self, model: &str, n: u32) -> Self {
        self.demand_mut(model).desired_scale = Some(n);
        self
    }
    /// Sets `model`'s arrival rate (requests/s) and mean service time (s).
    pub fn rate(mut self, model: &str, per_s: f64, service_s: f64) -> Self {
        let d = self.demand_mut(model);
        d.arrival_rate_per_s = Some(per_s);
        d.service_time_s = Some(service_s);
        self
    }
    /// Sets `model`'s peak arrival rate of the last minutes (requests/s).
    pub fn peak(mut self, model: &str, per_s: f64) -> Self {
        self.demand_mut(model).peak_rate_per_s = Some(per_s);
        self
    }
    /// Sets `model`'s silence since its last arrival (s) and the gaps between arrivals seen, `(gap s,
    /// how many)`.
    pub fn gaps(mut self, model: &str, silent_s: f64, gaps: &[(f64, u32)]) -> Self {
        let mut h = crate::estimate::GapHistogram::default();
        for &(gap, n) in gaps {
            for _ in 0..n {
                h.record(gap);
            }
        }
        let d = self.demand_mut(model);
        d.silent_for_s = Some(silent_s);
        d.gaps = Some(h);
        self
    }
    /// Records a capacity failure in `pool` at `t`.
    pub fn capacity_failure(mut self, pool: &str, t: DateTime<Utc>) -> Self {
        self.pool_state_mut(pool).capacity_failures.push(t);
        self
    }

    fn demand_mut(&mut self, model: &str) -> &mut ModelDemand {
        let pos = match self.demand.iter().position(|d| d.model == model) {
            Some(pos) => pos,
            None => {
                self.demand.push(ModelDemand {
                    model: model.into(),
                    ..ModelDemand::default()
                });
                self.demand.len() - 1
            }
        };
        &mut self.demand[pos]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixtures_are_what_their_names_say() {
        assert_eq!(on_demand_pool("od").capacity_type, CapacityType::OnDemand);
        assert_eq!(spot_pool("s").capacity_type, CapacityType::Spot);
        let l = launching("i-1", "gpu", at(5));
        assert_eq!(l.state, NodeState::Launching);
        assert_eq!(l.name, None, "not registered yet");
        assert_eq!(l.launched_at, at(5));
        assert_eq!(ready("i-1", "gpu").name.as_deref(), Some("node-i-1"));
    }
}
