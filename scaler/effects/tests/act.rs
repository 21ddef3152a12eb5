//! The actuator carries out decisions in order, idempotently, and never lowers a group's capacity past
//! a termination that did not happen.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use zerospot_core::testing::{at, ready};
use zerospot_core::{Action, Decision};
use zerospot_effects::act::Outcome;
use zerospot_effects::fake::{AwsCall, FakeAutoScaling, FakeCluster, KubeCall};
use zerospot_effects::{Actuator, AutoScaling, AwsErrorKind, names};

fn desired(asg: &str, from: u32, to: u32) -> Action {
    Action::SetDesiredCapacity {
        pool: "gpu".into(),
        asg_name: asg.into(),
        from,
        to,
        reason: "demand".into(),
    }
}

fn scale_in(instance: &str, node: &str) -> Vec<Action> {
    vec![
        Action::Cordon {
            instance_id: instance.into(),
            node: Some(node.into()),
            reason: "idle".into(),
        },
        Action::Drain {
            instance_id: instance.into(),
            node: Some(node.into()),
            reason: "idle".into(),
        },
        Action::Terminate {
            instance_id: instance.into(),
            asg_name: "asg".into(),
            decrement_desired: true,
            reason: "idle".into(),
        },
    ]
}

async fn groups(aws: &FakeAutoScaling) -> Vec<zerospot_effects::Group> {
    aws.describe_groups(&["asg".into()]).await.unwrap()
}

#[tokio::test]
async fn scaling_out_is_clamped_to_the_groups_max_and_leaves_an_event() {
    let aws = FakeAutoScaling::default().with_group("asg", 0, 3);
    let cluster = FakeCluster::default();
    let actuator = Actuator {
        aws: &aws,
        cluster: &cluster,
        dry_run: false,
        eviction_grace_s: 30,
    };
    let decision = Decision {
        actions: vec![desired("asg", 0, 5)],
        ..Decision::default()
    };
    let report = actuator
        .apply(&decision, &groups(&aws).await, &[], at(0))
        .await;
    assert_eq!(aws.calls(), vec![AwsCall::SetDesired("asg".into(), 3)]);
    assert_eq!(report.applied[0].outcome, Outcome::Done);
    assert!(report.changed_groups());
    let events = cluster.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].reason, "ScaledOut");
    assert!(events[0].note.contains("0 -> 3"), "{}", events[0].note);
}

#[tokio::test]
async fn scale_in_cordons_marks_evicts_then_terminates_exactly_that_instance() {
    let aws = FakeAutoScaling::default().with_group("asg", 0, 3);
    aws.add_instance("asg", "i-1");
    aws.add_instance("asg", "i-2");
    let cluster = FakeCluster::default();
    cluster.add_pod("n1", "models", "llama-abc");
    let actuator = Actuator {
        aws: &aws,
        cluster: &cluster,
        dry_run: false,
        eviction_grace_s: 30,
    };
    let decision = Decision {
        actions: scale_in("i-1", "n1"),
        ..Decision::default()
    };
    let report = actuator
        .apply(&decision, &groups(&aws).await, &[], at(0))
        .await;
    assert!(
        report.applied.iter().all(|a| a.outcome == Outcome::Done),
        "{report:?}"
    );
    let calls = cluster.calls();
    assert_eq!(calls[0], KubeCall::Cordon("n1".into()));
    assert!(
        matches!(&calls[1], KubeCall::Annotate(n, k, Some(_)) if n == "n1" && k == names::ANNOTATION_DRAINING)
    );
    assert_eq!(
        calls[2],
        KubeCall::Evict("models/llama-abc".into(), Some(30))
    );
    assert_eq!(aws.calls(), vec![AwsCall::Terminate("i-1".into(), true)]);
    let g = aws.group("asg").unwrap();
    assert_eq!(g.desired, 1);
    assert_eq!(
        g.instances
            .iter()
            .map(|i| i.id.as_str())
            .collect::<Vec<_>>(),
        vec!["i-2"]
    );
    let reasons: Vec<String> = cluster.events().into_iter().map(|e| e.reason).collect();
    assert_eq!(reasons, vec!["Cordoned", "Draining", "Terminating"]);
}

