//! The queue-depth function: scales the GPU groups **up**, never down, from the model queues' depth
//! (visible and in-flight messages), the PodAutoscalers and pending pods, with the core policy. Scale-in
//! belongs to the companion scaler's drain logic; this function only makes sure a request never waits
//! for a scaler that is down.
//!
//! # Triggers
//! 1. **The first request**, through a *notification* queue, never the request queue. Clients publish
//!    requests to an SNS topic; the topic delivers each one (raw message delivery, filtered by the
//!    `model` message attribute) to that model's request queue, which only the dispatcher reads, and to
//!    one shared notification queue, which is this function's SQS event source (batch size 10, no
//!    batching window, maximum concurrency 2). Equivalently, an EventBridge Pipe from the notification
//!    queue to the function. Why this design:
//!    - *Safe*: nothing but the dispatcher ever receives from a request queue, so no request can be
//!      hidden (in flight to us), delayed by a visibility timeout, or deleted by this function. The
//!      notification copies carry no custody: the function reads the depth through
//!      `GetQueueAttributes` (which changes nothing) and deletes only the copies. A lost or failed
//!      notification loses nothing: the schedule and the alarm below, and the scaler's own 1 s poll,
//!      read the same depth.
//!    - *Fast*: SNS delivers to SQS in tens of milliseconds, Lambda's SQS pollers long-poll and invoke
//!      within about a second, and one invocation takes a pool from 0 to the nodes its demand needs
//!      (measured here: a few milliseconds of handling with fakes; a `SetDesiredCapacity` on AWS).
//!      A CloudWatch alarm on `ApproximateNumberOfMessagesVisible` alone would take one to three minutes
//!      (SQS metrics are per minute), and attaching the function to the request queue itself would steal
//!      requests from the dispatcher.
//!    - *Cheap and idempotent*: a burst of requests is a few batches; every invocation computes the same
//!      desired capacity from the same depth, so duplicates and concurrency change nothing.
//! 2. **An EventBridge schedule** (`rate(1 minute)`), the safety net.
//! 3. **A CloudWatch alarm** on the queues' depth, as an alarm action or an EventBridge
//!    `CloudWatch Alarm State Change` rule.
//!
//! Whatever the trigger, the payload only says *when* to look; what to do comes from the depth read
//! now. An SQS batch is answered with a batch response: no failure when the pass succeeded, every
//! message when it failed (they come back, and the next try reads the depth again).

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use thiserror::Error;
use zerospot_effects::disruption::{self, Responder, Scope};

/// A direct invocation whose pass failed.
#[derive(Debug, Error)]
#[error("scaling up from queue depth failed: {0}")]
pub struct Failed(#[from] pub disruption::Error);

/// What started an invocation, for logs.
pub fn trigger(payload: &Value) -> &'static str {
    if zerospot_functions::is_sqs_batch(payload) {
        "notification"
    } else if payload.get("alarmData").is_some() {
        "alarm action"
    } else {
        match payload.get("detail-type").and_then(Value::as_str) {
            Some("Scheduled Event") => "schedule",
            Some("CloudWatch Alarm State Change") => "alarm",
            _ => "invocation",
        }
    }
}

/// Handles one invocation's payload at `now`: one scale-up-only pass.
pub async fn handle(
    responder: &Responder<'_>,
    payload: &Value,
    now: DateTime<Utc>,
) -> Result<Value, Failed> {
    let trigger = trigger(payload);
    let sqs = zerospot_functions::is_sqs_batch(payload);
    match responder.reconcile(now, Scope::ScaleUpOnly).await {
        Ok(pass) => {
            tracing::info!(
                trigger,
                actions = ?pass.actions,
                pools = %serde_json::to_string(&pass.decision.pools).unwrap_or_default(),
                "queue depth read"
            );
            Ok(if sqs {
                zerospot_functions::batch_response(Vec::new())
            } else {
                json!({"trigger": trigger, "actions": pass.actions})
            })
        }
        Err(e) => {
            tracing::error!(trigger, error = %e, "scale-up pass failed");
            if sqs {
                Ok(zerospot_functions::batch_response(
                    zerospot_functions::message_ids(payload),
                ))
            } else {
                Err(Failed(e))
            }
        }
    }
}
