//! A stand-in model server for fault injection: a test double for Ollama on a GPU, nothing more. It speaks
//! Ollama's HTTP API with Ollama's field names and status codes (as in Ollama v0.17.4's `api/types.go`,
//! `server/routes.go`, `openai/openai.go` and `middleware/openai.go`), generates deterministic text, and
//! lets a test make it slow, busy or broken. For real generated text use [`crate::ollama::Ollama`].
//!
//! | path | answers |
//! | --- | --- |
//! | `POST /api/chat` | streaming NDJSON (the default, as in Ollama: `stream` absent means true) or, with `"stream": false`, one JSON object: `model`, `created_at`, `message{role,content}`, `done`, and on the last object `done_reason`, `total_duration`, `load_duration`, `prompt_eval_count`, `prompt_eval_duration`, `eval_count`, `eval_duration` (nanoseconds; zero values omitted as Go's `omitempty` does) |
//! | `POST /api/generate` | the same with `response` instead of `message`, and `context` on the last object |
//! | `POST /v1/chat/completions` | OpenAI-compatible: non-streaming by default (`chat.completion` with `choices[0].message`, `usage`); with `"stream": true` SSE `data: {...}` chunks (`chat.completion.chunk`, `choices[0].delta.content`, `finish_reason` on the last), a usage chunk if `stream_options.include_usage`, then `data: [DONE]` |
//! | `GET /api/tags`, `GET /api/ps`, `POST /api/show`, `GET /v1/models`, `GET /api/version`, `GET /` | the served models, the loaded ones, one model's details, `"Ollama is running"` |
//!
//! The reply to a prompt is its words repeated until [`StandInOptions::tokens_per_reply`] tokens (one word
//! a token, later ones with a leading space; `num_predict` / `max_tokens` cut it short with `done_reason`
//! `length`): see [`reply_tokens`]. An empty prompt (`/api/generate` without `prompt`, `/api/chat` with no
//! messages) only loads the model and answers `done_reason: "load"`, as Ollama's model-load call does.
//!
//! Behaviour, chosen to match Ollama:
//! - **Loading blocks.** The first generation request for a model waits [`StandInOptions::load_time`] (as
//!   Ollama's scheduler makes a request wait while its runner loads; Ollama never answers 503 for a load),
//!   and reports the wait as `load_duration`. Requests arriving during the load wait for the same load.
//!   [`StandIn::unload`] makes the next request load again.
//! - **Concurrency** is Ollama's `OLLAMA_NUM_PARALLEL` ([`StandInOptions::parallel`], default 1): at most
//!   that many requests generate at once per model, the others queue in arrival order. Once
//!   [`StandInOptions::max_queue`] requests wait (Ollama's `OLLAMA_MAX_QUEUE`, default 512), a further
//!   request is answered at once with 503 `{"error":"server busy, please try again.  maximum pending
//!   requests exceeded"}`. (Ollama applies that limit to its scheduler's queue, i.e. to requests waiting
//!   for a model to be scheduled; the stand-in applies it to every waiting request.)
//! - **Errors** are Ollama's: `{"error": "..."}` with 400 (`model is required`, bad JSON), 404 (`model
//!   'NAME' not found`), 500, 503; on `/v1/...` the OpenAI shape `{"error":{"message","type","param","code"}}`
//!   with `type` `invalid_request_error` for 400 and `api_error` otherwise (as Ollama's middleware does).
//!
//! Fault injection ([`StandIn::fail_next`], [`StandIn::drop_next`]) applies to generation requests
//! (`/api/chat`, `/api/generate`, `/v1/chat/completions`) in arrival order, before they queue or load.
//! Every request received, whatever was answered, is recorded byte for byte ([`StandIn::requests`]).
//!
//! ```no_run
//! # async fn example() -> Result<(), zerospot_testbed::Error> {
//! use std::time::Duration;
//! use zerospot_testbed::model_server::{StandIn, StandInOptions};
//! let server = StandIn::start(
//!     StandInOptions::new(["llama3", "gemma3"])
//!         .load_time(Duration::from_secs(2))
//!         .token_latency(Duration::from_millis(5)),
//! )
//! .await?;
//! server.fail_next(2); // the next two generation requests answer HTTP 500
//! let url = format!("{}/api/chat", server.endpoint());
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::header::{CONTENT_TYPE, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::channel::{Channel, Sender};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::{OnceCell, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use crate::{Error, Result};

/// The Ollama version whose API the stand-in speaks (`GET /api/version` answers it).
pub const OLLAMA_VERSION: &str = "0.17.4";
/// What Ollama answers (HTTP 503) when its queue is full.
pub const SERVER_BUSY: &str = "server busy, please try again.  maximum pending requests exceeded";
/// The message of an injected failure by default: what Ollama answers (HTTP 500) when its model runner
/// has crashed.
pub const RUNNER_TERMINATED: &str = "llama runner process has terminated: exit status 2";

/// How the stand-in behaves; see the [module documentation](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandInOptions {
    /// Model names served (as `NAME`, answered to `NAME` and `NAME:latest`).
    pub models: Vec<String>,
    /// How long a model takes to load before its first answer (default 0).
    pub load_time: Duration,
    /// Time between two generated tokens (default 0).
    pub token_latency: Duration,
    /// Tokens in a reply when the request does not ask for fewer (default 8).
    pub tokens_per_reply: usize,
    /// Requests generating at once per model, Ollama's `OLLAMA_NUM_PARALLEL` (default 1).
    pub parallel: usize,
    /// Requests that may wait before a further one is refused with 503, `OLLAMA_MAX_QUEUE` (default 512).
    pub max_queue: usize,
    /// Where to listen (default `127.0.0.1:0`, a free loopback port). `0.0.0.0:PORT` answers on every
    /// local address, such as the loopback pod IPs the bridge's nodes hand out, with
    /// [`RecordedRequest::local`] saying which one a request came to.
    pub bind: std::net::SocketAddr,
}

impl Default for StandInOptions {
    fn default() -> Self {
        Self::new(["stand-in"])
    }
}

impl StandInOptions {
    /// Serves `models`, loading instantly, answering 8 tokens without delay, one request at a time.
    pub fn new(models: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            models: models.into_iter().map(Into::into).collect(),
            load_time: Duration::ZERO,
            token_latency: Duration::ZERO,
            tokens_per_reply: 8,
            parallel: 1,
            max_queue: 512,
            bind: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }

    /// Listen at `bind` instead of a free loopback port.
    #[must_use]
    pub fn bind(mut self, bind: std::net::SocketAddr) -> Self {
        self.bind = bind;
        self
    }

    /// How long each model takes to load before its first answer.
    #[must_use]
    pub fn load_time(mut self, load_time: Duration) -> Self {
        self.load_time = load_time;
        self
    }

    /// Time between two generated tokens.
    #[must_use]
    pub fn token_latency(mut self, token_latency: Duration) -> Self {
        self.token_latency = token_latency;
        self
    }

    /// Tokens in a reply (unless `num_predict` or `max_tokens` asks for fewer).
    #[must_use]
    pub fn tokens_per_reply(mut self, tokens: usize) -> Self {
        self.tokens_per_reply = tokens;
        self
    }

    /// Requests generating at once per model (`OLLAMA_NUM_PARALLEL`; at least 1).
    #[must_use]
    pub fn parallel(mut self, parallel: usize) -> Self {
        self.parallel = parallel.max(1);
        self
    }

    /// Requests that may wait for a slot before a further one gets 503 (`OLLAMA_MAX_QUEUE`).
    #[must_use]
    pub fn max_queue(mut self, max_queue: usize) -> Self {
        self.max_queue = max_queue;
        self
    }
}

/// One request the stand-in received, exactly as it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Path and query, e.g. `/api/chat`.
    pub path: String,
    /// Request headers, names lowercase, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The body, byte for byte.
    pub body: Vec<u8>,
    /// The local address it came to (which "pod IP", when listening on 0.0.0.0).
    pub local: Option<std::net::SocketAddr>,
    /// When it arrived.
    pub at: std::time::Instant,
}

