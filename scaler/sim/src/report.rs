//! Results: per-policy figures, the goals, the text table and the JSON document.

use crate::bound::FlapBound;
use crate::cluster::Sample;
use serde::Serialize;
use std::fmt::Write as _;

/// Queueing delay percentiles, seconds (completed requests; nearest rank).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Delays {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Requests counted.
    pub count: u64,
}

impl Delays {
    /// Percentiles of `delays` (reordered in place).
    pub fn of(delays: &mut [f32]) -> Self {
        if delays.is_empty() {
            return Delays::default();
        }
        delays.sort_unstable_by(f32::total_cmp);
        let rank = |p: f64| {
            let i = ((p * delays.len() as f64).ceil() as usize).clamp(1, delays.len()) - 1;
            f64::from(delays[i])
        };
        Delays {
            p50: rank(0.50),
            p95: rank(0.95),
            p99: rank(0.99),
            max: f64::from(delays[delays.len() - 1]),
            count: delays.len() as u64,
        }
    }
}

/// The flap goal: at most this share of removals followed by a launch in the same pool within one
/// cold start.
pub const FLAP_LIMIT: f64 = 0.20;

/// One policy's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyReport {
    /// Policy name.
    pub name: String,
    /// GPU-seconds billed (per-second billing, 60-second minimum per instance).
    pub gpu_seconds_billed: f64,
    /// GPU-hours billed.
    pub gpu_hours_billed: f64,
    /// Cost, USD.
    pub cost_usd: f64,
    /// Cost over the hindsight-greedy schedule's (called the oracle before it was known not to be a
    /// bound); kept for scripts, see `cost_vs_bound`.
    pub cost_vs_oracle: f64,
    /// Cost over the lower bound on any zero-wait policy's cost (`Report::lower_bound_usd`).
    pub cost_vs_bound: f64,
    /// Requests in the workload.
    pub requests: u64,
    /// Requests served.
    pub completed: u64,
    /// Requests lost (waited past the deadline, or too many attempts).
    pub lost: u64,
    /// Queueing delay of completed requests, seconds.
    pub queue_delay_s: Delays,
    /// Queueing delay of completed requests that arrived while their model had a Ready pod and no cold
    /// request waited ahead of them.
    pub wait_warm_s: Delays,
    /// Queueing delay of the others: they waited for a cold start, or behind requests that did.
    pub wait_cold_s: Delays,
    /// Arrivals that found their model with no Ready pod and nobody already waiting for one.
    pub cold_starts: u32,
    /// Removals by the policy followed by a launch in the same pool within one cold start, over removals.
    pub flap_rate: f64,
    /// The longest cold episode, seconds: from a request finding its model with no Ready pod until the
    /// last request queued behind it started. How long until the fleet was warm again.
    pub cold_episode_max_s: f64,
    /// Nodes of a fixed cluster (always-on, fixed-best).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fixed_nodes: Option<u32>,
    /// Spot interruption notices received.
    pub interruptions: u32,
    /// Interruptions after which every request that was in flight on the node completed.
    pub interruptions_survived: u32,
    /// Requests put back on the queue (node lost under them).
    pub requests_requeued: u64,
    /// Instances launched (failed launches excluded).
    pub scale_ups: u32,
    /// Instances removed by the policy (not interruptions, nor instances up when the run ends).
    pub scale_downs: u32,
    /// Spot launches that failed for lack of capacity.
    pub launch_failures: u32,
    /// On-demand instances launched.
    pub on_demand_launches: u32,
    /// Removals by the policy while another billed node of the pool, launched less than the billing
    /// minimum (60 s) earlier, ran: swaps, which put a run outside the flap-aware bound's class.
    pub swaps: u32,
    /// When the run ended, seconds from the first arrival: the last instance stopped, or the observed
    /// window ended (or the last request was answered, if later) with instances still up, which are
    /// billed to then and no further.
    pub end_s: f64,
    /// Times the core's `decide` ran (zerospot only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decisions: Option<u64>,
    /// Time series for plots (not serialised).
    #[serde(skip)]
    pub series: Vec<Sample>,
}

/// Which goals of the policy a workload is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WorkloadClass {
    /// Dense traffic (the full trace): warm waits and cost against fixed-best.
    Dense,
    /// Sparse traffic (thinned to p <= 0.1 or stretched): cost against the bound, longest wait.
    Sparse,
    /// Anything else (the synthetic day): the goals that hold everywhere.
    Other,
}

