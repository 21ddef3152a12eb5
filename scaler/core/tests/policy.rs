//! The scaling policy, scenario by scenario, then its invariants as properties.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use zerospot_core::testing::*;
use zerospot_core::{Action, Config, Decision, Disruption, Snapshot, decide};

fn terminated(d: &Decision) -> Vec<&str> {
    d.actions
        .iter()
        .filter_map(|a| match a {
            Action::Terminate { instance_id, .. } => Some(instance_id.as_str()),
            _ => None,
        })
        .collect()
}

fn kinds(d: &Decision) -> Vec<String> {
    d.actions
        .iter()
        .map(|a| match a {
            Action::SetProtection {
                instance_id,
                protected,
                ..
            } => format!("protect {instance_id} {protected}"),
            Action::Cordon { instance_id, .. } => format!("cordon {instance_id}"),
            Action::Drain { instance_id, .. } => format!("drain {instance_id}"),
            Action::Terminate {
                instance_id,
                decrement_desired,
                ..
            } => {
                format!("terminate {instance_id} decrement={decrement_desired}")
            }
            Action::SetDesiredCapacity { pool, to, .. } => format!("desired {pool} {to}"),
        })
        .collect()
}

fn mps_config() -> Config {
    config(
        vec![spot_pool("gpu").mps(2).max(4)],
        vec![model("llama", "gpu"), model("qwen", "gpu")],
    )
}

#[test]
fn scales_from_zero_when_one_request_is_queued() {
    let d = decide(&snapshot().queued("llama", 1), &mps_config(), at(10));
    assert_eq!(d.desired("gpu"), Some(1));
    assert_eq!(kinds(&d), vec!["desired gpu 1"]);
    assert!(
        d.pools[0].reason.contains("llama: 1 pods"),
        "{}",
        d.pools[0].reason
    );
}

#[test]
fn scales_from_zero_on_knative_desired_scale_alone() {
    let d = decide(&snapshot().desired_scale("qwen", 1), &mps_config(), at(10));
    assert_eq!(d.desired("gpu"), Some(1));
}

#[test]
fn two_models_share_one_gpu_through_mps() {
    let s = snapshot().queued("llama", 1).queued("qwen", 1);
    assert_eq!(decide(&s, &mps_config(), at(0)).desired("gpu"), Some(1));
    let s = s.queued("qwen", 1);
    assert_eq!(
        decide(&s, &mps_config(), at(0)).desired("gpu"),
        Some(2),
        "3 slots / 2 per node"
    );
}

#[test]
fn counts_mig_slices_per_profile() {
    let mut small = model("small", "mig");
    small.mig_profile = Some("1g.10gb".into());
    let mut big = model("big", "mig");
    big.mig_profile = Some("3g.40gb".into());
    let c = config(
        vec![
            spot_pool("mig")
                .mig(&[("1g.10gb", 4), ("3g.40gb", 1)])
                .max(10),
        ],
        vec![small, big],
    );
    let s = snapshot().queued("small", 5).queued("big", 1);
    assert_eq!(
        decide(&s, &c, at(0)).desired("mig"),
        Some(2),
        "5 small slices at 4 per node"
    );
    let s = s.queued("big", 2);
    assert_eq!(
        decide(&s, &c, at(0)).desired("mig"),
        Some(3),
        "3 big slices at 1 per node"
    );
}

#[test]
fn concurrency_packs_requests_into_pods() {
    let mut m = model("llama", "gpu");
    m.concurrency = 4;
    let c = config(vec![spot_pool("gpu").max(10)], vec![m]);
    assert_eq!(
        decide(&snapshot().queued("llama", 9), &c, at(0)).desired("gpu"),
        Some(3)
    );
}

#[test]
fn never_goes_above_max_or_below_min() {
    let c = config(
        vec![spot_pool("gpu").min(1).max(2)],
        vec![model("llama", "gpu")],
    );
    assert_eq!(
        decide(&snapshot().queued("llama", 50), &c, at(0)).desired("gpu"),
        Some(2)
    );
    assert_eq!(decide(&snapshot(), &c, at(0)).desired("gpu"), Some(1));
}

#[test]
fn keeps_an_idle_node_until_the_idle_window_has_passed() {
    let s = snapshot()
        .desired("gpu", 1)
        .node(ready("i-1", "gpu").idle_since(at(0)).protected());
    let window = mps_config().timing.idle_window_s as i64;
    let d = decide(&s, &mps_config(), at(window - 1));
    assert!(d.actions.is_empty(), "{:?}", kinds(&d));
    let d = decide(&s, &mps_config(), at(window));
    assert_eq!(
        kinds(&d),
        vec![
            "protect i-1 false",
            "cordon i-1",
            "drain i-1",
            "terminate i-1 decrement=true"
        ]
    );
    assert_eq!(d.desired("gpu"), Some(0));
}

#[test]
fn scales_in_only_idle_nodes_and_protects_busy_ones() {
    let s = snapshot()
        .desired("gpu", 3)
        .node(ready("i-busy", "gpu").in_flight(1))
        .node(ready("i-idle", "gpu").idle_since(at(0)))
        .node(ready("i-recent", "gpu").idle_since(at(500)))
        .in_flight("llama", 1);
    let d = decide(&s, &mps_config(), at(600));
    assert_eq!(terminated(&d), vec!["i-idle"]);
    assert_eq!(
        d.desired("gpu"),
        Some(2),
        "the recently idle node stays until its window passes"
    );
    let k = kinds(&d);
    assert!(k.contains(&"protect i-busy true".to_string()), "{k:?}");
    assert!(k.contains(&"protect i-recent true".to_string()), "{k:?}");
}

