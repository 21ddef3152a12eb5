//! A provable lower bound on what any zero-wait policy pays for a workload, in one pass.
//!
//! # The argument
//! Take any policy that starts every request at its arrival (zero wait), on this cloud and serving model.
//!
//! 1. *Ready nodes.* Request `r` arrives at `a_r` and is served in at least `s_r`, its service time alone on
//!    a GPU (sharing only slows a request down: the sharing factor is at most 1). So over `[a_r, a_r +
//!    s_r)` it holds a lane of a pod of its model. A pod of model `m` has `concurrency` lanes and takes one
//!    slot; a node has `slots` slots. With `B_m(t)` such requests of model `m` at `t`, at least
//!    `N(t) = ceil(sum_m ceil(B_m(t) / concurrency) / slots)` nodes must be serving at `t`.
//! 2. *Each serving node was launched at least one minimum cold start earlier.* A fresh node serves only
//!    after its boot (at least `boot_min`), its first pod's image pull and its model load, so a node
//!    serving at `u` was launched by `u - c` with `c = boot_min + image_pull + model_load`, and is billed
//!    over all of `[u - c, u]`.
//! 3. So at any `t`, at least `M(t) = max over u in [t, t + c] of N(u)` nodes are billed: each of the
//!    `N(u)` nodes serving at `u` is billed at `t`. Total billed node-time is at least `integral of M`.
//!
//! The integral is computed level by level: `integral of M = integral of N + sum over levels k of, for
//! each maximal interval where N >= k, min(c, the gap since level k was last needed)` (the first interval
//! of a level pays all of `c`): the window `[t, t + c]` extends each interval of `{N >= k}` back by `c`,
//! merging with the previous one when the gap is shorter. One sweep over arrivals and ends, `O(n log n)`
//! for the sort.
//!
//! Everything it leaves out only makes real policies pay more: the 60 s billing minimum, interruptions,
//! failed launches, slower-than-minimum boots, the sharing slowdown, model loads on warm nodes, and the
//! on-demand price (the bound uses the Spot price). A policy that lets requests wait is not bound by it
//! (it can serve a request later, on fewer nodes); it is still the yardstick every policy's cost is
//! reported against (`x bound`).

use crate::cloud::Cloud;
use crate::cluster::Sample;
use crate::serving::Serving;
use crate::workload::Workload;

/// The bound, and how it builds up over time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LowerBound {
    /// Node-seconds any zero-wait policy is billed at least.
    pub node_seconds: f64,
    /// The same in USD at the Spot price.
    pub cost_usd: f64,
    /// Node-seconds of serving alone (`integral of N`).
    pub serving_node_seconds: f64,
    /// The most nodes serving at once.
    pub peak_nodes: u32,
    /// `(t, mean nodes serving N over the interval before t, cumulative bound cost)` at `points` evenly
    /// spaced times (for plots).
    pub series: Vec<Sample>,
}

/// Computes the bound for `workload` (see the module documentation for the argument). `points` is the
/// number of series samples to keep (0: none).
pub fn lower_bound(
    workload: &Workload,
    cloud: &Cloud,
    serving: &Serving,
    points: u32,
) -> LowerBound {
    let c = cloud.cold_start_min_s();
    let conc = u64::from(serving.pod_concurrency.max(1));
    let slots = u64::from(serving.slots_per_gpu.max(1));
    let models = workload.models.len().max(1);
    // (time, +1 start / -1 end, model); ends sort before starts at the same time: [a, a + s) is half-open.
    let mut events: Vec<(f64, i8, u16)> = Vec::with_capacity(workload.requests.len() * 2);
    for r in &workload.requests {
        let s = serving.service_s(r.prompt_tokens, r.generated_tokens, 1);
        events.push((r.at, 1, r.model));
        events.push((r.at + s, -1, r.model));
    }
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut busy = vec![0u64; models];
    let mut pods = 0u64;
    let mut nodes = 0u64;
    let mut last_t = f64::NEG_INFINITY;
    let mut area = 0.0;
    let mut extra = 0.0;
    let mut last_drop: Vec<f64> = Vec::new();
    let mut out = LowerBound::default();
    let price = cloud.price_per_s(true);
    let horizon = workload.horizon_s.max(events.last().map_or(0.0, |e| e.0));
    let dt = if points > 0 {
        (horizon / f64::from(points)).max(1.0)
    } else {
        f64::INFINITY
    };
    let mut next_sample = 0.0;
    // Serving node-seconds at the previous sample, for the mean over each sample interval.
    let mut area_then = 0.0;
    let mut i = 0;
    while i < events.len() {
        let t = events[i].0;
        while next_sample <= t && next_sample.is_finite() {
            let running = if nodes > 0 {
                nodes as f64 * (next_sample - last_t).max(0.0)
            } else {
                0.0
            };
            let so_far = area + running + extra;
            let mean = ((area + running - area_then) / dt).round().max(0.0) as u32;
            area_then = area + running;
            out.series.push(Sample {
                t: next_sample,
                nodes: mean,
                queued: 0,
                cost_usd: so_far * price,
            });
            next_sample += dt;
        }
        if nodes > 0 {
            area += nodes as f64 * (t - last_t);
        }
        last_t = t;
        // Every event at this instant, then the new level.
        while i < events.len() && events[i].0 == t {
            let (_, delta, m) = events[i];
            let m = m as usize;
            let before = busy[m].div_ceil(conc);
            busy[m] = if delta > 0 {
                busy[m] + 1
            } else {
                busy[m].saturating_sub(1)
            };
            let after = busy[m].div_ceil(conc);
            pods = pods + after - before;
            i += 1;
        }
        let now_nodes = pods.div_ceil(slots);
        if now_nodes > nodes {
            for k in nodes..now_nodes {
                let gap = last_drop.get(k as usize).map_or(f64::INFINITY, |d| t - d);
                extra += gap.min(c);
            }
        } else {
            for k in now_nodes..nodes {
                let k = k as usize;
                if last_drop.len() <= k {
                    last_drop.resize(k + 1, f64::NEG_INFINITY);
                }
                last_drop[k] = t;
            }
        }
        nodes = now_nodes;
        out.peak_nodes = out.peak_nodes.max(nodes as u32);
    }
    out.serving_node_seconds = area;
    out.node_seconds = area + extra;
    out.cost_usd = out.node_seconds * price;
    if points > 0 {
        while next_sample <= horizon {
            out.series.push(Sample {
                t: next_sample,
                nodes: 0,
                queued: 0,
                cost_usd: out.cost_usd,
            });
            next_sample += dt;
        }
    }
    out
}

