//! The client side: put a request on its model's queue, and wait for its reply.
//!
//! ```no_run
//! # async fn example(queue: &dyn zerospot_custody::queue::Queue, request: zerospot_core::request::Request) -> Result<(), zerospot_custody::client::ClientError> {
//! use std::time::Duration;
//! use zerospot_custody::client::{submit, wait_for_reply};
//! let reply_queue = request.reply_to.clone().unwrap_or_default();
//! submit(queue, "https://sqs.../zerospot-llama2", &request).await?;
//! let answer = wait_for_reply(queue, &reply_queue, &request.id, Duration::from_secs(600), |piece| print!("{piece}")).await?;
//! println!("\n{}", answer.content);
//! # Ok(()) }
//! ```

use std::time::{Duration, Instant};

use thiserror::Error;
use zerospot_core::request::Request;
use zerospot_effects::AwsError;

use crate::queue::Queue;
use crate::reply::{Reassembly, Reply};

/// Why a client call failed.
#[derive(Debug, Error)]
pub enum ClientError {
    /// SQS refused or failed.
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// No terminal reply in time.
    #[error("no reply for {id} within {after:?}")]
    NoReply {
        /// The request id.
        id: String,
        /// How long we waited.
        after: Duration,
    },
}

/// Sends `request` to `queue_url` with the message attributes `zerospot-model` and
/// `zerospot-deadline`; returns SQS's message id.
pub async fn submit(
    queue: &dyn Queue,
    queue_url: &str,
    request: &Request,
) -> Result<String, ClientError> {
    let deadline = request.deadline.map(|d| d.to_rfc3339()).unwrap_or_default();
    let mut attributes = vec![
        ("zerospot-model", request.model.as_str()),
        ("zerospot-id", request.id.as_str()),
    ];
    if !deadline.is_empty() {
        attributes.push(("zerospot-deadline", deadline.as_str()));
    }
    Ok(queue
        .send(queue_url, &request.to_body(), &attributes)
        .await?)
}

/// Reads `reply_queue` until the terminal reply for `id` arrives, calling `on_piece` with streamed
/// text in order. Replies for other ids are left on the queue for their owners (made visible again at
/// once); ours are deleted as they are read. Returns the terminal reply (final, error or timeout).
pub async fn wait_for_reply(
    queue: &dyn Queue,
    reply_queue: &str,
    id: &str,
    within: Duration,
    mut on_piece: impl FnMut(&str),
) -> Result<Reply, ClientError> {
    let started = Instant::now();
    let mut reassembly = Reassembly::default();
    let mut attempt = 0u32;
    while started.elapsed() < within {
        let messages = queue
            .receive(
                reply_queue,
                10,
                Duration::from_secs(1),
                Duration::from_secs(30),
            )
            .await?;
        for m in messages {
            let reply = match Reply::parse(&m.body) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %e, "a reply message that is not a reply; deleting it");
                    let _ = queue.delete(reply_queue, &m.receipt).await;
                    continue;
                }
            };
            if reply.id != id {
                let _ = queue
                    .set_visibility(reply_queue, &m.receipt, Duration::ZERO)
                    .await;
                continue;
            }
            let from_attempt = m
                .attributes
                .get("zerospot-attempt")
                .and_then(|a| a.parse().ok())
                .unwrap_or(attempt);
            if from_attempt > attempt {
                // A new attempt streams from the start: what the earlier one showed is superseded.
                attempt = from_attempt;
                reassembly = Reassembly::default();
                on_piece("\n[the model was interrupted; answering again]\n");
            }
            let _ = queue.delete(reply_queue, &m.receipt).await;
            if from_attempt < attempt {
                continue;
            }
            let text = reassembly.push(reply);
            if !text.is_empty() {
                on_piece(&text);
            }
            if let Some(done) = reassembly.done() {
                return Ok(done.clone());
            }
        }
    }
    Err(ClientError::NoReply {
        id: id.to_owned(),
        after: within,
    })
}
