//! The document shapes events arrive in, and how each is unwrapped.
//!
//! | shape | recognised by | events |
//! |---|---|---|
//! | EventBridge event | `detail-type` and `source` | one |
//! | CloudWatch alarm Lambda action | `alarmData` | one |
//! | Lambda SQS event | `Records` | one per record `body` |
//! | SQS `ReceiveMessage` output | `Messages` | one per message `Body` |
//! | Auto Scaling hook notification sent straight to SQS | `LifecycleTransition` | one |

use super::kinds::{self, opt_str};
use super::{Event, EventError, Meta, ParsedEvent};
use chrono::{DateTime, Utc};
use serde_json::Value;

/// One event of a document, or why that part of it could not be read (SQS batches: one bad message
/// must not hide the others).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentItem {
    /// SQS message id, when the document is a batch.
    pub message_id: Option<String>,
    /// The event, or what is wrong with this message.
    pub result: Result<ParsedEvent, EventError>,
}

/// Parses a document into its events; the first unreadable message fails the whole document.
pub fn parse_document(input: &[u8]) -> Result<Vec<ParsedEvent>, EventError> {
    parse_document_items(input)?
        .into_iter()
        .map(|item| item.result)
        .collect()
}

/// Parses a document into one item per event. `Err` only when the document itself is unreadable; a
/// batch's bad message is an item with an error.
pub fn parse_document_items(input: &[u8]) -> Result<Vec<DocumentItem>, EventError> {
    let value = parse_json(input)?;
    let Value::Object(map) = &value else {
        return Err(EventError::UnknownDocument(format!(
            "top level is {}, not an object",
            type_name(&value)
        )));
    };
    if let Some(records) = map.get("Records") {
        return batch(records, "Records", "messageId", "body");
    }
    if let Some(messages) = map.get("Messages") {
        return batch(messages, "Messages", "MessageId", "Body");
    }
    Ok(vec![DocumentItem {
        message_id: None,
        result: parse_event_value(&value),
    }])
}

fn batch(
    list: &Value,
    field: &'static str,
    id_key: &str,
    body_key: &str,
) -> Result<Vec<DocumentItem>, EventError> {
    let Value::Array(list) = list else {
        return Err(EventError::WrongType {
            kind: "document",
            field,
            expected: "an array",
        });
    };
    Ok(list
        .iter()
        .enumerate()
        .map(|(i, message)| {
            let message_id = opt_str(message, id_key);
            let result = match message.get(body_key).and_then(Value::as_str) {
                Some(body) => parse_json(body.as_bytes()).and_then(|v| parse_event_value(&v)),
                None => Err(EventError::MissingField {
                    kind: "sqs_message",
                    field: if field == "Records" { "body" } else { "Body" },
                }),
            }
            .map(|mut event| {
                event.meta.message_id.clone_from(&message_id);
                event
            })
            .map_err(|source| EventError::BadMessage {
                message_id: message_id.clone().unwrap_or_else(|| format!("#{i}")),
                source: Box::new(source),
            });
            DocumentItem { message_id, result }
        })
        .collect())
}

/// Parses one event from an already-decoded JSON value: an EventBridge envelope, an alarm's Lambda
/// action, or an Auto Scaling hook notification.
pub fn parse_event_value(value: &Value) -> Result<ParsedEvent, EventError> {
    if !value.is_object() {
        return Err(EventError::UnknownDocument(format!(
            "event is {}, not an object",
            type_name(value)
        )));
    }
    if let Some(detail_type) = value.get("detail-type") {
        let detail_type = detail_type.as_str().ok_or(EventError::WrongType {
            kind: "eventbridge",
            field: "detail-type",
            expected: "a string",
        })?;
        let source = kinds::req_str(value, "source", "eventbridge", "source")?;
        let event = kinds::route(&source, detail_type, value)?;
        return Ok(ParsedEvent {
            meta: meta(value, source, Some(detail_type.to_owned())),
            event,
        });
    }
    if let Some(alarm) = value.get("alarmData") {
        let event = kinds::alarm(alarm, "alarm_state_change")?;
        let source = opt_str(value, "source").unwrap_or_else(|| "aws.cloudwatch".into());
        let mut meta = meta(value, source, None);
        meta.account = opt_str(value, "accountId");
        return Ok(ParsedEvent { meta, event });
    }
    if value.get("Event").and_then(Value::as_str) == Some("autoscaling:TEST_NOTIFICATION") {
        return Ok(ParsedEvent {
            meta: meta(value, "aws.autoscaling".into(), None),
            event: Event::Ignored {
                reason: "Auto Scaling test notification".into(),
            },
        });
    }
    if let Some(transition) = value.get("LifecycleTransition").and_then(Value::as_str) {
        let (kind, launch) = match transition {
            "autoscaling:EC2_INSTANCE_LAUNCHING" => ("lifecycle_launch", true),
            "autoscaling:EC2_INSTANCE_TERMINATING" => ("lifecycle_terminate", false),
            other => {
                return Ok(ParsedEvent {
                    meta: meta(value, "aws.autoscaling".into(), None),
                    event: Event::Ignored {
                        reason: format!("no action for lifecycle transition {other:?}"),
                    },
                });
            }
        };
        let action = kinds::lifecycle(value, kind)?;
        let event = if launch {
            Event::LifecycleLaunch(action)
        } else {
            Event::LifecycleTerminate(action)
        };
        return Ok(ParsedEvent {
            meta: meta(value, "aws.autoscaling".into(), None),
            event,
        });
    }
    let mut keys: Vec<&str> = value
        .as_object()
        .map(|m| m.keys().map(String::as_str).take(8).collect())
        .unwrap_or_default();
    keys.sort_unstable();
    Err(EventError::UnknownDocument(format!(
        "top-level keys: [{}]",
        keys.join(", ")
    )))
}

fn meta(value: &Value, source: String, detail_type: Option<String>) -> Meta {
    Meta {
        id: opt_str(value, "id"),
        source,
        detail_type,
        time: opt_str(value, "time").and_then(|t| parse_time(&t)),
        region: opt_str(value, "region"),
        account: opt_str(value, "account"),
        message_id: None,
    }
}

fn parse_time(t: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(t)
        .or_else(|_| DateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f%z"))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn parse_json(input: &[u8]) -> Result<Value, EventError> {
    serde_json::from_slice(input).map_err(|e| EventError::NotJson {
        message: e
            .to_string()
            .split(" at line")
            .next()
            .unwrap_or_default()
            .to_owned(),
        line: e.line(),
        column: e.column(),
    })
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
