//! Results: per-policy figures, the text table and the JSON document.

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
        }
    }
}

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
    /// Cost over the oracle's cost.
    pub cost_vs_oracle: f64,
    /// Requests in the workload.
    pub requests: u64,
    /// Requests served.
    pub completed: u64,
    /// Requests lost (waited past the deadline, or too many attempts).
    pub lost: u64,
    /// Queueing delay of completed requests, seconds.
    pub queue_delay_s: Delays,
    /// Spot interruption notices received.
    pub interruptions: u32,
    /// Interruptions after which every request that was in flight on the node completed.
    pub interruptions_survived: u32,
    /// Requests put back on the queue (node lost under them).
    pub requests_requeued: u64,
    /// Instances launched (failed launches excluded).
    pub scale_ups: u32,
    /// Instances removed by the policy (interruptions excluded).
    pub scale_downs: u32,
    /// Spot launches that failed for lack of capacity.
    pub launch_failures: u32,
    /// When the last instance stopped, seconds from the first arrival.
    pub end_s: f64,
    /// Times the core's `decide` ran (zerospot only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decisions: Option<u64>,
    /// Time series for plots (not serialised).
    #[serde(skip)]
    pub series: Vec<Sample>,
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The workload, in words.
    pub workload: String,
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
    /// One entry per policy.
    pub policies: Vec<PolicyReport>,
}

impl Report {
    /// The figures of the policy named `name`.
    pub fn policy(&self, name: &str) -> Option<&PolicyReport> {
        self.policies.iter().find(|p| p.name == name)
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
        let _ = writeln!(out);
        let header = [
            "policy",
            "GPU-h",
            "cost $",
            "x oracle",
            "wait p50",
            "p95",
            "p99",
            "max",
            "done",
            "lost",
            "interrupts",
            "ups",
            "downs",
        ];
        let rows: Vec<[String; 13]> = self
            .policies
            .iter()
            .map(|p| {
                [
                    p.name.clone(),
                    format!("{:.2}", p.gpu_hours_billed),
                    format!("{:.2}", p.cost_usd),
                    format!("{:.2}", p.cost_vs_oracle),
                    secs(p.queue_delay_s.p50),
                    secs(p.queue_delay_s.p95),
                    secs(p.queue_delay_s.p99),
                    secs(p.queue_delay_s.max),
                    p.completed.to_string(),
                    p.lost.to_string(),
                    format!("{}/{}", p.interruptions_survived, p.interruptions),
                    p.scale_ups.to_string(),
                    p.scale_downs.to_string(),
                ]
            })
            .collect();
        let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
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
        line(header.to_vec(), &mut out);
        for row in &rows {
            line(row.iter().map(String::as_str).collect(), &mut out);
        }
        let _ = writeln!(
            out,
            "\nwait: queueing delay of completed requests; interrupts: survived/received (survived: every request \
             in flight on the node completed); ups/downs: instances launched/removed by the policy."
        );
        out
    }

    /// The table as Markdown (for the README).
    pub fn markdown(&self) -> String {
        let mut out = String::from(
            "| policy | GPU-h | cost $ | x oracle | wait p50 | p95 | p99 | max | done | lost | interrupts survived | ups | downs |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        );
        for p in &self.policies {
            let _ = writeln!(
                out,
                "| {} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} | {}/{} | {} | {} |",
                p.name,
                p.gpu_hours_billed,
                p.cost_usd,
                p.cost_vs_oracle,
                secs(p.queue_delay_s.p50),
                secs(p.queue_delay_s.p95),
                secs(p.queue_delay_s.p99),
                secs(p.queue_delay_s.max),
                p.completed,
                p.lost,
                p.interruptions_survived,
                p.interruptions,
                p.scale_ups,
                p.scale_downs
            );
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

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut d: Vec<f32> = (1..=100).rev().map(|x| x as f32).collect();
        let p = Delays::of(&mut d);
        assert_eq!((p.p50, p.p95, p.p99, p.max), (50.0, 95.0, 99.0, 100.0));
        assert_eq!(Delays::of(&mut []), Delays::default());
    }
}
