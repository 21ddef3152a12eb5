//! Event parsing on real payloads: AWS documentation examples (tests/fixtures) and the samples that ship
//! inside the aws_lambda_events crate, plus malformed, truncated and unknown input.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use zerospot_core::event::{Event, EventAction, EventError, parse_document, parse_document_items};

fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The fixtures folder of the aws_lambda_events crate this workspace resolved (a dev-dependency).
fn lambda_events_fixture(name: &str) -> Vec<u8> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
        .output()
        .expect("cargo metadata");
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let manifest = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "aws_lambda_events")
        .and_then(|p| p["manifest_path"].as_str())
        .expect("aws_lambda_events in cargo metadata");
    let path = PathBuf::from(manifest)
        .parent()
        .unwrap()
        .join("src/fixtures")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn one(input: &[u8]) -> Event {
    let mut events = parse_document(input).unwrap();
    assert_eq!(events.len(), 1);
    events.remove(0).event
}

#[test]
fn a_spot_interruption_warning_cordons_and_drains_its_instance() {
    let e = one(&fixture("spot-interruption-warning.json"));
    assert_eq!(e.kind(), "spot_interruption_warning");
    assert_eq!(e.instance_ids(), vec!["i-1234567890abcdef0"]);
    assert_eq!(e.action(), EventAction::CordonAndDrain);
}

#[test]
fn a_rebalance_recommendation_cordons_and_replaces() {
    let e = one(&fixture("rebalance-recommendation.json"));
    assert_eq!(e.kind(), "rebalance_recommendation");
    assert_eq!(e.action(), EventAction::CordonAndReplace);
}

#[test]
fn instance_state_changes_map_to_drain_forget_or_reconcile() {
    let e = one(&fixture("instance-state-change.json"));
    assert_eq!(e.instance_ids(), vec!["i-abcd1111"]);
    assert_eq!(e.action(), EventAction::CordonAndDrain);
    let body = String::from_utf8(fixture("instance-state-change.json")).unwrap();
    for (state, action) in [
        ("terminated", EventAction::ForgetInstance),
        ("stopped", EventAction::ForgetInstance),
        ("running", EventAction::Reconcile),
    ] {
        let e = one(body.replace("shutting-down", state).as_bytes());
        assert_eq!(e.action(), action, "{state}");
    }
}

#[test]
fn an_ec2_scheduled_change_names_every_affected_instance() {
    let e = one(&fixture("health-scheduled-change.json"));
    assert_eq!(e.kind(), "scheduled_change");
    assert_eq!(e.instance_ids(), vec!["i-abcd1111", "i-abcd2222"]);
    assert_eq!(e.action(), EventAction::CordonAndDrain);
}

#[test]
fn a_health_event_for_another_service_is_ignored_with_a_reason() {
    let e = one(&fixture("health-issue-other-service.json"));
    assert_eq!(e.kind(), "ignored");
    assert!(e.reason().contains("S3"), "{}", e.reason());
}

#[test]
fn an_alarm_state_change_from_eventbridge_reconciles() {
    let e = one(&fixture("alarm-state-change.json"));
    assert_eq!(
        e,
        Event::AlarmStateChange {
            alarm_name: "zerospot-queue-not-empty".into(),
            state: "ALARM".into(),
            previous_state: Some("OK".into()),
        }
    );
    assert_eq!(e.action(), EventAction::Reconcile);
}

#[test]
fn an_alarm_lambda_action_from_the_lambda_events_samples_reconciles() {
    let e = one(&lambda_events_fixture(
        "example-cloudwatch-alarm-metric.json",
    ));
    assert_eq!(e.kind(), "alarm_state_change");
    assert!(
        matches!(&e, Event::AlarmStateChange { alarm_name, state, previous_state }
        if alarm_name == "lambda-demo-metric-alarm" && state == "ALARM"
            && previous_state.as_deref() == Some("INSUFFICIENT_DATA"))
    );
    let e = one(&lambda_events_fixture(
        "example-cloudwatch-alarm-composite.json",
    ));
    assert_eq!(e.kind(), "alarm_state_change");
}

