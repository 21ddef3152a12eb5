//! One parser per event kind, each reading only the `detail` fields its action needs.

use super::{Event, EventError};
use serde::Serialize;
use serde_json::Value;

/// An Auto Scaling lifecycle action (launch or terminate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LifecycleAction {
    /// The group.
    pub asg_name: String,
    /// The instance held in `Pending:Wait` or `Terminating:Wait`.
    pub instance_id: String,
    /// The hook to complete.
    pub hook_name: String,
    /// The token `CompleteLifecycleAction` takes (the instance id works too).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// `autoscaling:EC2_INSTANCE_LAUNCHING` or `autoscaling:EC2_INSTANCE_TERMINATING`.
    pub transition: String,
}

/// A required, non-empty string field of `obj`.
pub(super) fn req_str(
    obj: &Value,
    key: &str,
    kind: &'static str,
    path: &'static str,
) -> Result<String, EventError> {
    match obj.get(key) {
        None | Some(Value::Null) => Err(EventError::MissingField { kind, field: path }),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(_) => Err(EventError::WrongType {
            kind,
            field: path,
            expected: "a non-empty string",
        }),
    }
}

/// An optional string field: absent, null, empty or not a string all read as `None`.
pub(super) fn opt_str(obj: &Value, key: &str) -> Option<String> {
    obj.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
        .map(str::to_owned)
}

fn detail<'a>(envelope: &'a Value, kind: &'static str) -> Result<&'a Value, EventError> {
    match envelope.get("detail") {
        Some(d @ Value::Object(_)) => Ok(d),
        None | Some(Value::Null) => Err(EventError::MissingField {
            kind,
            field: "detail",
        }),
        Some(_) => Err(EventError::WrongType {
            kind,
            field: "detail",
            expected: "an object",
        }),
    }
}

fn ignored(reason: String) -> Event {
    Event::Ignored { reason }
}

/// Routes an envelope by `(source, detail-type)` to its kind.
pub(super) fn route(
    source: &str,
    detail_type: &str,
    envelope: &Value,
) -> Result<Event, EventError> {
    match (source, detail_type) {
        ("aws.ec2", "EC2 Spot Instance Interruption Warning") => spot_interruption(envelope),
        ("aws.ec2", "EC2 Instance Rebalance Recommendation") => {
            let kind = "rebalance_recommendation";
            let d = detail(envelope, kind)?;
            Ok(Event::RebalanceRecommendation {
                instance_id: req_str(d, "instance-id", kind, "detail.instance-id")?,
            })
        }
        ("aws.ec2", "EC2 Instance State-change Notification") => {
            let kind = "instance_state_change";
            let d = detail(envelope, kind)?;
            Ok(Event::InstanceStateChange {
                instance_id: req_str(d, "instance-id", kind, "detail.instance-id")?,
                state: req_str(d, "state", kind, "detail.state")?,
            })
        }
        ("aws.autoscaling", "EC2 Instance-launch Lifecycle Action") => {
            lifecycle(detail(envelope, "lifecycle_launch")?, "lifecycle_launch")
                .map(Event::LifecycleLaunch)
        }
        ("aws.autoscaling", "EC2 Instance-terminate Lifecycle Action") => lifecycle(
            detail(envelope, "lifecycle_terminate")?,
            "lifecycle_terminate",
        )
        .map(Event::LifecycleTerminate),
        ("aws.autoscaling", "EC2 Instance Launch Unsuccessful") => launch_unsuccessful(envelope),
        ("aws.health", "AWS Health Event") => health(envelope),
        ("aws.cloudwatch", "CloudWatch Alarm State Change") => {
            let kind = "alarm_state_change";
            let d = detail(envelope, kind)?;
            alarm(d, kind)
        }
        ("aws.events", "Scheduled Event") => Ok(Event::ScheduledEvent {
            rule: envelope
                .get("resources")
                .and_then(Value::as_array)
                .and_then(|r| r.first())
                .and_then(Value::as_str)
                .map(str::to_owned),
        }),
        _ => Ok(ignored(format!(
            "no action for {detail_type:?} from {source:?}"
        ))),
    }
}