/// A provable lower bound, in node-seconds, on what any policy pays for `workload` when every request
/// starts its one complete run within `max_wait_s` of its arrival (the sparse goal's limit: one cold
/// start + 30 s).
///
/// # The argument
/// Such a policy may serve later than at arrival, so [`lower_bound`] does not bind it; this bound
/// does. Let `c` be the minimum cold start, `W = max_wait_s`, and `s_r` request `r`'s service time
/// alone on a GPU.
///
/// 1. *Episodes.* Look only at whether at least one node is billed. The times when one is form disjoint
///    intervals, *episodes*. A node ready at `u` was launched by `u - c` and billed since, so an
///    episode `[x, y]` has nothing ready before `x + c`. Request `r` runs for at least `s_r` on a ready
///    node from some `t_r` in `[a_r, a_r + W]`, so the episode holding its run has `x + c <= a_r + W`
///    and `y >= max(a_r, x + c) + s_r`.
/// 2. *An episode serving the set `S` costs at least `c + max over r in S of (s_r + (a_r - a_f -
///    W)^+)`,* where `f` is the first of `S` to arrive: its length `y - x` is smallest with `x` as late
///    as `S` allows, `x + c = a_f + W`.
/// 3. *Some optimal schedule serves consecutive runs of arrivals in each episode.* Take episodes `E_j`
///    before `E_{j+1}`, `f` the first arrival served in `E_{j+1}` and `r` the last served in `E_j`,
///    with `a_f <= a_r`. `r` ran in `E_j`, so `max(a_r, rho_j) + s_r <= y_j`, with `rho_j` the ready
///    time of `E_j`, and `a_r < rho_{j+1}`. If `s_f <= s_r`, `f` fits into `E_j` where `r` ran (its
///    start is no later, and `rho_j < rho_{j+1} <= a_f + W`). Otherwise `r` fits into `E_{j+1}` at
///    `rho_{j+1} <= a_f + W <= a_r + W`, inside the room `f`'s longer run needs. Neither move changes
///    an episode, and each removes at least one inversion (a pair served out of arrival order) without
///    adding one, because `r` is the last of `E_j` and `f` the first of `E_{j+1}`. An inversion always
///    shows between two adjacent episodes when there is one at all, so this ends with none.
/// 4. So the billed time of the first node level is at least the cheapest split of the arrivals, in
///    order, into consecutive groups priced as in 2: a dynamic programme over the sorted arrivals,
///    `O(n^2)`.
/// 5. The levels above one node: every request holds one of the `slots x concurrency` lanes of a ready
///    node for `s_r`, and at least one cold start is billed, so the node-seconds are also at least
///    `c + sum of s_r / (slots x concurrency)`. The bound is the larger of 4 and 5.
/// 6. *Large workloads.* Above [`BOUNDED_WAIT_EXACT_MAX`] requests the programme runs on blocks of
///    arrivals instead: the span is cut into that many equal blocks of `d` seconds, and a block's
///    requests become one request that arrives with the block's first, may start up to `W + d` later
///    and runs as long as the block's longest. Any schedule of the real requests serves the block's
///    request too (its longest request's run starts inside the wider window), so this relaxed
///    workload costs no more, and the bound on it is a bound on the real one, a little lower.
///
/// It leaves out what only makes real policies pay more, as [`lower_bound`] does. It assumes no run
/// is cut and re-run: a Spot interruption takes a node away, it never serves a request for less.
pub fn bounded_wait_lower_bound(
    workload: &Workload,
    cloud: &Cloud,
    serving: &Serving,
    max_wait_s: f64,
) -> f64 {
    if workload.requests.is_empty() {
        return 0.0;
    }
    let c = cloud.cold_start_min_s();
    let runs = runs_by_arrival(workload, serving);
    let lanes = lanes_bound(&runs, serving, c);
    let (runs, w) = blocks(runs, max_wait_s.max(0.0), BOUNDED_WAIT_EXACT_MAX);
    let mut best = Vec::new();
    cheapest_split(&runs, w, c, None, &mut best).max(lanes)
}

