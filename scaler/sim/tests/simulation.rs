//! The simulator's guarantees, on the synthetic day and small inline traces.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::AtomicU64;
use zerospot_sim::{PolicyKind, Report, Scenario, Shaping, SimError, simulate, workload};

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

/// The oracle is a lower bound on cost *at zero queueing delay*: a policy that never makes a request wait
/// can never cost less, and the default zerospot never does on the reference workloads. A policy that
/// lets requests queue (a burst absorbed by one node, a gap bridged by a cold start) can; when it does,
/// its saving was bought with waits of a cold start's length, and that is what this checks.
#[test]
fn the_oracle_costs_no_more_than_any_policy() {
    for (seed, time_scale) in [(1, 1.0), (2, 1.0), (3, 3.0), (5, 0.5)] {
        let scenario = synthetic(2_500, seed, time_scale);
        let report = run(&scenario);
        let oracle = report.policy("oracle").expect("oracle");
        assert!(oracle.cost_usd > 0.0);
        assert_eq!(oracle.queue_delay_s.max, 0.0, "the oracle never queues");
        let cold_start = scenario.cluster.cloud.cold_start_max_s();
        for p in &report.policies {
            if p.cost_usd + 1e-9 >= oracle.cost_usd {
                continue;
            }
            assert!(
                p.queue_delay_s.p99 >= 0.5 * cold_start,
                "seed {seed}, time scale {time_scale}: {} costs {} < oracle {} without making requests \
                 wait (p99 {} s)",
                p.name,
                p.cost_usd,
                oracle.cost_usd,
                p.queue_delay_s.p99
            );
            assert!(
                time_scale > 1.0,
                "seed {seed}: {} beats the oracle on a reference workload",
                p.name
            );
        }
    }
}

#[test]
fn always_on_cost_equals_nodes_times_duration_times_price() {
    let mut scenario = synthetic(2_000, 7, 1.0);
    scenario.cluster.cloud.interruption_rate_per_hour = 0.0;
    scenario.cluster.cloud.capacity_failure_probability = 0.0;
    scenario.run = vec![PolicyKind::AlwaysOn];
    for nodes in [1u32, 3] {
        scenario.policies.always_on_nodes = Some(nodes);
        let report = run(&scenario);
        let p = report.policy("always-on").expect("always-on");
        let cloud = &scenario.cluster.cloud;
        // Launched one worst-case cold start before time 0, running until the end.
        let duration = p.end_s + cloud.cold_start_max_s();
        assert!(p.end_s >= scenario.workload.horizon_s);
        let expected = f64::from(nodes) * duration * cloud.spot_per_hour / 3600.0;
        assert!(
            (p.cost_usd - expected).abs() < 1e-6,
            "{} != {expected}",
            p.cost_usd
        );
        assert!((p.gpu_seconds_billed - f64::from(nodes) * duration).abs() < 1e-6);
        assert_eq!((p.scale_ups, p.scale_downs), (nodes, 0));
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
    for name in ["zerospot", "cluster-autoscaler", "karpenter", "keda"] {
        let p = report.policy(name).expect("policy");
        assert_eq!((p.completed, p.lost), (3, 0), "{name}");
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
