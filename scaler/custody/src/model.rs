//! Talking to a model server: Ollama's `/api/chat` and `/api/generate` (NDJSON streams) or the
//! OpenAI-compatible `/v1/chat/completions` (server-sent events), always streamed from the server so
//! the first token is seen as soon as it exists.
//!
//! The client's `options` reach the server byte for byte: for Ollama as the `options` object, for the
//! OpenAI API as top-level fields spliced from the same text (never parsed and re-printed).

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use thiserror::Error;
use zerospot_core::request::{ChatMessage, Input, Request};

pub use zerospot_effects::config::ModelApi;

/// Why a model call failed.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ModelError {
    /// The server could not be reached, or the connection broke before an answer.
    #[error("model server unreachable: {0}")]
    Unavailable(String),
    /// A 5xx answer (or an error line in the stream): worth retrying.
    #[error("model server answered {status}: {message}")]
    Server {
        /// HTTP status.
        status: u16,
        /// Its message.
        message: String,
    },
    /// A 4xx answer: the request itself is refused (unknown model, bad options); retrying will not help.
    #[error("model server refused the request ({status}): {message}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// Its message.
        message: String,
    },
    /// The stream ended before the server said it was done.
    #[error("the answer stopped after {tokens} pieces: {reason}")]
    Interrupted {
        /// Pieces received.
        tokens: u64,
        /// Why.
        reason: String,
    },
    /// No answer within the time allowed.
    #[error("no complete answer within {0:?}")]
    TimedOut(Duration),
}

impl ModelError {
    /// Whether another attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, ModelError::Rejected { .. })
    }
}

/// A finished answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The whole text.
    pub text: String,
    /// Time from sending to the first piece.
    pub first_token: Option<Duration>,
    /// Pieces received.
    pub pieces: u64,
    /// Why the model stopped, as it said (`stop`, `length`).
    pub done_reason: Option<String>,
}

/// An HTTP/1.1 client for model servers inside the cluster (plain HTTP: Knative routes there).
#[derive(Debug, Clone)]
pub struct ModelClient {
    http: Client<HttpConnector, Full<Bytes>>,
}

impl Default for ModelClient {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Serialize)]
struct OllamaBody<'a> {
    model: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<&'a [ChatMessage]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<&'a str>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    options: Option<&'a serde_json::value::RawValue>,
}

/// The request a model server gets for `request`: `(path, JSON body)`.
pub fn request_body(api: ModelApi, request: &Request) -> (&'static str, String) {
    match api {
        ModelApi::Ollama => {
            let (path, messages, prompt) = match &request.input {
                Input::Chat(m) => ("/api/chat", Some(m.as_slice()), None),
                Input::Prompt(p) => ("/api/generate", None, Some(p.as_str())),
            };
            let body = OllamaBody {
                model: &request.model,
                messages,
                prompt,
                stream: true,
                options: request.options.as_ref().map(|o| o.raw()),
            };
            (path, serde_json::to_string(&body).unwrap_or_default())
        }
        ModelApi::Openai => {
            let messages = match &request.input {
                Input::Chat(m) => m.clone(),
                Input::Prompt(p) => vec![ChatMessage {
                    role: "user".into(),
                    content: p.clone(),
                }],
            };
            let head =
                serde_json::json!({"model": request.model, "messages": messages, "stream": true})
                    .to_string();
            let inner = request
                .options
                .as_ref()
                .map(|o| o.get().trim())
                .and_then(|t| t.strip_prefix('{'))
                .and_then(|t| t.strip_suffix('}'))
                .map(str::trim)
                .unwrap_or_default();
            let body = if inner.is_empty() {
                head
            } else {
                // `head` ends with `}`: splice the client's fields in before it, unchanged.
                format!("{},{inner}}}", &head[..head.len() - 1])
            };
            ("/v1/chat/completions", body)
        }
    }
}

/// What one line of a stream said.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Done(Option<String>),
    Error(String),
    Nothing,
}

fn parse_ollama_line(line: &str) -> Piece {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        return Piece::Error(format!(
            "not JSON: {}",
            line.chars().take(200).collect::<String>()
        ));
    };
    if let Some(e) = v.get("error").and_then(|e| e.as_str()) {
        return Piece::Error(e.to_owned());
    }
    let text = v
        .get("message")
        .and_then(|m| m.get("content"))
        .or_else(|| v.get("response"))
        .and_then(|t| t.as_str())
        .unwrap_or_default();
    if v.get("done").and_then(serde_json::Value::as_bool) == Some(true) {
        let reason = v
            .get("done_reason")
            .and_then(|r| r.as_str())
            .map(str::to_owned);
        if text.is_empty() {
            return Piece::Done(reason);
        }
        // A last line with text and done: the text first (rare, but allowed).
        return Piece::Text(format!("{text}\u{0}{}", reason.unwrap_or_default()));
    }
    if text.is_empty() {
        Piece::Nothing
    } else {
        Piece::Text(text.to_owned())
    }
}

