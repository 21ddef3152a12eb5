//! The Spot interruption function: EventBridge events about instances (Spot interruption warnings,
//! rebalance recommendations, instance state changes, Auto Scaling lifecycle actions, AWS Health
//! scheduled changes, launch failures), given to it directly by an EventBridge rule or as an SQS batch.
//!
//! # Rules
//! - Every event goes to [`zerospot_effects::disruption::Responder::handle`]: mark the Node, then one pass
//!   of the core policy through the effects layer. This crate writes no cordon, drain or capacity change.
//! - **SQS batches** are answered with a [`aws_lambda_events::event::sqs::SqsBatchResponse`] naming only
//!   the messages to try again: a malformed body (it ends in the queue's dead-letter queue after
//!   `maxReceiveCount` tries, where an operator sees it, and never blocks the other messages), a
//!   handling that failed, a launch not ready yet. A well-formed event we do not act on is logged and
//!   deleted.
//! - **Direct invocations** (an EventBridge rule's Lambda target) return what was done; a handling that
//!   failed and may succeed later is an error, so Lambda's asynchronous retries try it again; a malformed
//!   or unknown event is logged and answered, never retried.
//! - The events of a batch are handled one after the other: two warnings for two nodes of one group must
//!   each see the other's replacement, or the second would ask for the same capacity as the first.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use thiserror::Error;
use zerospot_core::event::parse_document_items;
use zerospot_effects::disruption::{self, Responder};

/// A direct invocation whose handling failed and may succeed if tried again.
#[derive(Debug, Error)]
#[error("handling {kind} failed (retryable): {source}")]
pub struct Retry {
    /// The event's kind.
    pub kind: String,
    /// Why.
    #[source]
    pub source: disruption::Error,
}

/// Handles one invocation's payload at `now` within `budget`. See the module docs.
pub async fn handle(
    responder: &Responder<'_>,
    payload: &Value,
    now: DateTime<Utc>,
    budget: Duration,
) -> Result<Value, Retry> {
    let started = std::time::Instant::now();
    let sqs = zerospot_functions::is_sqs_batch(payload);
    let bytes = serde_json::to_vec(payload).unwrap_or_default();
    let items = match parse_document_items(&bytes) {
        Ok(items) => items,
        Err(e) => {
            tracing::warn!(error = %e, "not an event: logged and dropped");
            return Ok(if sqs {
                // The batch itself is unreadable: every message goes back (and on to the DLQ).
                zerospot_functions::batch_response(zerospot_functions::message_ids(payload))
            } else {
                json!({"ignored": e.to_string()})
            });
        }
    };
    let mut failed = Vec::new();
    let mut results = Vec::new();
    for item in items {
        let id = item.message_id.clone();
        let left = budget.saturating_sub(started.elapsed());
        match item.result {
            Err(e) => {
                tracing::warn!(message_id = ?id, error = %e, "malformed event: not acted on");
                results.push(json!({"message_id": id, "malformed": e.to_string()}));
                if let Some(id) = id {
                    failed.push(id);
                }
            }
            Ok(event) => match responder.handle(&event, now, left).await {
                Ok(handled) => {
                    tracing::info!(
                        message_id = ?id,
                        kind = handled.kind,
                        instances = ?handled.instances,
                        ignored = ?handled.ignored,
                        marked = ?handled.marked,
                        actions = handled.actions.len(),
                        "event handled"
                    );
                    if handled.retry_later.is_some()
                        && let Some(id) = id.clone()
                    {
                        failed.push(id);
                    }
                    results.push(serde_json::to_value(&handled).unwrap_or(Value::Null));
                }
                Err(e) => {
                    let kind = event_kind(&event.event);
                    tracing::error!(message_id = ?id, kind, error = %e, retryable = e.retryable(), "handling failed");
                    match id {
                        Some(id) => failed.push(id),
                        None if e.retryable() => return Err(Retry { kind, source: e }),
                        None => results.push(json!({"kind": kind, "failed": e.to_string()})),
                    }
                }
            },
        }
    }
    if sqs {
        Ok(zerospot_functions::batch_response(failed))
    } else {
        Ok(json!({"events": results}))
    }
}

fn event_kind(event: &zerospot_core::event::Event) -> String {
    serde_json::to_value(event)
        .ok()
        .and_then(|v| v.get("kind").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default()
}