#[test]
fn keeps_a_ready_idle_node_while_a_launching_one_is_on_its_way() {
    let s = snapshot()
        .desired("gpu", 2)
        .node(ready("i-ready", "gpu").idle_since(at(0)))
        .node(launching("i-new", "gpu", at(900)))
        .desired_scale("llama", 1);
    let d = decide(&s, &mps_config(), at(1000));
    assert!(terminated(&d).is_empty(), "{:?}", kinds(&d));
    assert_eq!(d.desired("gpu"), Some(2));
}

#[test]
fn removes_the_longest_idle_node_first() {
    let s = snapshot()
        .desired("gpu", 2)
        .node(ready("i-a", "gpu").idle_since(at(100)))
        .node(ready("i-b", "gpu").idle_since(at(50)))
        .queued("llama", 1);
    let d = decide(&s, &mps_config(), at(1000));
    assert_eq!(terminated(&d), vec!["i-b"]);
}

#[test]
fn an_interrupted_node_is_drained_and_replaced_at_once() {
    let s = snapshot()
        .desired("gpu", 1)
        .node(
            ready("i-1", "gpu")
                .in_flight(1)
                .disrupted(Disruption::SpotInterruption)
                .protected(),
        )
        .in_flight("llama", 1);
    let d = decide(&s, &mps_config(), at(100));
    assert_eq!(
        kinds(&d),
        vec![
            "protect i-1 false",
            "cordon i-1",
            "drain i-1",
            "desired gpu 2"
        ]
    );
    assert!(
        terminated(&d).is_empty(),
        "work in flight: never terminated"
    );
}

#[test]
fn an_interrupted_idle_node_is_removed_and_replaced() {
    let s = snapshot()
        .desired("gpu", 1)
        .node(
            ready("i-1", "gpu")
                .idle_since(at(90))
                .disrupted(Disruption::SpotInterruption),
        )
        .queued("llama", 1);
    let d = decide(&s, &mps_config(), at(100));
    assert_eq!(
        kinds(&d),
        vec![
            "cordon i-1",
            "drain i-1",
            "terminate i-1 decrement=true",
            "desired gpu 1"
        ]
    );
}

#[test]
fn a_rebalance_recommendation_cordons_without_draining() {
    let s = snapshot()
        .desired("gpu", 1)
        .node(
            ready("i-1", "gpu")
                .in_flight(1)
                .disrupted(Disruption::RebalanceRecommendation),
        )
        .in_flight("llama", 1);
    let k = kinds(&decide(&s, &mps_config(), at(100)));
    assert_eq!(k, vec!["cordon i-1", "desired gpu 2"]);
}

#[test]
fn a_node_that_never_became_gpu_ready_is_replaced() {
    let s = snapshot()
        .desired("gpu", 1)
        .node(launching("i-stuck", "gpu", at(0)).protected())
        .queued("llama", 1);
    assert!(terminated(&decide(&s, &mps_config(), at(600))).is_empty());
    let d = decide(&s, &mps_config(), at(601));
    assert_eq!(
        kinds(&d),
        vec![
            "protect i-stuck false",
            "terminate i-stuck decrement=true",
            "desired gpu 1"
        ]
    );
    assert!(d.actions.iter().any(
        |a| matches!(a, Action::Terminate { reason, .. } if reason.contains("not GPU-ready"))
    ));
}

#[test]
fn does_not_decrement_below_min_when_replacing() {
    let c = config(
        vec![spot_pool("gpu").min(1).max(3)],
        vec![model("llama", "gpu")],
    );
    let s = snapshot()
        .desired("gpu", 1)
        .node(launching("i-stuck", "gpu", at(0)));
    let d = decide(&s, &c, at(1000));
    assert_eq!(kinds(&d), vec!["terminate i-stuck decrement=false"]);
    assert_eq!(d.desired("gpu"), Some(1));
}

/// One model on a Spot pool "spot" whose fallback is the on-demand pool "od", both up to `max` nodes.
fn spot_with_fallback(max: u32) -> Config {
    config(
        vec![
            spot_pool("spot").fallback("od").max(max),
            on_demand_pool("od").max(max),
        ],
        vec![model("llama", "spot")],
    )
}

#[test]
fn repeated_spot_capacity_failures_send_demand_to_the_on_demand_fallback() {
    let c = spot_with_fallback(5);
    let s = snapshot()
        .desired("spot", 1)
        .queued("llama", 2)
        .capacity_failure("spot", at(100));
    let d = decide(&s, &c, at(200));
    assert_eq!(
        (d.desired("spot"), d.desired("od")),
        (Some(2), Some(0)),
        "one failure is not enough"
    );
    let s = s.capacity_failure("spot", at(150));
    let d = decide(&s, &c, at(200));
    assert_eq!((d.desired("spot"), d.desired("od")), (Some(0), Some(2)));
    assert!(d.pools[0].capacity_constrained);
    let d = decide(&s, &c, at(100 + 601));
    assert_eq!(
        d.desired("od"),
        Some(0),
        "failures outside the window are forgotten"
    );
}

