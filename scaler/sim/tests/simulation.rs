//! The simulator's guarantees, on the synthetic day and small inline traces.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::AtomicU64;
use zerospot_sim::{
    PolicyKind, Report, Scenario, Shaping, SimError, WorkloadClass, simulate, workload,
};

fn synthetic(requests: u64, seed: u64, time_scale: f64) -> Scenario {
    let shaping = Shaping {
        seed,
        time_scale,
        ..Shaping::default()
    };
    let w = workload::synthetic_day(requests, &shaping).expect("synthetic day");
    Scenario::new(w, seed)
}

fn run(scenario: &Scenario) -> Report {
    simulate(scenario, &AtomicU64::new(0)).expect("simulation runs")
}

#[test]
fn requests_are_conserved_completed_plus_lost_equals_submitted() {
    let calm = synthetic(1_500, 3, 1.0);
    // A hostile cloud: frequent interruptions, failed launches, a short deadline, few nodes.
    let mut stormy = synthetic(3_000, 4, 1.0);
    stormy.cluster.cloud.interruption_rate_per_hour = 2.0;
    stormy.cluster.cloud.capacity_failure_probability = 0.3;
    stormy.cluster.deadline_s = 200.0;
    stormy.cluster.max_nodes = 3;
    let mut lost_somewhere = false;
    for scenario in [calm, stormy] {
        let report = run(&scenario);
        assert_eq!(report.policies.len(), PolicyKind::ALL.len());
        for p in &report.policies {
            assert_eq!(
                p.requests,
                scenario.workload.requests.len() as u64,
                "{}",
                p.name
            );
            assert_eq!(
                p.completed + p.lost,
                p.requests,
                "{} conserves requests",
                p.name
            );
            lost_somewhere |= p.lost > 0;
        }
    }
    assert!(
        lost_somewhere,
        "the hostile scenario loses requests somewhere, so losses are counted"
    );
}

/// The bound holds for every zero-wait schedule: the hindsight-greedy one (which never makes a request
/// wait) never costs less, on reference and stretched days; and a simulated policy that costs less has
/// made requests wait.
#[test]
fn nothing_that_never_waits_costs_less_than_the_bound() {
    for (seed, time_scale) in [(1, 1.0), (2, 1.0), (3, 3.0), (5, 0.5), (6, 10.0)] {
        let scenario = synthetic(2_500, seed, time_scale);
        let report = run(&scenario);
        assert!(report.lower_bound_usd > 0.0);
        let greedy = report.policy("hindsight-greedy").expect("greedy");
        assert_eq!(
            greedy.queue_delay_s.max, 0.0,
            "the greedy schedule never queues"
        );
        assert!(
            greedy.cost_usd >= report.lower_bound_usd - 1e-9,
            "seed {seed}, x{time_scale}: greedy {} < bound {}",
            greedy.cost_usd,
            report.lower_bound_usd
        );
        for p in &report.policies {
            assert!((p.cost_vs_bound - p.cost_usd / report.lower_bound_usd).abs() < 1e-9);
            if p.cost_usd < report.lower_bound_usd {
                assert!(
                    p.queue_delay_s.max > 0.0,
                    "seed {seed}: {} costs less than the bound without any wait",
                    p.name
                );
            }
        }
    }
}

/// The bound with waits allowed sits at or below the zero-wait bound, and no simulated policy that kept
/// every wait within its limit costs less than it.
#[test]
fn nothing_that_keeps_the_wait_limit_costs_less_than_the_waiting_bound() {
    for (seed, time_scale) in [(1, 1.0), (3, 3.0), (6, 10.0)] {
        let report = run(&synthetic(2_500, seed, time_scale));
        let waiting = report.bounded_wait_bound_usd;
        assert!(waiting > 0.0);
        let line = format!(
            "lower bound on any policy with no wait over {:.0} s: ${waiting:.2}",
            report.bounded_wait_s
        );
        assert!(report.table().contains(&line), "{}", report.table());
        assert!(
            waiting <= report.lower_bound_usd + 1e-9,
            "seed {seed}: waiting bound {waiting} over the zero-wait bound {}",
            report.lower_bound_usd
        );
        assert_eq!(report.bounded_wait_s, report.cold_start_s + 30.0);
        for p in &report.policies {
            if p.queue_delay_s.max <= report.bounded_wait_s {
                assert!(
                    p.cost_usd >= waiting - 1e-9,
                    "seed {seed}: {} costs {} under the waiting bound {waiting}",
                    p.name,
                    p.cost_usd
                );
            }
        }
    }
}