#[test]
fn auto_scaling_samples_from_the_lambda_events_crate_are_typed() {
    let e = one(&lambda_events_fixture(
        "example-autoscaling-event-launch-unsuccessful.json",
    ));
    assert!(
        matches!(&e, Event::LaunchUnsuccessful { asg_name, instance_id, .. }
        if asg_name == "my-auto-scaling-group" && instance_id.as_deref() == Some("i-1234567890abcdef0"))
    );
    assert_eq!(e.action(), EventAction::RecordCapacityFailure);
    let e = one(&lambda_events_fixture(
        "example-autoscaling-event-lifecycle-action.json",
    ));
    assert_eq!(e.kind(), "lifecycle_launch");
    assert_eq!(e.action(), EventAction::CompleteLaunchWhenReady);
    let e = one(&lambda_events_fixture(
        "example-autoscaling-event-terminate-action.json",
    ));
    assert_eq!(e.kind(), "lifecycle_terminate");
    assert_eq!(e.instance_ids(), vec!["i-1234567890abcdef0"]);
    for ignored in [
        "example-autoscaling-event-launch-successful.json",
        "example-autoscaling-event-terminate-successful.json",
    ] {
        assert_eq!(
            one(&lambda_events_fixture(ignored)).kind(),
            "ignored",
            "{ignored}"
        );
    }
    let e = one(&lambda_events_fixture("example-eventbridge-schedule.json"));
    assert_eq!(e.kind(), "scheduled_event");
}

#[test]
fn sqs_message_bodies_in_both_shapes_carry_their_events() {
    let events = parse_document(&fixture("sqs-receive-message-output.json")).unwrap();
    let kinds: Vec<_> = events.iter().map(|e| e.event.kind()).collect();
    assert_eq!(
        kinds,
        vec!["spot_interruption_warning", "rebalance_recommendation"]
    );
    assert_eq!(events[1].meta.message_id.as_deref(), Some("m-2"));
    let events = parse_document(&fixture("lambda-sqs-event.json")).unwrap();
    assert_eq!(events[0].event.kind(), "spot_interruption_warning");
    assert_eq!(events[0].meta.message_id.as_deref(), Some("r-1"));
}

#[test]
fn one_bad_message_in_a_batch_does_not_hide_the_others() {
    let items = parse_document_items(&lambda_events_fixture("example-sqs-event.json")).unwrap();
    assert_eq!(items.len(), 1);
    let err = items[0].result.clone().unwrap_err();
    assert!(
        matches!(&err, EventError::BadMessage { message_id, .. } if message_id == "MessageID_1")
    );
    assert!(err.to_string().contains("not JSON"), "{err}");
    let doc = serde_json::json!({"Records": [
        {"messageId": "bad", "body": "{\"hello\": 1}"},
        {"messageId": "good", "body": String::from_utf8(fixture("spot-interruption-warning.json")).unwrap()},
    ]});
    let items = parse_document_items(doc.to_string().as_bytes()).unwrap();
    assert!(items[0].result.is_err());
    assert_eq!(
        items[1].result.as_ref().unwrap().event.kind(),
        "spot_interruption_warning"
    );
    assert!(parse_document(doc.to_string().as_bytes()).is_err());
}

#[test]
fn unneeded_envelope_fields_may_be_missing_or_malformed() {
    let mut v: serde_json::Value =
        serde_json::from_slice(&fixture("spot-interruption-warning.json")).unwrap();
    let obj = v.as_object_mut().unwrap();
    obj.remove("id");
    obj.remove("account");
    obj.insert("time".into(), serde_json::json!("yesterday-ish"));
    obj.insert(
        "resources".into(),
        serde_json::json!(["arn:aws:ec2:us-east-2:1:instance/i-OTHER"]),
    );
    let events = parse_document(v.to_string().as_bytes()).unwrap();
    assert_eq!(
        events[0].event.instance_ids(),
        vec!["i-1234567890abcdef0"],
        "detail wins over resources"
    );
    assert_eq!(events[0].meta.time, None);
}

#[test]
fn a_lifecycle_hook_notification_sent_straight_to_sqs_is_read() {
    let body = serde_json::json!({
        "Origin": "EC2", "Destination": "AutoScalingGroup", "Service": "AWS Auto Scaling",
        "LifecycleHookName": "zerospot-drain", "AutoScalingGroupName": "gpu-spot",
        "EC2InstanceId": "i-0abc", "LifecycleActionToken": "tok",
        "LifecycleTransition": "autoscaling:EC2_INSTANCE_TERMINATING", "Time": "2026-11-24T10:00:00.000Z"
    });
    assert_eq!(
        one(body.to_string().as_bytes()).kind(),
        "lifecycle_terminate"
    );
    let test =
        serde_json::json!({"Event": "autoscaling:TEST_NOTIFICATION", "AutoScalingGroupName": "g"});
    assert_eq!(one(test.to_string().as_bytes()).kind(), "ignored");
}

