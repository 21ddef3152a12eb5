//! Knative's Pod Autoscaler (KPA), as it decides how many pods a revision runs.
//!
//! Modelled on Knative Serving's decider (`pkg/autoscaler/scaling/autoscaler.go`) with its documented
//! defaults (`config-autoscaler`): the observed concurrency (requests in the pods plus those buffered in
//! the activator) is averaged over a 60 s stable window and a 6 s panic window (10 % of it); the desired
//! pod count is `ceil(average / (containerConcurrency x target utilisation))`, target utilisation 70 %.
//! When the panic window asks for at least twice the Ready pods (panic threshold 200 %), the KPA panics:
//! it follows the panic window and does not scale down until 60 s (one stable window) after the last
//! panic. Scale-down is at most halving per decision (`max-scale-down-rate` 2, rounded down). A revision with traffic in
//! the activator and no pod is scaled from zero at once (the activator's first stat); the last pod goes
//! only after the stable window saw no traffic and the 30 s `scale-to-zero-grace-period` passed. With a
//! `scale-down-delay` (zerospot's deploy/ sets 60 s), the desired scale is the highest decided within
//! the delay.

use std::collections::VecDeque;

/// The KPA's knobs (Knative's defaults unless a deployment changes them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KnativeParams {
    /// Averaging window in stable mode, seconds (`stable-window`, default 60 s).
    pub stable_window_s: f64,
    /// Averaging window in panic mode, seconds (`panic-window-percentage` 10 % of the stable window).
    pub panic_window_s: f64,
    /// Target utilisation of `containerConcurrency` (`container-concurrency-target-percentage`, 70 %).
    pub target_utilization: f64,
    /// Panic when the panic window wants this many times the Ready pods (`panic-threshold-percentage`
    /// 200 %).
    pub panic_threshold: f64,
    /// Time the last pod is kept after the KPA decided zero, seconds (`scale-to-zero-grace-period` 30 s).
    pub scale_to_zero_grace_s: f64,
    /// How often the KPA decides, seconds (`tick-interval`, 2 s).
    pub tick_s: f64,
    /// The desired scale is the highest decided within this long, seconds
    /// (`autoscaling.knative.dev/scale-down-delay`, default 0: none). zerospot's deploy/ sets 60 s
    /// (`crate::PolicyParams::zerospot_knative_scale_down_delay_s`).
    pub scale_down_delay_s: f64,
}

impl Default for KnativeParams {
    fn default() -> Self {
        KnativeParams {
            stable_window_s: 60.0,
            panic_window_s: 6.0,
            target_utilization: 0.7,
            panic_threshold: 2.0,
            scale_to_zero_grace_s: 30.0,
            tick_s: 2.0,
            scale_down_delay_s: 0.0,
        }
    }
}

/// One revision's autoscaler state.
#[derive(Debug, Clone, Default)]
pub(crate) struct Kpa {
    /// `(time, observed concurrency)`, one per tick, within the stable window.
    samples: VecDeque<(f64, f64)>,
    /// When the panic threshold was last crossed.
    panic_at: Option<f64>,
    /// The last desired scale.
    pub desired: u32,
    /// Since when the averages have asked for zero pods.
    zero_since: Option<f64>,
    /// `(time, desired)` within the scale-down delay, for its maximum.
    delayed: VecDeque<(f64, u32)>,
}