/// No simulated policy inside the flap-aware bound's class (Spot only, no swaps, within the wait and
/// flap limits) costs less than the bound for its own number of interruptions; the table prints the
/// bound, and a missed Cluster Autoscaler goal is marked out of reach exactly when the bound is above
/// half that policy's cost.
#[test]
fn nothing_in_the_flap_bounds_class_costs_less_than_it() {
    let azure = |sample: f64, time_scale: f64, seed: u64| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/data/azure-llm-inference-2023-conv.csv"
        );
        let shaping = Shaping {
            sample,
            time_scale,
            seed,
            ..Shaping::default()
        };
        let mut s = Scenario::new(
            workload::load_azure(path.as_ref(), &shaping).expect("trace"),
            seed,
        );
        s.class = WorkloadClass::Sparse;
        s
    };
    let scenarios = [
        synthetic(2_500, 1, 1.0),
        synthetic(2_500, 3, 3.0),
        synthetic(2_500, 6, 10.0),
        azure(0.02, 3.0, 2),
        azure(0.02, 10.0, 1),
        azure(0.02, 10.0, 3),
    ];
    let mut in_class = 0;
    let mut out_of_reach = 0;
    for scenario in scenarios {
        let report = run(&scenario);
        let bound = report
            .flap_bound
            .clone()
            .expect("computed under 5,000 requests");
        let price = report.spot_price_per_hour / 3600.0;
        let usd = report.flap_bound_usd.expect("reported");
        assert!((usd - bound.node_seconds(0) * price).abs() < 1e-9);
        let per = report.flap_bound_per_interruption_usd.expect("reported");
        // 60 s billing minimum over the 20 % flap limit, at the Spot price.
        assert!((per - 300.0 * price).abs() < 1e-9, "{per}");
        assert!((bound.per_interruption() - 300.0).abs() < 1e-9);
        let line = format!(
            "lower bound on any Spot-only policy that guarantees no wait over {:.0} s and flaps at most \
             20 % without swapping nodes: ${usd:.2}",
            report.bounded_wait_s
        );
        assert!(report.table().contains(&line), "{}", report.table());
        for p in &report.policies {
            let inside = p.name != "hindsight-greedy"
                && p.on_demand_launches == 0
                && p.swaps == 0
                && p.lost == 0
                && p.flap_rate <= 0.2
                && p.queue_delay_s.max <= report.bounded_wait_s;
            if inside {
                in_class += 1;
                let least = bound.node_seconds(p.interruptions) * price;
                assert!(
                    p.cost_usd >= least - 1e-9,
                    "{}: {} costs {} under the flap-aware bound {least}",
                    report.workload,
                    p.name,
                    p.cost_usd
                );
            }
        }
        let z = report.policy("zerospot").expect("zerospot");
        let ca = report.policy("cluster-autoscaler").expect("CA");
        let goal = report
            .goals
            .iter()
            .find(|g| g.goal == "cost x cluster-autoscaler")
            .expect("the CA goal");
        let least = bound.node_seconds(z.interruptions) * price / ca.cost_usd;
        if !goal.met && least > 0.5 {
            out_of_reach += 1;
            assert_eq!(goal.out_of_reach, Some(least));
            let note =
                format!("(out of reach: at least {least:.2} for the flap-aware bound's class)");
            assert!(report.table().contains(&note), "{}", report.table());
            let markdown = report.markdown();
            assert!(
                markdown.contains(&format!("**missed** {note}")),
                "{markdown}"
            );
            assert!(markdown.contains("| zerospot |"), "{markdown}");
        } else {
            assert_eq!(goal.out_of_reach, None);
        }
        for g in report
            .goals
            .iter()
            .filter(|g| g.goal != "cost x cluster-autoscaler")
        {
            assert_eq!(g.out_of_reach, None, "{}", g.goal);
        }
    }
    assert!(in_class >= 6, "the check ran on {in_class} policies");
    assert!(out_of_reach >= 1, "no goal was shown out of reach");
}