#[test]
fn unknown_kinds_are_ignored_not_errors() {
    let v = serde_json::json!({"source": "aws.s3", "detail-type": "Object Created", "detail": {"bucket": {}}});
    let e = one(v.to_string().as_bytes());
    assert_eq!(
        e,
        Event::Ignored {
            reason: "no action for \"Object Created\" from \"aws.s3\"".into()
        }
    );
}

#[test]
fn malformed_input_names_what_is_wrong() {
    let spot = String::from_utf8(fixture("spot-interruption-warning.json")).unwrap();
    let cases: Vec<(String, &str)> = vec![
        (spot[..spot.len() / 2].to_string(), "not JSON: EOF while parsing"),
        ("[1, 2]".into(), "top level is an array"),
        ("{\"hello\": 1}".into(), "top-level keys: [hello]"),
        (spot.replace("\"instance-id\": \"i-1234567890abcdef0\",", ""), "spot_interruption_warning: missing detail.instance-id"),
        (spot.replace("\"i-1234567890abcdef0\",", "42,"), "spot_interruption_warning: detail.instance-id must be a non-empty string"),
        (spot.replace("\"source\": \"aws.ec2\",", ""), "eventbridge: missing source"),
        ("{\"Records\": 5}".into(), "Records must be an array"),
        ("{\"source\":\"aws.ec2\",\"detail-type\":\"EC2 Spot Instance Interruption Warning\",\"detail\":[]}".into(),
         "spot_interruption_warning: detail must be an object"),
        ("{\"alarmData\": {\"alarmName\": \"a\"}}".into(), "alarm_state_change: missing state"),
        ("{\"Messages\": [{\"MessageId\": \"m\"}]}".into(), "SQS message m: sqs_message: missing Body"),
    ];
    for (input, want) in cases {
        let err = parse_document(input.as_bytes()).unwrap_err().to_string();
        assert!(
            err.contains(want),
            "{input:?}\n  gave {err:?}\n  want {want:?}"
        );
    }
}

#[test]
fn the_lambda_events_sqs_types_agree_with_our_reading() {
    use aws_lambda_events::sqs::SqsEvent;
    let raw = fixture("lambda-sqs-event.json");
    let typed: SqsEvent = serde_json::from_slice(&raw).unwrap();
    let ours = parse_document(&raw).unwrap();
    assert_eq!(typed.records.len(), ours.len());
    assert_eq!(typed.records[0].message_id, ours[0].meta.message_id);
}

#[test]
fn a_health_scheduled_change_without_an_event_type_code_is_still_an_ec2_scheduled_change() {
    let mut event: serde_json::Value =
        serde_json::from_slice(&fixture("health-scheduled-change.json")).unwrap();
    event["detail"]
        .as_object_mut()
        .unwrap()
        .remove("eventTypeCode");
    let e = one(event.to_string().as_bytes());
    match &e {
        Event::ScheduledChange {
            event_type_code,
            instance_ids,
            ..
        } => {
            assert_eq!(event_type_code, "AWS_EC2_SCHEDULED_CHANGE");
            assert!(!instance_ids.is_empty());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(e.action(), EventAction::CordonAndDrain);
}

#[test]
fn every_action_has_its_json_name() {
    let all = [
        (EventAction::CordonAndDrain, "cordon_and_drain"),
        (EventAction::CordonAndReplace, "cordon_and_replace"),
        (EventAction::ForgetInstance, "forget_instance"),
        (
            EventAction::CompleteLaunchWhenReady,
            "complete_launch_when_ready",
        ),
        (
            EventAction::DrainThenCompleteLifecycle,
            "drain_then_complete_lifecycle",
        ),
        (
            EventAction::RecordCapacityFailure,
            "record_capacity_failure",
        ),
        (EventAction::Reconcile, "reconcile"),
        (EventAction::None, "none"),
    ];
    for (action, name) in all {
        assert_eq!(action.as_str(), name);
    }
}

fn state_change(state: &str) -> Event {
    let doc = format!(
        r#"{{"version":"0","id":"e1","detail-type":"EC2 Instance State-change Notification","source":"aws.ec2",
            "account":"123456789012","time":"2026-11-24T06:27:57Z","region":"us-east-1","resources":[],
            "detail":{{"instance-id":"i-0abc","state":"{state}"}}}}"#
    );
    one(doc.as_bytes())
}