/// Step 5 of [`bounded_wait_lower_bound`]: at least one cold start `c`, and every run holding one of
/// the `slots x concurrency` lanes of a ready node, node-seconds.
fn lanes_bound(runs: &[(f64, f64)], serving: &Serving, c: f64) -> f64 {
    let lanes = f64::from(serving.slots_per_gpu.max(1)) * f64::from(serving.pod_concurrency.max(1));
    c + runs.iter().map(|r| r.1).sum::<f64>() / lanes
}

/// What a split priced by a flap multiplier needs (step 3 of [`flap_aware_lower_bound`]).
#[derive(Debug, Clone, Copy)]
struct FlapPrice {
    /// How long after a group's first arrival its episode may launch, `W - C`, seconds.
    slack: f64,
    /// The flap window, one longest cold start `C`, seconds.
    window: f64,
    /// The price of a flap, node-seconds.
    lambda: f64,
}

/// The programme both waiting bounds solve: the least, over splits of `runs` (`(arrival, service)`,
/// sorted by arrival) into consecutive groups, of `per_episode + max over the group of (s_r + (a_r -
/// a_first - w)^+)` per group, plus, with `flaps`, `lambda` for each split after which the next
/// launch falls within one cold start of the group's end. `O(n^2)`; `best` is scratch space, reused
/// across calls.
fn cheapest_split(
    runs: &[(f64, f64)],
    w: f64,
    per_episode: f64,
    flaps: Option<FlapPrice>,
    best: &mut Vec<f64>,
) -> f64 {
    let n = runs.len();
    // best[j]: the cheapest first-level cost of serving the first j arrivals.
    best.clear();
    best.resize(n + 1, f64::INFINITY);
    best[0] = 0.0;
    for i in 0..n {
        let before = best[i];
        let first = runs[i].0;
        let mut longest = 0.0f64;
        let mut end = f64::NEG_INFINITY;
        for (j, &(at, s)) in runs.iter().enumerate().skip(i) {
            longest = longest.max(s + (at - first - w).max(0.0));
            let mut cost = before + per_episode + longest;
            if let Some(f) = flaps {
                end = end.max(at + s);
                if runs
                    .get(j + 1)
                    .is_some_and(|next| next.0 + f.slack - end <= f.window)
                {
                    cost += f.lambda;
                }
            }
            if cost < best[j + 1] {
                best[j + 1] = cost;
            }
        }
    }
    best[n]
}

/// A provable lower bound on what a policy pays that meets the sparse goals' wait and flap limits
/// together, for a class of policies stated exactly: it is what [`flap_aware_lower_bound`] returns.
/// [`FlapBound::node_seconds`] gives it for a number of Spot interruptions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FlapBound {
    /// `(lambda, D(lambda))` for each multiplier tried: `lambda` in node-seconds per flap, `D` the
    /// programme's minimum (step 6 of [`flap_aware_lower_bound`]).
    duals: Vec<(f64, f64)>,
    /// The lanes bound (step 5 of [`bounded_wait_lower_bound`]), which holds for any policy.
    lanes: f64,
    /// The largest multiplier the argument allows, node-seconds per flap.
    lambda_max: f64,
}

impl FlapBound {
    /// The bound, node-seconds, on policies that suffer at most `interruptions` Spot interruptions
    /// (each can spare a policy one flap): the best of `D(lambda) - lambda x interruptions` over the
    /// multipliers tried, and the lanes bound.
    pub fn node_seconds(&self, interruptions: u32) -> f64 {
        let k = f64::from(interruptions);
        self.duals
            .iter()
            .map(|(lambda, d)| d - lambda * k)
            .fold(self.lanes, f64::max)
    }

    /// A bound of `node_seconds` whatever the interruptions (for tests of what reads it).
    #[cfg(test)]
    pub(crate) fn at_least(node_seconds: f64) -> Self {
        FlapBound {
            duals: Vec::new(),
            lanes: node_seconds,
            lambda_max: 0.0,
        }
    }

    /// The most one interruption can lower [`FlapBound::node_seconds`], node-seconds.
    pub fn per_interruption(&self) -> f64 {
        self.lambda_max
    }
}

/// Up to this many requests [`flap_aware_lower_bound`] is computed (`O(n^2)` per multiplier, 31
/// multipliers: 1,900 requests take about 0.1 s); above it, it is not (dense traffic, where the
/// sparse goals do not apply).
pub const FLAP_BOUND_MAX_REQUESTS: usize = 5_000;

/// Multipliers [`flap_aware_lower_bound`] tries, evenly from 0 to the largest its argument allows.
const FLAP_BOUND_MULTIPLIERS: u32 = 30;

