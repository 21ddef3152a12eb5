//! Demand: what each model is asked to do right now, and how many pods that takes.

use crate::estimate::GapHistogram;
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
    /// The highest recent arrival rate over the last ten minutes ([`crate::estimate::PEAK_WINDOW_S`]),
    /// requests per second, when known. It only acts on removals, never launches a node: a small pool
    /// consolidates down to a single spare node once the load has stayed low that long, and a large
    /// pool keeps the nodes the peak needs ([`crate::policy::SMALL_POOL_NODES`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rate_per_s: Option<f64>,
    /// Seconds since the last request arrived, when any did (see [`crate::estimate`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silent_for_s: Option<f64>,
    /// The gaps seen between arrivals, when known. With `silent_for_s` it says how likely a request is
    /// within a cold start ([`ModelDemand::return_risk`]); it only holds nodes back from removal, it
    /// never launches any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gaps: Option<GapHistogram>,
    /// Mean time one request holds a pod's lane, seconds (from completed requests), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_time_s: Option<f64>,
}

/// How many of `queued` requests a dispatcher should hand to the model's route now, given `free_lanes`:
/// the requests the model's Ready pods and the free slots of GPU-ready nodes can take (capacity already
/// paid for). Everything that fits goes at once; only the rest is held in the queue, where it is the
/// demand [`ModelDemand::pods_needed`] sizes new nodes for.
pub fn forwardable(queued: u64, free_lanes: u64) -> u64 {
    queued.min(free_lanes)
}

/// How [`ModelDemand::pods_needed`] turns rate estimates into lanes; from [`crate::policy::Timing`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sizing {
    /// A backlog worth new nodes is sized to be cleared within this long, seconds.
    pub drain_s: f64,
    /// The mean cold start, seconds: a backlog that the lanes already there clear within this long is not
    /// worth a node, which would arrive after it is gone; and headroom is kept only while at least one
    /// request is expected within this long.
    pub cold_start_s: f64,
    /// Square-root staffing: lanes for an offered load `a` are `a + headroom x sqrt(a)`.
    pub headroom: f64,
}

impl ModelDemand {
    /// Whether anything at all asks for this model.
    pub fn is_active(&self) -> bool {
        self.queued > 0
            || self.in_flight > 0
            || self.desired_scale.unwrap_or(0) > 0
            || self.pending_pods > 0
    }

    /// Lanes (one request at a time each; a pod has `concurrency`) this model's work needs.
    ///
    /// - Without both a rate and a service-time estimate: one lane per queued or in-flight request.
    /// - With them, the offered load `a = rate x service` and:
    ///   - *headroom*, even with an empty queue: `ceil(a + headroom x sqrt(a))` lanes (square-root
    ///     staffing: a new request rarely waits for a lane), while at least one request is expected
    ///     within a cold start (`rate x cold_start >= 1`; below that a kept lane mostly waits, and the
    ///     idle window decides);
    ///   - *backlog*: when the queue outlasts a cold start on the lanes the model has (its Ready pods,
    ///     beyond the offered load), enough lanes to keep up and clear it within `drain_s`,
    ///     `ceil(service x (rate + queued / drain_s))`, at most one per queued or in-flight request; a
    ///     backlog the lanes there clear before a new node could serve is not worth a node;
    ///   - never fewer than the requests in flight, and one lane as soon as anything waits with none
    ///     in flight (scale from zero).
    pub fn lanes_needed(&self, concurrency: u32, sizing: &Sizing) -> u64 {
        let all = self.queued.saturating_add(self.in_flight);
        let (Some(rate), Some(service)) = (self.rate(), self.service()) else {
            return all;
        };
        let load = rate * service;
        let headroom = if rate * sizing.cold_start_s >= 1.0 {
            // f64 -> u64 saturates; finite and non-negative here.
            (load + sizing.headroom.max(0.0) * load.sqrt()).ceil() as u64
        } else {
            0
        };
        let have = f64::from(self.actual_scale.unwrap_or(0)) * f64::from(concurrency.max(1));
        let spare = (have.max(self.in_flight as f64) - load).max(0.0);
        let backlog = if self.queued as f64 * service > spare * sizing.cold_start_s {
            let drain = sizing.drain_s.max(1.0);
            ((service * (rate + self.queued as f64 / drain)).ceil() as u64).min(all)
        } else {
            0
        };
        let floor = if self.in_flight == 0 {
            self.queued.min(1)
        } else {
            self.in_flight
        };
        headroom.max(backlog).max(floor)
    }

