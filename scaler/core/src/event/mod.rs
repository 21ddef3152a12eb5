//! AWS events that move capacity, parsed into one typed model per kind, and the action for each.
//!
//! Events arrive as an EventBridge envelope (directly, as a Lambda function's input, or as the body of an
//! SQS message), or as a CloudWatch alarm's Lambda action. [`parse_document`] takes any of these shapes,
//! routes each envelope by `(source, detail-type)` to its kind, and returns the events in it.
//!
//! # Guarantees
//! - A well-formed event of a kind we do not act on is [`Event::Ignored`] with a reason, never an error.
//! - Only what an action needs is required: a missing or malformed envelope `id`, `time` or `account`
//!   never drops an event we can act on.
//! - The instance acted on is the one in the event's `detail`, not in `resources`.
//! - Malformed input is an [`EventError`] that names what is wrong; nothing here panics (fuzzed).

mod document;
mod kinds;

pub use document::{DocumentItem, parse_document, parse_document_items, parse_event_value};
pub use kinds::LifecycleAction;

use chrono::{DateTime, Utc};
use serde::Serialize;
use thiserror::Error;

/// The envelope fields that are not needed to act, kept when present.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Meta {
    /// EventBridge event id (for logs and de-duplication).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `source`, e.g. `aws.ec2`.
    pub source: String,
    /// `detail-type`, e.g. `EC2 Spot Instance Interruption Warning`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail_type: Option<String>,
    /// When the event happened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<DateTime<Utc>>,
    /// AWS region.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// AWS account id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
    /// SQS message id, when the event came in a queue message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
}

/// One event, typed by kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// EC2 Spot Instance Interruption Warning: the instance is reclaimed two minutes later.
    SpotInterruptionWarning {
        /// The instance.
        instance_id: String,
        /// `terminate`, `stop` or `hibernate`.
        instance_action: String,
    },
    /// EC2 Instance Rebalance Recommendation: elevated risk of interruption.
    RebalanceRecommendation {
        /// The instance.
        instance_id: String,
    },
    /// EC2 Instance State-change Notification.
    InstanceStateChange {
        /// The instance.
        instance_id: String,
        /// `pending`, `running`, `stopping`, `stopped`, `shutting-down` or `terminated`.
        state: String,
    },
    /// EC2 Instance-launch Lifecycle Action.
    LifecycleLaunch(LifecycleAction),
    /// EC2 Instance-terminate Lifecycle Action.
    LifecycleTerminate(LifecycleAction),
    /// EC2 Instance Launch Unsuccessful: an Auto Scaling group could not launch (often no Spot capacity).
    LaunchUnsuccessful {
        /// The group.
        asg_name: String,
        /// The instance, when one was created before failing.
        #[serde(skip_serializing_if = "Option::is_none")]
        instance_id: Option<String>,
        /// `StatusMessage` and `Cause`, as given.
        #[serde(skip_serializing_if = "Option::is_none")]
        message: Option<String>,
        /// Whether the message says capacity was short (InsufficientInstanceCapacity, no Spot capacity).
        capacity_shortage: bool,
    },
    /// AWS Health scheduled change for EC2 instances (retirement, maintenance, reboot).
    ScheduledChange {
        /// `eventTypeCode`, e.g. `AWS_EC2_PERSISTENT_INSTANCE_RETIREMENT_SCHEDULED`; when the event has
        /// none, `AWS_EC2_SCHEDULED_CHANGE` (it is still an EC2 scheduled change).
        event_type_code: String,
        /// Affected instances, from `affectedEntities`.
        instance_ids: Vec<String>,
        /// When the change starts, when given.
        #[serde(skip_serializing_if = "Option::is_none")]
        start_time: Option<String>,
    },
    /// CloudWatch Alarm State Change (EventBridge), or a CloudWatch alarm's Lambda action.
    AlarmStateChange {
        /// Alarm name.
        alarm_name: String,
        /// New state: `OK`, `ALARM` or `INSUFFICIENT_DATA`.
        state: String,
        /// Previous state, when given.
        #[serde(skip_serializing_if = "Option::is_none")]
        previous_state: Option<String>,
    },
    /// EventBridge Scheduled Event (a rate or cron rule).
    ScheduledEvent {
        /// The rule's ARN, when given.
        #[serde(skip_serializing_if = "Option::is_none")]
        rule: Option<String>,
    },
    /// A well-formed event of a kind we do not act on.
    Ignored {
        /// Why.
        reason: String,
    },
}