#[test]
fn failures_that_launches_outnumber_are_bad_luck_not_a_shortage() {
    let c = spot_with_fallback(8);
    let constrained = |s: &Snapshot| {
        let d = decide(s, &c, at(200));
        (d.pools[0].capacity_constrained, d.desired("od"))
    };
    let failed_twice = snapshot()
        .desired("spot", 4)
        .queued("llama", 4)
        .capacity_failure("spot", at(100))
        .capacity_failure("spot", at(150));
    // Two launches came up since the first failure (one at that very second, one just now): Spot
    // capacity is there, the group's retry will get it.
    let s = failed_twice
        .clone()
        .node(launching("i-1", "spot", at(100)))
        .node(launching("i-2", "spot", at(200)));
    assert_eq!(constrained(&s), (false, Some(0)));
    // A third failure outnumbers them.
    let s = s.capacity_failure("spot", at(190));
    assert!(constrained(&s).0);
    // Nodes launched before the first failure, or stamped in the future, say nothing of capacity now.
    let s = failed_twice
        .node(ready("i-0", "spot"))
        .node(launching("i-1", "spot", at(100)))
        .node(launching("i-3", "spot", at(300)));
    let (shortage, od) = constrained(&s);
    assert!(shortage);
    assert!(od.is_some_and(|n| n >= 1), "{od:?}");
}

#[test]
fn a_constrained_pool_keeps_the_nodes_it_has() {
    let c = spot_with_fallback(5);
    let s = snapshot()
        .desired("spot", 3)
        .node(ready("i-1", "spot").in_flight(1))
        .queued("llama", 2)
        .in_flight("llama", 1)
        .capacity_failure("spot", at(100))
        .capacity_failure("spot", at(110));
    let d = decide(&s, &c, at(200));
    assert_eq!((d.desired("spot"), d.desired("od")), (Some(1), Some(2)));
}

#[test]
fn a_cold_start_backlog_asks_for_the_nodes_that_clear_it_not_one_per_request() {
    let s = snapshot().queued("llama", 28).rate("llama", 0.11, 5.0);
    assert_eq!(decide(&s, &mps_config(), at(0)).desired("gpu"), Some(1));
    let without_rate = snapshot().queued("llama", 28);
    assert_eq!(
        decide(&without_rate, &mps_config(), at(0)).desired("gpu"),
        Some(4),
        "max 4"
    );
}

fn roomy_config() -> Config {
    config(
        vec![spot_pool("gpu").mps(2).max(10)],
        vec![model("llama", "gpu"), model("qwen", "gpu")],
    )
}

fn busy_pool(in_flight: &[u32]) -> Snapshot {
    let mut s = snapshot().desired("gpu", in_flight.len() as u32);
    for (i, n) in in_flight.iter().enumerate() {
        let mut node = ready(&format!("i-{i}"), "gpu").in_flight(*n).protected();
        node.launched_at = at(i as i64);
        s = s.node(node);
    }
    s
}

#[test]
fn consolidates_the_least_loaded_busy_node_when_two_more_than_needed_are_ready() {
    // Four nodes of 2 slots each hold 4 requests; 3 requests/s at 1 s need 3 + sqrt(3) = 4.7, so 5
    // lanes: 3 nodes. Ready 4 is not 2 above that: nothing moves.
    let c = roomy_config();
    let s = busy_pool(&[1, 1, 1, 1])
        .rate("llama", 3.0, 1.0)
        .in_flight("llama", 4);
    let d = decide(&s, &c, at(1000));
    assert!(d.actions.is_empty(), "{:?}", kinds(&d));
    // At 0.5 requests/s: 0.5 + sqrt(0.5) = 1.2, so 2 lanes, but 6 in flight: 3 nodes, 5 ready.
    let s = busy_pool(&[1, 1, 1, 1, 2])
        .rate("llama", 0.5, 1.0)
        .in_flight("llama", 6);
    let d = decide(&s, &c, at(1000));
    assert_eq!(
        kinds(&d),
        vec!["protect i-3 false", "cordon i-3", "drain i-3"],
        "the least loaded (not i-4), the newest of equals; its request finishes there"
    );
    assert_eq!(d.desired("gpu"), Some(5), "no launch, no removal yet");
    assert!(
        matches!(&d.actions[1], zerospot_core::Action::Cordon { reason, .. } if reason.contains("consolidating")),
        "{:?}",
        d.actions[1]
    );
    // Once applied, deciding again changes nothing while its request runs, then removes it.
    let mut after = s.clone();
    after.apply(&d);
    let again = decide(&after, &c, at(1001));
    assert!(again.actions.is_empty(), "{:?}", kinds(&again));
    for n in &mut after.nodes {
        if n.instance_id == "i-3" {
            n.in_flight = 0;
            n.idle_since = Some(at(1010));
        }
    }
    let done = decide(&after, &c, at(1011));
    assert_eq!(terminated(&done), vec!["i-3"]);
    assert_eq!(done.desired("gpu"), Some(4));
}

#[test]
fn does_not_consolidate_while_nodes_come_go_or_settle() {
    let c = roomy_config();
    let base = || {
        busy_pool(&[1, 1, 1, 1, 2])
            .rate("llama", 0.5, 1.0)
            .in_flight("llama", 6)
    };
    let cordons = |d: &Decision| kinds(d).iter().filter(|k| k.starts_with("cordon")).count();
    assert_eq!(cordons(&decide(&base(), &c, at(1000))), 1);
    // A node launching: the pool is growing.
    let s = base()
        .node(launching("i-new", "gpu", at(990)))
        .desired("gpu", 6);
    assert_eq!(cordons(&decide(&s, &c, at(1000))), 0);
    // Three more than needed but the least loaded launched within the idle window: the next one goes.
    let mut s = base();
    s.nodes[3].launched_at = at(900);
    let d = decide(&s, &c, at(1000));
    assert!(
        kinds(&d).contains(&"cordon i-2".to_string()),
        "{:?}",
        kinds(&d)
    );
    // Only one more than needed: nothing.
    let s = busy_pool(&[1, 1, 1, 1])
        .rate("llama", 0.5, 1.0)
        .in_flight("llama", 4)
        .in_flight("qwen", 1);
    assert_eq!(cordons(&decide(&s, &c, at(1000))), 0);
    // A node already draining.
    let mut s = base();
    s.nodes[0].cordoned = true;
    s.nodes[0].draining = true;
    s.nodes[0].protected = false;
    assert_eq!(cordons(&decide(&s, &c, at(1000))), 0);
    // Every node launched within the idle window: let them settle.
    let window = c.timing.idle_window_s as i64;
    assert_eq!(cordons(&decide(&base(), &c, at(window - 1))), 0);
    assert_eq!(cordons(&decide(&base(), &c, at(window + 4))), 1);
    // Idle nodes are left to the idle window, not drained.
    let s = busy_pool(&[0, 0, 0, 0, 0]).rate("llama", 0.5, 1.0);
    assert_eq!(cordons(&decide(&s, &c, at(1000))), 0);
}

