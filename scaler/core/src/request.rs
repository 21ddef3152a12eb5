//! The request schema: what a client puts on the request queue, versioned JSON.
//!
//! ```json
//! {"version": 1, "id": "req-42", "model": "llama3.2:1b",
//!  "messages": [{"role": "user", "content": "Why is the sky blue?"}],
//!  "options": {"temperature": 0.2}, "stream": false,
//!  "reply_to": "https://sqs.us-east-1.amazonaws.com/123456789012/replies",
//!  "deadline": "2026-11-24T10:05:00Z", "attempt": 0}
//! ```
//! Exactly one of `messages` (Ollama `/api/chat`) or `prompt` (Ollama `/api/generate`) is given. The
//! dispatcher bumps `attempt` each time it re-queues a request.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The schema version this build reads and writes.
pub const CURRENT_VERSION: u32 = 1;

/// SQS's largest message body: 256 KiB.
pub const MAX_BODY_BYTES: usize = 262_144;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// The text.
    pub content: String,
}

/// What the model is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A chat (Ollama `/api/chat`).
    Chat(Vec<ChatMessage>),
    /// A completion prompt (Ollama `/api/generate`).
    Prompt(String),
}

/// A validated request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Schema version.
    pub version: u32,
    /// Client's id, echoed in the reply; also the idempotency key.
    pub id: String,
    /// Model name.
    pub model: String,
    /// Chat messages or a prompt.
    pub input: Input,
    /// Ollama options (temperature, num_predict, ...), passed to the model exactly as the client wrote
    /// them (numbers are never re-printed, so `0.1` stays `0.1` and a 130-digit number keeps every digit).
    pub options: Option<RawOptions>,
    /// Whether the reply is streamed in chunks.
    pub stream: bool,
    /// Queue URL the reply goes to.
    pub reply_to: Option<String>,
    /// After this the request is dropped (with an error reply) rather than served.
    pub deadline: Option<DateTime<Utc>>,
    /// How many times it was dispatched before.
    pub attempt: u32,
}

/// A JSON object kept as the client wrote it, byte for byte.
#[derive(Debug, Clone)]
pub struct RawOptions(Box<serde_json::value::RawValue>);

impl RawOptions {
    /// Wraps JSON text that must be an object.
    pub fn from_json(text: &str) -> Result<Self, RequestError> {
        let raw = serde_json::value::RawValue::from_string(text.to_owned())
            .map_err(|e| RequestError::Malformed(format!("options: {e}")))?;
        Self::checked(raw)
    }

    fn checked(raw: Box<serde_json::value::RawValue>) -> Result<Self, RequestError> {
        if raw.get().trim_start().starts_with('{') {
            Ok(RawOptions(raw))
        } else {
            Err(RequestError::Malformed(
                "options must be a JSON object".into(),
            ))
        }
    }

    /// The JSON text, exactly as received.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// The raw value, for embedding in another JSON document unchanged.
    pub fn raw(&self) -> &serde_json::value::RawValue {
        &self.0
    }
}

impl PartialEq for RawOptions {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

/// The wire form, before validation.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    version: Option<u32>,
    id: Option<String>,
    model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    messages: Option<Vec<ChatMessage>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    options: Option<Box<serde_json::value::RawValue>>,
    #[serde(default)]
    stream: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reply_to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deadline: Option<DateTime<Utc>>,
    #[serde(default)]
    attempt: u32,
}

/// Why a request body is refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RequestError {
    /// Larger than SQS accepts.
    #[error("request is {bytes} bytes; SQS takes at most {limit}")]
    TooLarge {
        /// Its size.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// Not JSON, or a field of the wrong type, or a field we do not know.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// No `version`.
    #[error("missing version (this build reads version {CURRENT_VERSION})")]
    MissingVersion,
    /// A version this build does not read.
    #[error("unknown version {0} (this build reads version {CURRENT_VERSION})")]
    UnknownVersion(u32),
    /// No or empty `id`.
    #[error("missing id")]
    MissingId,
    /// No or empty `model`.
    #[error("missing model")]
    MissingModel,
    /// Neither messages nor prompt.
    #[error("give messages or prompt")]
    NoInput,
    /// Both messages and prompt.
    #[error("give messages or prompt, not both")]
    BothInputs,
    /// `messages: []`.
    #[error("messages is empty")]
    EmptyMessages,
    /// `prompt: ""`.
    #[error("prompt is empty")]
    EmptyPrompt,
    /// The deadline is not after now.
    #[error("deadline {deadline} already passed (now {now})")]
    DeadlinePassed {
        /// The request's deadline.
        deadline: DateTime<Utc>,
        /// Now.
        now: DateTime<Utc>,
    },
}