/// A provable lower bound on what a policy pays for `workload` when it keeps, at once, the sparse
/// goals' wait limit (`max_wait_s`) and flap limit (`max_flap_rate` of its removals followed by a
/// launch in the same pool within one cold start), for the class of policies that
///
/// - (a) *guarantee* the wait limit: whatever boot times in `[boot_min, boot_max]` the cloud picks,
///   independently of the rest, every request starts the run that completes it within `max_wait_s`
///   of its arrival (a policy cannot know a boot time before the node is up; one that meets the
///   limit only when boots are short is lucky, not designed);
/// - (b) launch Spot nodes only (zerospot turns to on-demand only after Spot capacity failures);
/// - (c) never remove a node while another node of its pool that was launched less than the billing
///   minimum (60 s) earlier runs: no *swap* of an old node for a new one. Without (c) the flap rate
///   could be diluted for free: a policy that swapped its node now and then would add removals that
///   are never flaps, and no bound could use the flap limit at all;
/// - and suffer at most `K` Spot interruptions ([`FlapBound::node_seconds`]).
///
/// `None` above [`FLAP_BOUND_MAX_REQUESTS`] requests, when `max_wait_s` is below the longest cold
/// start (no policy guarantees it), or when `max_flap_rate` is not above 0.
///
/// # The argument
/// Let `c` be the minimum cold start, `C` the longest (the flap window), `W = max_wait_s`, `m` the
/// billing minimum, `rho = max_flap_rate`, and `s_r` request `r`'s service time alone on a GPU.
/// Episodes are as in [`bounded_wait_lower_bound`]: the maximal intervals when a node is billed.
///
/// 1. *A guaranteed wait launches an episode at most `W - C` after its first request.* Let episode
///    `E` start with a launch at `L` and `f` be the first arrival it serves. Change only the boots of
///    nodes launched at or after `L` to the longest: nothing the policy sees differs before `L + c`,
///    every earlier node is gone by `L` as in the real run, and `f`, not served before `L`, is served
///    on a node launched at or after `L`, ready no earlier than `L + C`. By (a) that is by `a_f + W`,
///    so `L <= a_f + W - C`.
/// 2. *An episode serving the set `S` costs at least `c + max over r in S of (s_r + (a_r - a_f -
///    w)^+)`, with `w = W - C + c`:* nothing is ready before `L + c`, `r` ends no earlier than
///    `max(a_r, L + c) + s_r`, and `L <= a_f + W - C`. The exchange argument of
///    [`bounded_wait_lower_bound`] (step 3) keeps step 1's inequality (a request moved into the
///    earlier episode has it through `L_j < L_{j+1}`), so some assignment of requests to the same
///    episodes serves consecutive arrivals in each.
/// 3. *A short split is a flap.* Let episode `E_k` serve arrivals up to `j` and end at `e_k`, and the
///    next start at `L_{k+1}` with arrival `j + 1`. Then `e_k >= max over r in E_k of (a_r + s_r)`
///    and `L_{k+1} <= a_{j+1} + W - C`. When that leaves `L_{k+1} - e_k <= C`, the first launch after
///    `e_k` (the episode's, or a failed one before it) finds a removal of the same pool (b) within
///    one cold start, the one at `e_k` or an older one, and counts a flap; distinct splits have
///    distinct first launches. Only an episode that ended with an interruption instead of a removal
///    escapes, so flaps `F >= (short splits) - K`.
/// 4. *Removals.* Call a removal *final* when it leaves no node billed: each episode ends with at
///    most one (removals at one instant taken in order), so final removals `R_f <= episodes`. Any
///    other removal, of node `i` at `t`, leaves a node `j` billed that by (c) was launched by `t -
///    m`, so `j` is billed over all of `[t - m, t]`. Charge `i` the last `min(m, its life)` seconds
///    of its life, in which `j` overlaps it, and the rest of its billing minimum. At any instant the
///    charged nodes exclude the witness of the one removed last, so the charges fit within the
///    billed node-seconds beyond the episodes' length: billed node-seconds `>= sum of episode lengths
///    + m R_o`, with `R_o` the other removals. An episode that serves nothing does not enter the
///    programme below; it is billed at least `m`, which pays for its final removal in step 5.
/// 5. *Lagrange.* A policy within the flap limit has `F - rho (R_f + R_o) <= 0`, so for any `0 <=
///    lambda <= m / rho` its billed node-seconds are at least `sum of episode lengths + m R_o +
///    lambda (F - rho R_f - rho R_o)`, which (`m >= rho lambda`, then 3 and 4) is at least `sum of
///    lengths of the episodes that serve + lambda x (short splits) - rho lambda x (episodes that
///    serve) - lambda K`. (With an empty episode between two that serve, the first launch after the
///    earlier one's end is still no later than the later one's, so step 3 holds.)
/// 6. *The programme.* `D(lambda)`, the least over splits of the sorted arrivals into consecutive
///    groups of `sum (c + max(s_r + (a_r - a_f - w)^+) - rho lambda) + lambda x (short splits)`, with a
///    split short when `a_{j+1} + W - C - max(a_r + s_r) <= C` over the group before it, is `O(n^2)`
///    like [`bounded_wait_lower_bound`]'s. The bound is the best of `D(lambda) - lambda K` over 31
///    multipliers from 0 to `m / rho`, and the lanes bound. At `lambda = 0` it is
///    [`bounded_wait_lower_bound`] with the wait `w`.
///
/// It leaves out what only makes a policy pay more, as [`bounded_wait_lower_bound`] does; the
/// Spot price is the one all its billing is priced at, by (b).
pub fn flap_aware_lower_bound(
    workload: &Workload,
    cloud: &Cloud,
    serving: &Serving,
    max_wait_s: f64,
    max_flap_rate: f64,
) -> Option<FlapBound> {
    flap_bound_within(
        workload,
        cloud,
        serving,
        (max_wait_s, max_flap_rate),
        FLAP_BOUND_MAX_REQUESTS,
    )
}