#[test]
fn a_state_change_says_what_it_does_about_the_node() {
    let stopping = state_change("stopping");
    assert_eq!(stopping.action(), EventAction::CordonAndDrain);
    assert_eq!(
        stopping.reason(),
        "i-0abc is stopping: drain it and replace it"
    );
    let gone = state_change("terminated");
    assert_eq!(gone.action(), EventAction::ForgetInstance);
    assert!(
        gone.reason()
            .starts_with("i-0abc is terminated: forget its node"),
        "{}",
        gone.reason()
    );
    assert_eq!(
        state_change("running").reason(),
        "i-0abc is running: re-check capacity"
    );
}

#[test]
fn the_envelope_is_kept_with_the_event() {
    let parsed = parse_document(&fixture("health-scheduled-change.json")).unwrap();
    let meta = &parsed[0].meta;
    assert_eq!(
        meta.id.as_deref(),
        Some("7fb65329-1628-4cf3-a740-95fg457h1402")
    );
    assert_eq!(meta.source, "aws.health");
    assert_eq!(meta.detail_type.as_deref(), Some("AWS Health Event"));
    assert_eq!(meta.region.as_deref(), Some("us-east-1"));
    assert_eq!(meta.account.as_deref(), Some("123456789012"));
    assert_eq!(
        meta.time.map(|t| t.to_rfc3339()),
        Some("2026-11-24T06:27:57+00:00".to_owned())
    );
    assert!(
        matches!(&parsed[0].event, Event::ScheduledChange { event_type_code, .. }
            if event_type_code == "AWS_EC2_PERSISTENT_INSTANCE_RETIREMENT_SCHEDULED"),
        "the given code is kept: {:?}",
        parsed[0].event
    );
}

fn health(service: &str, category: &str) -> Event {
    let doc = format!(
        r#"{{"version":"0","id":"h","detail-type":"AWS Health Event","source":"aws.health",
            "account":"1","time":"2026-11-24T06:27:57Z","region":"us-east-1","resources":[],
            "detail":{{"service":"{service}","eventTypeCategory":"{category}",
                       "affectedEntities":[{{"entityValue":"i-1"}}]}}}}"#
    );
    one(doc.as_bytes())
}

#[test]
fn only_ec2_scheduled_changes_move_capacity() {
    assert_eq!(
        health("EC2", "scheduledChange").action(),
        EventAction::CordonAndDrain
    );
    assert_eq!(health("EC2", "issue").action(), EventAction::None);
    assert_eq!(health("RDS", "scheduledChange").action(), EventAction::None);
}

fn launch_unsuccessful(
    group: &str,
    message: &str,
) -> Result<Vec<zerospot_core::event::ParsedEvent>, EventError> {
    let doc = format!(
        r#"{{"version":"0","id":"l","detail-type":"EC2 Instance Launch Unsuccessful","source":"aws.autoscaling",
            "account":"1","time":"2026-11-24T06:27:57Z","region":"us-east-1","resources":[],
            "detail":{{"AutoScalingGroupName":"{group}","StatusMessage":"{message}","Cause":""}}}}"#
    );
    parse_document(doc.as_bytes())
}

#[test]
fn a_launch_failure_needs_its_group_and_keeps_a_message_only_when_there_is_one() {
    let e = launch_unsuccessful("gpu", "").unwrap().remove(0).event;
    assert!(
        matches!(&e, Event::LaunchUnsuccessful { message: None, .. }),
        "{e:?}"
    );
    let e = launch_unsuccessful(
        "gpu",
        "We currently do not have sufficient g5.xlarge capacity",
    )
    .unwrap()
    .remove(0)
    .event;
    assert!(
        matches!(&e, Event::LaunchUnsuccessful { message: Some(m), .. } if m.contains("sufficient")),
        "{e:?}"
    );
    assert!(
        launch_unsuccessful(" ", "x").is_err(),
        "a blank group name is no group"
    );
}
