//! The reply protocol: how an answer travels back to the client through SQS.
//!
//! Each reply message's body is one JSON object:
//!
//! ```json
//! {"version": 1, "id": "req-42", "seq": 3, "kind": "chunk", "content": " blue"}
//! {"version": 1, "id": "req-42", "seq": 4, "kind": "final", "content": "The sky is blue", "timings": {...}}
//! ```
//!
//! `kind` is `chunk` (a piece of a streamed answer), `final` (the whole answer: its `content` is the full
//! text, whatever chunks came before), `error` (the request could not be served: `error` says why) or
//! `timeout` (its deadline passed first). `seq` counts from 0 within one request. A streamed answer is
//! zero or more chunks and exactly one `final`, `error` or `timeout`; a request without streaming gets
//! only the last. Message attributes `zerospot-id` and `zerospot-kind` repeat the id and kind so a
//! client can filter without parsing.
//!
//! # Guarantees for the client
//! [`Reassembly`] puts chunks in `seq` order whatever order SQS delivers them in, ignores a chunk or a
//! final it has already seen (SQS delivers at least once), and ends at the first terminal message. The
//! terminal message carries the full text, so a client that missed chunks still gets the whole answer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What kind of reply message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyKind {
    /// A piece of a streamed answer.
    Chunk,
    /// The whole answer.
    Final,
    /// Could not be served.
    Error,
    /// The deadline passed first.
    Timeout,
}

impl ReplyKind {
    /// Whether this ends the reply.
    pub fn is_terminal(self) -> bool {
        !matches!(self, ReplyKind::Chunk)
    }

    /// The name used in JSON and message attributes.
    pub fn as_str(self) -> &'static str {
        match self {
            ReplyKind::Chunk => "chunk",
            ReplyKind::Final => "final",
            ReplyKind::Error => "error",
            ReplyKind::Timeout => "timeout",
        }
    }
}

/// Per-request timings, seconds, in the final reply.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// From the request's arrival on the queue to its dispatch.
    pub queued_s: f64,
    /// Of that, waiting for capacity (no Ready pod with a free slot).
    pub waiting_for_capacity_s: f64,
    /// When it waited for a node: from its arrival until the node that served it registered (the
    /// instance's launch and boot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_registered_s: Option<f64>,
    /// When it waited for a node: from its arrival until that node was Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_ready_s: Option<f64>,
    /// When it waited for a pod: from its arrival until the pod that served it was Ready (the image
    /// pulled, the server started, the model loaded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_ready_s: Option<f64>,
    /// From dispatch to the first token.
    pub first_token_s: f64,
    /// From the request's arrival to the final reply.
    pub total_s: f64,
    /// How many times it was dispatched before this one.
    pub attempt: u32,
}

/// One reply message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// Protocol version (1).
    pub version: u32,
    /// The request's id.
    pub id: String,
    /// Order within the request, from 0.
    pub seq: u64,
    /// Chunk, final, error or timeout.
    pub kind: ReplyKind,
    /// Text: the piece (chunk) or the whole answer (final).
    #[serde(default)]
    pub content: String,
    /// Why, for error and timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The model that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Timings, on the terminal message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<Timings>,
}

impl Reply {
    /// A reply message of `kind`.
    pub fn new(id: &str, seq: u64, kind: ReplyKind, content: impl Into<String>) -> Self {
        Reply {
            version: 1,
            id: id.to_owned(),
            seq,
            kind,
            content: content.into(),
            error: None,
            model: None,
            timings: None,
        }
    }

    /// The message body.
    pub fn to_body(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a message body.
    pub fn parse(body: &str) -> Result<Reply, serde_json::Error> {
        serde_json::from_str(body)
    }
}

/// Puts one request's reply messages back together.
#[derive(Debug, Clone, Default)]
pub struct Reassembly {
    chunks: BTreeMap<u64, String>,
    next: u64,
    terminal: Option<Reply>,
}

impl Reassembly {
    /// Takes one message; returns the text that can now be shown in order (chunks whose predecessors
    /// all arrived). Duplicates and anything after the end are ignored.
    pub fn push(&mut self, reply: Reply) -> String {
        if self.terminal.is_some() {
            return String::new();
        }
        if reply.kind.is_terminal() {
            self.terminal = Some(reply);
            return String::new();
        }
        if reply.seq >= self.next {
            self.chunks.entry(reply.seq).or_insert(reply.content);
        }
        let mut out = String::new();
        while let Some(text) = self.chunks.remove(&self.next) {
            out.push_str(&text);
            self.next += 1;
        }
        out
    }

    /// The terminal message, once it arrived.
    pub fn done(&self) -> Option<&Reply> {
        self.terminal.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_arriving_out_of_order_and_twice_come_out_once_in_order() {
        let mut r = Reassembly::default();
        let c = |seq, text: &str| Reply::new("r", seq, ReplyKind::Chunk, text);
        assert_eq!(r.push(c(1, " sky")), "");
        assert_eq!(r.push(c(0, "the")), "the sky");
        assert_eq!(r.push(c(0, "the")), "", "a duplicate is ignored");
        assert_eq!(r.push(c(2, " is")), " is");
        assert!(r.done().is_none());
        let mut fin = Reply::new("r", 4, ReplyKind::Final, "the sky is blue");
        fin.timings = Some(Timings::default());
        assert_eq!(r.push(fin.clone()), "");
        assert_eq!(r.done(), Some(&fin));
        // After the end, nothing more: not a late chunk, not a second final.
        assert_eq!(r.push(c(3, " blue")), "");
        assert_eq!(r.push(Reply::new("r", 9, ReplyKind::Final, "other")), "");
        assert_eq!(r.done().unwrap().content, "the sky is blue");
    }

    #[test]
    fn a_reply_round_trips_through_its_body() {
        let mut reply = Reply::new("req-1", 0, ReplyKind::Error, "");
        reply.error = Some("model answered 500 three times".into());
        let back = Reply::parse(&reply.to_body()).unwrap();
        assert_eq!(back, reply);
        assert!(Reply::parse("{\"id\":1}").is_err());
    }
}