impl Request {
    /// Reads and validates a queue message body at `now`.
    pub fn parse(body: &str, now: DateTime<Utc>) -> Result<Request, RequestError> {
        if body.len() > MAX_BODY_BYTES {
            return Err(RequestError::TooLarge {
                bytes: body.len(),
                limit: MAX_BODY_BYTES,
            });
        }
        let wire: Wire =
            serde_json::from_str(body).map_err(|e| RequestError::Malformed(e.to_string()))?;
        let version = wire.version.ok_or(RequestError::MissingVersion)?;
        if version != CURRENT_VERSION {
            return Err(RequestError::UnknownVersion(version));
        }
        let id = wire
            .id
            .filter(|s| !s.trim().is_empty())
            .ok_or(RequestError::MissingId)?;
        let model = wire
            .model
            .filter(|s| !s.trim().is_empty())
            .ok_or(RequestError::MissingModel)?;
        let input = match (wire.messages, wire.prompt) {
            (Some(_), Some(_)) => return Err(RequestError::BothInputs),
            (None, None) => return Err(RequestError::NoInput),
            (Some(m), None) if m.is_empty() => return Err(RequestError::EmptyMessages),
            (Some(m), None) => Input::Chat(m),
            (None, Some(p)) if p.is_empty() => return Err(RequestError::EmptyPrompt),
            (None, Some(p)) => Input::Prompt(p),
        };
        if let Some(deadline) = wire.deadline
            && deadline <= now
        {
            return Err(RequestError::DeadlinePassed { deadline, now });
        }
        // `"options": null` arrives as `None`: serde reads JSON null into an absent option.
        let options = match wire.options {
            None => None,
            Some(raw) => Some(RawOptions::checked(raw)?),
        };
        Ok(Request {
            version,
            id,
            model,
            input,
            options,
            stream: wire.stream,
            reply_to: wire.reply_to,
            deadline: wire.deadline,
            attempt: wire.attempt,
        })
    }