/// One goal, its target and what zerospot reached.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Goal {
    /// What is measured, in words.
    pub goal: String,
    /// zerospot's figure.
    pub value: f64,
    /// The limit it must not pass.
    pub limit: f64,
    /// Whether `value <= limit`.
    pub met: bool,
    /// Set when a proven bound puts the goal out of reach of a whole class of policies: the least
    /// figure any of them can reach here, above `limit` (see [`Report::flap_bound_usd`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out_of_reach: Option<f64>,
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The workload, in words.
    pub workload: String,
    /// Which goals apply.
    pub workload_class: WorkloadClass,
    /// Requests in the workload.
    pub requests: u64,
    /// Observed window, seconds.
    pub horizon_s: f64,
    /// Instance type.
    pub instance_type: String,
    /// Spot price used, USD/h.
    pub spot_price_per_hour: f64,
    /// On-demand price, USD/h.
    pub on_demand_price_per_hour: f64,
    /// Worst-case cold start (boot + image pull + model load), seconds.
    pub cold_start_s: f64,
    /// Seed.
    pub seed: u64,
    /// Lower bound on the cost of any zero-wait policy, USD (see [`crate::bound`]).
    pub lower_bound_usd: f64,
    /// The same in node-seconds.
    pub lower_bound_node_seconds: f64,
    /// The longest wait the sparse goal allows, seconds (one cold start + 30 s).
    pub bounded_wait_s: f64,
    /// Lower bound on the cost of any policy in which no request waits longer than `bounded_wait_s`,
    /// USD (see [`crate::bound::bounded_wait_lower_bound`]).
    pub bounded_wait_bound_usd: f64,
    /// Lower bound on the cost of any policy that keeps the sparse goals' wait and flap limits
    /// together (no wait over `bounded_wait_s` whatever the boots take, at most 20 % flaps), launches
    /// Spot nodes only, never swaps a node for one launched less than a minute before, and suffers no
    /// Spot interruption, USD (see [`crate::bound::flap_aware_lower_bound`]); `None` (JSON `null`)
    /// above [`crate::bound::FLAP_BOUND_MAX_REQUESTS`] requests.
    pub flap_bound_usd: Option<f64>,
    /// The most each Spot interruption such a policy suffers can lower `flap_bound_usd`, USD.
    pub flap_bound_per_interruption_usd: Option<f64>,
    /// One entry per policy.
    pub policies: Vec<PolicyReport>,
    /// zerospot's goals for this workload's class, each met or not.
    pub goals: Vec<Goal>,
    /// The bound over time (for plots; not serialised).
    #[serde(skip)]
    pub bound_series: Vec<Sample>,
    /// The flap-aware bound, for any number of Spot interruptions (not serialised; see
    /// `flap_bound_usd`).
    #[serde(skip)]
    pub flap_bound: Option<FlapBound>,
}

impl Report {
    /// The figures of the policy named `name`.
    pub fn policy(&self, name: &str) -> Option<&PolicyReport> {
        self.policies.iter().find(|p| p.name == name)
    }