fn spot_interruption(envelope: &Value) -> Result<Event, EventError> {
    let kind = "spot_interruption_warning";
    let d = detail(envelope, kind)?;
    Ok(Event::SpotInterruptionWarning {
        instance_id: req_str(d, "instance-id", kind, "detail.instance-id")?,
        // AWS always sends it; if it is missing, the instance is still going away.
        instance_action: opt_str(d, "instance-action").unwrap_or_else(|| "terminate".into()),
    })
}

/// A lifecycle action's fields: in an EventBridge `detail`, or a hook's direct SQS notification.
pub(super) fn lifecycle(d: &Value, kind: &'static str) -> Result<LifecycleAction, EventError> {
    Ok(LifecycleAction {
        asg_name: req_str(
            d,
            "AutoScalingGroupName",
            kind,
            "detail.AutoScalingGroupName",
        )?,
        instance_id: req_str(d, "EC2InstanceId", kind, "detail.EC2InstanceId")?,
        hook_name: req_str(d, "LifecycleHookName", kind, "detail.LifecycleHookName")?,
        token: opt_str(d, "LifecycleActionToken"),
        transition: opt_str(d, "LifecycleTransition").unwrap_or_default(),
    })
}

fn launch_unsuccessful(envelope: &Value) -> Result<Event, EventError> {
    let kind = "launch_unsuccessful";
    let d = detail(envelope, kind)?;
    let message = [opt_str(d, "StatusMessage"), opt_str(d, "Cause")]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" / ");
    let lower = message.to_ascii_lowercase();
    let capacity_shortage = ["insufficientinstancecapacity", "capacity", "spot request"]
        .iter()
        .any(|k| lower.contains(k));
    Ok(Event::LaunchUnsuccessful {
        asg_name: req_str(
            d,
            "AutoScalingGroupName",
            kind,
            "detail.AutoScalingGroupName",
        )?,
        instance_id: opt_str(d, "EC2InstanceId"),
        message: (!message.is_empty()).then_some(message),
        capacity_shortage,
    })
}

fn health(envelope: &Value) -> Result<Event, EventError> {
    let kind = "scheduled_change";
    let d = detail(envelope, kind)?;
    let service = opt_str(d, "service").unwrap_or_default();
    let category = opt_str(d, "eventTypeCategory").unwrap_or_default();
    if service != "EC2" || category != "scheduledChange" {
        return Ok(ignored(format!(
            "AWS Health event for service {service:?}, category {category:?}: only EC2 scheduled changes \
             move capacity"
        )));
    }
    // Lenient where AWS's documents vary, as the Node Termination Handler is: an EC2 scheduled change
    // is one by its service and category; the code only says which kind (retirement, reboot, ...).
    let event_type_code = opt_str(d, "eventTypeCode")
        .filter(|c| !c.trim().is_empty())
        .unwrap_or_else(|| "AWS_EC2_SCHEDULED_CHANGE".to_owned());
    let instance_ids: Vec<String> = match d.get("affectedEntities") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(entities)) => entities
            .iter()
            .filter_map(|e| e.get("entityValue").and_then(Value::as_str))
            .filter(|v| v.starts_with("i-"))
            .map(str::to_owned)
            .collect(),
        Some(_) => {
            return Err(EventError::WrongType {
                kind,
                field: "detail.affectedEntities",
                expected: "an array",
            });
        }
    };
    if instance_ids.is_empty() {
        return Ok(ignored(format!(
            "AWS Health {event_type_code} names no EC2 instance in detail.affectedEntities"
        )));
    }
    Ok(Event::ScheduledChange {
        event_type_code,
        instance_ids,
        start_time: opt_str(d, "startTime"),
    })
}

/// An alarm's name and states, from an EventBridge `detail` or a Lambda action's `alarmData`.
pub(super) fn alarm(d: &Value, kind: &'static str) -> Result<Event, EventError> {
    let state = d.get("state").ok_or(EventError::MissingField {
        kind,
        field: "state",
    })?;
    Ok(Event::AlarmStateChange {
        alarm_name: req_str(d, "alarmName", kind, "alarmName")?,
        state: req_str(state, "value", kind, "state.value")?,
        previous_state: d.get("previousState").and_then(|p| opt_str(p, "value")),
    })
}