/// [`flap_aware_lower_bound`] with the limits `(max_wait_s, max_flap_rate)`, computed up to
/// `max_requests` requests.
fn flap_bound_within(
    workload: &Workload,
    cloud: &Cloud,
    serving: &Serving,
    (max_wait_s, max_flap_rate): (f64, f64),
    max_requests: usize,
) -> Option<FlapBound> {
    let n = workload.requests.len();
    let window = cloud.cold_start_max_s();
    // NaN fails both comparisons, and is declined with them.
    let guaranteed = max_wait_s >= window;
    let limited = max_flap_rate > 0.0;
    if n > max_requests || !guaranteed || !limited {
        return None;
    }
    if n == 0 {
        return Some(FlapBound::default());
    }
    let c = cloud.cold_start_min_s();
    let slack = max_wait_s - window;
    let runs = runs_by_arrival(workload, serving);
    let lambda_max = cloud.min_billed_s.max(0.0) / max_flap_rate;
    let mut best = Vec::with_capacity(n + 1);
    let duals = (0..=FLAP_BOUND_MULTIPLIERS)
        .map(|k| {
            let lambda = lambda_max * f64::from(k) / f64::from(FLAP_BOUND_MULTIPLIERS);
            let price = FlapPrice {
                slack,
                window,
                lambda,
            };
            let per_episode = c - max_flap_rate * lambda;
            let d = cheapest_split(&runs, slack + c, per_episode, Some(price), &mut best);
            (lambda, d)
        })
        .collect();
    Some(FlapBound {
        duals,
        lanes: lanes_bound(&runs, serving, c),
        lambda_max,
    })
}

/// Each request's `(arrival, service time alone on a GPU)`, sorted by arrival.
fn runs_by_arrival(workload: &Workload, serving: &Serving) -> Vec<(f64, f64)> {
    let mut runs: Vec<(f64, f64)> = workload
        .requests
        .iter()
        .map(|r| {
            (
                r.at,
                serving.service_s(r.prompt_tokens, r.generated_tokens, 1),
            )
        })
        .collect();
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    runs
}

/// Up to this many requests [`bounded_wait_lower_bound`] solves its programme exactly, `O(n^2)` (the
/// full Azure trace, 19,366 requests, takes about 0.3 s); above it, on this many blocks of arrivals.
pub const BOUNDED_WAIT_EXACT_MAX: usize = 20_000;