impl Kpa {
    /// One decision at `now` with `observed` concurrency, `ready` pods and `concurrency` per pod; returns
    /// the desired pod count.
    pub fn decide(
        &mut self,
        p: &KnativeParams,
        now: f64,
        observed: f64,
        ready: u32,
        concurrency: u32,
    ) -> u32 {
        self.samples.push_back((now, observed));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now - t >= p.stable_window_s)
        {
            self.samples.pop_front();
        }
        let mean = |window: f64| {
            let (sum, n) = self
                .samples
                .iter()
                .rev()
                .take_while(|(t, _)| now - t < window)
                .fold((0.0, 0u32), |(s, n), (_, c)| (s + c, n + 1));
            if n == 0 { 0.0 } else { sum / f64::from(n) }
        };
        let per_pod = f64::from(concurrency.max(1)) * p.target_utilization;
        let stable = (mean(p.stable_window_s) / per_pod - 1e-9).ceil().max(0.0) as u32;
        let panic = (mean(p.panic_window_s) / per_pod - 1e-9).ceil().max(0.0) as u32;
        if f64::from(panic) / f64::from(ready.max(1)) >= p.panic_threshold {
            self.panic_at = Some(now);
        }
        let panicking = self.panic_at.is_some_and(|t| now - t < p.stable_window_s);
        let mut desired = if panicking {
            panic.max(self.desired)
        } else {
            self.panic_at = None;
            stable.max(ready / 2)
        };
        // Knative's decider: with a scale-down delay, the highest desired scale within it.
        if p.scale_down_delay_s > 0.0 {
            while self
                .delayed
                .front()
                .is_some_and(|(t, _)| now - t >= p.scale_down_delay_s)
            {
                self.delayed.pop_front();
            }
            self.delayed.push_back((now, desired));
            desired = self
                .delayed
                .iter()
                .map(|(_, d)| *d)
                .max()
                .unwrap_or(desired);
        }
        if desired == 0 {
            let since = *self.zero_since.get_or_insert(now);
            if ready > 0 && now - since < p.scale_to_zero_grace_s {
                desired = 1;
            }
        } else {
            self.zero_since = None;
        }
        self.desired = desired;
        desired
    }

    /// The activator's first stat for a revision at zero: scale from zero at once.
    pub fn wake(&mut self, observed: f64, concurrency: u32, p: &KnativeParams) -> u32 {
        let per_pod = f64::from(concurrency.max(1)) * p.target_utilization;
        let want = ((observed / per_pod - 1e-9).ceil().max(1.0)) as u32;
        self.desired = self.desired.max(want);
        self.zero_since = None;
        self.desired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_mode_sizes_for_the_average_at_the_target_utilisation() {
        let p = KnativeParams::default();
        let mut k = Kpa::default();
        let mut d = 0;
        for i in 0..40 {
            d = k.decide(&p, f64::from(i) * 2.0, 7.0, 10, 1);
        }
        assert_eq!(d, 10, "7 requests at 70 % of one each: 10 pods");
    }

    #[test]
    fn a_scale_down_delay_keeps_the_highest_desired_scale_within_it() {
        let p = KnativeParams {
            scale_down_delay_s: 100.0,
            ..KnativeParams::default()
        };
        let mut k = Kpa::default();
        let mut none = Kpa::default();
        // 7 in flight for a minute and a half: 10 pods at 70 %.
        let mut t = 0.0;
        while t < 90.0 {
            assert_eq!(
                k.decide(&p, t, 7.0, 10, 1),
                none.decide(&KnativeParams::default(), t, 7.0, 10, 1)
            );
            t += 2.0;
        }
        assert_eq!(k.desired, 10);
        // Then 1 in flight: without the delay the scale falls within the stable window; with it, it
        // holds 10 until 100 s after the last decision that asked for 10.
        let mut fell_without = None;
        while t < 400.0 {
            let with = k.decide(&p, t, 1.0, 10, 1);
            let without = none.decide(&KnativeParams::default(), t, 1.0, 10, 1);
            if without < 10 && fell_without.is_none() {
                fell_without = Some(t);
            }
            if t < 88.0 + 100.0 {
                assert_eq!(with, 10, "at {t}");
            }
            t += 2.0;
        }
        assert!(fell_without.is_some_and(|f| f < 150.0), "{fell_without:?}");
        assert!(k.desired < 10, "the delay is over: {}", k.desired);
    }

    #[test]
    fn panic_follows_the_short_window_and_never_scales_down_while_it_lasts() {
        let p = KnativeParams::default();
        let mut k = Kpa::default();
        for i in 0..30 {
            k.decide(&p, f64::from(i) * 2.0, 1.0, 2, 1);
        }
        // A burst: 14 in flight with 2 pods Ready; the 6 s window asks for 20 pods, 10x the Ready ones.
        let burst = k.decide(&p, 60.0, 14.0, 2, 1);
        assert!(burst >= 7, "{burst}");
        // The burst ends: within the next stable window the desired scale does not drop.
        let after = k.decide(&p, 70.0, 0.0, 2, 1);
        assert_eq!(after, burst);
        // Long after, it scales down, at most halving per decision.
        let mut t = 130.0;
        let mut last = after;
        while t < 300.0 {
            let d = k.decide(&p, t, 0.0, last, 1);
            assert!(d >= last / 2);
            last = d;
            t += 2.0;
        }
        assert_eq!(last, 0);
    }

    #[test]
    fn the_last_pod_stays_for_the_grace_period() {
        let p = KnativeParams::default();
        let mut k = Kpa::default();
        k.decide(&p, 0.0, 1.0, 1, 1);
        let mut t = 2.0;
        let mut first_zero = None;
        while t < 200.0 {
            if k.decide(&p, t, 0.0, 1, 1) == 0 {
                first_zero = Some(t);
                break;
            }
            t += 2.0;
        }
        let z = first_zero.expect("scales to zero");
        assert!((90.0..=94.0).contains(&z), "{z}: 60 s window + 30 s grace");
    }
}