impl RecordedRequest {
    /// The body parsed as JSON.
    pub fn json(&self) -> Result<Value> {
        Ok(serde_json::from_slice(&self.body)?)
    }

    /// The value of header `name` (any case), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// The tokens of the stand-in's reply to `prompt`: its words, repeated, `n` in all, every one after the
/// first with a leading space. A prompt without words is answered with the word `stand-in`.
pub fn reply_tokens(prompt: &str, n: usize) -> Vec<String> {
    let mut words: Vec<&str> = prompt.split_whitespace().collect();
    if words.is_empty() {
        words.push("stand-in");
    }
    words
        .iter()
        .cycle()
        .take(n)
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                (*w).to_owned()
            } else {
                format!(" {w}")
            }
        })
        .collect()
}

/// A running stand-in model server on `127.0.0.1:<ephemeral port>`; stopped on drop.
#[derive(Debug)]
pub struct StandIn {
    endpoint: String,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

#[derive(Debug)]
struct Shared {
    options: StandInOptions,
    started: SystemTime,
    loads: Mutex<HashMap<String, Arc<OnceCell<SystemTime>>>>,
    slots: HashMap<String, Arc<Semaphore>>,
    faults: Mutex<Faults>,
    recorded: Mutex<Vec<RecordedRequest>>,
    waiting: AtomicUsize,
    generating: AtomicUsize,
    peak_generating: AtomicUsize,
    load_count: AtomicU64,
}

#[derive(Debug, Default)]
struct Faults {
    fail: Option<(usize, StatusCode, String)>,
    drop: Option<(usize, usize)>,
}

enum Fault {
    Fail(StatusCode, String),
    DropAfter(usize),
}

impl Faults {
    fn take(&mut self) -> Option<Fault> {
        if let Some((left, status, message)) = &mut self.fail {
            let fault = Fault::Fail(*status, message.clone());
            *left -= 1;
            if *left == 0 {
                self.fail = None;
            }
            return Some(fault);
        }
        if let Some((left, after)) = &mut self.drop {
            let fault = Fault::DropAfter(*after);
            *left -= 1;
            if *left == 0 {
                self.drop = None;
            }
            return Some(fault);
        }
        None
    }
}

impl StandIn {
    /// Starts serving on a free loopback port.
    pub async fn start(options: StandInOptions) -> Result<Self> {
        if options.models.is_empty() {
            return Err(Error::ModelServer(
                "the stand-in needs at least one model".into(),
            ));
        }
        let listener = TcpListener::bind(options.bind)
            .await
            .map_err(Error::io("binding the stand-in model server"))?;
        let local = listener
            .local_addr()
            .map_err(Error::io("reading the stand-in's address"))?;
        let models: Vec<String> = options.models.iter().map(|m| base_name(m)).collect();
        let shared = Arc::new(Shared {
            loads: Mutex::new(
                models
                    .iter()
                    .map(|m| (m.clone(), Arc::new(OnceCell::new())))
                    .collect(),
            ),
            slots: models
                .iter()
                .map(|m| (m.clone(), Arc::new(Semaphore::new(options.parallel.max(1)))))
                .collect(),
            options: StandInOptions { models, ..options },
            started: SystemTime::now(),
            faults: Mutex::new(Faults::default()),
            recorded: Mutex::new(Vec::new()),
            waiting: AtomicUsize::new(0),
            generating: AtomicUsize::new(0),
            peak_generating: AtomicUsize::new(0),
            load_count: AtomicU64::new(0),
        });
        let task = tokio::spawn(serve(listener, shared.clone()));
        tracing::info!(%local, models = ?shared.options.models, "stand-in model server started");
        Ok(Self {
            endpoint: format!("http://{local}"),
            shared,
            task,
        })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The options it runs with.
    pub fn options(&self) -> &StandInOptions {
        &self.shared.options
    }

    /// The next `n` generation requests are answered HTTP 500 `{"error": "llama runner process has
    /// terminated: exit status 2"}` (replacing any failures still pending; 0 cancels them).
    pub fn fail_next(&self, n: usize) {
        self.fail_next_with(n, 500, RUNNER_TERMINATED);
    }

    /// The next `n` generation requests are answered with `status` and `{"error": message}` (on `/v1/...`,
    /// the OpenAI error object). Takes precedence over [`Self::drop_next`].
    pub fn fail_next_with(&self, n: usize, status: u16, message: &str) {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        lock(&self.shared.faults).fail = (n > 0).then(|| (n, status, message.to_owned()));
    }

    /// The next `n` generation requests get `after_tokens` tokens, then their connection is closed
    /// mid-reply (streaming: after that many chunks, with no final `done` object and no `[DONE]`;
    /// non-streaming: after the time those tokens take, with no response at all), as when the model
    /// server dies. 0 cancels.
    pub fn drop_next(&self, n: usize, after_tokens: usize) {
        lock(&self.shared.faults).drop = (n > 0).then_some((n, after_tokens));
    }

    /// Unloads every model: the next request for each waits for its load time again (as after Ollama's
    /// keep-alive expired or the pod restarted).
    pub fn unload(&self) {
        for cell in lock(&self.shared.loads).values_mut() {
            *cell = Arc::new(OnceCell::new());
        }
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.recorded).clone()
    }