#[test]
fn always_on_cost_equals_nodes_times_duration_from_the_first_request() {
    let mut scenario = synthetic(2_000, 7, 1.0);
    scenario.cluster.cloud.interruption_rate_per_hour = 0.0;
    scenario.cluster.cloud.capacity_failure_probability = 0.0;
    scenario.run = vec![PolicyKind::AlwaysOn];
    let first = scenario.workload.requests[0].at;
    for nodes in [1u32, 3] {
        scenario.policies.always_on_nodes = Some(nodes);
        let report = run(&scenario);
        let p = report.policy("always-on").expect("always-on");
        let cloud = &scenario.cluster.cloud;
        // Launched at the first request (no pre-warming), running until the end.
        let duration = p.end_s - first;
        assert!(p.end_s >= scenario.workload.horizon_s);
        let expected = f64::from(nodes) * duration * cloud.spot_per_hour / 3600.0;
        assert!(
            (p.cost_usd - expected).abs() < 1e-6,
            "{} != {expected}",
            p.cost_usd
        );
        assert_eq!((p.scale_ups, p.scale_downs), (nodes, 0));
        assert_eq!(p.fixed_nodes, Some(nodes));
        assert!(p.cold_starts >= 1, "the first requests wait for the boot");
        assert!(p.wait_cold_s.max >= cloud.cold_start_min_s() - 1.0);
    }
}

#[test]
fn the_same_seed_gives_the_same_output() {
    let mut a = synthetic(2_000, 11, 1.0);
    a.cluster.series_points = 200;
    a.cluster.cloud.interruption_rate_per_hour = 0.5;
    let first = run(&a);
    let second = run(&a.clone());
    assert_eq!(first, second);
    assert_eq!(
        serde_json::to_string(&first).expect("json"),
        serde_json::to_string(&second).expect("json")
    );
    let other = run(&synthetic(2_000, 12, 1.0));
    assert_ne!(first.policies[0].cost_usd, other.policies[0].cost_usd);
}

#[test]
fn zerospot_survives_spot_interruptions_without_losing_a_request() {
    let mut scenario = synthetic(2_500, 5, 1.0);
    scenario.cluster.cloud.interruption_rate_per_hour = 1.0;
    scenario.run = vec![PolicyKind::Zerospot];
    let report = run(&scenario);
    let z = report.policy("zerospot").expect("zerospot");
    assert!(z.interruptions > 0, "interruptions happened");
    assert_eq!(z.lost, 0);
    assert_eq!(z.interruptions_survived, z.interruptions);
    assert!(z.decisions.unwrap_or(0) > 0, "the core policy decided");
}

#[test]
fn a_slow_cold_start_delays_requests_but_loses_none() {
    let text = "TIMESTAMP,ContextTokens,GeneratedTokens\n\
                2023-11-16 18:00:00.0,500,100\n\
                2023-11-16 18:00:01.5,500,100\n\
                2023-11-16 18:00:03.0,500,100\n";
    let w = workload::parse_azure(text, "three.csv", &Shaping::default()).expect("trace");
    let mut scenario = Scenario::new(w, 1);
    scenario.cluster.cloud.capacity_failure_probability = 0.0;
    let report = run(&scenario);
    let cold = scenario.cluster.cloud.cold_start_max_s();
    for name in [
        "zerospot",
        "cluster-autoscaler",
        "karpenter",
        "keda",
        "always-on",
        "fixed-best",
    ] {
        let p = report.policy(name).expect("policy");
        assert_eq!((p.completed, p.lost), (3, 0), "{name}");
        let models: std::collections::HashSet<u16> =
            scenario.workload.requests.iter().map(|r| r.model).collect();
        assert_eq!(
            p.cold_starts as usize,
            models.len(),
            "{name}: one cold start per model for the three"
        );
        assert_eq!((p.wait_cold_s.count, p.wait_warm_s.count), (3, 0), "{name}");
        assert!(
            p.queue_delay_s.max > scenario.cluster.cloud.cold_start_min_s() - 5.0,
            "{name} waited a cold start"
        );
        assert!(
            p.queue_delay_s.max <= cold + 40.0,
            "{name}: {}",
            p.queue_delay_s.max
        );
    }
}