#[tokio::test]
async fn a_pod_kept_by_a_disruption_budget_defers_the_termination_and_the_capacity_cut() {
    let aws = FakeAutoScaling::default().with_group("asg", 0, 3);
    aws.add_instance("asg", "i-1");
    aws.add_instance("asg", "i-2");
    let cluster = FakeCluster::default();
    cluster.add_pod("n1", "models", "llama-abc");
    cluster.block("models", "llama-abc");
    let actuator = Actuator {
        aws: &aws,
        cluster: &cluster,
        dry_run: false,
        eviction_grace_s: 30,
    };
    let mut actions = scale_in("i-1", "n1");
    actions.push(desired("asg", 2, 0));
    let decision = Decision {
        actions,
        ..Decision::default()
    };
    let report = actuator
        .apply(&decision, &groups(&aws).await, &[], at(0))
        .await;
    assert!(
        matches!(report.applied[2].outcome, Outcome::Deferred(_)),
        "{report:?}"
    );
    assert!(
        matches!(report.applied[3].outcome, Outcome::Deferred(_)),
        "{report:?}"
    );
    assert!(
        aws.calls().is_empty(),
        "no termination, no capacity cut: {:?}",
        aws.calls()
    );
    assert!(
        cluster
            .events()
            .iter()
            .any(|e| e.reason == "EvictionBlocked" && !e.normal)
    );
    // The budget allows it later: the same decision goes through.
    cluster.unblock("models", "llama-abc");
    let report = actuator
        .apply(&decision, &groups(&aws).await, &[], at(1))
        .await;
    assert!(report.failures().next().is_none(), "{report:?}");
    assert_eq!(aws.calls()[0], AwsCall::Terminate("i-1".into(), true));
    assert_eq!(aws.group("asg").unwrap().desired, 0);
}

#[tokio::test]
async fn a_termination_finds_the_node_in_the_snapshot_and_evicts_what_is_left() {
    let aws = FakeAutoScaling::default().with_group("asg", 0, 3);
    aws.add_instance("asg", "i-1");
    let cluster = FakeCluster::default();
    cluster.add_pod("n1", "models", "left-behind");
    let actuator = Actuator {
        aws: &aws,
        cluster: &cluster,
        dry_run: false,
        eviction_grace_s: 5,
    };
    let decision = Decision {
        actions: vec![scale_in("i-1", "n1").remove(2)],
        ..Decision::default()
    };
    let mut node = ready("i-1", "gpu");
    node.name = Some("n1".into());
    actuator
        .apply(&decision, &groups(&aws).await, &[node], at(0))
        .await;
    assert_eq!(
        cluster.calls(),
        vec![KubeCall::Evict("models/left-behind".into(), Some(5))]
    );
    assert_eq!(aws.calls(), vec![AwsCall::Terminate("i-1".into(), true)]);
}

#[tokio::test]
async fn the_same_decision_twice_has_no_further_effect() {
    let aws = FakeAutoScaling::default().with_group("asg", 0, 3);
    aws.add_instance("asg", "i-1");
    aws.add_instance("asg", "i-2");
    let cluster = FakeCluster::default();
    let actuator = Actuator {
        aws: &aws,
        cluster: &cluster,
        dry_run: false,
        eviction_grace_s: 30,
    };
    let decision = Decision {
        actions: scale_in("i-1", "n1"),
        ..Decision::default()
    };
    actuator
        .apply(&decision, &groups(&aws).await, &[], at(0))
        .await;
    let report = actuator
        .apply(&decision, &groups(&aws).await, &[], at(1))
        .await;
    assert!(
        matches!(report.applied[2].outcome, Outcome::Skipped(_)),
        "{report:?}"
    );
    assert_eq!(aws.group("asg").unwrap().desired, 1, "one decrement only");
}

#[tokio::test]
async fn protection_is_set_in_one_call_per_group_and_direction() {
    let aws = FakeAutoScaling::default().with_group("asg", 0, 3);
    for id in ["i-1", "i-2", "i-3"] {
        aws.add_instance("asg", id);
    }
    let cluster = FakeCluster::default();
    let actuator = Actuator {
        aws: &aws,
        cluster: &cluster,
        dry_run: false,
        eviction_grace_s: 30,
    };
    let protect = |id: &str, p: bool| Action::SetProtection {
        instance_id: id.into(),
        asg_name: "asg".into(),
        protected: p,
        reason: "busy".into(),
    };
    let decision = Decision {
        actions: vec![
            protect("i-1", true),
            protect("i-2", false),
            protect("i-3", true),
        ],
        ..Decision::default()
    };
    actuator
        .apply(&decision, &groups(&aws).await, &[], at(0))
        .await;
    assert_eq!(
        aws.calls(),
        vec![
            AwsCall::Protect("asg".into(), vec!["i-1".into(), "i-3".into()], true),
            AwsCall::Protect("asg".into(), vec!["i-2".into()], false),
        ]
    );
}