    /// zerospot's goals for `class` (the bar), from the figures in `self.policies`:
    /// - dense: warm p95 <= 10 s, warm p99 <= 30 s, cost <= 1.10 x fixed-best;
    /// - sparse: cost <= 1.15 x the bound, no wait longer than one cold start + 30 s;
    /// - everywhere: nothing lost, flap rate <= 20 %, cost <= 0.5 x the Cluster Autoscaler's.
    ///
    /// A goal whose reference policy did not run is left out. A missed Cluster Autoscaler goal is
    /// marked out of reach when the flap-aware bound ([`Report::flap_bound`]), with as many Spot
    /// interruptions as zerospot had, is above half that policy's cost.
    pub fn compute_goals(&mut self) {
        let Some(z) = self.policy("zerospot") else {
            self.goals.clear();
            return;
        };
        let mut goals = Vec::new();
        let mut goal = |what: &str, value: f64, limit: f64| {
            goals.push(Goal {
                goal: what.into(),
                value,
                limit,
                met: value <= limit + 1e-9,
                out_of_reach: None,
            });
        };
        match self.workload_class {
            WorkloadClass::Dense => {
                goal("warm wait p95, s", z.wait_warm_s.p95, 10.0);
                goal("warm wait p99, s", z.wait_warm_s.p99, 30.0);
                if let Some(f) = self.policy("fixed-best").filter(|f| f.cost_usd > 0.0) {
                    goal("cost x fixed-best", z.cost_usd / f.cost_usd, 1.10);
                }
            }
            WorkloadClass::Sparse => {
                goal("cost x bound", z.cost_vs_bound, 1.15);
                goal(
                    "longest wait, s (cold start + 30 s)",
                    z.queue_delay_s.max,
                    self.bounded_wait_s,
                );
            }
            WorkloadClass::Other => {}
        }
        goal("lost requests", z.lost as f64, 0.0);
        goal("flap rate", z.flap_rate, FLAP_LIMIT);
        if let Some(ca) = self
            .policy("cluster-autoscaler")
            .filter(|c| c.cost_usd > 0.0)
        {
            goal("cost x cluster-autoscaler", z.cost_usd / ca.cost_usd, 0.5);
            let price = self.spot_price_per_hour / 3600.0;
            let least = self
                .flap_bound
                .as_ref()
                .map(|b| b.node_seconds(z.interruptions) * price / ca.cost_usd);
            if let Some(ca_goal) = goals.last_mut().filter(|g| !g.met) {
                ca_goal.out_of_reach = least.filter(|least| *least > ca_goal.limit);
            }
        }
        self.goals = goals;
    }

    fn rows(&self) -> Vec<[String; 15]> {
        self.policies
            .iter()
            .map(|p| {
                [
                    p.name.clone(),
                    format!("{:.2}", p.gpu_hours_billed),
                    format!("{:.2}", p.cost_usd),
                    format!("{:.2}", p.cost_vs_bound),
                    secs(p.wait_warm_s.p50),
                    secs(p.wait_warm_s.p95),
                    secs(p.wait_warm_s.p99),
                    p.wait_cold_s.count.to_string(),
                    secs(p.wait_cold_s.p50),
                    secs(p.wait_cold_s.p99),
                    secs(p.queue_delay_s.max),
                    p.cold_starts.to_string(),
                    format!("{:.0}%", p.flap_rate * 100.0),
                    p.lost.to_string(),
                    format!("{}/{}", p.scale_ups, p.scale_downs),
                ]
            })
            .collect()
    }

    const HEADER: [&'static str; 15] = [
        "policy",
        "GPU-h",
        "cost $",
        "x bound",
        "warm p50",
        "p95",
        "p99",
        "cold n",
        "cold p50",
        "p99",
        "max wait",
        "cold starts",
        "flap",
        "lost",
        "ups/downs",
    ];

    fn goals_text(&self) -> String {
        let mut out = String::new();
        if self.goals.is_empty() {
            return out;
        }
        let class = match self.workload_class {
            WorkloadClass::Dense => "dense",
            WorkloadClass::Sparse => "sparse",
            WorkloadClass::Other => "other",
        };
        let _ = writeln!(out, "zerospot's goals ({class} workload):");
        for g in &self.goals {
            let _ = writeln!(
                out,
                "  {:<38} {:>9.2}  limit {:>7.2}  {}{}",
                g.goal,
                g.value,
                g.limit,
                if g.met { "met" } else { "MISSED" },
                g.out_of_reach.map_or(String::new(), |least| format!(
                    " (out of reach: at least {least:.2} for the flap-aware bound's class)"
                ))
            );
        }
        out
    }