/// What zerospot does about an event. One pure mapping, [`Event::action`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventAction {
    /// Cordon the node, evict its pods (their in-flight requests go back to the queue), request a
    /// replacement now.
    CordonAndDrain,
    /// Cordon the node and request a replacement; running requests finish.
    CordonAndReplace,
    /// The instance is gone: forget its node and re-queue anything still assigned to it.
    ForgetInstance,
    /// Hold the launch until the node is GPU-ready, then complete the lifecycle action.
    CompleteLaunchWhenReady,
    /// Drain the node, then complete the terminate lifecycle action.
    DrainThenCompleteLifecycle,
    /// Count a capacity failure against the pool (after enough, its demand goes to the fallback pool).
    RecordCapacityFailure,
    /// Re-run the scaling decision now.
    Reconcile,
    /// Nothing.
    None,
}

impl EventAction {
    /// The snake_case name used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            EventAction::CordonAndDrain => "cordon_and_drain",
            EventAction::CordonAndReplace => "cordon_and_replace",
            EventAction::ForgetInstance => "forget_instance",
            EventAction::CompleteLaunchWhenReady => "complete_launch_when_ready",
            EventAction::DrainThenCompleteLifecycle => "drain_then_complete_lifecycle",
            EventAction::RecordCapacityFailure => "record_capacity_failure",
            EventAction::Reconcile => "reconcile",
            EventAction::None => "none",
        }
    }
}