fn trace_error(text: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.csv");
    std::fs::write(&path, text).expect("write");
    match workload::load_azure(&path, &Shaping::default()) {
        Ok(w) => panic!(
            "parsed {} requests from a malformed trace",
            w.requests.len()
        ),
        Err(e) => {
            assert!(
                matches!(e, SimError::TraceLine { .. } | SimError::EmptyTrace(..)),
                "{e:?}"
            );
            assert!(e.is_input());
            e.to_string()
        }
    }
}

#[test]
fn malformed_traces_give_a_clear_error_naming_the_line() {
    let header = "TIMESTAMP,ContextTokens,GeneratedTokens\n";
    let good = "2023-11-16 18:15:46.6805900,374,44\n";
    let cases = [
        (
            format!("{header}{good}2023-11-16 18:15:47,12\n"),
            "line 3",
            "expected 3 comma-separated fields",
        ),
        (
            format!("{header}{good}{good}yesterday,1,2\n"),
            "line 4",
            "timestamp \"yesterday\"",
        ),
        (
            format!("{header}2023-11-16 18:15:46,lots,2\n"),
            "line 2",
            "ContextTokens \"lots\"",
        ),
        (
            format!("{header}{good}2023-11-16 18:15:48,5,-3\n"),
            "line 3",
            "GeneratedTokens \"-3\"",
        ),
        (
            format!("{header}{good}2023-11-16 18:15:48,5,3,9\n"),
            "line 3",
            "3 comma-separated fields",
        ),
        (
            "time,prompt,output\n".to_string(),
            "line 1",
            "expected the header",
        ),
    ];
    for (text, line, what) in cases {
        let message = trace_error(&text);
        assert!(message.contains(line), "{message:?} names {line}");
        assert!(message.contains(what), "{message:?} says {what:?}");
        assert!(message.contains("bad.csv"), "{message:?} names the file");
    }
    assert!(trace_error(header).contains("no requests"));
}

#[test]
fn zerospot_falls_back_to_on_demand_when_spot_capacity_never_comes() {
    let mut scenario = synthetic(600, 8, 1.0);
    scenario.cluster.cloud.capacity_failure_probability = 1.0;
    scenario.run = vec![PolicyKind::Zerospot, PolicyKind::ClusterAutoscaler];
    let report = run(&scenario);
    let z = report.policy("zerospot").expect("zerospot");
    assert_eq!(z.lost, 0, "every request served on the on-demand fallback");
    assert!(z.launch_failures >= 2);
    let on_demand_per_s = scenario.cluster.cloud.instance.on_demand_per_hour / 3600.0;
    assert!(
        (z.cost_usd - z.gpu_seconds_billed * on_demand_per_s).abs() < 1e-6,
        "billed at on-demand prices"
    );
    let ca = report
        .policy("cluster-autoscaler")
        .expect("cluster-autoscaler");
    assert_eq!(ca.completed, 0, "a Spot-only group never gets a node");
    assert_eq!(ca.lost, ca.requests);
}

#[test]
fn rate_estimates_avoid_the_cold_start_overshoot_without_losing_requests() {
    let mut shipped = synthetic(2_500, 1, 1.0);
    shipped.run = vec![PolicyKind::Zerospot];
    assert!(matches!(
        shipped.policies.zerospot_demand,
        zerospot_sim::DemandSignal::RateAware { .. }
    ));
    let mut without = shipped.clone();
    without.policies.zerospot_demand = zerospot_sim::DemandSignal::Queued;
    let a = run(&without);
    let b = run(&shipped);
    let (a, b) = (
        a.policy("zerospot").expect("a"),
        b.policy("zerospot").expect("b"),
    );
    assert_eq!(b.lost, 0);
    assert!(
        b.scale_ups < a.scale_ups,
        "fewer launches: {} vs {}",
        b.scale_ups,
        a.scale_ups
    );
    assert!(
        b.cost_usd < a.cost_usd,
        "cheaper: {} vs {}",
        b.cost_usd,
        a.cost_usd
    );
}

#[test]
fn no_policy_removes_a_node_with_work_in_flight() {
    for seed in [1, 2] {
        let mut scenario = synthetic(3_000, seed, 1.0);
        scenario.cluster.cloud.interruption_rate_per_hour = 0.0;
        let report = run(&scenario);
        for p in &report.policies {
            assert_eq!(
                p.requests_requeued, 0,
                "{} requeued requests without any interruption",
                p.name
            );
            assert_eq!(p.lost, 0, "{}", p.name);
        }
    }
}