#[test]
fn a_small_pool_consolidates_down_to_one_spare_node_once_the_peak_allows() {
    let c = roomy_config();
    let cordons = |d: &Decision| {
        kinds(d)
            .into_iter()
            .filter(|k| k.starts_with("cordon"))
            .collect::<Vec<_>>()
    };
    // Three nodes of 2 slots, 3 requests in flight: 3 lanes, 2 nodes kept; one spare.
    let base = || {
        busy_pool(&[1, 1, 1])
            .rate("llama", 0.5, 1.0)
            .in_flight("llama", 3)
    };
    assert!(
        cordons(&decide(&base(), &c, at(1000))).is_empty(),
        "no peak estimate: two spare nodes needed"
    );
    // At a peak no higher than the rate, 2 nodes hold the work: the newest of the least loaded goes.
    let d = decide(&base().peak("llama", 0.5), &c, at(1000));
    assert_eq!(cordons(&d), vec!["cordon i-2"]);
    assert!(
        matches!(&d.actions[1], zerospot_core::Action::Cordon { reason, .. } if reason.contains("consolidating")),
        "{:?}",
        d.actions
    );
    // A peak of 3 requests/s needs 3 + 1.5 sqrt(3) = 5.6, so 6 lanes: all three nodes stay.
    assert!(cordons(&decide(&base().peak("llama", 3.0), &c, at(1000))).is_empty());
    // A peak below the rate counts as the rate.
    assert_eq!(
        cordons(&decide(&base().peak("llama", 0.1), &c, at(1000))),
        vec!["cordon i-2"]
    );
    // Unusable peaks, or another model of the pool without one, are no evidence.
    for bad in [f64::NAN, -1.0, f64::INFINITY] {
        assert!(
            cordons(&decide(&base().peak("llama", bad), &c, at(1000))).is_empty(),
            "{bad}"
        );
    }
    let other = base().peak("llama", 0.5).rate("qwen", 0.01, 1.0);
    assert!(cordons(&decide(&other, &c, at(1000))).is_empty());
    assert_eq!(
        cordons(&decide(&other.peak("qwen", 0.01), &c, at(1000))),
        vec!["cordon i-2"]
    );
    // Up to SMALL_POOL_NODES kept at the peak, one spare is enough; beyond that, two are needed.
    let small = zerospot_core::policy::SMALL_POOL_NODES as usize;
    let pool = |kept: usize, ready: usize| {
        busy_pool(&vec![1; ready])
            .rate("llama", 0.5, 1.0)
            .peak("llama", 0.5)
            .in_flight("llama", 2 * kept as u64)
    };
    assert_eq!(
        cordons(&decide(&pool(small, small + 1), &c, at(1000))).len(),
        1
    );
    assert!(cordons(&decide(&pool(small + 1, small + 2), &c, at(1000))).is_empty());
    assert_eq!(
        cordons(&decide(&pool(small + 1, small + 3), &c, at(1000))).len(),
        1
    );
}

#[test]
fn a_large_pool_keeps_the_nodes_its_recent_peak_needs() {
    let c = roomy_config();
    // Eight ready nodes of 2 slots: six hold a request each, two have been idle for the whole window.
    // 0.5 requests/s at 1 s and 6 in flight: 6 lanes, 3 nodes kept.
    let base = || {
        let mut s = busy_pool(&[1, 1, 1, 1, 1, 1, 0, 0])
            .rate("llama", 0.5, 1.0)
            .in_flight("llama", 6);
        for n in &mut s.nodes[6..] {
            n.idle_since = Some(at(0));
        }
        s
    };
    let cordons = |d: &Decision| {
        kinds(d)
            .into_iter()
            .filter(|k| k.starts_with("cordon"))
            .collect::<Vec<_>>()
    };
    // No peak estimate: both idle nodes go, and one busy node is consolidated (6 stay, 3 needed).
    let d = decide(&base(), &c, at(1000));
    assert_eq!(terminated(&d), vec!["i-6", "i-7"]);
    assert_eq!(cordons(&d), vec!["cordon i-6", "cordon i-7", "cordon i-5"]);
    // A peak of 8 requests/s in the last minutes: 8 + 1.5 sqrt(8) = 12.2, so 13 lanes, 7 nodes. The
    // pool is large, so it keeps 7: one idle node goes (the first of the longest idle), nothing is
    // consolidated.
    let d = decide(&base().peak("llama", 8.0), &c, at(1000));
    assert_eq!(terminated(&d), vec!["i-6"]);
    assert_eq!(cordons(&d), vec!["cordon i-6"]);
    assert_eq!(d.desired("gpu"), Some(7));
    // A peak of 5: 5 + 1.5 sqrt(5) = 8.4, so 9 lanes, 5 nodes, one more than a small pool: both idle
    // nodes go and the 6 busy ones stay (consolidation needs 7 above the 5 kept).
    let d = decide(&base().peak("llama", 5.0), &c, at(1000));
    assert_eq!(terminated(&d), vec!["i-6", "i-7"]);
    assert_eq!(cordons(&d), vec!["cordon i-6", "cordon i-7"]);
    // A peak of 4: 4 + 1.5 sqrt(4) = 7 lanes, 4 nodes, a small pool: no floor, as without a peak.
    let d = decide(&base().peak("llama", 4.0), &c, at(1000));
    assert_eq!(terminated(&d), vec!["i-6", "i-7"]);
    assert_eq!(cordons(&d), vec!["cordon i-6", "cordon i-7", "cordon i-5"]);
    // Where a floor of 4 would bind: six nodes, four busy (2 nodes needed), two idle. A small pool's
    // peak is no floor, so both idle nodes go and, with 4 staying, two above the 2 needed, one busy
    // node is consolidated.
    let mut four = busy_pool(&[1, 1, 1, 1, 0, 0])
        .rate("llama", 0.5, 1.0)
        .in_flight("llama", 4)
        .peak("llama", 4.0);
    for n in &mut four.nodes[4..] {
        n.idle_since = Some(at(0));
    }
    let d = decide(&four, &c, at(1000));
    assert_eq!(terminated(&d), vec!["i-4", "i-5"]);
    assert_eq!(cordons(&d), vec!["cordon i-4", "cordon i-5", "cordon i-3"]);
    // Another model of the pool without a peak estimate: no evidence, no floor.
    let d = decide(
        &base().peak("llama", 8.0).rate("qwen", 0.01, 1.0),
        &c,
        at(1000),
    );
    assert_eq!(terminated(&d), vec!["i-6", "i-7"]);
}