#[tokio::test]
async fn a_dry_run_calls_nothing() {
    let aws = FakeAutoScaling::default().with_group("asg", 0, 3);
    aws.add_instance("asg", "i-1");
    let cluster = FakeCluster::default();
    cluster.add_pod("n1", "models", "p");
    let actuator = Actuator {
        aws: &aws,
        cluster: &cluster,
        dry_run: true,
        eviction_grace_s: 30,
    };
    let mut actions = scale_in("i-1", "n1");
    actions.push(desired("asg", 1, 0));
    let report = actuator
        .apply(
            &Decision {
                actions,
                ..Decision::default()
            },
            &groups(&aws).await,
            &[],
            at(0),
        )
        .await;
    assert!(
        report.applied.iter().all(|a| a.outcome == Outcome::DryRun),
        "{report:?}"
    );
    assert!(aws.calls().is_empty());
    assert!(cluster.calls().is_empty());
    assert!(cluster.events().is_empty());
}

#[tokio::test]
async fn a_failed_termination_keeps_the_capacity_and_other_failures_do_not_stop_the_pass() {
    let aws = FakeAutoScaling::default().with_group("asg", 0, 3);
    aws.add_instance("asg", "i-1");
    aws.add_instance("asg", "i-2");
    aws.fail_next(
        "TerminateInstanceInAutoScalingGroup",
        AwsErrorKind::Throttled,
    );
    let cluster = FakeCluster::default();
    cluster.fail_next(
        "cordon",
        zerospot_effects::cluster::KubeErrorKind::Unavailable,
    );
    cluster.fail_next(
        "record",
        zerospot_effects::cluster::KubeErrorKind::Forbidden,
    );
    let actuator = Actuator {
        aws: &aws,
        cluster: &cluster,
        dry_run: false,
        eviction_grace_s: 30,
    };
    let mut actions = scale_in("i-1", "n1");
    actions.push(desired("asg", 1, 0));
    let report = actuator
        .apply(
            &Decision {
                actions,
                ..Decision::default()
            },
            &groups(&aws).await,
            &[],
            at(0),
        )
        .await;
    let failures: Vec<_> = report.failures().map(|(_, e)| e.labels()).collect();
    assert_eq!(
        failures,
        vec![("kubernetes", "unavailable"), ("aws", "throttled")]
    );
    assert!(
        matches!(report.applied[1].outcome, Outcome::Done),
        "the drain still ran"
    );
    assert!(matches!(report.applied[3].outcome, Outcome::Deferred(_)));
    assert_eq!(aws.group("asg").unwrap().desired, 2);
    assert_eq!(report.event_failures.len(), 1);
}

#[tokio::test]
async fn a_node_drained_by_choice_gives_its_pods_their_own_grace_and_one_going_anyway_the_short_one()
 {
    // Consolidation: cordon and drain only (the node goes later, once idle). Its pods get their own
    // terminationGracePeriodSeconds (Knative: the revision timeout), so requests in flight finish.
    let drain_only = |instance: &str, node: &str| Decision {
        actions: scale_in(instance, node).into_iter().take(2).collect(),
        ..Decision::default()
    };
    let mut known = ready("i-1", "gpu");
    known.name = Some("n1".into());
    let evictions = |calls: Vec<KubeCall>| -> Vec<KubeCall> {
        calls
            .into_iter()
            .filter(|c| matches!(c, KubeCall::Evict(..)))
            .collect()
    };
    let run = |nodes: Vec<zerospot_core::Node>| async move {
        let aws = FakeAutoScaling::default().with_group("asg", 0, 3);
        aws.add_instance("asg", "i-1");
        let cluster = FakeCluster::default();
        cluster.add_pod("n1", "models", "llama-abc");
        let actuator = Actuator {
            aws: &aws,
            cluster: &cluster,
            dry_run: false,
            eviction_grace_s: 30,
        };
        let report = actuator
            .apply(&drain_only("i-1", "n1"), &groups(&aws).await, &nodes, at(0))
            .await;
        assert!(
            report.applied.iter().all(|a| a.outcome == Outcome::Done),
            "{report:?}"
        );
        assert!(
            aws.calls().is_empty(),
            "nothing terminated: {:?}",
            aws.calls()
        );
        evictions(cluster.calls())
    };
    assert_eq!(
        run(vec![known.clone()]).await,
        vec![KubeCall::Evict("models/llama-abc".into(), None)]
    );
    // A Spot notice: the node dies in two minutes; the short grace.
    let mut noticed = known.clone();
    noticed.disruption = Some(zerospot_core::Disruption::SpotInterruption);
    assert_eq!(
        run(vec![noticed]).await,
        vec![KubeCall::Evict("models/llama-abc".into(), Some(30))]
    );
    // A node the snapshot does not know: as if it were going.
    assert_eq!(
        run(vec![]).await,
        vec![KubeCall::Evict("models/llama-abc".into(), Some(30))]
    );
}