fn trace(lines: &[(f64, u32, u32)]) -> zerospot_sim::Workload {
    let mut text = String::from("TIMESTAMP,ContextTokens,GeneratedTokens\n");
    for (t, p, g) in lines {
        let whole = t.floor() as u32;
        let frac = ((t - t.floor()) * 1e6).round() as u32;
        text.push_str(&format!(
            "2023-11-16 {:02}:{:02}:{:02}.{frac:06},{p},{g}\n",
            10 + whole / 3600,
            (whole / 60) % 60,
            whole % 60
        ));
    }
    let shaping = Shaping {
        models: 1,
        ..Shaping::default()
    };
    workload::parse_azure(&text, "t.csv", &shaping).expect("trace")
}

fn calm(w: zerospot_sim::Workload, kinds: &[PolicyKind]) -> Scenario {
    let mut s = Scenario::new(w, 1);
    s.cluster.cloud.capacity_failure_probability = 0.0;
    s.cluster.cloud.interruption_rate_per_hour = 0.0;
    s.run = kinds.to_vec();
    s
}

/// Requests sharing a GPU are re-timed when a neighbour starts (processor sharing): a request running
/// alone slows down when a second one joins, so a third that waits for a lane waits longer than if the
/// first had kept the speed it started with.
#[test]
fn a_neighbour_starting_slows_a_running_request() {
    // One node, one pod with two lanes. A (900 tokens) starts alone at 600 s, B (900) joins at 601 s,
    // C arrives at 602 s and waits for the first lane to free.
    let w = trace(&[(0.0, 0, 1), (600.0, 0, 900), (601.0, 0, 900), (602.0, 0, 9)]);
    let mut s = calm(w, &[PolicyKind::AlwaysOn]);
    s.policies.always_on_nodes = Some(1);
    s.cluster.serving.slots_per_gpu = 1;
    s.cluster.serving.pod_concurrency = 2;
    let report = run(&s);
    let p = report.policy("always-on").expect("always-on");
    assert_eq!((p.completed, p.wait_warm_s.count), (4, 3));
    // A: 90 tokens alone in its first second, the other 810 at the two-process speed of the default
    // curve (its value is checked against the measured file in serving.rs).
    let f2 = s.cluster.serving.curve.factor(2);
    assert!(f2 > 0.5 && f2 < 0.75, "{f2}");
    let a_done = 601.0 + 810.0 / (90.0 * f2);
    let c_wait = p.wait_warm_s.max;
    assert!(
        (c_wait - (a_done - 602.0)).abs() < 1e-3,
        "C waited {c_wait} s, A re-timed ends at {a_done}"
    );
    assert!(
        c_wait > 8.0 + 3.0,
        "not the 8 s of A at the speed it started with"
    );
}

#[test]
fn waits_are_split_into_warm_and_cold_and_cold_starts_counted() {
    // Three requests during the first boot (cold), one long after on the warm fixed node (warm).
    let w = trace(&[(0.0, 0, 9), (1.0, 0, 9), (2.0, 0, 9), (900.0, 0, 9)]);
    let mut s = calm(w, &[PolicyKind::AlwaysOn, PolicyKind::Zerospot]);
    s.policies.always_on_nodes = Some(1);
    let report = run(&s);
    let a = report.policy("always-on").expect("always-on");
    assert_eq!((a.wait_cold_s.count, a.wait_warm_s.count), (3, 1));
    assert_eq!(a.cold_starts, 1);
    assert!(a.wait_cold_s.p50 > 100.0 && a.wait_warm_s.max == 0.0);
    assert!(a.cold_episode_max_s >= a.wait_cold_s.max);
    // zerospot's node went away in the 15-minute gap: the last request is a second cold start.
    let z = report.policy("zerospot").expect("zerospot");
    assert_eq!(z.cold_starts, 2);
    assert_eq!(z.wait_cold_s.count, 4);
    assert_eq!(z.lost, 0);
}