    /// The chance that a request for this model arrives within `within_s` seconds, given the silence
    /// so far and the gaps seen ([`GapHistogram::return_risk`]); `None` when either is unknown or too
    /// few gaps were seen.
    pub fn return_risk(&self, within_s: f64) -> Option<f64> {
        self.gaps
            .as_ref()?
            .return_risk(self.silent_for_s.filter(|s| s.is_finite())?, within_s)
    }

    /// Pods this model needs: its lanes over `concurrency`, never fewer than Knative asks for or than
    /// already exist (ready plus pending). One queued request gives a pod at once: scale from zero before
    /// a pod even pends.
    pub fn pods_needed(&self, concurrency: u32, sizing: &Sizing) -> u64 {
        let by_work = self
            .lanes_needed(concurrency, sizing)
            .div_ceil(u64::from(concurrency.max(1)));
        let by_knative = u64::from(self.desired_scale.unwrap_or(0));
        let by_pods = u64::from(self.actual_scale.unwrap_or(0)) + u64::from(self.pending_pods);
        by_work.max(by_knative).max(by_pods)
    }

    /// This demand at its busiest over the last several minutes: the rate raised to the peak rate
    /// when that is higher. `None` unless both rates are known (finite, not negative): without a peak
    /// there is no evidence that the load has stayed low.
    pub fn at_peak(&self) -> Option<ModelDemand> {
        let rate = self.rate()?;
        let peak = self
            .peak_rate_per_s
            .filter(|p| p.is_finite() && *p >= 0.0)?;
        Some(ModelDemand {
            arrival_rate_per_s: Some(rate.max(peak)),
            ..self.clone()
        })
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

    const SIZING: Sizing = Sizing {
        drain_s: 255.0,
        cold_start_s: 255.0,
        headroom: 1.5,
    };

    fn d(queued: u64, in_flight: u64) -> ModelDemand {
        ModelDemand {
            model: "m".into(),
            queued,
            in_flight,
            ..Default::default()
        }
    }

    fn with_rate(mut d: ModelDemand, rate: f64, service: f64) -> ModelDemand {
        d.arrival_rate_per_s = Some(rate);
        d.service_time_s = Some(service);
        d
    }

    #[test]
    fn pods_needed_takes_the_largest_signal() {
        let work = d(5, 2);
        assert_eq!(work.pods_needed(4, &SIZING), 2);
        assert_eq!(
            work.pods_needed(0, &SIZING),
            7,
            "concurrency 0 is treated as 1"
        );
        let knative = ModelDemand {
            desired_scale: Some(3),
            ..work.clone()
        };
        assert_eq!(knative.pods_needed(4, &SIZING), 3);
        let pending = ModelDemand {
            actual_scale: Some(2),
            pending_pods: 2,
            ..work
        };
        assert_eq!(pending.pods_needed(4, &SIZING), 4);
        let more_ready = ModelDemand {
            actual_scale: Some(3),
            pending_pods: 1,
            ..Default::default()
        };
        assert_eq!(more_ready.pods_needed(4, &SIZING), 4, "ready plus pending");
        assert_eq!(ModelDemand::default().pods_needed(1, &SIZING), 0);
    }

    #[test]
    fn anything_asking_for_the_model_makes_it_active() {
        assert!(!ModelDemand::default().is_active());
        assert!(d(1, 0).is_active());
        assert!(d(0, 1).is_active());
        let ds = |n| ModelDemand {
            desired_scale: Some(n),
            ..Default::default()
        };
        assert!(ds(1).is_active());
        assert!(!ds(0).is_active());
        let pending = ModelDemand {
            pending_pods: 1,
            ..Default::default()
        };
        assert!(pending.is_active());
        // A rate estimate or Ready pods alone ask for nothing new.
        let quiet = ModelDemand {
            actual_scale: Some(3),
            arrival_rate_per_s: Some(1.0),
            ..Default::default()
        };
        assert!(!quiet.is_active());
    }

    #[test]
    fn without_estimates_every_request_is_a_lane() {
        assert_eq!(d(28, 3).lanes_needed(1, &SIZING), 31);
        // Nonsense estimates are ignored.
        for (rate, service) in [
            (f64::NAN, 5.0),
            (0.1, -1.0),
            (-0.1, 5.0),
            (0.1, 0.0),
            (f64::INFINITY, 5.0),
        ] {
            assert_eq!(
                with_rate(d(28, 0), rate, service).lanes_needed(1, &SIZING),
                28,
                "{rate} {service}"
            );
        }
        let only_rate = ModelDemand {
            arrival_rate_per_s: Some(1.0),
            ..d(4, 0)
        };
        assert_eq!(
            only_rate.lanes_needed(1, &SIZING),
            4,
            "both estimates are needed"
        );
    }

    #[test]
    fn headroom_is_square_root_staffing_even_with_an_empty_queue() {
        // 2 requests/s at 5 s each: 10 lanes of load, 10 + 1.5 sqrt(10) = 14.7, so 15.
        assert_eq!(with_rate(d(0, 0), 2.0, 5.0).lanes_needed(1, &SIZING), 15);
        let none = Sizing {
            headroom: 0.0,
            ..SIZING
        };
        assert_eq!(with_rate(d(0, 0), 2.0, 5.0).lanes_needed(1, &none), 10);
        // Never fewer than what is in flight.
        assert_eq!(with_rate(d(0, 20), 2.0, 5.0).lanes_needed(1, &SIZING), 20);
    }

    #[test]
    fn headroom_lasts_while_a_request_is_expected_within_a_cold_start() {
        // One request every 200 s: one is expected within 255 s, keep a lane.
        assert_eq!(
            with_rate(d(0, 0), 1.0 / 200.0, 5.0).lanes_needed(1, &SIZING),
            1
        );
        // One every 300 s: not expected; the idle window decides.
        assert_eq!(
            with_rate(d(0, 0), 1.0 / 300.0, 5.0).lanes_needed(1, &SIZING),
            0
        );
        // Exactly one expected within a cold start still keeps it.
        assert_eq!(
            with_rate(d(0, 0), 1.0 / 255.0, 5.0).lanes_needed(1, &SIZING),
            1
        );
    }

    #[test]
    fn a_backlog_gets_lanes_only_when_it_outlasts_a_cold_start() {
        // 28 requests queued at 0.11/s, 5 s each, with no pod: the backlog outlasts a cold start
        // (140 s of work on no spare lane): ceil(5 x (0.11 + 28/255)) = 2.
        let cold = with_rate(d(28, 0), 0.11, 5.0);
        assert_eq!(cold.lanes_needed(1, &SIZING), 2);
        // Two Ready pods (spare 2 - 0.55 lanes) clear 140 s of work in 97 s: no new lane for it, only
        // the headroom (0.55 + 1.5 sqrt(0.55) = 1.66, so 2).
        let warm = ModelDemand {
            actual_scale: Some(2),
            ..cold.clone()
        };
        assert_eq!(warm.lanes_needed(1, &SIZING), 2);
        let bigger = ModelDemand {
            queued: 200,
            ..warm.clone()
        };
        assert_eq!(
            bigger.lanes_needed(1, &SIZING),
            5,
            "1,000 s of work outlasts a cold start on 1.45 spare lanes: ceil(5 x (0.11 + 200/255))"
        );
        // Concurrency counts a pod's lanes: one pod of 2 lanes is as good as two pods of one.
        let one_pod = ModelDemand {
            actual_scale: Some(1),
            ..cold.clone()
        };
        assert_eq!(one_pod.lanes_needed(2, &SIZING), 2);
        assert_eq!(one_pod.lanes_needed(1, &SIZING), 2);
        // In-flight requests count as lanes there when pods are not reported.
        let busy = ModelDemand {
            in_flight: 3,
            ..cold.clone()
        };
        assert_eq!(busy.lanes_needed(1, &SIZING), 3);
        // At most one lane per request.
        let flood = with_rate(d(2, 0), 50.0, 5.0);
        let no_headroom = Sizing {
            headroom: 0.0,
            cold_start_s: 0.001,
            ..SIZING
        };
        assert_eq!(flood.lanes_needed(1, &no_headroom), 2);
        // Dense traffic from zero: 5.5/s at 3 s, 400 queued: ceil(3 x (5.5 + 400/255)) = 22 for the
        // backlog, the headroom 16.5 + 1.5 sqrt(16.5) = 22.6 gives 23.
        let dense = with_rate(d(400, 0), 5.5, 3.0);
        assert_eq!(dense.lanes_needed(1, &SIZING), 23);
        assert_eq!(
            dense.lanes_needed(
                1,
                &Sizing {
                    headroom: 0.0,
                    ..SIZING
                }
            ),
            22
        );
        // A shorter drain asks for more.
        assert_eq!(
            dense.lanes_needed(
                1,
                &Sizing {
                    drain_s: 60.0,
                    headroom: 0.0,
                    ..SIZING
                }
            ),
            37
        );
    }

    #[test]
    fn the_backlog_test_weighs_work_against_spare_lanes_over_a_cold_start() {
        let with = |queued, actual: u32, rate, service| ModelDemand {
            actual_scale: Some(actual),
            ..with_rate(d(queued, 0), rate, service)
        };
        // Pods x concurrency are the lanes there: 2 pods of 3 lanes spare 6 x 255 s, more than 1,400 s
        // of work; 5 or 0.67 lanes would not.
        assert_eq!(with(140, 2, 0.0, 10.0).lanes_needed(3, &SIZING), 1);
        // Spare lanes are those beyond the offered load: 6 - 2 = 4 lanes x 255 s exceed 900 s of work
        // (6 / 2 = 3 would not); the headroom, ceil(2 + 1.5 sqrt(2)) = 5, is all it gets.
        assert_eq!(with(180, 6, 0.4, 5.0).lanes_needed(1, &SIZING), 5);
        // Work over the spare lanes times a cold start (not plus, not over): 300 s against 2 x 255 s.
        assert_eq!(with(30, 2, 0.0, 10.0).lanes_needed(1, &SIZING), 1);
        // Work exactly equal to what the spare lanes clear within a cold start is no backlog.
        let quick = Sizing {
            drain_s: 100.0,
            ..SIZING
        };
        assert_eq!(with(51, 2, 0.0, 10.0).lanes_needed(1, &quick), 1);
        assert_eq!(with(52, 2, 0.0, 10.0).lanes_needed(1, &quick), 6);
    }

    #[test]
    fn one_queued_request_gives_a_lane_from_zero() {
        let d1 = with_rate(d(1, 0), 0.0, 5.0);
        assert_eq!(d1.lanes_needed(1, &SIZING), 1);
        assert_eq!(d1.pods_needed(4, &SIZING), 1);
    }

    #[test]
    fn the_return_risk_needs_both_the_silence_and_the_gaps() {
        let mut gaps = GapHistogram::default();
        for _ in 0..20 {
            gaps.record(100.0);
        }
        let m = ModelDemand {
            gaps: Some(gaps.clone()),
            silent_for_s: Some(30.0),
            ..Default::default()
        };
        let risk = m.return_risk(255.0).unwrap();
        assert!(risk > 0.9, "{risk}");
        assert_eq!(m.return_risk(255.0), gaps.return_risk(30.0, 255.0));
        let no_silence = ModelDemand {
            silent_for_s: None,
            ..m.clone()
        };
        assert_eq!(no_silence.return_risk(255.0), None);
        let bad_silence = ModelDemand {
            silent_for_s: Some(f64::NAN),
            ..m.clone()
        };
        assert_eq!(bad_silence.return_risk(255.0), None);
        let no_gaps = ModelDemand { gaps: None, ..m };
        assert_eq!(no_gaps.return_risk(255.0), None);
    }

    #[test]
    fn the_work_at_its_peak_needs_both_rates() {
        let base = with_rate(d(0, 1), 0.5, 2.0);
        assert_eq!(base.at_peak(), None, "no peak known");
        let peak = |p: f64| ModelDemand {
            peak_rate_per_s: Some(p),
            ..base.clone()
        };
        let raised = peak(3.0).at_peak().unwrap();
        assert_eq!(raised.arrival_rate_per_s, Some(3.0));
        assert_eq!(raised.service_time_s, Some(2.0));
        assert_eq!(raised.in_flight, 1);
        assert_eq!(
            peak(0.1).at_peak().unwrap().arrival_rate_per_s,
            Some(0.5),
            "a peak below the rate is the rate"
        );
        for bad in [f64::NAN, -0.5, f64::INFINITY] {
            assert_eq!(peak(bad).at_peak(), None, "{bad}");
        }
        let no_rate = ModelDemand {
            arrival_rate_per_s: None,
            ..peak(3.0)
        };
        assert_eq!(no_rate.at_peak(), None);
        // 3 requests/s at 2 s: 6 + 1.5 sqrt(6) = 9.7, so 10 lanes.
        assert_eq!(raised.lanes_needed(1, &SIZING), 10);
    }

    #[test]
    fn forwarding_fills_paid_for_lanes_and_holds_the_rest() {
        assert_eq!(forwardable(10, 3), 3);
        assert_eq!(forwardable(2, 8), 2);
        assert_eq!(forwardable(0, 8), 0);
    }
}
