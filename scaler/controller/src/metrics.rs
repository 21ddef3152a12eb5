//! The scaler's Prometheus metrics, one registry, served at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels: a pool.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PoolLabels {
    /// Pool name.
    pub pool: String,
}

/// Labels: what a decision did.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    /// `none`, `scale_out`, `scale_in`, `replace` (stuck or disrupted nodes) or `protect`.
    pub outcome: String,
}

/// Labels: one action and how it went.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// `set_protection`, `cordon`, `drain`, `terminate`, `set_desired_capacity`.
    pub action: String,
    /// `done`, `dry_run`, `deferred`, `skipped`, `failed`.
    pub outcome: String,
}

/// Labels: an API error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `aws` or `kubernetes`.
    pub api: String,
    /// The call or watch, e.g. `GetQueueAttributes`, `watch nodes`.
    pub call: String,
    /// `throttled`, `not_found`, `unavailable`, ...
    pub kind: String,
}

/// Every metric of the scaler.
#[derive(Debug)]
pub struct Metrics {
    /// The registry they are in.
    pub registry: Registry,
    /// Desired capacity per pool, as last set or seen.
    pub nodes_desired: Family<PoolLabels, Gauge>,
    /// Instances present per pool.
    pub nodes_actual: Family<PoolLabels, Gauge>,
    /// GPU-ready nodes per pool.
    pub nodes_ready: Family<PoolLabels, Gauge>,
    /// Decisions by what they did.
    pub decisions: Family<DecisionLabels, Counter>,
    /// Actions by kind and outcome.
    pub actions: Family<ActionLabels, Counter>,
    /// From the first change a decision reacts to, to the decision (seconds).
    pub decision_latency: Histogram,
    /// A whole pass: observe, decide, act (seconds).
    pub reconcile_duration: Histogram,
    /// AWS and Kubernetes API errors by kind.
    pub api_errors: Family<ErrorLabels, Counter>,
    /// 1 while this replica leads.
    pub leader: Gauge,
}

impl Metrics {
    /// A registry with every metric, prefixed `zerospot_`.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("zerospot");
        let nodes_desired = Family::default();
        let nodes_actual = Family::default();
        let nodes_ready = Family::default();
        let decisions = Family::default();
        let actions = Family::default();
        // 50 us .. ~1.6 s
        let decision_latency = Histogram::new(exponential_buckets(0.00005, 2.0, 16));
        let reconcile_duration = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        let api_errors = Family::default();
        let leader = Gauge::default();
        registry.register(
            "pool_nodes_desired",
            "Desired capacity of each pool's Auto Scaling group",
            nodes_desired.clone(),
        );
        registry.register(
            "pool_nodes_actual",
            "Instances present in each pool's Auto Scaling group",
            nodes_actual.clone(),
        );
        registry.register(
            "pool_nodes_gpu_ready",
            "Nodes of each pool that advertise their GPUs",
            nodes_ready.clone(),
        );
        registry.register(
            "decisions",
            "Scaling decisions by what they did",
            decisions.clone(),
        );
        registry.register(
            "actions",
            "Actions carried out, by kind and outcome",
            actions.clone(),
        );
        registry.register(
            "decision_latency_seconds",
            "From the first observed change a decision reacts to until the decision is made",
            decision_latency.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "One pass: observe, decide and act",
            reconcile_duration.clone(),
        );
        registry.register(
            "api_errors",
            "AWS and Kubernetes API errors by call and kind",
            api_errors.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            leader.clone(),
        );
        Metrics {
            registry,
            nodes_desired,
            nodes_actual,
            nodes_ready,
            decisions,
            actions,
            decision_latency,
            reconcile_duration,
            api_errors,
            leader,
        }
    }

    /// Counts an API error.
    pub fn api_error(&self, api: &str, call: &str, kind: &str) {
        self.api_errors
            .get_or_create(&ErrorLabels {
                api: api.into(),
                call: call.into(),
                kind: kind.into(),
            })
            .inc();
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