fn parse_sse_line(line: &str) -> Piece {
    let Some(data) = line.strip_prefix("data:") else {
        return Piece::Nothing;
    };
    let data = data.trim();
    if data == "[DONE]" {
        return Piece::Done(None);
    }
    let Ok(v) = serde_json::from_str::<serde_json::Value>(data) else {
        return Piece::Error(format!(
            "not JSON: {}",
            data.chars().take(200).collect::<String>()
        ));
    };
    if let Some(e) = v.get("error") {
        return Piece::Error(
            e.get("message")
                .and_then(|m| m.as_str())
                .unwrap_or("error")
                .to_owned(),
        );
    }
    let choice = v.get("choices").and_then(|c| c.get(0));
    let text = choice
        .and_then(|c| c.get("delta"))
        .and_then(|d| d.get("content"))
        .and_then(|t| t.as_str())
        .unwrap_or_default();
    if text.is_empty() {
        Piece::Nothing
    } else {
        Piece::Text(text.to_owned())
    }
}

impl ModelClient {
    /// A client with keep-alive connections.
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        ModelClient {
            http: Client::builder(TokioExecutor::new()).build(connector),
        }
    }

    /// Sends `request` to the server at `endpoint` (`http://host[:port]`) and calls `on_piece` with
    /// each piece of text as it arrives; gives up after `limit`.
    pub async fn complete(
        &self,
        endpoint: &str,
        api: ModelApi,
        request: &Request,
        limit: Duration,
        mut on_piece: impl FnMut(&str) + Send,
    ) -> Result<Completion, ModelError> {
        let (path, body) = request_body(api, request);
        let uri = format!("{}{path}", endpoint.trim_end_matches('/'));
        let started = Instant::now();
        let call = async {
            let req = http::Request::post(&uri)
                .header(http::header::CONTENT_TYPE, "application/json")
                .header(
                    http::header::ACCEPT,
                    "application/x-ndjson, text/event-stream, application/json",
                )
                .body(Full::new(Bytes::from(body)))
                .map_err(|e| ModelError::Unavailable(format!("bad endpoint {uri}: {e}")))?;
            let response = self
                .http
                .request(req)
                .await
                .map_err(|e| ModelError::Unavailable(format!("{uri}: {}", chain(&e))))?;
            let status = response.status().as_u16();
            let mut body = response.into_body();
            if status >= 300 {
                let bytes = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let text = String::from_utf8_lossy(&bytes);
                let message = serde_json::from_str::<serde_json::Value>(&text)
                    .ok()
                    .and_then(|v| {
                        v.get("error")
                            .map(|e| e.as_str().map_or_else(|| e.to_string(), str::to_owned))
                    })
                    .unwrap_or_else(|| text.chars().take(300).collect());
                return Err(if status >= 500 || status == 429 {
                    ModelError::Server { status, message }
                } else {
                    ModelError::Rejected { status, message }
                });
            }
            let mut buffer: Vec<u8> = Vec::new();
            let mut completion = Completion {
                text: String::new(),
                first_token: None,
                pieces: 0,
                done_reason: None,
            };
            loop {
                let frame = match body.frame().await {
                    None => break,
                    Some(Ok(frame)) => frame,
                    Some(Err(e)) => {
                        return Err(ModelError::Interrupted {
                            tokens: completion.pieces,
                            reason: chain(&e),
                        });
                    }
                };
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                buffer.extend_from_slice(&data);
                while let Some(pos) = buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=pos).collect();
                    let line = String::from_utf8_lossy(&line);
                    let line = line.trim();
                    if line.is_empty() {
                        continue;
                    }
                    let piece = match api {
                        ModelApi::Ollama => parse_ollama_line(line),
                        ModelApi::Openai => parse_sse_line(line),
                    };
                    match piece {
                        Piece::Nothing => {}
                        Piece::Error(message) => {
                            return Err(ModelError::Server {
                                status: 200,
                                message,
                            });
                        }
                        Piece::Done(reason) => {
                            completion.done_reason = reason.or(Some("stop".into()));
                            return Ok(completion);
                        }
                        Piece::Text(text) => {
                            let (text, done) = match text.split_once('\u{0}') {
                                Some((t, r)) => (t.to_owned(), Some(r.to_owned())),
                                None => (text, None),
                            };
                            completion
                                .first_token
                                .get_or_insert_with(|| started.elapsed());
                            completion.pieces += 1;
                            on_piece(&text);
                            completion.text.push_str(&text);
                            if let Some(reason) = done {
                                completion.done_reason = Some(reason).filter(|r| !r.is_empty());
                                return Ok(completion);
                            }
                        }
                    }
                }
            }
            Err(ModelError::Interrupted {
                tokens: completion.pieces,
                reason: "the stream ended without done".into(),
            })
        };
        match tokio::time::timeout(limit, call).await {
            Ok(result) => result,
            Err(_) => Err(ModelError::TimedOut(limit)),
        }
    }

    /// Ollama's model-load call (`POST /api/generate` with only the model): loads it and answers, without
    /// generating anything. Used as the wake-up request through a Knative route.
    pub async fn load(
        &self,
        endpoint: &str,
        model: &str,
        timeout: Duration,
    ) -> Result<(), ModelError> {
        let uri = format!("{}/api/generate", endpoint.trim_end_matches('/'));
        let body = serde_json::json!({"model": model}).to_string();
        let req = http::Request::post(&uri)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ModelError::Unavailable(format!("bad endpoint {uri}: {e}")))?;
        match tokio::time::timeout(timeout, self.http.request(req)).await {
            Ok(Ok(response)) if response.status().is_success() => Ok(()),
            Ok(Ok(response)) => Err(ModelError::Server {
                status: response.status().as_u16(),
                message: "load".into(),
            }),
            Ok(Err(e)) => Err(ModelError::Unavailable(chain(&e))),
            Err(_) => Err(ModelError::TimedOut(timeout)),
        }
    }

    /// A GET that only asks whether the server answers (used to wake a route): the status, or why not.
    pub async fn poke(&self, url: &str, timeout: Duration) -> Result<u16, ModelError> {
        let req = http::Request::get(url)
            .body(Full::new(Bytes::new()))
            .map_err(|e| ModelError::Unavailable(format!("bad URL {url}: {e}")))?;
        match tokio::time::timeout(timeout, self.http.request(req)).await {
            Ok(Ok(response)) => Ok(response.status().as_u16()),
            Ok(Err(e)) => Err(ModelError::Unavailable(chain(&e))),
            Err(_) => Err(ModelError::TimedOut(timeout)),
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn request(body: &str) -> Request {
        Request::parse(body, Utc::now()).unwrap()
    }

    #[test]
    fn ollama_gets_the_options_byte_for_byte() {
        let r = request(
            r#"{"version":1,"id":"r","model":"m","messages":[{"role":"user","content":"hi"}],"options":{"temperature":0.10,"seed":123456789012345678901234567890}}"#,
        );
        let (path, body) = request_body(ModelApi::Ollama, &r);
        assert_eq!(path, "/api/chat");
        assert_eq!(
            body,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"options":{"temperature":0.10,"seed":123456789012345678901234567890}}"#
        );
        let (path, body) = request_body(
            ModelApi::Ollama,
            &request(r#"{"version":1,"id":"r","model":"m","prompt":"p"}"#),
        );
        assert_eq!(
            (path, body.as_str()),
            (
                "/api/generate",
                r#"{"model":"m","prompt":"p","stream":true}"#
            )
        );
    }

    #[test]
    fn openai_gets_the_options_as_top_level_fields_unchanged() {
        let r = request(
            r#"{"version":1,"id":"r","model":"m","prompt":"p","options":{ "temperature": 0.10 }}"#,
        );
        let (path, body) = request_body(ModelApi::Openai, &r);
        assert_eq!(path, "/v1/chat/completions");
        assert!(
            body.ends_with(r#""stream":true,"temperature": 0.10}"#),
            "{body}"
        );
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["messages"][0]["content"], "p");
        let r = request(r#"{"version":1,"id":"r","model":"m","prompt":"p","options":{}}"#);
        let v: serde_json::Value =
            serde_json::from_str(&request_body(ModelApi::Openai, &r).1).unwrap();
        assert_eq!(v["stream"], true);
    }

    #[test]
    fn stream_lines_are_read_as_ollama_and_openai_write_them() {
        assert_eq!(
            parse_ollama_line(
                r#"{"model":"m","message":{"role":"assistant","content":"Hi"},"done":false}"#
            ),
            Piece::Text("Hi".into())
        );
        assert_eq!(
            parse_ollama_line(r#"{"model":"m","response":" there","done":false}"#),
            Piece::Text(" there".into())
        );
        assert_eq!(
            parse_ollama_line(r#"{"model":"m","response":"","done":true,"done_reason":"stop"}"#),
            Piece::Done(Some("stop".into()))
        );
        assert_eq!(
            parse_ollama_line(r#"{"error":"model 'x' not found"}"#),
            Piece::Error("model 'x' not found".into())
        );
        assert!(matches!(parse_ollama_line("garbage"), Piece::Error(_)));
        assert_eq!(
            parse_sse_line(r#"data: {"choices":[{"index":0,"delta":{"content":"Hi"}}]}"#),
            Piece::Text("Hi".into())
        );
        assert_eq!(parse_sse_line("data: [DONE]"), Piece::Done(None));
        assert_eq!(parse_sse_line(": keep-alive"), Piece::Nothing);
        assert_eq!(
            parse_sse_line(r#"data: {"choices":[{"index":0,"delta":{"role":"assistant"}}]}"#),
            Piece::Nothing
        );
    }

    #[test]
    fn only_refusals_are_not_worth_retrying() {
        assert!(
            !ModelError::Rejected {
                status: 404,
                message: String::new()
            }
            .is_retryable()
        );
        assert!(
            ModelError::Server {
                status: 500,
                message: String::new()
            }
            .is_retryable()
        );
        assert!(ModelError::Unavailable(String::new()).is_retryable());
        assert!(
            ModelError::Interrupted {
                tokens: 3,
                reason: String::new()
            }
            .is_retryable()
        );
    }
}