#[test]
fn headroom_keeps_an_idle_node_while_requests_keep_coming() {
    let c = mps_config();
    let s = snapshot()
        .desired("gpu", 1)
        .node(ready("i-1", "gpu").idle_since(at(0)).protected())
        .rate("llama", 0.02, 5.0);
    let window = c.timing.idle_window_s as i64;
    let d = decide(&s, &c, at(window * 4));
    assert!(
        terminated(&d).is_empty(),
        "one request every 50 s: {:?}",
        kinds(&d)
    );
    assert_eq!(d.desired("gpu"), Some(1));
    // One every 20 minutes: the idle window decides.
    let s = snapshot()
        .desired("gpu", 1)
        .node(ready("i-1", "gpu").idle_since(at(0)).protected())
        .rate("llama", 1.0 / 1200.0, 5.0);
    assert_eq!(terminated(&decide(&s, &c, at(window))), vec!["i-1"]);
}

#[test]
fn the_last_node_stays_while_a_request_is_likely_within_a_cold_start() {
    let c = mps_config();
    let window = c.timing.idle_window_s as i64;
    let idle = || {
        snapshot()
            .desired("gpu", 1)
            .node(ready("i-1", "gpu").idle_since(at(0)).protected())
    };
    // Requests came every 400 s or so, and it has been silent 300 s: the next is due within a cold
    // start.
    let due = idle().gaps("llama", 300.0, &[(400.0, 30)]);
    let d = decide(&due, &c, at(window * 2));
    assert!(terminated(&d).is_empty(), "{:?}", kinds(&d));
    assert_eq!(d.desired("gpu"), Some(1));
    // Silent past every gap seen: traffic has stopped; the idle window decides.
    let over = idle().gaps("llama", 5000.0, &[(400.0, 30)]);
    assert_eq!(terminated(&decide(&over, &c, at(window))), vec!["i-1"]);
    // Bursts of 10 s gaps with hours between them: 60 s into a silence the next burst is far.
    let lull = idle().gaps("llama", 60.0, &[(10.0, 80), (7200.0, 20)]);
    assert_eq!(terminated(&decide(&lull, &c, at(window))), vec!["i-1"]);
    // Too few gaps to read: the model counts as coming back until silent for the thin-history hold,
    // then the idle window decides.
    assert_eq!(c.timing.thin_history_hold_s, 765);
    let young = idle().gaps("llama", 300.0, &[(400.0, 4)]);
    assert!(terminated(&decide(&young, &c, at(window))).is_empty());
    let just_in = idle().gaps("llama", 764.0, &[(400.0, 4)]);
    assert!(terminated(&decide(&just_in, &c, at(window))).is_empty());
    let young_gone = idle().gaps("llama", 765.0, &[(400.0, 4)]);
    assert_eq!(
        terminated(&decide(&young_gone, &c, at(window))),
        vec!["i-1"]
    );
    let mut no_hold = c.clone();
    no_hold.timing.thin_history_hold_s = 0;
    assert_eq!(
        terminated(&decide(&young, &no_hold, at(window))),
        vec!["i-1"]
    );
    // One request and no gap at all counts the same; no silence known (the Lambda functions read no
    // estimates) leaves it to the idle window.
    let first = idle().gaps("llama", 300.0, &[]);
    assert!(terminated(&decide(&first, &c, at(window))).is_empty());
    let mut unknown = idle().gaps("llama", 300.0, &[]);
    unknown.demand[0].silent_for_s = None;
    unknown.demand[0].gaps = None;
    assert_eq!(terminated(&decide(&unknown, &c, at(window))), vec!["i-1"]);
    // It only holds a node back: nothing is launched for it.
    let empty = snapshot().gaps("llama", 300.0, &[(400.0, 30)]);
    let d = decide(&empty, &c, at(window));
    assert_eq!(d.desired("gpu"), Some(0));
    assert!(d.actions.is_empty(), "{:?}", kinds(&d));
    // The idle window still applies first.
    assert!(terminated(&decide(&over, &c, at(window - 1))).is_empty());
    // Gaps of about 700 s, silent for the idle window: none ends within one cold start (255 s), about
    // half within the horizon of two (510 s).
    let later = idle().gaps("llama", window as f64, &[(700.0, 30)]);
    assert_eq!(c.timing.relaunch_horizon_s, 510);
    assert!(terminated(&decide(&later, &c, at(window))).is_empty());
    let mut one_cold_start = c.clone();
    one_cold_start.timing.relaunch_horizon_s = 255;
    assert_eq!(
        terminated(&decide(&later, &one_cold_start, at(window))),
        vec!["i-1"]
    );
}