#[test]
fn a_removal_followed_by_a_launch_within_a_cold_start_is_a_flap() {
    // zerospot removes its node once it has been idle for the idle window and, since one request shows
    // no gap, the model silent for the thin-history hold; a request 100 s later launches another: a
    // flap. The run ends with the second answer (the window's end): that node's end is no removal.
    let timing = zerospot_core::Timing::default();
    let removed_by = (300.0 + timing.idle_window_s as f64).max(timing.thin_history_hold_s as f64);
    let w = trace(&[(0.0, 0, 9), (removed_by + 100.0, 0, 9)]);
    let report = run(&calm(w, &[PolicyKind::Zerospot]));
    let z = report.policy("zerospot").expect("zerospot");
    assert_eq!((z.scale_ups, z.scale_downs), (2, 1));
    assert!((z.flap_rate - 1.0).abs() < 1e-9, "{}", z.flap_rate);
    // Within the hold the node waits for it: one launch, no removal, no flap.
    let w = trace(&[
        (0.0, 0, 9),
        (timing.thin_history_hold_s as f64 - 100.0, 0, 9),
    ]);
    let report = run(&calm(w, &[PolicyKind::Zerospot]));
    let z = report.policy("zerospot").expect("zerospot");
    assert_eq!((z.scale_ups, z.scale_downs, z.flap_rate), (1, 0, 0.0));
    // An hour later instead: a removal, no flap.
    let w = trace(&[(0.0, 0, 9), (3600.0, 0, 9)]);
    let report = run(&calm(w, &[PolicyKind::Zerospot]));
    let z = report.policy("zerospot").expect("zerospot");
    assert_eq!((z.scale_ups, z.scale_downs, z.flap_rate), (2, 1, 0.0));
}

#[test]
fn a_run_ends_at_the_end_of_the_observed_window_for_every_policy() {
    // One short request at 0, the window ending at its arrival: zerospot would keep its node for the
    // thin-history hold and the Cluster Autoscaler for ten minutes unneeded, always-on for ever. Each is
    // billed until the answer (the 60 s minimum at least), not for what the window does not show, and
    // no node's end counts as a removal.
    let w = trace(&[(0.0, 0, 9)]);
    let kinds = [
        PolicyKind::Zerospot,
        PolicyKind::AlwaysOn,
        PolicyKind::ClusterAutoscaler,
    ];
    let report = run(&calm(w.clone(), &kinds));
    // A cold start of at most 300 s and a nine-token answer.
    let answered = 400.0;
    for kind in kinds {
        let p = report.policy(kind.name()).expect("policy");
        assert_eq!((p.scale_ups, p.scale_downs), (1, 0), "{}", p.name);
        assert!(
            p.gpu_seconds_billed >= 60.0 && p.gpu_seconds_billed < answered,
            "{}: {} s",
            p.name,
            p.gpu_seconds_billed
        );
    }
    // A window that goes on for two hours past it: zerospot's node is billed until the policy lets it
    // go, inside the window, and that is a removal.
    let mut longer = w;
    longer.horizon_s = 7200.0;
    let report = run(&calm(longer, &[PolicyKind::Zerospot]));
    let z = report.policy("zerospot").expect("zerospot");
    assert_eq!((z.scale_ups, z.scale_downs), (1, 1));
    let hold = zerospot_core::Timing::default().thin_history_hold_s as f64;
    assert!(
        z.gpu_seconds_billed > hold && z.gpu_seconds_billed < 7200.0 / 2.0,
        "{}",
        z.gpu_seconds_billed
    );
    // The window ending exactly at that removal: what happens at its last instant still happens.
    let mut exact = trace(&[(0.0, 0, 9)]);
    exact.horizon_s = z.end_s;
    let report = run(&calm(exact, &[PolicyKind::Zerospot]));
    let z = report.policy("zerospot").expect("zerospot");
    assert_eq!((z.scale_ups, z.scale_downs), (1, 1));
}