    /// The queue message body for this request.
    pub fn to_body(&self) -> String {
        let (messages, prompt) = match &self.input {
            Input::Chat(m) => (Some(m.clone()), None),
            Input::Prompt(p) => (None, Some(p.clone())),
        };
        let wire = Wire {
            version: Some(self.version),
            id: Some(self.id.clone()),
            model: Some(self.model.clone()),
            messages,
            prompt,
            options: self.options.as_ref().map(|o| o.0.clone()),
            stream: self.stream,
            reply_to: self.reply_to.clone(),
            deadline: self.deadline,
            attempt: self.attempt,
        };
        // A struct of strings, numbers and JSON values always serializes.
        serde_json::to_string(&wire).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 11, 24, 10, 0, 0).unwrap()
    }

    const CHAT: &str = r#"{"version":1,"id":"r1","model":"llama3.2:1b",
        "messages":[{"role":"user","content":"hi"}],"options":{"temperature":0.2},
        "reply_to":"https://sqs.us-east-1.amazonaws.com/1/replies","deadline":"2026-11-24T10:05:00Z"}"#;

    #[test]
    fn a_valid_chat_request_round_trips() {
        let r = Request::parse(CHAT, now()).unwrap();
        assert_eq!(r.model, "llama3.2:1b");
        assert_eq!(r.attempt, 0);
        assert!(matches!(&r.input, Input::Chat(m) if m.len() == 1));
        assert_eq!(Request::parse(&r.to_body(), now()).unwrap(), r);
    }

    #[test]
    fn options_reach_the_model_exactly_as_the_client_wrote_them() {
        // A number that f64 cannot hold: re-printing it would move its last digits.
        let big = "7777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777770.2";
        let body = format!(
            r#"{{"version":1,"id":"r","model":"m","prompt":"p","options":{{"temperature":0.1,"seed":{big},"stop":["é"]}}}}"#
        );
        let r = Request::parse(&body, now()).unwrap();
        let options = r.options.as_ref().unwrap().get();
        assert_eq!(
            options,
            format!(r#"{{"temperature":0.1,"seed":{big},"stop":["é"]}}"#)
        );
        let again = Request::parse(&r.to_body(), now()).unwrap();
        assert_eq!(again, r);
        assert!(r.to_body().contains(big));
    }

    #[test]
    fn options_that_are_not_an_object_are_refused() {
        for options in ["[1]", "3", "\"x\""] {
            let body =
                format!(r#"{{"version":1,"id":"r","model":"m","prompt":"p","options":{options}}}"#);
            assert!(
                matches!(
                    Request::parse(&body, now()),
                    Err(RequestError::Malformed(_))
                ),
                "{options}"
            );
        }
        let none = r#"{"version":1,"id":"r","model":"m","prompt":"p","options":null}"#;
        assert_eq!(Request::parse(none, now()).unwrap().options, None);
    }

    #[test]
    fn each_bad_request_names_its_fault() {
        let cases: &[(&str, RequestError)] = &[
            (
                r#"{"id":"r","model":"m","prompt":"p"}"#,
                RequestError::MissingVersion,
            ),
            (
                r#"{"version":2,"id":"r","model":"m","prompt":"p"}"#,
                RequestError::UnknownVersion(2),
            ),
            (
                r#"{"version":1,"id":"r","prompt":"p"}"#,
                RequestError::MissingModel,
            ),
            (
                r#"{"version":1,"id":"r","model":" ","prompt":"p"}"#,
                RequestError::MissingModel,
            ),
            (
                r#"{"version":1,"model":"m","prompt":"p"}"#,
                RequestError::MissingId,
            ),
            (
                r#"{"version":1,"id":"r","model":"m","messages":[]}"#,
                RequestError::EmptyMessages,
            ),
            (
                r#"{"version":1,"id":"r","model":"m","prompt":""}"#,
                RequestError::EmptyPrompt,
            ),
            (
                r#"{"version":1,"id":"r","model":"m"}"#,
                RequestError::NoInput,
            ),
            (
                r#"{"version":1,"id":"r","model":"m","prompt":"p","messages":[{"role":"user","content":"x"}]}"#,
                RequestError::BothInputs,
            ),
            (
                r#"{"version":1,"id":"r","model":"m","prompt":"p","deadline":"2026-11-24T09:59:59Z"}"#,
                RequestError::DeadlinePassed {
                    deadline: Utc.with_ymd_and_hms(2026, 11, 24, 9, 59, 59).unwrap(),
                    now: now(),
                },
            ),
        ];
        for (body, want) in cases {
            assert_eq!(&Request::parse(body, now()).unwrap_err(), want, "{body}");
        }
    }

    #[test]
    fn a_body_of_exactly_the_limit_is_read_and_options_tell_requests_apart() {
        let head = r#"{"version":1,"id":"r","model":"m","prompt":""#;
        let tail = r#""}"#;
        let body = format!(
            "{head}{}{tail}",
            "x".repeat(MAX_BODY_BYTES - head.len() - tail.len())
        );
        assert_eq!(body.len(), MAX_BODY_BYTES);
        assert!(Request::parse(&body, now()).is_ok());
        let with = |options: &str| {
            Request::parse(
                &format!(
                    r#"{{"version":1,"id":"r","model":"m","prompt":"p","options":{options}}}"#
                ),
                now(),
            )
            .unwrap()
        };
        assert_ne!(with(r#"{"seed":1}"#), with(r#"{"seed":2}"#));
        assert_eq!(with(r#"{"seed":1}"#), with(r#"{"seed":1}"#));
    }

    #[test]
    fn malformed_and_oversized_bodies_are_refused() {
        assert!(matches!(
            Request::parse("{", now()),
            Err(RequestError::Malformed(_))
        ));
        let err = Request::parse(
            r#"{"version":1,"id":"r","model":"m","prompt":"p","tempreature":1}"#,
            now(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("tempreature"), "{err}");
        let big = format!(
            r#"{{"version":1,"id":"r","model":"m","prompt":"{}"}}"#,
            "x".repeat(MAX_BODY_BYTES)
        );
        assert!(matches!(
            Request::parse(&big, now()),
            Err(RequestError::TooLarge {
                limit: MAX_BODY_BYTES,
                ..
            })
        ));
    }
}