    /// The table, as text.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "workload: {}", self.workload);
        let _ = writeln!(
            out,
            "cloud: {} Spot ${:.3}/h, on-demand ${:.3}/h; cold start up to {:.0} s; seed {}",
            self.instance_type,
            self.spot_price_per_hour,
            self.on_demand_price_per_hour,
            self.cold_start_s,
            self.seed
        );
        let _ = writeln!(
            out,
            "lower bound on any zero-wait policy: ${:.2} ({:.2} GPU-h)",
            self.lower_bound_usd,
            self.lower_bound_node_seconds / 3600.0
        );
        let _ = writeln!(
            out,
            "lower bound on any policy with no wait over {:.0} s: ${:.2}",
            self.bounded_wait_s, self.bounded_wait_bound_usd
        );
        if let (Some(b), Some(per)) = (self.flap_bound_usd, self.flap_bound_per_interruption_usd) {
            let _ = writeln!(
                out,
                "lower bound on any Spot-only policy that guarantees no wait over {:.0} s and flaps at most \
                 {:.0} % without swapping nodes: ${b:.2} (up to ${per:.3} less per Spot interruption)",
                self.bounded_wait_s,
                FLAP_LIMIT * 100.0
            );
        }
        let _ = writeln!(out);
        let rows = self.rows();
        let mut widths: Vec<usize> = Self::HEADER.iter().map(|h| h.len()).collect();
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.len());
            }
        }
        let line = |cells: Vec<&str>, out: &mut String| {
            for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
                if i == 0 {
                    let _ = write!(out, "{cell:<w$}");
                } else {
                    let _ = write!(out, "  {cell:>w$}");
                }
            }
            out.push('\n');
        };
        line(Self::HEADER.to_vec(), &mut out);
        for row in &rows {
            line(row.iter().map(String::as_str).collect(), &mut out);
        }
        let _ = writeln!(
            out,
            "\nx bound: cost over the lower bound; warm: arrived while the model had a Ready pod and no cold \
             request waited ahead; cold n: the other completed requests; cold starts: arrivals that found no \
             Ready pod and nobody waiting; flap: removals followed by a launch in the same pool within one \
             cold start; ups/downs: instances launched/removed by the policy.\n"
        );
        out.push_str(&self.goals_text());
        out
    }

    /// The table as Markdown (for the README), then the goals.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "| {} |", Self::HEADER.join(" | "));
        let _ = writeln!(out, "|---|{}", "---:|".repeat(Self::HEADER.len() - 1));
        for row in self.rows() {
            let _ = writeln!(out, "| {} |", row.join(" | "));
        }
        if !self.goals.is_empty() {
            out.push('\n');
            for g in &self.goals {
                let _ = writeln!(
                    out,
                    "- {}: {:.2} (limit {:.2}): {}",
                    g.goal,
                    g.value,
                    g.limit,
                    if g.met { "met" } else { "**missed**" }
                );
                if let Some(least) = g.out_of_reach {
                    out.pop();
                    let _ = writeln!(
                        out,
                        " (out of reach: at least {least:.2} for the flap-aware bound's class)"
                    );
                }
            }
        }
        out
    }
}

fn secs(s: f64) -> String {
    if s < 10.0 {
        format!("{s:.1}s")
    } else {
        format!("{s:.0}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Scenario, simulate, workload};
    use std::sync::atomic::AtomicU64;

    #[test]
    fn a_goal_is_out_of_reach_only_when_the_bound_is_above_its_limit() {
        let shaping = workload::Shaping::default();
        let w = workload::synthetic_day(200, &shaping).expect("a day");
        let mut report = simulate(&Scenario::new(w, 1), &AtomicU64::new(0)).expect("runs");
        // One node-second at $1 a second against a Cluster Autoscaler that cost $2, and zerospot at
        // $1.50 (0.75x, missed).
        report.spot_price_per_hour = 3600.0;
        for p in &mut report.policies {
            p.cost_usd = if p.name == "cluster-autoscaler" {
                2.0
            } else {
                1.5
            };
        }
        let ca_goal = |r: &Report| {
            r.goals
                .iter()
                .find(|g| g.goal == "cost x cluster-autoscaler")
                .cloned()
                .expect("the goal")
        };
        // Exactly at the limit: 0.5x is reachable.
        report.flap_bound = Some(FlapBound::at_least(1.0));
        report.compute_goals();
        let goal = ca_goal(&report);
        assert!(!goal.met);
        assert_eq!(goal.out_of_reach, None);
        report.flap_bound = Some(FlapBound::at_least(1.25));
        report.compute_goals();
        assert_eq!(ca_goal(&report).out_of_reach, Some(0.625));
        // A met goal is never marked.
        for p in &mut report.policies {
            if p.name == "zerospot" {
                p.cost_usd = 0.5;
            }
        }
        report.compute_goals();
        assert_eq!(ca_goal(&report).out_of_reach, None);
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut d: Vec<f32> = (1..=100).rev().map(|x| x as f32).collect();
        let p = Delays::of(&mut d);
        assert_eq!(
            (p.p50, p.p95, p.p99, p.max, p.count),
            (50.0, 95.0, 99.0, 100.0, 100)
        );
        assert_eq!(Delays::of(&mut []), Delays::default());
    }
}