#[test]
fn the_return_risks_of_a_pools_models_add_up() {
    let mut c = config(
        vec![spot_pool("gpu").mps(2).max(4), spot_pool("cpu").max(4)],
        vec![
            model("llama", "gpu"),
            model("qwen", "gpu"),
            model("elsewhere", "cpu"),
        ],
    );
    // A few gaps that end within a cold start of a 300 s silence, most far longer: one model alone is
    // below a knob set just above its risk, two models of the pool together are above it.
    let gaps = [(300.0, 3), (100_000.0, 17)];
    let one = snapshot()
        .desired("gpu", 1)
        .node(ready("i-1", "gpu").idle_since(at(0)).protected())
        .gaps("llama", 300.0, &gaps);
    let risk = one.demand[0]
        .return_risk(c.timing.relaunch_horizon_s as f64)
        .unwrap();
    assert!(risk > 0.0 && risk < 0.5, "{risk}");
    c.timing.relaunch_risk = (risk + 1e-6).min(1.0);
    let window = c.timing.idle_window_s as i64;
    assert_eq!(terminated(&decide(&one, &c, at(window))), vec!["i-1"]);
    let two = one.clone().gaps("qwen", 300.0, &gaps);
    let d = decide(&two, &c, at(window));
    assert!(
        terminated(&d).is_empty(),
        "1 - (1 - {risk})^2 is above the knob: {:?}",
        kinds(&d)
    );
    // At the knob exactly, the node stays.
    c.timing.relaunch_risk = risk;
    assert!(terminated(&decide(&one, &c, at(window))).is_empty());
    // Models of other pools do not count.
    let other = one.clone().gaps("elsewhere", 300.0, &gaps);
    c.timing.relaunch_risk = (risk + 1e-6).min(1.0);
    assert_eq!(terminated(&decide(&other, &c, at(window))), vec!["i-1"]);
}

#[test]
fn removals_keep_the_wider_headroom_and_launches_the_narrower() {
    let mut c = config(
        vec![spot_pool("gpu").mps(2).max(10)],
        vec![model("llama", "gpu")],
    );
    let window = c.timing.idle_window_s as i64;
    // 1 request/s at 4 s: a load of 4 lanes. Launches: 4 + 1.0 x 2 = 6 lanes, 3 nodes of 2 slots;
    // removals: 4 + 1.5 x 2 = 7 lanes, 4 nodes.
    let mut s = snapshot().desired("gpu", 6).rate("llama", 1.0, 4.0);
    for i in 0..6 {
        s = s.node(ready(&format!("i-{i}"), "gpu").idle_since(at(i)));
    }
    let d = decide(&s, &c, at(window + 10));
    assert_eq!(terminated(&d), vec!["i-0", "i-1"]);
    assert_eq!(d.pools[0].needed_nodes, 3);
    assert_eq!(d.desired("gpu"), Some(4));
    // Without a band, down to what launches are sized for.
    c.timing.keep_headroom = 1.0;
    assert_eq!(terminated(&decide(&s, &c, at(window + 10))).len(), 3);
    // A keep headroom below the headroom is the headroom.
    c.timing.keep_headroom = 0.0;
    assert_eq!(terminated(&decide(&s, &c, at(window + 10))).len(), 3);
    // The band launches nothing: from 2 nodes, the 3 needed, not 4.
    c.timing.keep_headroom = 1.5;
    let two = snapshot()
        .desired("gpu", 2)
        .rate("llama", 1.0, 4.0)
        .node(ready("i-0", "gpu").idle_since(at(0)))
        .node(ready("i-1", "gpu").idle_since(at(0)));
    assert_eq!(decide(&two, &c, at(window + 10)).desired("gpu"), Some(3));
    // Validated like the headroom.
    for bad in [f64::NAN, -0.5, 10.5] {
        c.timing.keep_headroom = bad;
        assert!(c.validate().is_err(), "{bad}");
    }
}

#[test]
fn the_relaunch_risk_knob_is_validated() {
    for bad in [f64::NAN, 0.0, -0.1, 1.01, f64::INFINITY] {
        let mut c = mps_config();
        c.timing.relaunch_risk = bad;
        let e = c.validate().unwrap_err();
        assert!(
            e.to_string()
                .contains("timing.relaunch_risk must be a number above 0 and at most 1"),
            "{e}"
        );
    }
    for good in [0.01, 0.2, 1.0] {
        let mut c = mps_config();
        c.timing.relaunch_risk = good;
        assert!(c.validate().is_ok(), "{good}");
    }
}

#[test]
fn the_headroom_knob_is_validated() {
    for bad in [f64::NAN, -0.5, 10.5, f64::INFINITY] {
        let mut c = mps_config();
        c.timing.headroom = bad;
        let e = c.validate().unwrap_err();
        assert!(
            e.to_string()
                .contains("timing.headroom and timing.keep_headroom must be numbers from 0 to 10"),
            "{e}"
        );
    }
    for good in [0.0, 1.5, 10.0] {
        let mut c = mps_config();
        c.timing.headroom = good;
        assert!(c.validate().is_ok(), "{good}");
    }
    // A bad pool is still reported first.
    let mut c = config(vec![spot_pool("gpu").mps(0)], vec![]);
    c.timing.headroom = f64::NAN;
    assert!(
        c.validate()
            .unwrap_err()
            .to_string()
            .contains("sharing offers no slots")
    );
}

