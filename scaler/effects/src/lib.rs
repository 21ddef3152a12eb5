//! zerospot's effects layer: one place where zerospot touches AWS and Kubernetes.
//!
//! *Observe* ([`observe`]): Auto Scaling groups, Nodes, Pods, Knative PodAutoscalers and queue depths
//! become the core's `Snapshot` (pure). *Act* ([`act`]): a core `Decision` becomes calls, in order,
//! idempotently, each leaving a Kubernetes Event. The companion scaler and the Lambda functions both use
//! this crate, so a cordon, a drain or a capacity change is written once.
//!
//! - [`config`]: the operator's YAML configuration and the label/annotation names.
//! - [`aws`]: the [`aws::AutoScaling`] and [`aws::Queues`] traits (shaped like our calls), their SDK
//!   implementations, and the classification of AWS errors.
//! - [`cluster`]: the [`cluster::Cluster`] trait (Nodes, evictions, Events) and its kube-rs implementation.
//! - [`observe`]: world -> `Snapshot`.
//! - [`act`]: `Decision` -> calls.
//! - [`disruption`]: an AWS event about an instance -> marks on its Node, then one observe/decide/act pass.
//! - `fake` (feature `test-util`): recording fakes of the traits, with injectable failures.

pub mod act;
pub mod aws;
pub mod cluster;
pub mod config;
pub mod disruption;
#[cfg(any(test, feature = "test-util"))]
pub mod fake;
pub mod observe;

pub use act::{Actuator, Outcome, Report};
pub use aws::{AutoScaling, AwsError, AwsErrorKind, Queues, SdkAutoScaling, SdkQueues};
pub use cluster::{Cluster, KubeCluster, KubeError};
pub use config::{ScalerConfig, names};
pub use observe::{
    Autoscaler, Group, GroupInstance, Memory, Observation, Published, QueueDepth, World, observe,
};
