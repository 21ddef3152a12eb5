//! Demand: what each model is asked to do right now, and how many pods that takes.

use serde::{Deserialize, Serialize};

/// What one model is asked to do, as the controller observed it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelDemand {
    /// Model name (matches [`crate::capacity::ModelSpec::name`]).
    pub model: String,
    /// Requests waiting in the queue (SQS `ApproximateNumberOfMessagesVisible`).
    #[serde(default)]
    pub queued: u64,
    /// Requests being served (SQS `ApproximateNumberOfMessagesNotVisible`, or the dispatcher's count).
    #[serde(default)]
    pub in_flight: u64,
    /// Knative PodAutoscaler `status.desiredScale`: what the activator and autoscaler ask for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_scale: Option<u32>,
    /// Knative PodAutoscaler `status.actualScale`: pods ready now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actual_scale: Option<u32>,
    /// Model pods that exist but are not scheduled (`Pending`, `Unschedulable`).
    #[serde(default)]
    pub pending_pods: u32,
}

impl ModelDemand {
    /// Whether anything at all asks for this model.
    pub fn is_active(&self) -> bool {
        self.queued > 0
            || self.in_flight > 0
            || self.desired_scale.unwrap_or(0) > 0
            || self.pending_pods > 0
    }

    /// Pods this model needs: enough for every queued and in-flight request at `concurrency` each, and
    /// never fewer than Knative asks for or than already exist (ready plus pending).
    ///
    /// Queued requests count before any pod exists, so a request on an empty queue scales from zero
    /// before Knative has even created a pod.
    pub fn pods_needed(&self, concurrency: u32) -> u64 {
        let work = self.queued.saturating_add(self.in_flight);
        let by_work = work.div_ceil(u64::from(concurrency.max(1)));
        let by_knative = u64::from(self.desired_scale.unwrap_or(0));
        let by_pods = u64::from(self.actual_scale.unwrap_or(0)) + u64::from(self.pending_pods);
        by_work.max(by_knative).max(by_pods)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_needed_takes_the_largest_signal() {
        let d = ModelDemand {
            model: "m".into(),
            queued: 5,
            in_flight: 2,
            ..Default::default()
        };
        assert_eq!(d.pods_needed(4), 2);
        assert_eq!(d.pods_needed(0), 7, "concurrency 0 is treated as 1");
        let knative = ModelDemand {
            desired_scale: Some(3),
            ..d.clone()
        };
        assert_eq!(knative.pods_needed(4), 3);
        let pending = ModelDemand {
            actual_scale: Some(2),
            pending_pods: 2,
            ..d
        };
        assert_eq!(pending.pods_needed(4), 4);
        assert_eq!(ModelDemand::default().pods_needed(1), 0);
        assert!(!ModelDemand::default().is_active());
    }
}