    /// The requests received for `path` (e.g. `/api/chat`), in arrival order.
    pub fn requests_to(&self, path: &str) -> Vec<RecordedRequest> {
        lock(&self.shared.recorded)
            .iter()
            .filter(|r| r.path == path)
            .cloned()
            .collect()
    }

    /// The most requests that were generating at the same time so far.
    pub fn peak_concurrency(&self) -> usize {
        self.shared.peak_generating.load(Ordering::SeqCst)
    }

    /// How many generation requests are waiting now (for a load or a slot).
    pub fn waiting(&self) -> usize {
        self.shared.waiting.load(Ordering::SeqCst)
    }

    /// How many model loads have completed.
    pub fn load_count(&self) -> u64 {
        self.shared.load_count.load(Ordering::SeqCst)
    }

    /// The reply text the stand-in generates for `prompt` with its `tokens_per_reply`.
    pub fn reply_to(&self, prompt: &str) -> String {
        reply_tokens(prompt, self.shared.options.tokens_per_reply).concat()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        // The accept loop owns the connections' tasks: aborting it aborts them too.
        self.task.abort();
    }
}

type Body = Either<Full<Bytes>, Channel<Bytes, std::io::Error>>;
type Answer = std::result::Result<Response<Body>, std::io::Error>;

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "stand-in: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        let local = stream.local_addr().ok();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move { handle(shared, local, request).await }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "stand-in: connection ended");
            }
        });
    }
}

