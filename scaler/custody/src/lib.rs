//! zerospot's request custody: a request submitted to SQS stays there until a Ready model pod can take
//! it, is answered through the reply queue, and is deleted only after its answer was sent.
//!
//! - [`reply`]: the reply protocol (ordered chunks, one terminal reply) and the client's reassembly.
//! - [`client`]: submit a request, wait for its reply.
//! - [`queue`]: the SQS calls behind one narrow trait.
//! - [`model`]: Ollama and OpenAI-compatible model servers, streamed.
//! - [`capacity`]: free slots per model on Ready pods, work in flight per node.
//! - [`dispatcher`]: the loop that ties them together; [`service`]: it as a process.
//! - [`demand`]: arrival-rate and service-time estimates per model, published for the scaler.

pub mod capacity;
pub mod client;
pub mod demand;
pub mod dispatcher;
pub mod model;
pub mod queue;
pub mod reply;
pub mod service;