#[test]
fn removing_a_node_under_a_spot_notice_is_an_interruption_not_a_removal() {
    // Nodes interrupted about a minute after launch, over and over: zerospot removes each idle node
    // under notice before it dies and has its replacement launched. Those are the cloud's doing, not
    // scale-in decisions, so they are no removals and no flaps (like the nodes other policies let die).
    let w = trace(&[(0.0, 0, 9), (1.0, 0, 9), (400.0, 0, 9), (800.0, 0, 9)]);
    let mut s = calm(w, &[PolicyKind::Zerospot]);
    s.cluster.cloud.interruption_rate_per_hour = 60.0;
    let report = run(&s);
    let z = report.policy("zerospot").expect("zerospot");
    assert!(z.interruptions >= 3, "{}", z.interruptions);
    assert!(z.scale_ups > z.interruptions / 2, "{}", z.scale_ups);
    assert_eq!((z.scale_downs, z.flap_rate), (0, 0.0));
}

#[test]
fn fixed_best_is_the_smallest_fixed_cluster_that_meets_the_dense_targets() {
    let shaping = Shaping {
        sample: 0.3,
        seed: 2,
        ..Shaping::default()
    };
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/azure-llm-inference-2023-conv.csv"
    );
    let w = workload::load_azure(std::path::Path::new(path), &shaping).expect("trace");
    let mut s = Scenario::new(w, 2);
    s.run = vec![PolicyKind::FixedBest];
    let report = run(&s);
    let best = report.policy("fixed-best").expect("fixed-best");
    let n = best.fixed_nodes.expect("a size");
    let cold = s.cluster.cloud.cold_start_max_s();
    assert!(zerospot_sim::meets_dense_targets(best, cold), "{best:?}");
    assert!(n > 1);
    let mut smaller = s.clone();
    smaller.run = vec![PolicyKind::AlwaysOn];
    smaller.policies.always_on_nodes = Some(n - 1);
    let r = run(&smaller);
    let one_less = r.policy("always-on").expect("always-on");
    assert!(
        !zerospot_sim::meets_dense_targets(one_less, cold),
        "{} nodes would do: {one_less:?}",
        n - 1
    );
}

#[test]
fn every_policy_reports_the_new_figures_and_the_goals_follow_the_class() {
    let mut s = synthetic(1_500, 4, 1.0);
    s.class = zerospot_sim::WorkloadClass::Sparse;
    let report = run(&s);
    let names: Vec<&str> = report.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "zerospot",
            "always-on",
            "fixed-best",
            "cluster-autoscaler",
            "keda",
            "karpenter",
            "hindsight-greedy"
        ]
    );
    let goals: Vec<&str> = report.goals.iter().map(|g| g.goal.as_str()).collect();
    assert_eq!(
        goals,
        [
            "cost x bound",
            "longest wait, s (cold start + 30 s)",
            "lost requests",
            "flap rate",
            "cost x cluster-autoscaler"
        ]
    );
    let z = report.policy("zerospot").expect("zerospot");
    assert_eq!(report.goals[0].value, z.cost_vs_bound);
    assert_eq!(report.goals[0].met, z.cost_vs_bound <= 1.15);
    for p in &report.policies {
        assert_eq!(
            p.wait_warm_s.count + p.wait_cold_s.count,
            p.completed,
            "{}",
            p.name
        );
        assert!((0.0..=1.0).contains(&p.flap_rate), "{}", p.name);
    }
    let mut dense = s.clone();
    dense.class = zerospot_sim::WorkloadClass::Dense;
    dense.run = vec![PolicyKind::Zerospot];
    let report = run(&dense);
    let goals: Vec<&str> = report.goals.iter().map(|g| g.goal.as_str()).collect();
    assert_eq!(
        goals,
        [
            "warm wait p95, s",
            "warm wait p99, s",
            "lost requests",
            "flap rate"
        ],
        "references that did not run are left out"
    );
}

#[test]
fn a_measured_sharing_curve_changes_service_times() {
    let text = include_str!("fixtures/gpu-sharing-sample.csv");
    let curve =
        zerospot_sim::SharingCurve::from_csv(text, "f", Some("gemma3:12b"), "mps").expect("curve");
    let mut a = synthetic(1_500, 9, 1.0);
    a.run = vec![PolicyKind::AlwaysOn];
    a.policies.always_on_nodes = Some(1);
    let mut b = a.clone();
    b.cluster.serving.curve = curve;
    let (ra, rb) = (run(&a), run(&b));
    let (pa, pb) = (
        ra.policy("always-on").expect("a"),
        rb.policy("always-on").expect("b"),
    );
    assert_ne!(pa.queue_delay_s, pb.queue_delay_s, "the curve is used");
}