/// `runs` (`(arrival, service)`, sorted by arrival) as they are when there are at most `max`, with the
/// wait `w`; otherwise one run per non-empty block of `d = span / max` seconds, arriving with the
/// block's first request and lasting as long as its longest, and the wait widened to `w + d` (step 6
/// of [`bounded_wait_lower_bound`]).
fn blocks(runs: Vec<(f64, f64)>, w: f64, max: usize) -> (Vec<(f64, f64)>, f64) {
    let (Some(first), Some(last)) = (runs.first().map(|r| r.0), runs.last().map(|r| r.0)) else {
        return (runs, w);
    };
    if runs.len() <= max.max(1) || last <= first {
        return (runs, w);
    }
    let d = (last - first) / max as f64;
    // (block, its first arrival, its longest service); each block arrives with its first request.
    let mut out: Vec<(f64, f64, f64)> = Vec::with_capacity(max + 1);
    for (at, s) in runs {
        let block = ((at - first) / d).floor();
        match out.last_mut() {
            Some(b) if b.0 == block => b.2 = b.2.max(s),
            _ => out.push((block, at, s)),
        }
    }
    (out.into_iter().map(|(_, at, s)| (at, s)).collect(), w + d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::INSTANCE_TYPES;
    use crate::serving::SharingCurve;
    use crate::workload::Request;

    fn serving(slots: u32, concurrency: u32) -> Serving {
        Serving {
            slots_per_gpu: slots,
            pod_concurrency: concurrency,
            prefill_tokens_per_s: 1000.0,
            decode_tokens_per_s: 100.0,
            curve: SharingCurve::default(),
        }
    }

    /// A request of model `model` at `at` that takes `secs` alone (all decode).
    fn req(at: f64, secs: u32, model: u16) -> Request {
        Request {
            at,
            model,
            prompt_tokens: 0,
            generated_tokens: secs * 100,
        }
    }

    fn workload(requests: Vec<Request>, models: usize) -> Workload {
        let horizon = requests.iter().map(|r| r.at).fold(0.0, f64::max);
        Workload {
            requests,
            models: (0..models).map(|i| format!("m{i}")).collect(),
            horizon_s: horizon,
            description: "hand-made".into(),
        }
    }

    fn bound(requests: Vec<Request>, models: usize, slots: u32, conc: u32) -> f64 {
        let cloud = Cloud::new(INSTANCE_TYPES[1]);
        lower_bound(
            &workload(requests, models),
            &cloud,
            &serving(slots, conc),
            0,
        )
        .node_seconds
    }

    const C: f64 = 150.0 + 40.0 + 20.0;

    #[test]
    fn one_request_pays_one_cold_start_and_its_service() {
        assert_eq!(bound(vec![req(0.0, 10, 0)], 1, 4, 1), C + 10.0);
        // Prefill counts at the prefill rate.
        let r = Request {
            at: 5.0,
            model: 0,
            prompt_tokens: 2000,
            generated_tokens: 300,
        };
        assert_eq!(bound(vec![r], 1, 4, 1), C + 2.0 + 3.0);
    }

    #[test]
    fn a_gap_shorter_than_a_cold_start_is_bridged_a_longer_one_pays_a_new_cold_start() {
        // Ends at 10, next at 110: gap 100 < C, so the node is kept through it.
        assert_eq!(
            bound(vec![req(0.0, 10, 0), req(110.0, 10, 0)], 1, 4, 1),
            C + 10.0 + 100.0 + 10.0
        );
        // Gap 1,000 > C: two separate runs.
        assert_eq!(
            bound(vec![req(0.0, 10, 0), req(1010.0, 10, 0)], 1, 4, 1),
            2.0 * (C + 10.0)
        );
    }

    #[test]
    fn overlapping_requests_fill_slots_before_a_second_node_counts() {
        // Four at once fit one node of 4 slots; a fifth needs a second node for its 10 s.
        let four: Vec<Request> = (0..4).map(|_| req(0.0, 100, 0)).collect();
        assert_eq!(bound(four.clone(), 1, 4, 1), C + 100.0);
        let mut five = four;
        five.push(req(50.0, 10, 0));
        assert_eq!(bound(five, 1, 4, 1), C + 100.0 + C + 10.0);
        // Concurrency 2: two requests share one pod (one slot), so slots 1 holds them on one node.
        assert_eq!(
            bound(vec![req(0.0, 20, 0), req(0.0, 20, 0)], 1, 1, 2),
            C + 20.0
        );
    }

    #[test]
    fn each_model_needs_its_own_pod() {
        // Two models at once on a one-slot node: two nodes, though concurrency would let one pod hold both.
        assert_eq!(
            bound(vec![req(0.0, 20, 0), req(0.0, 20, 1)], 2, 1, 2),
            2.0 * (C + 20.0)
        );
    }

    #[test]
    fn a_second_level_gap_is_bridged_independently_of_the_first() {
        // Level 1 busy 0..300; level 2 needed 0..10 and 100..110 (gap 90 < C) and 1,000..1,010 (gap 890).
        let mut rs = vec![req(0.0, 300, 0), req(1000.0, 10, 0)];
        rs.extend([req(0.0, 10, 0), req(100.0, 10, 0), req(1000.0, 10, 0)]);
        let level1 = C + 300.0 + C + 10.0;
        let level2 = C + 10.0 + 90.0 + 10.0 + C + 10.0;
        assert_eq!(bound(rs, 1, 1, 1), level1 + level2);
    }

    fn waiting_bound(requests: Vec<Request>, slots: u32, conc: u32, wait: f64) -> f64 {
        let cloud = Cloud::new(INSTANCE_TYPES[1]);
        bounded_wait_lower_bound(&workload(requests, 1), &cloud, &serving(slots, conc), wait)
    }

    #[test]
    fn with_waits_allowed_one_request_still_pays_a_cold_start_and_its_service() {
        assert_eq!(waiting_bound(vec![req(0.0, 10, 0)], 4, 1, 300.0), C + 10.0);
        assert_eq!(waiting_bound(Vec::new(), 4, 1, 300.0), 0.0);
    }

    #[test]
    fn requests_within_the_wait_share_one_episode_and_later_ones_pay_their_lateness() {
        // Wait 300: a node ready at 300 serves both (at 0 and 200); the longer one sets the length.
        assert_eq!(
            waiting_bound(vec![req(0.0, 10, 0), req(200.0, 30, 0)], 4, 1, 300.0),
            C + 30.0
        );
        // The second at 400 is 100 s past the first's ready time: one episode runs to 400 + 10.
        // Two episodes would cost 2C + 20 > C + 110.
        assert_eq!(
            waiting_bound(vec![req(0.0, 10, 0), req(400.0, 10, 0)], 4, 1, 300.0),
            C + 110.0
        );
        // Far apart: two episodes, each a cold start and a run.
        assert_eq!(
            waiting_bound(vec![req(0.0, 10, 0), req(5000.0, 10, 0)], 4, 1, 300.0),
            2.0 * (C + 10.0)
        );
    }

    #[test]
    fn a_long_request_sets_its_episode_and_a_short_later_one_rides_along() {
        // The exchange case: a long first run and a short one later are one episode of the long one.
        let rs = vec![req(0.0, 1000, 0), req(50.0, 10, 0), req(100.0, 5, 0)];
        assert_eq!(waiting_bound(rs, 4, 1, 300.0), C + 1000.0);
    }

    #[test]
    fn the_lanes_bound_binds_when_many_requests_overlap() {
        // 40 requests of 100 s at once on 4 lanes: at least 1,000 node-seconds of serving.
        let rs: Vec<Request> = (0..40).map(|_| req(0.0, 100, 0)).collect();
        assert_eq!(waiting_bound(rs.clone(), 4, 1, 300.0), C + 1000.0);
        // Lanes are slots times concurrency: 2 slots of 2 hold 4 at once too; 1 slot of 2 holds 2.
        assert_eq!(waiting_bound(rs.clone(), 2, 2, 300.0), C + 1000.0);
        assert_eq!(waiting_bound(rs, 1, 2, 300.0), C + 2000.0);
    }

    #[test]
    fn blocks_of_arrivals_relax_the_workload_and_bound_it_from_below() {
        // Under the limit nothing changes.
        let runs = vec![(0.0, 5.0), (1.0, 9.0), (7.0, 2.0)];
        assert_eq!(blocks(runs.clone(), 300.0, 3), (runs.clone(), 300.0));
        // Over it: blocks of 7 / 2 = 3.5 s; (0, 1) share the first, 7 opens the third (the span's end).
        assert_eq!(
            blocks(runs, 300.0, 2),
            (vec![(0.0, 9.0), (7.0, 2.0)], 303.5)
        );
        // A block arrives with its first request, not at its edge: 0 to 6 s in blocks of 3 s, the
        // second from 3.5 s.
        let late = vec![(0.0, 1.0), (2.5, 3.0), (3.5, 2.0), (6.0, 1.0)];
        assert_eq!(
            blocks(late, 300.0, 2),
            (vec![(0.0, 3.0), (3.5, 2.0), (6.0, 1.0)], 303.0)
        );
        // Away from time 0: blocks of (1,006 - 1,000) / 2 = 3 s from the first arrival.
        let shifted = vec![(1000.0, 1.0), (1002.5, 3.0), (1003.5, 2.0), (1006.0, 1.0)];
        assert_eq!(
            blocks(shifted, 300.0, 2),
            (vec![(1000.0, 3.0), (1003.5, 2.0), (1006.0, 1.0)], 303.0)
        );
        assert_eq!(blocks(Vec::new(), 300.0, 2), (Vec::new(), 300.0));
        // Same arrival for all: nothing to cut.
        let same = vec![(5.0, 1.0); 4];
        assert_eq!(blocks(same.clone(), 300.0, 2), (same, 300.0));
        // A large workload's blocked bound stays at or below the exact one.
        let rs: Vec<Request> = (0..300)
            .map(|i| {
                req(
                    f64::from(i) * 37.0 % 5000.0 + f64::from(i % 7),
                    5 + i % 40,
                    0,
                )
            })
            .collect();
        let cloud = Cloud::new(INSTANCE_TYPES[1]);
        let w = workload(rs, 1);
        let exact = bounded_wait_lower_bound(&w, &cloud, &serving(4, 1), 300.0);
        let sorted = runs_by_arrival(&w, &serving(4, 1));
        // Blocks of 500, 100 and 33.3 s, each cut finer than the one before: the bound rises towards
        // the exact one.
        let mut previous = 0.0;
        for max in [10, 50, 150] {
            let (b, wide) = blocks(sorted.clone(), 300.0, max);
            assert!(b.len() <= max + 1, "{}", b.len());
            let blocked: Vec<Request> = b
                .iter()
                .map(|&(at, s)| req(at, s.round() as u32, 0))
                .collect();
            let relaxed =
                bounded_wait_lower_bound(&workload(blocked, 1), &cloud, &serving(4, 1), wide);
            assert!(relaxed <= exact + 1e-9, "{max}: {relaxed} > {exact}");
            assert!(relaxed >= previous, "{max}: {relaxed} < {previous}");
            previous = relaxed;
        }
        assert!(previous > 0.85 * exact, "{previous} against {exact}");
    }

    fn flap_bound(requests: Vec<Request>, wait: f64, rate: f64) -> Option<FlapBound> {
        let cloud = Cloud::new(INSTANCE_TYPES[1]);
        flap_aware_lower_bound(&workload(requests, 1), &cloud, &serving(4, 1), wait, rate)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn a_short_split_costs_a_flap_so_the_bound_rises_above_the_waiting_one() {
        // Four 10 s requests 260 s apart. A guaranteed wait of 330 s launches at most 30 s after an
        // episode's first request, so the episode's wait allowance is w = 30 + C = 240 s.
        let rs = four(260.0);
        let b = flap_bound(rs.clone(), 330.0, 0.2).expect("computed");
        // Pairs cost C + 10 + 20 each (480 in all) but their split is short (260 + 30 - 10 = 280 <=
        // 300): a flap. One episode costs C + 10 + 540 = 760. With lambda = 60 / 0.2 = 300:
        // pairs 480 + 300 - 2 x 60 = 660, one episode 760 - 60 = 700.
        assert!(
            close(b.per_interruption(), 300.0),
            "{}",
            b.per_interruption()
        );
        assert!(close(b.node_seconds(0), 660.0), "{}", b.node_seconds(0));
        // With multiplier 0 it is the waiting bound at w: the pairs, 480.
        assert!(close(waiting_bound(rs.clone(), 4, 1, 240.0), 480.0));
        // An interruption can spare the one flap: then the pairs' 480 is all that is proven.
        assert!(close(b.node_seconds(1), 480.0), "{}", b.node_seconds(1));
        assert!(b.node_seconds(0) > waiting_bound(rs, 4, 1, 330.0));
    }

    /// Four 10 s requests `apart` seconds apart.
    fn four(apart: f64) -> Vec<Request> {
        (0..4).map(|i| req(apart * f64::from(i), 10, 0)).collect()
    }

    #[test]
    fn a_split_is_short_when_the_next_launch_can_come_within_one_cold_start_of_the_end() {
        // A split is short when the next arrival + 30 s comes within 300 s of the end of the last
        // run before it: 275 s apart, 275 + 30 - 10 = 295 <= 300. Pairs cost C + 10 + 35 = 255 each;
        // at lambda = 300, 510 + 300 - 120 = 690 against one episode's C + 10 + 585 - 60 = 745.
        let b = flap_bound(four(275.0), 330.0, 0.2).expect("computed");
        assert!(close(b.node_seconds(0), 690.0), "{}", b.node_seconds(0));
        // 290 s apart, 290 + 30 - 10 = 310 > 300: no flap; pairs of C + 10 + 50 split freely, and the
        // bound is the waiting bound at w = 240 s.
        let b = flap_bound(four(290.0), 330.0, 0.2).expect("computed");
        assert!(close(b.node_seconds(0), 540.0), "{}", b.node_seconds(0));
        assert!(close(waiting_bound(four(290.0), 4, 1, 240.0), 540.0));
    }

    #[test]
    fn the_lanes_bound_holds_with_flaps_too() {
        // 40 requests of 100 s at once, 4 slots of concurrency 2: 8 lanes, C + 4,000 / 8.
        let rs: Vec<Request> = (0..40).map(|_| req(0.0, 100, 0)).collect();
        let cloud = Cloud::new(INSTANCE_TYPES[1]);
        let b = flap_aware_lower_bound(&workload(rs, 1), &cloud, &serving(4, 2), 330.0, 0.2)
            .expect("computed");
        assert!(close(b.node_seconds(0), C + 500.0), "{}", b.node_seconds(0));
    }

    #[test]
    fn far_apart_requests_split_freely() {
        // 4,990 s between them: never a flap, so two episodes of C + 10.
        let b =
            flap_bound(vec![req(0.0, 10, 0), req(5000.0, 10, 0)], 330.0, 0.2).expect("computed");
        assert!(
            close(b.node_seconds(0), 2.0 * (C + 10.0)),
            "{}",
            b.node_seconds(0)
        );
        assert!(close(b.node_seconds(3), 2.0 * (C + 10.0)));
        // Nothing to serve: nothing to pay.
        assert_eq!(
            flap_bound(Vec::new(), 330.0, 0.2).map(|b| b.node_seconds(0)),
            Some(0.0)
        );
    }

    #[test]
    fn the_flap_bound_is_declined_where_it_does_not_apply() {
        let one = vec![req(0.0, 10, 0)];
        // A wait below the longest cold start (300 s) cannot be guaranteed by any policy.
        assert_eq!(flap_bound(one.clone(), 299.0, 0.2), None);
        assert_eq!(flap_bound(one.clone(), f64::NAN, 0.2), None);
        assert!(flap_bound(one.clone(), 300.0, 0.2).is_some());
        // No flap allowed at all has no finite multiplier.
        assert_eq!(flap_bound(one.clone(), 330.0, 0.0), None);
        assert_eq!(flap_bound(one, 330.0, f64::NAN), None);
        // Above the size limit; at it, computed.
        let many: Vec<Request> = (0..=FLAP_BOUND_MAX_REQUESTS as u32)
            .map(|i| req(f64::from(i), 1, 0))
            .collect();
        assert_eq!(flap_bound(many, 330.0, 0.2), None);
        let cloud = Cloud::new(INSTANCE_TYPES[1]);
        let limits = (330.0, 0.2);
        let w = workload(four(260.0), 1);
        assert!(flap_bound_within(&w, &cloud, &serving(4, 1), limits, 4).is_some());
        assert_eq!(
            flap_bound_within(&w, &cloud, &serving(4, 1), limits, 3),
            None
        );
    }

    #[test]
    fn the_flap_bound_stays_above_the_waiting_bound_and_falls_with_interruptions() {
        let rs: Vec<Request> = (0..200)
            .map(|i| {
                req(
                    f64::from(i) * 173.0 % 30_000.0 + f64::from(i % 11),
                    5 + i % 30,
                    0,
                )
            })
            .collect();
        let b = flap_bound(rs.clone(), 330.0, 0.2).expect("computed");
        let waiting = waiting_bound(rs.clone(), 4, 1, 240.0);
        assert!(b.node_seconds(0) >= waiting - 1e-9);
        assert!(waiting >= waiting_bound(rs, 4, 1, 330.0) - 1e-9);
        let mut previous = b.node_seconds(0);
        for k in 1..6 {
            let now = b.node_seconds(k);
            assert!(now <= previous + 1e-9, "{k}: {now} > {previous}");
            assert!(now >= b.node_seconds(0) - f64::from(k) * b.per_interruption() - 1e-9);
            previous = now;
        }
        // A looser flap limit allows a smaller multiplier, so proves no more.
        let loose = flap_bound(four(260.0), 330.0, 1.0).expect("computed");
        assert!(close(loose.per_interruption(), 60.0));
        assert!(
            close(loose.node_seconds(0), 480.0),
            "{}",
            loose.node_seconds(0)
        );
    }

    #[test]
    fn with_no_wait_allowed_it_never_exceeds_the_zero_wait_bound() {
        // A wait of 0 is the zero-wait setting at one level, so the two bounds agree on one node's
        // worth of work; with a wait allowed the bound can only fall.
        let rs = vec![
            req(0.0, 10, 0),
            req(110.0, 10, 0),
            req(1000.0, 40, 0),
            req(1100.0, 5, 0),
        ];
        let zero = bound(rs.clone(), 1, 4, 1);
        assert_eq!(waiting_bound(rs.clone(), 4, 1, 0.0), zero);
        assert!(waiting_bound(rs, 4, 1, 300.0) < zero);
    }

    #[test]
    fn the_series_ends_at_the_bound() {
        let cloud = Cloud::new(INSTANCE_TYPES[1]);
        let w = workload(vec![req(0.0, 100, 0), req(500.0, 10, 0)], 1);
        let b = lower_bound(&w, &cloud, &serving(4, 1), 10);
        // Samples every 50 s: one node serves through the first two intervals, none in the third.
        let means: Vec<u32> = b.series.iter().take(4).map(|s| s.nodes).collect();
        assert_eq!(means, [0, 1, 1, 0]);
        assert!(!b.series.is_empty());
        let last = b.series.last().expect("points");
        assert!((last.cost_usd - b.cost_usd).abs() < 1e-12);
        assert_eq!(b.peak_nodes, 1);
        assert!(b.series.iter().any(|s| s.nodes == 1));
    }
}
