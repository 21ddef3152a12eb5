//! Demand: what each model is asked to do right now, and how many pods that takes.

use serde::{Deserialize, Serialize};

/// What one model is asked to do, as the controller observed it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
    /// Recent arrival rate, requests per second (SQS `NumberOfMessagesSent`, or the dispatcher's count),
    /// when known. With `service_time_s`, it sizes pods for the work rather than for every queued request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrival_rate_per_s: Option<f64>,
    /// Mean time one request holds a pod's lane, seconds (from completed requests), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_time_s: Option<f64>,
}

impl ModelDemand {
    /// Whether anything at all asks for this model.
    pub fn is_active(&self) -> bool {
        self.queued > 0
            || self.in_flight > 0
            || self.desired_scale.unwrap_or(0) > 0
            || self.pending_pods > 0
    }

    /// Pods this model needs, never fewer than Knative asks for or than already exist (ready plus pending).
    ///
    /// The work is counted in *lanes* (one lane serves one request at a time; a pod has `concurrency`):
    /// - Without a rate estimate, every queued or in-flight request gets a lane.
    /// - With `arrival_rate_per_s` and `service_time_s`, enough lanes to keep up with arrivals and clear
    ///   the queue within `drain_s` seconds, `ceil(service x (rate + queued / drain_s))`; never fewer
    ///   than the requests in flight plus one while anything waits, never more than queued plus in flight.
    ///   A backlog built up during a cold start then asks for the nodes that clear it in about one more
    ///   cold start, not a node per few requests that arrive after the backlog has gone.
    ///
    /// Either way, one queued request gives a pod at once: scale from zero before a pod even pends.
    pub fn pods_needed(&self, concurrency: u32, drain_s: u64) -> u64 {
        let all = self.queued.saturating_add(self.in_flight);
        let lanes = match (self.rate(), self.service()) {
            (Some(rate), Some(service)) if self.queued > 0 => {
                let drain = (drain_s.max(1)) as f64;
                let wanted = (service * (rate + self.queued as f64 / drain)).ceil();
                // f64 -> u64 saturates; `wanted` is finite and non-negative here.
                let wanted = wanted as u64;
                wanted.max(self.in_flight.saturating_add(1)).min(all)
            }
            _ => all,
        };
        let by_work = lanes.div_ceil(u64::from(concurrency.max(1)));
        let by_knative = u64::from(self.desired_scale.unwrap_or(0));
        let by_pods = u64::from(self.actual_scale.unwrap_or(0)) + u64::from(self.pending_pods);
        by_work.max(by_knative).max(by_pods)
    }

    fn rate(&self) -> Option<f64> {
        self.arrival_rate_per_s
            .filter(|r| r.is_finite() && *r >= 0.0)
    }

    fn service(&self) -> Option<f64> {
        self.service_time_s.filter(|s| s.is_finite() && *s > 0.0)
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
        assert_eq!(d.pods_needed(4, 255), 2);
        assert_eq!(d.pods_needed(0, 255), 7, "concurrency 0 is treated as 1");
        let knative = ModelDemand {
            desired_scale: Some(3),
            ..d.clone()
        };
        assert_eq!(knative.pods_needed(4, 255), 3);
        let pending = ModelDemand {
            actual_scale: Some(2),
            pending_pods: 2,
            ..d
        };
        assert_eq!(pending.pods_needed(4, 255), 4);
        assert_eq!(ModelDemand::default().pods_needed(1, 255), 0);
        assert!(!ModelDemand::default().is_active());
    }

    #[test]
    fn a_rate_estimate_sizes_a_cold_start_backlog_for_the_work_not_the_count() {
        // 28 requests queued during a cold start at 0.11 requests/s, 5 s each: one lane keeps up.
        let d = ModelDemand {
            model: "m".into(),
            queued: 28,
            arrival_rate_per_s: Some(0.11),
            service_time_s: Some(5.0),
            ..Default::default()
        };
        assert_eq!(d.pods_needed(1, 255), 2, "ceil(5 x (0.11 + 28/255)) = 2");
        assert_eq!(
            ModelDemand {
                arrival_rate_per_s: None,
                ..d.clone()
            }
            .pods_needed(1, 255),
            28
        );
        // Dense traffic: 5.5 requests/s at 3 s each needs 17 lanes, whatever the queue.
        let dense = ModelDemand {
            queued: 400,
            arrival_rate_per_s: Some(5.5),
            service_time_s: Some(3.0),
            ..d.clone()
        };
        assert_eq!(dense.pods_needed(1, 255), 22, "ceil(3 x (5.5 + 400/255))");
        // Never fewer than in flight + 1 while something waits, never more than all requests.
        let busy = ModelDemand {
            queued: 1,
            in_flight: 6,
            arrival_rate_per_s: Some(0.0),
            ..d.clone()
        };
        assert_eq!(busy.pods_needed(1, 255), 7);
        let few = ModelDemand {
            queued: 2,
            arrival_rate_per_s: Some(50.0),
            ..d.clone()
        };
        assert_eq!(few.pods_needed(1, 255), 2);
        // Nonsense estimates are ignored.
        let nan = ModelDemand {
            arrival_rate_per_s: Some(f64::NAN),
            ..d.clone()
        };
        assert_eq!(nan.pods_needed(1, 255), 28);
        let negative = ModelDemand {
            service_time_s: Some(-1.0),
            ..d
        };
        assert_eq!(negative.pods_needed(1, 255), 28);
    }
}
