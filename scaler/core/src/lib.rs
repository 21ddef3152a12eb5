//! zerospot's pure decision core.
//!
//! Everything here is plain data in, plain data out: no clock, no I/O, no async, no AWS or Kubernetes
//! clients. The companion scaler, the Lambda functions and the simulator all decide with this crate, so
//! what is tested here is what runs in production.
//!
//! - [`capacity`]: GPU pools, sharing modes (exclusive, MPS, time-slicing, MIG), models, nodes.
//! - [`demand`]: per-model demand and the pods it needs.
//! - [`estimate`]: arrival-rate and service-time estimates, kept by the dispatcher and the simulator.
//! - [`policy`]: [`policy::decide`], the scaling decision.
//! - [`event`]: EventBridge, SQS and alarm payloads parsed into typed events, and the action for each.
//! - [`request`]: the versioned request schema clients put on the queue.

pub mod capacity;
pub mod demand;
pub mod estimate;
pub mod event;
pub mod policy;
pub mod request;
pub mod testing;

pub use capacity::{
    CapacityType, ConfigError, Disruption, ModelSpec, Node, NodeState, PoolSpec, Sharing,
};
pub use demand::ModelDemand;
pub use policy::{Action, Config, Decision, PoolPlan, PoolState, Snapshot, Timing, decide};