/// Which generation API a request speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Chat,
    Generate,
    OpenAiChat,
}

async fn handle(
    shared: Arc<Shared>,
    local: Option<std::net::SocketAddr>,
    request: Request<Incoming>,
) -> Answer {
    let arrived = Instant::now();
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => {
            return Ok(ollama_error(
                StatusCode::BAD_REQUEST,
                &format!("reading the request: {e}"),
            ));
        }
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), ToString::to_string);
    lock(&shared.recorded).push(RecordedRequest {
        method: parts.method.to_string(),
        path: path.clone(),
        headers: parts
            .headers
            .iter()
            .map(|(n, v)| {
                (
                    n.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.to_vec(),
        local,
        at: arrived,
    });
    let api = match (parts.method.as_str(), parts.uri.path()) {
        ("POST", "/api/chat") => Api::Chat,
        ("POST", "/api/generate") => Api::Generate,
        ("POST", "/v1/chat/completions") => Api::OpenAiChat,
        ("GET" | "HEAD", "/") => {
            return Ok(text(StatusCode::OK, "Ollama is running"));
        }
        ("GET" | "HEAD", "/api/version") => {
            return Ok(json_response(
                StatusCode::OK,
                &json!({"version": OLLAMA_VERSION}),
            ));
        }
        ("GET", "/api/tags") => return Ok(tags(&shared)),
        ("GET", "/api/ps") => return Ok(ps(&shared)),
        ("POST", "/api/show") => return Ok(show(&shared, &body)),
        ("GET", "/v1/models") => return Ok(openai_models(&shared)),
        _ => return Ok(text(StatusCode::NOT_FOUND, "404 page not found")),
    };
    generate(shared, api, &body, arrived).await
}

/// What a generation request asks for.
struct Ask {
    model: String,
    prompt: String,
    stream: bool,
    limit: Option<usize>,
    include_usage: bool,
    load_only: bool,
}

fn parse_ask(api: Api, body: &[u8]) -> std::result::Result<Ask, (StatusCode, String)> {
    let value: Value = if body.is_empty() {
        return Err((StatusCode::BAD_REQUEST, "missing request body".into()));
    } else {
        serde_json::from_slice(body).map_err(|e| (StatusCode::BAD_REQUEST, e.to_string()))?
    };
    let model = value
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if model.is_empty() {
        return Err((StatusCode::BAD_REQUEST, "model is required".into()));
    }
    let stream = value.get("stream").and_then(Value::as_bool);
    let (prompt, load_only) = match api {
        Api::Generate => {
            let prompt = value
                .get("prompt")
                .and_then(Value::as_str)
                .unwrap_or_default();
            (prompt.to_owned(), prompt.is_empty())
        }
        Api::Chat | Api::OpenAiChat => {
            let messages = value
                .get("messages")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if api == Api::OpenAiChat && messages.is_empty() {
                return Err((
                    StatusCode::BAD_REQUEST,
                    "[] is too short - 'messages'".into(),
                ));
            }
            let last_user = messages
                .iter()
                .rev()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
                .or_else(|| messages.last());
            (
                last_user.map(message_text).unwrap_or_default(),
                messages.is_empty(),
            )
        }
    };
    let limit = match api {
        Api::OpenAiChat => value.get("max_tokens"),
        Api::Chat | Api::Generate => value.get("options").and_then(|o| o.get("num_predict")),
    }
    .and_then(Value::as_i64)
    .and_then(|n| usize::try_from(n).ok());
    Ok(Ask {
        model,
        prompt,
        // Ollama's own API streams unless told not to; the OpenAI one does not unless told to.
        stream: stream.unwrap_or(api != Api::OpenAiChat),
        limit,
        include_usage: value
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false),
        load_only,
    })
}

/// A message's text: a string `content`, or the `text` parts of an OpenAI content array.
fn message_text(message: &Value) -> String {
    match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// Counts a request as waiting while it exists.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Counts a request as generating while it exists.
struct Generating(Arc<Shared>);

impl Generating {
    fn new(shared: Arc<Shared>) -> Self {
        let now = shared.generating.fetch_add(1, Ordering::SeqCst) + 1;
        shared.peak_generating.fetch_max(now, Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for Generating {
    fn drop(&mut self) {
        self.0.generating.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn generate(shared: Arc<Shared>, api: Api, body: &[u8], arrived: Instant) -> Answer {
    let error = |status: StatusCode, message: &str| match api {
        Api::OpenAiChat => openai_error(status, message),
        Api::Chat | Api::Generate => ollama_error(status, message),
    };
    let ask = match parse_ask(api, body) {
        Ok(ask) => ask,
        Err((status, message)) => return Ok(error(status, &message)),
    };
    let name = base_name(&ask.model);
    let (Some(load), Some(slots)) = (
        lock(&shared.loads).get(&name).cloned(),
        shared.slots.get(&name).cloned(),
    ) else {
        return Ok(error(
            StatusCode::NOT_FOUND,
            &format!("model '{}' not found", ask.model),
        ));
    };
    let fault = lock(&shared.faults).take();
    let drop_after = match fault {
        Some(Fault::Fail(status, message)) => return Ok(error(status, &message)),
        Some(Fault::DropAfter(k)) => Some(k),
        None => None,
    };

    // Queue: wait for the model to load, then for a slot.
    if shared.waiting.fetch_add(1, Ordering::SeqCst) >= shared.options.max_queue {
        shared.waiting.fetch_sub(1, Ordering::SeqCst);
        return Ok(error(StatusCode::SERVICE_UNAVAILABLE, SERVER_BUSY));
    }
    let waiting = Waiting(&shared.waiting);
    let load_started = Instant::now();
    load.get_or_init(|| async {
        tokio::time::sleep(shared.options.load_time).await;
        shared.load_count.fetch_add(1, Ordering::SeqCst);
        SystemTime::now()
    })
    .await;
    let load_duration = load_started.elapsed();
    if ask.load_only {
        drop(waiting);
        let done = Done {
            reason: "load",
            total: arrived.elapsed(),
            load: load_duration,
            ..Done::default()
        };
        let value = match api {
            Api::Chat => chat_object(&ask.model, "", Some(&done)),
            _ => generate_object(&ask.model, "", Some(&done)),
        };
        return Ok(json_response(StatusCode::OK, &value));
    }
    let Ok(permit) = slots.acquire_owned().await else {
        return Ok(error(StatusCode::INTERNAL_SERVER_ERROR, "stand-in closed"));
    };
    drop(waiting);
    let generating = Generating::new(shared.clone());

    let tokens = reply_tokens(
        &ask.prompt,
        ask.limit.map_or(shared.options.tokens_per_reply, |l| {
            l.min(shared.options.tokens_per_reply)
        }),
    );
    let reason = if ask
        .limit
        .is_some_and(|l| l < shared.options.tokens_per_reply)
    {
        "length"
    } else {
        "stop"
    };
    let prompt_count = ask.prompt.split_whitespace().count().max(1);
    let latency = shared.options.token_latency;
    let id = format!("chatcmpl-{}", random_below(999));
    let mut done = Done {
        reason,
        total: Duration::ZERO,
        load: load_duration,
        prompt_count,
        prompt_duration: Duration::from_micros(100 * prompt_count as u64),
        count: tokens.len(),
        duration: Duration::ZERO,
    };

    if !ask.stream {
        let eval_started = Instant::now();
        if let Some(k) = drop_after {
            tokio::time::sleep(latency * k.min(tokens.len()) as u32).await;
            return Err(std::io::Error::other(
                "stand-in: connection dropped (injected)",
            ));
        }
        tokio::time::sleep(latency * tokens.len() as u32).await;
        done.duration = eval_started.elapsed();
        done.total = arrived.elapsed();
        let text = tokens.concat();
        let value = match api {
            Api::Chat => chat_object(&ask.model, &text, Some(&done)),
            Api::Generate => generate_object(&ask.model, &text, Some(&done)),
            Api::OpenAiChat => openai_completion(&id, &ask.model, &text, &done),
        };
        drop((generating, permit));
        return Ok(json_response(StatusCode::OK, &value));
    }

    let (mut sender, channel) = Channel::<Bytes, std::io::Error>::new(4);
    let model = ask.model.clone();
    let include_usage = ask.include_usage;
    tokio::spawn(async move {
        // Holding the slot until the stream ends (or the client goes away).
        let _held = (generating, permit);
        let eval_started = Instant::now();
        for (i, token) in tokens.iter().enumerate() {
            if drop_after == Some(i) {
                cut(sender).await;
                return;
            }
            tokio::time::sleep(latency).await;
            let line = match api {
                Api::Chat => ndjson(&chat_object(&model, token, None)),
                Api::Generate => ndjson(&generate_object(&model, token, None)),
                Api::OpenAiChat => sse(&openai_chunk(&id, &model, token, None)),
            };
            if sender.send_data(line).await.is_err() {
                return; // the client went away
            }
        }
        if drop_after.is_some() {
            cut(sender).await;
            return;
        }
        done.duration = eval_started.elapsed();
        done.total = arrived.elapsed();
        let mut last = match api {
            Api::Chat => ndjson(&chat_object(&model, "", Some(&done))),
            Api::Generate => ndjson(&generate_object(&model, "", Some(&done))),
            Api::OpenAiChat => sse(&openai_chunk(&id, &model, "", Some(&done))),
        }
        .to_vec();
        if api == Api::OpenAiChat {
            if include_usage {
                let mut usage = openai_chunk(&id, &model, "", Some(&done));
                usage["choices"] = json!([]);
                usage["usage"] = usage_of(&done);
                last.extend_from_slice(&sse(&usage));
            }
            last.extend_from_slice(b"data: [DONE]\n\n");
        }
        let _ = sender.send_data(Bytes::from(last)).await;
    });
    let content_type = match api {
        Api::OpenAiChat => "text/event-stream",
        Api::Chat | Api::Generate => "application/x-ndjson",
    };
    let mut response = Response::new(Either::Right(channel));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(response)
}

/// Closes the connection mid-reply, once what was sent has reached the client: hyper aborts the
/// connection when a body fails and drops what it has not flushed yet, so wait until it has taken every
/// frame (and, with nothing more to send, flushed them) first.
async fn cut(mut sender: Sender<Bytes, std::io::Error>) {
    while sender.capacity() < sender.max_capacity() {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    sender.abort(std::io::Error::other(
        "stand-in: connection dropped (injected)",
    ));
}

/// The metrics of a finished reply.
#[derive(Debug, Default)]
struct Done {
    reason: &'static str,
    total: Duration,
    load: Duration,
    prompt_count: usize,
    prompt_duration: Duration,
    count: usize,
    duration: Duration,
}

impl Done {
    /// Ollama's `done_reason` and metrics, zero values left out as Go's `omitempty` does.
    fn fill(&self, object: &mut Map<String, Value>) {
        object.insert("done_reason".into(), json!(self.reason));
        for (key, value) in [
            ("total_duration", nanos(self.total)),
            ("load_duration", nanos(self.load)),
            ("prompt_eval_count", self.prompt_count as u64),
            ("prompt_eval_duration", nanos(self.prompt_duration)),
            ("eval_count", self.count as u64),
            ("eval_duration", nanos(self.duration)),
        ] {
            if value != 0 {
                object.insert(key.into(), json!(value));
            }
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn chat_object(model: &str, content: &str, done: Option<&Done>) -> Value {
    let mut object = Map::new();
    object.insert("model".into(), json!(model));
    object.insert("created_at".into(), json!(created_at()));
    object.insert(
        "message".into(),
        json!({"role": "assistant", "content": content}),
    );
    object.insert("done".into(), json!(done.is_some()));
    if let Some(done) = done {
        done.fill(&mut object);
    }
    Value::Object(object)
}

fn generate_object(model: &str, response: &str, done: Option<&Done>) -> Value {
    let mut object = Map::new();
    object.insert("model".into(), json!(model));
    object.insert("created_at".into(), json!(created_at()));
    object.insert("response".into(), json!(response));
    object.insert("done".into(), json!(done.is_some()));
    if let Some(done) = done {
        done.fill(&mut object);
        if done.reason != "load" {
            // Ollama's conversation context: token ids of prompt and reply (here simply counted).
            let context: Vec<usize> = (1..=done.prompt_count + done.count).collect();
            object.insert("context".into(), json!(context));
        }
    }
    Value::Object(object)
}

fn usage_of(done: &Done) -> Value {
    json!({
        "prompt_tokens": done.prompt_count,
        "completion_tokens": done.count,
        "total_tokens": done.prompt_count + done.count,
    })
}

fn openai_completion(id: &str, model: &str, content: &str, done: &Done) -> Value {
    json!({
        "id": id,
        "object": "chat.completion",
        "created": unix_now(),
        "model": model,
        "system_fingerprint": "fp_ollama",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": done.reason,
        }],
        "usage": usage_of(done),
    })
}

fn openai_chunk(id: &str, model: &str, content: &str, done: Option<&Done>) -> Value {
    json!({
        "id": id,
        "object": "chat.completion.chunk",
        "created": unix_now(),
        "model": model,
        "system_fingerprint": "fp_ollama",
        "choices": [{
            "index": 0,
            "delta": {"role": "assistant", "content": content},
            "finish_reason": done.map(|d| d.reason),
        }],
    })
}

fn details() -> Value {
    json!({
        "parent_model": "",
        "format": "gguf",
        "family": "stand-in",
        "families": ["stand-in"],
        "parameter_size": "0",
        "quantization_level": "none",
    })
}

/// A fake but stable 64-hex digest for a model name.
fn digest(name: &str) -> String {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    let h = BuildHasherDefault::<DefaultHasher>::default().hash_one(name);
    format!("{h:016x}").repeat(4)
}

fn tags(shared: &Shared) -> Response<Body> {
    let modified = rfc3339(shared.started);
    let models: Vec<Value> = shared
        .options
        .models
        .iter()
        .map(|m| {
            json!({
                "name": format!("{m}:latest"),
                "model": format!("{m}:latest"),
                "modified_at": modified,
                "size": 0,
                "digest": digest(m),
                "details": details(),
            })
        })
        .collect();
    json_response(StatusCode::OK, &json!({ "models": models }))
}

fn ps(shared: &Shared) -> Response<Body> {
    let loads = lock(&shared.loads).clone();
    let models: Vec<Value> = shared
        .options
        .models
        .iter()
        .filter_map(|m| {
            let loaded_at = *loads.get(m)?.get()?;
            Some(json!({
                "name": format!("{m}:latest"),
                "model": format!("{m}:latest"),
                "size": 0,
                "digest": digest(m),
                "details": details(),
                "expires_at": rfc3339(loaded_at + Duration::from_secs(300)),
                "size_vram": 0,
                "context_length": 4096,
            }))
        })
        .collect();
    json_response(StatusCode::OK, &json!({ "models": models }))
}

fn show(shared: &Shared, body: &[u8]) -> Response<Body> {
    let asked: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let model = asked
        .get("model")
        .or_else(|| asked.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default();
    if model.is_empty() {
        return ollama_error(StatusCode::BAD_REQUEST, "model is required");
    }
    if !shared.options.models.contains(&base_name(model)) {
        return ollama_error(StatusCode::NOT_FOUND, &format!("model '{model}' not found"));
    }
    json_response(
        StatusCode::OK,
        &json!({
            "modelfile": format!("FROM {model}\n"),
            "template": "{{ .Prompt }}",
            "details": details(),
            "model_info": {"general.architecture": "stand-in"},
            "capabilities": ["completion"],
            "modified_at": rfc3339(shared.started),
        }),
    )
}

fn openai_models(shared: &Shared) -> Response<Body> {
    let created = shared
        .started
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let data: Vec<Value> = shared
        .options
        .models
        .iter()
        .map(|m| json!({"id": format!("{m}:latest"), "object": "model", "created": created, "owned_by": "library"}))
        .collect();
    json_response(StatusCode::OK, &json!({"object": "list", "data": data}))
}

fn ndjson(value: &Value) -> Bytes {
    let mut line = value.to_string().into_bytes();
    line.push(b'\n');
    Bytes::from(line)
}

fn sse(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

fn full(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(Either::Left(Full::new(Bytes::from(body))));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// As gin's `c.JSON`.
fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    full(
        status,
        "application/json; charset=utf-8",
        value.to_string().into_bytes(),
    )
}

fn text(status: StatusCode, body: &str) -> Response<Body> {
    full(
        status,
        "text/plain; charset=utf-8",
        body.as_bytes().to_vec(),
    )
}

/// Ollama's error: `{"error": "..."}`.
fn ollama_error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(status, &json!({ "error": message }))
}

/// Ollama's OpenAI-compatible error (`openai.NewError`): `type` by status as Ollama's middleware sets it.
fn openai_error(status: StatusCode, message: &str) -> Response<Body> {
    let kind = if status == StatusCode::BAD_REQUEST {
        "invalid_request_error"
    } else {
        "api_error"
    };
    json_response(
        status,
        &json!({"error": {"message": message, "type": kind, "param": null, "code": null}}),
    )
}

/// `NAME` for `NAME` and `NAME:latest`.
fn base_name(model: &str) -> String {
    model.strip_suffix(":latest").unwrap_or(model).to_owned()
}

/// Now as Go's `time.Time` marshals it (RFC 3339 with nanoseconds, trailing zeros trimmed, UTC `Z`).
fn created_at() -> String {
    rfc3339(SystemTime::now())
}

fn rfc3339(at: SystemTime) -> String {
    let at: chrono::DateTime<chrono::Utc> = at.into();
    let base = at.format("%Y-%m-%dT%H:%M:%S").to_string();
    let nanos = format!("{:09}", at.timestamp_subsec_nanos());
    let nanos = nanos.trim_end_matches('0');
    if nanos.is_empty() {
        format!("{base}Z")
    } else {
        format!("{base}.{nanos}Z")
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn random_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) % n
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_repeats_the_prompt_words_with_spaces_between_tokens() {
        assert_eq!(
            reply_tokens("hello  world", 5),
            ["hello", " world", " hello", " world", " hello"]
        );
        assert_eq!(reply_tokens("", 2), ["stand-in", " stand-in"]);
        assert!(reply_tokens("x", 0).is_empty());
    }

    #[test]
    fn timestamps_look_like_go_rfc3339_nano() {
        let at = UNIX_EPOCH + Duration::new(1_700_000_000, 120_000_000);
        assert_eq!(rfc3339(at), "2023-11-14T22:13:20.12Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1)),
            "1970-01-01T00:00:01Z"
        );
    }

    #[test]
    fn zero_metrics_are_left_out_as_go_omitempty_does() {
        let mut object = Map::new();
        Done {
            reason: "load",
            load: Duration::from_millis(3),
            ..Done::default()
        }
        .fill(&mut object);
        let keys: Vec<&str> = object.keys().map(String::as_str).collect();
        assert_eq!(keys, ["done_reason", "load_duration"]);
    }
}