#[test]
fn notes_demand_for_models_it_does_not_know() {
    let d = decide(&snapshot().queued("mystery", 3), &mps_config(), at(0));
    assert_eq!(d.desired("gpu"), Some(0));
    assert_eq!(
        d.notes,
        vec!["demand for unknown model \"mystery\" ignored"]
    );
}

#[test]
fn deciding_again_after_applying_a_decision_changes_nothing() {
    let mut s = snapshot()
        .desired("gpu", 3)
        .node(ready("i-1", "gpu").idle_since(at(0)))
        .node(
            ready("i-2", "gpu")
                .in_flight(2)
                .disrupted(Disruption::SpotInterruption),
        )
        .node(launching("i-3", "gpu", at(0)))
        .queued("llama", 3);
    let d = decide(&s, &mps_config(), at(1000));
    assert!(!d.actions.is_empty());
    s.apply(&d);
    let again = decide(&s, &mps_config(), at(1000));
    assert!(again.actions.is_empty(), "{:?}", kinds(&again));
}

// ---- properties ----

fn arb_node(i: usize, pools: usize) -> impl Strategy<Value = zerospot_core::Node> {
    (
        0..pools,
        any::<bool>(),
        0u32..3,
        prop::option::of(0i64..2000),
        prop::option::of(prop_oneof![
            Just(Disruption::SpotInterruption),
            Just(Disruption::RebalanceRecommendation),
            Just(Disruption::ScheduledChange),
        ]),
        any::<bool>(),
        any::<bool>(),
        0i64..2000,
    )
        .prop_map(
            move |(p, is_ready, in_flight, idle, disruption, cordoned, protected, launched)| {
                let pool = format!("p{p}");
                let id = format!("i-{i:04}");
                let mut n = if is_ready {
                    ready(&id, &pool)
                } else {
                    launching(&id, &pool, at(launched))
                };
                n.launched_at = at(launched);
                n.in_flight = in_flight;
                n.idle_since = if in_flight == 0 { idle.map(at) } else { None };
                n.disruption = disruption;
                n.cordoned = cordoned && disruption.is_some();
                n.protected = protected;
                n
            },
        )
}