impl Event {
    /// The kind's snake_case name (`spot_interruption_warning`, ..., `ignored`).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::SpotInterruptionWarning { .. } => "spot_interruption_warning",
            Event::RebalanceRecommendation { .. } => "rebalance_recommendation",
            Event::InstanceStateChange { .. } => "instance_state_change",
            Event::LifecycleLaunch(_) => "lifecycle_launch",
            Event::LifecycleTerminate(_) => "lifecycle_terminate",
            Event::LaunchUnsuccessful { .. } => "launch_unsuccessful",
            Event::ScheduledChange { .. } => "scheduled_change",
            Event::AlarmStateChange { .. } => "alarm_state_change",
            Event::ScheduledEvent { .. } => "scheduled_event",
            Event::Ignored { .. } => "ignored",
        }
    }

    /// The instances this event is about (from its detail).
    pub fn instance_ids(&self) -> Vec<&str> {
        match self {
            Event::SpotInterruptionWarning { instance_id, .. }
            | Event::RebalanceRecommendation { instance_id }
            | Event::InstanceStateChange { instance_id, .. } => vec![instance_id],
            Event::LifecycleLaunch(a) | Event::LifecycleTerminate(a) => vec![&a.instance_id],
            Event::LaunchUnsuccessful { instance_id, .. } => {
                instance_id.iter().map(String::as_str).collect()
            }
            Event::ScheduledChange { instance_ids, .. } => {
                instance_ids.iter().map(String::as_str).collect()
            }
            Event::AlarmStateChange { .. }
            | Event::ScheduledEvent { .. }
            | Event::Ignored { .. } => Vec::new(),
        }
    }

    /// What zerospot does about this event.
    pub fn action(&self) -> EventAction {
        match self {
            Event::SpotInterruptionWarning { .. } | Event::ScheduledChange { .. } => {
                EventAction::CordonAndDrain
            }
            Event::RebalanceRecommendation { .. } => EventAction::CordonAndReplace,
            Event::InstanceStateChange { state, .. } => match state.as_str() {
                "stopping" | "shutting-down" => EventAction::CordonAndDrain,
                "stopped" | "terminated" => EventAction::ForgetInstance,
                _ => EventAction::Reconcile,
            },
            Event::LifecycleLaunch(_) => EventAction::CompleteLaunchWhenReady,
            Event::LifecycleTerminate(_) => EventAction::DrainThenCompleteLifecycle,
            Event::LaunchUnsuccessful { .. } => EventAction::RecordCapacityFailure,
            Event::AlarmStateChange { .. } | Event::ScheduledEvent { .. } => EventAction::Reconcile,
            Event::Ignored { .. } => EventAction::None,
        }
    }

    /// Why, in words, for logs and `zerospot explain-event`.
    pub fn reason(&self) -> String {
        match self {
            Event::SpotInterruptionWarning {
                instance_id,
                instance_action,
            } => format!(
                "Spot will {instance_action} {instance_id} in two minutes: stop sending it work, evict its \
                 pods so their requests return to the queue, and launch a replacement now"
            ),
            Event::RebalanceRecommendation { instance_id } => format!(
                "{instance_id} is at elevated risk of Spot interruption: no new work there, launch a \
                 replacement; running requests finish"
            ),
            Event::InstanceStateChange { instance_id, state } => match self.action() {
                EventAction::CordonAndDrain => {
                    format!("{instance_id} is {state}: drain it and replace it")
                }
                EventAction::ForgetInstance => format!(
                    "{instance_id} is {state}: forget its node; requests it held come back from the queue"
                ),
                _ => format!("{instance_id} is {state}: re-check capacity"),
            },
            Event::LifecycleLaunch(a) => format!(
                "{} is launching in {}: complete hook {} once its GPU is ready",
                a.instance_id, a.asg_name, a.hook_name
            ),
            Event::LifecycleTerminate(a) => format!(
                "{} is terminating in {}: drain it, then complete hook {}",
                a.instance_id, a.asg_name, a.hook_name
            ),
            Event::LaunchUnsuccessful {
                asg_name,
                capacity_shortage,
                message,
                ..
            } => format!(
                "launch failed in {asg_name}{}: {}",
                if *capacity_shortage {
                    " (no capacity)"
                } else {
                    ""
                },
                message.as_deref().unwrap_or("no message")
            ),
            Event::ScheduledChange {
                event_type_code,
                instance_ids,
                start_time,
            } => format!(
                "AWS Health {event_type_code} for {} from {}: move work off them before it starts",
                instance_ids.join(", "),
                start_time.as_deref().unwrap_or("an unknown time")
            ),
            Event::AlarmStateChange {
                alarm_name, state, ..
            } => format!("alarm {alarm_name} is {state}: re-check demand and capacity"),
            Event::ScheduledEvent { rule } => format!(
                "scheduled tick from {}: re-check demand and capacity",
                rule.as_deref().unwrap_or("a rule")
            ),
            Event::Ignored { reason } => reason.clone(),
        }
    }
}

/// An event together with the envelope fields that came with it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParsedEvent {
    /// Envelope fields, when present.
    pub meta: Meta,
    /// The typed event.
    pub event: Event,
}

/// Input that is not an event we can read.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum EventError {
    /// Not JSON at all.
    #[error("not JSON: {message} (line {line}, column {column})")]
    NotJson {
        /// serde_json's message.
        message: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
    },
    /// JSON, but not one of the document shapes we read.
    #[error(
        "not an EventBridge event, SQS ReceiveMessage output, Lambda SQS event or alarm action ({0})"
    )]
    UnknownDocument(String),
    /// A field an action needs is missing.
    #[error("{kind}: missing {field}")]
    MissingField {
        /// Event kind.
        kind: &'static str,
        /// JSON path of the field.
        field: &'static str,
    },
    /// A field an action needs has the wrong type or an empty value.
    #[error("{kind}: {field} must be {expected}")]
    WrongType {
        /// Event kind (or document part).
        kind: &'static str,
        /// JSON path of the field.
        field: &'static str,
        /// What was expected.
        expected: &'static str,
    },
    /// One SQS message's body is not an event.
    #[error("SQS message {message_id}: {source}")]
    BadMessage {
        /// Its message id, or `#<index>` when it has none.
        message_id: String,
        /// What is wrong with the body.
        #[source]
        source: Box<EventError>,
    },
}