prop_compose! {
    fn arb_world()(
        pools in 1usize..4,
        seed_nodes in 0usize..12,
    )(
        specs in prop::collection::vec((0u32..3, 1u32..6, 1u32..4, 1u32..3, any::<bool>()), pools),
        nodes in (0..seed_nodes).map(|i| arb_node(i, pools)).collect::<Vec<_>>(),
        demand in prop::collection::vec((0u64..20, 0u64..5, prop::option::of(0u32..6)), pools * 2),
        rates in prop::collection::vec(prop::option::of((0.0f64..3.0, 0.5f64..20.0)), pools * 2),
        desired in prop::collection::vec(0u32..8, pools),
        failures in prop::collection::vec(prop::collection::vec(0i64..2000, 0..3), pools),
    ) -> (Config, Snapshot) {
        let n = specs.len();
        let pool_specs = specs.iter().enumerate().map(|(i, (min, extra, replicas, conc, fallback))| {
            let mut p = spot_pool(&format!("p{i}")).mps(*replicas).min(*min).max(min + extra);
            if *fallback && n > 1 {
                p = p.fallback(&format!("p{}", (i + 1) % n));
            }
            let _ = conc;
            p
        }).collect();
        let models = (0..n * 2).map(|m| {
            let mut spec = model(&format!("m{m}"), &format!("p{}", m % n));
            spec.concurrency = specs[m % n].3;
            spec
        }).collect();
        let mut s = snapshot();
        for (i, d) in desired.iter().enumerate() {
            s = s.desired(&format!("p{i}"), *d);
            for t in &failures[i] {
                s = s.capacity_failure(&format!("p{i}"), at(*t));
            }
        }
        for node in nodes {
            s = s.node(node);
        }
        for (m, (q, f, ds)) in demand.into_iter().enumerate() {
            s = s.queued(&format!("m{m}"), q).in_flight(&format!("m{m}"), f);
            if let Some(ds) = ds {
                s = s.desired_scale(&format!("m{m}"), ds);
            }
            if let Some((per_s, service_s)) = rates[m] {
                s = s.rate(&format!("m{m}"), per_s, service_s);
            }
        }
        (config(pool_specs, models), s)
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn desired_stays_within_min_and_max((c, s) in arb_world(), now in 0i64..3000) {
        let d = decide(&s, &c, at(now));
        for (plan, pool) in d.pools.iter().zip(&c.pools) {
            prop_assert!(plan.desired >= pool.min && plan.desired <= pool.max, "{plan:?}");
        }
    }

    #[test]
    fn never_terminates_a_node_with_work_in_flight((c, s) in arb_world(), now in 0i64..3000) {
        let d = decide(&s, &c, at(now));
        for id in terminated(&d) {
            let node = s.nodes.iter().find(|n| n.instance_id == id).unwrap();
            prop_assert_eq!(node.in_flight, 0);
        }
    }

    #[test]
    fn demand_gives_at_least_one_node((c, s) in arb_world(), now in 0i64..3000) {
        let d = decide(&s, &c, at(now));
        for m in &c.models {
            let active = s.demand.iter().any(|x| x.model == m.name && x.is_active());
            let pool = c.pools.iter().find(|p| p.name == m.pool).unwrap();
            if active && pool.max >= 1 {
                let own = d.desired(&pool.name).unwrap();
                let fallback = pool.fallback.as_deref().and_then(|f| d.desired(f)).unwrap_or(0);
                prop_assert!(own >= 1 || fallback >= 1, "{m:?} {:?}", d.pools);
            }
        }
    }

    #[test]
    fn more_demand_never_gives_fewer_nodes((c, s) in arb_world(), now in 0i64..3000, extra in 1u64..30, which in 0usize..6) {
        let before = decide(&s, &c, at(now));
        let name = c.models[which % c.models.len()].name.clone();
        let more = s.clone().queued(&name, extra);
        let after = decide(&more, &c, at(now));
        let total = |d: &Decision| d.pools.iter().map(|p| p.desired).sum::<u32>();
        prop_assert!(total(&after) >= total(&before), "{:?} -> {:?}", before.pools, after.pools);
        for (b, a) in before.pools.iter().zip(&after.pools) {
            prop_assert!(a.desired >= b.desired, "{b:?} -> {a:?}");
        }
    }

    #[test]
    fn deciding_again_after_applying_changes_nothing_prop((c, s) in arb_world(), now in 0i64..3000) {
        let mut s = s;
        let d = decide(&s, &c, at(now));
        s.apply(&d);
        let again = decide(&s, &c, at(now));
        prop_assert!(again.actions.is_empty(), "{:?}\nthen {:?}", kinds(&d), kinds(&again));
        for (a, b) in d.pools.iter().zip(&again.pools) {
            prop_assert_eq!(a.desired, b.desired);
        }
    }
}

#[test]
fn a_fallback_that_cannot_run_the_profile_takes_nothing_and_nothing_redirected_is_not_reported() {
    // Spot MIG pool short of capacity; its fallback has no 1g.10gb slices: the demand stays.
    let mut mig_model = model("llama", "spot");
    mig_model.mig_profile = Some("1g.10gb".into());
    let c = config(
        vec![
            spot_pool("spot")
                .mig(&[("1g.10gb", 7)])
                .fallback("od")
                .max(5),
            on_demand_pool("od").mps(2).max(5),
        ],
        vec![mig_model],
    );
    let s = snapshot()
        .queued("llama", 3)
        .capacity_failure("spot", at(100))
        .capacity_failure("spot", at(150));
    let d = decide(&s, &c, at(200));
    assert_eq!((d.desired("spot"), d.desired("od")), (Some(1), Some(0)));
    assert!(!d.pools[1].reason.contains("from"), "{}", d.pools[1].reason);
    // A constrained pool whose demand its nodes already hold sends nothing, and says nothing about it.
    let c = config(
        vec![
            spot_pool("spot").mps(2).fallback("od").max(5),
            on_demand_pool("od").mps(2).max(5),
        ],
        vec![model("llama", "spot")],
    );
    let s = snapshot()
        .desired("spot", 1)
        .node(ready("i-1", "spot").in_flight(1))
        .in_flight("llama", 1)
        .capacity_failure("spot", at(100))
        .capacity_failure("spot", at(150));
    let d = decide(&s, &c, at(200));
    assert_eq!((d.desired("spot"), d.desired("od")), (Some(1), Some(0)));
    assert_eq!(d.pools[1].reason, "no demand");
}

#[test]
fn the_reason_counts_slots_and_says_when_there_is_no_demand() {
    let d = decide(&snapshot().queued("llama", 3), &mps_config(), at(0));
    assert!(
        d.pools[0]
            .reason
            .contains("llama: 3 pods; 3 slots need 2 nodes"),
        "{}",
        d.pools[0].reason
    );
    assert!(
        !d.pools[0].reason.contains("held at"),
        "{}",
        d.pools[0].reason
    );
    assert!(
        !d.pools[0].reason.contains("unusable"),
        "{}",
        d.pools[0].reason
    );
    // A known model with nothing asked is no demand, not "0 pods".
    let d = decide(&snapshot().queued("llama", 0), &mps_config(), at(0));
    assert_eq!(d.pools[0].reason, "no demand");
    // An interrupted node being replaced, and a busy node holding the group above the need, are said.
    let s = snapshot()
        .desired("gpu", 2)
        .node(
            ready("i-1", "gpu")
                .in_flight(1)
                .disrupted(Disruption::SpotInterruption),
        )
        .node(ready("i-2", "gpu").in_flight(1))
        .in_flight("llama", 1);
    let d = decide(&s, &mps_config(), at(0));
    assert!(
        d.pools[0]
            .reason
            .contains("; 1 unusable nodes being replaced"),
        "{}",
        d.pools[0].reason
    );
    let s = snapshot()
        .desired("gpu", 3)
        .node(ready("i-1", "gpu").in_flight(1))
        .node(ready("i-2", "gpu").in_flight(1))
        .node(ready("i-3", "gpu").in_flight(1))
        .in_flight("llama", 1);
    let d = decide(&s, &mps_config(), at(0));
    assert!(
        d.pools[0]
            .reason
            .contains("; held at 3 (min 0, max 4, 3 present)"),
        "{}",
        d.pools[0].reason
    );
}

#[test]
fn an_idle_window_too_long_for_the_calendar_never_removes_a_node() {
    let mut c = mps_config();
    c.timing.idle_window_s = u64::MAX;
    let s = snapshot()
        .desired("gpu", 1)
        .node(ready("i-1", "gpu").idle_since(at(0)));
    let d = decide(&s, &c, at(1_000_000));
    assert!(terminated(&d).is_empty(), "{:?}", kinds(&d));
}
