//! A throttling proxy in front of moto: forwards every request unchanged, except that while a throttle
//! window is open it answers matching requests itself, with what AWS answers when it throttles:
//!
//! | service (SigV4 signing name) | protocol | answer |
//! | --- | --- | --- |
//! | `sqs` | AWS JSON 1.0, query-compatible | HTTP 403, `x-amzn-query-error: RequestThrottled;Sender`, `{"__type":"com.amazonaws.sqs#RequestThrottled","message":"Request is throttled."}` |
//! | `autoscaling`, `sts`, other awsQuery services | awsQuery | HTTP 400, `<ErrorResponse><Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error><RequestId>…</RequestId></ErrorResponse>` |
//! | `ec2` | EC2 query | HTTP 503, `<Response><Errors><Error><Code>RequestLimitExceeded</Code>…` |
//! | `events` and other AWS JSON services | AWS JSON 1.1 | HTTP 400, `{"__type":"ThrottlingException","message":"Rate exceeded"}` |
//!
//! SQS's answer is the one its Smithy model gives every operation: the `RequestThrottled` error with
//! `@awsQueryError(code: "RequestThrottled", httpResponseCode: 403)`, which the JSON protocol carries in
//! the `x-amzn-query-error` header (the SDK takes the error code from that header); its message is the
//! one SQS users report ("Request is throttled."). Every one of these codes is in the AWS SDK's list of
//! throttling error codes, so the SDK's standard retry retries them with backoff.
//!
//! ```no_run
//! # async fn example() -> Result<(), zerospot_testbed::Error> {
//! use std::time::Duration;
//! use zerospot_testbed::{Matching, TestBed, ThrottlingProxy};
//! let bed = TestBed::shared().await?;
//! let proxy = ThrottlingProxy::start(&bed.info().moto_endpoint).await?;
//! let aws = bed.aws_config_with_endpoint(proxy.endpoint_url()).await;
//! proxy.throttle_only(Matching::action("DescribeAutoScalingGroups"));
//! proxy.throttle_for(Duration::from_secs(5)); // or proxy.throttle_next(3)
//! # Ok(()) }
//! ```

use std::convert::Infallible;
use std::hash::{BuildHasher, RandomState};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::{Error, Result};

/// Which requests a throttle window applies to: all (the default), one service, one action, or both.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Matching {
    service: Option<String>,
    action: Option<String>,
}

impl Matching {
    /// Every request.
    pub fn all() -> Self {
        Self::default()
    }

    /// Requests signed for `service`, the SigV4 signing name: `sqs`, `autoscaling`, `events`, `ec2`, `sts`.
    pub fn service(service: impl Into<String>) -> Self {
        Self {
            service: Some(service.into()),
            action: None,
        }
    }

    /// Requests for `action`, e.g. `DescribeAutoScalingGroups` or `GetQueueAttributes` (from the form
    /// body's `Action` for query protocols, from `X-Amz-Target` for JSON ones).
    pub fn action(action: impl Into<String>) -> Self {
        Self {
            service: None,
            action: Some(action.into()),
        }
    }

    /// This and also `action`.
    pub fn and_action(mut self, action: impl Into<String>) -> Self {
        self.action = Some(action.into());
        self
    }

    fn matches(&self, call: &Call) -> bool {
        self.service.as_ref().is_none_or(|s| *s == call.service)
            && self.action.as_ref().is_none_or(|a| *a == call.action)
    }
}

/// One request the proxy saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The SigV4 signing name (`sqs`, `autoscaling`, ...), empty if unsigned.
    pub service: String,
    /// The action (`GetQueueAttributes`, ...), empty if none was found.
    pub action: String,
    /// Whether the proxy answered it with a throttling error instead of forwarding it.
    pub throttled: bool,
}

#[derive(Debug, Clone, Copy, Default)]
enum Window {
    #[default]
    Closed,
    Until(Instant),
    Next(u64),
}

#[derive(Debug, Default)]
struct Rule {
    window: Window,
    matching: Matching,
}

impl Rule {
    /// Whether `call` is to be throttled, using up one of `Next(n)`.
    fn take(&mut self, call: &Call, now: Instant) -> bool {
        if !self.matching.matches(call) {
            return false;
        }
        match self.window {
            Window::Closed => false,
            Window::Until(end) if now < end => true,
            Window::Until(_) => {
                self.window = Window::Closed;
                false
            }
            Window::Next(n) => {
                self.window = if n > 1 {
                    Window::Next(n - 1)
                } else {
                    Window::Closed
                };
                n > 0
            }
        }
    }
}

#[derive(Debug)]
struct Shared {
    target: SocketAddr,
    target_authority: String,
    rule: Mutex<Rule>,
    calls: Mutex<Vec<Call>>,
    throttled: AtomicU64,
    forwarded: AtomicU64,
}

/// A proxy on `127.0.0.1:<ephemeral port>` in front of an AWS endpoint (moto). Stops when dropped.
#[derive(Debug)]
pub struct ThrottlingProxy {
    endpoint_url: String,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl ThrottlingProxy {
    /// Starts a proxy forwarding to `target_endpoint_url` (`http://host:port`, e.g.
    /// `bed.info().moto_endpoint`) in the current tokio runtime. Nothing is throttled until
    /// [`Self::throttle_for`] or [`Self::throttle_next`].
    pub async fn start(target_endpoint_url: &str) -> Result<Self> {
        let uri: http::Uri = target_endpoint_url
            .parse()
            .map_err(|e| Error::Proxy(format!("target {target_endpoint_url:?}: {e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(Error::Proxy(format!(
                "target {target_endpoint_url:?}: only http:// endpoints are proxied"
            )));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| Error::Proxy(format!("target {target_endpoint_url:?} has no host")))?;
        let target =
            tokio::net::lookup_host((authority.host(), authority.port_u16().unwrap_or(80)))
                .await
                .map_err(Error::io(format!("resolving {authority}")))?
                .next()
                .ok_or_else(|| Error::Proxy(format!("{authority} resolves to no address")))?;
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(Error::io("binding the throttling proxy"))?;
        let local = listener
            .local_addr()
            .map_err(Error::io("reading the throttling proxy's address"))?;
        let shared = Arc::new(Shared {
            target,
            target_authority: authority.to_string(),
            rule: Mutex::new(Rule::default()),
            calls: Mutex::new(Vec::new()),
            throttled: AtomicU64::new(0),
            forwarded: AtomicU64::new(0),
        });
        let task = tokio::spawn(serve(listener, shared.clone()));
        tracing::info!(%local, target = %target_endpoint_url, "throttling proxy started");
        Ok(Self {
            endpoint_url: format!("http://{local}"),
            shared,
            task,
        })
    }

    /// `http://127.0.0.1:PORT`, for [`TestBed::aws_config_with_endpoint`](crate::TestBed::aws_config_with_endpoint).
    pub fn endpoint_url(&self) -> &str {
        &self.endpoint_url
    }

    /// Throttles every matching request from now for `duration` (replacing any open window).
    pub fn throttle_for(&self, duration: Duration) {
        lock(&self.shared.rule).window = Window::Until(Instant::now() + duration);
    }

    /// Throttles the next `n` matching requests (replacing any open window); 0 closes the window.
    pub fn throttle_next(&self, n: u64) {
        lock(&self.shared.rule).window = if n == 0 {
            Window::Closed
        } else {
            Window::Next(n)
        };
    }

    /// Restricts throttling (the open window and later ones) to requests matching `matching`;
    /// [`Matching::all`] lifts the restriction.
    pub fn throttle_only(&self, matching: Matching) {
        lock(&self.shared.rule).matching = matching;
    }

    /// Closes the throttle window: every request is forwarded again.
    pub fn stop_throttling(&self) {
        lock(&self.shared.rule).window = Window::Closed;
    }

    /// How many requests were answered with a throttling error.
    pub fn throttled_count(&self) -> u64 {
        self.shared.throttled.load(Ordering::Relaxed)
    }

    /// How many requests were forwarded to the target (whatever it answered).
    pub fn forwarded_count(&self) -> u64 {
        self.shared.forwarded.load(Ordering::Relaxed)
    }

    /// Every request seen so far, in order of arrival.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.shared.calls).clone()
    }
}

impl Drop for ThrottlingProxy {
    fn drop(&mut self) {
        // The accept loop owns the connections' tasks: aborting it aborts them too.
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (stream, _) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "throttling proxy: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = shared.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, request).await) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(error = %e, "throttling proxy: connection ended");
            }
        });
    }
}

async fn handle(shared: &Shared, request: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return plain(StatusCode::BAD_REQUEST, format!("reading the request: {e}")),
    };
    let mut call = Call {
        service: signing_service(&parts.headers).unwrap_or_default(),
        action: action(&parts.headers, &body).unwrap_or_default(),
        throttled: false,
    };
    call.throttled = lock(&shared.rule).take(&call, Instant::now());
    lock(&shared.calls).push(call.clone());
    if call.throttled {
        shared.throttled.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(service = call.service, action = call.action, "throttled");
        return throttled(&call.service, &parts.headers);
    }
    shared.forwarded.fetch_add(1, Ordering::Relaxed);
    match forward(shared, parts, body).await {
        Ok(response) => response,
        Err(e) => plain(
            StatusCode::BAD_GATEWAY,
            format!("throttling proxy: forwarding to {}: {e}", shared.target),
        ),
    }
}

/// Sends the request to the target on a fresh connection and buffers the answer.
async fn forward(
    shared: &Shared,
    parts: http::request::Parts,
    body: Bytes,
) -> std::result::Result<Response<Full<Bytes>>, String> {
    let stream = TcpStream::connect(shared.target)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);

    let path = parts
        .uri
        .path_and_query()
        .map_or_else(|| "/".to_owned(), ToString::to_string);
    let mut request = Request::builder().method(parts.method).uri(path);
    if let Some(headers) = request.headers_mut() {
        *headers = end_to_end(parts.headers, body.len());
        if !headers.contains_key(header::HOST)
            && let Ok(host) = HeaderValue::from_str(&shared.target_authority)
        {
            headers.insert(header::HOST, host);
        }
    }
    let request = request.body(Full::new(body)).map_err(|e| e.to_string())?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    driver.abort();
    let mut response = Response::from_parts(parts, Full::new(Bytes::new()));
    *response.headers_mut() = end_to_end(std::mem::take(response.headers_mut()), body.len());
    *response.body_mut() = Full::new(body);
    Ok(response)
}

/// The headers without hop-by-hop ones, with the length of the buffered body.
fn end_to_end(mut headers: HeaderMap, length: usize) -> HeaderMap {
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    headers
}

/// The service of the SigV4 credential scope: `Credential=AKID/20250101/us-east-1/sqs/aws4_request`.
fn signing_service(headers: &HeaderMap) -> Option<String> {
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let credential = auth.split("Credential=").nth(1)?;
    let scope = credential.split([',', ' ']).next()?;
    scope.split('/').nth(3).map(ToOwned::to_owned)
}

/// The action: after the dot of `X-Amz-Target` (JSON protocols), else the form body's `Action`.
fn action(headers: &HeaderMap, body: &[u8]) -> Option<String> {
    if let Some(target) = headers.get("x-amz-target").and_then(|t| t.to_str().ok()) {
        return target.rsplit('.').next().map(ToOwned::to_owned);
    }
    std::str::from_utf8(body)
        .ok()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("Action="))
        .map(ToOwned::to_owned)
}

/// What AWS answers a throttled request of `service` (see the module docs).
fn throttled(service: &str, request: &HeaderMap) -> Response<Full<Bytes>> {
    let request_id = request_id();
    let json = request.contains_key("x-amz-target");
    let (status, content_type, query_error, body) = match service {
        "sqs" if json => (
            StatusCode::FORBIDDEN,
            "application/x-amz-json-1.0".to_owned(),
            Some("RequestThrottled;Sender"),
            r#"{"__type":"com.amazonaws.sqs#RequestThrottled","message":"Request is throttled."}"#
                .to_owned(),
        ),
        "sqs" => (
            StatusCode::FORBIDDEN,
            "text/xml".to_owned(),
            None,
            query_error_xml(
                "http://queue.amazonaws.com/doc/2012-11-05/",
                "RequestThrottled",
                "Request is throttled.",
                &request_id,
            ),
        ),
        "ec2" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/xml;charset=UTF-8".to_owned(),
            None,
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>RequestLimitExceeded</Code>\
                 <Message>Request limit exceeded.</Message></Error></Errors><RequestID>{request_id}</RequestID></Response>"
            ),
        ),
        _ if json => (
            StatusCode::BAD_REQUEST,
            request
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/x-amz-json-1.1")
                .to_owned(),
            None,
            r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#.to_owned(),
        ),
        other => (
            StatusCode::BAD_REQUEST,
            "text/xml".to_owned(),
            None,
            query_error_xml(
                query_namespace(other),
                "Throttling",
                "Rate exceeded",
                &request_id,
            ),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&content_type) {
        headers.insert(header::CONTENT_TYPE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        headers.insert("x-amzn-requestid", v);
    }
    if let Some(q) = query_error {
        headers.insert("x-amzn-query-error", HeaderValue::from_static(q));
    }
    response
}

fn query_error_xml(namespace: &str, code: &str, message: &str, request_id: &str) -> String {
    let xmlns = if namespace.is_empty() {
        String::new()
    } else {
        format!(" xmlns=\"{namespace}\"")
    };
    format!(
        "<ErrorResponse{xmlns}>\n  <Error>\n    <Type>Sender</Type>\n    <Code>{code}</Code>\n    \
         <Message>{message}</Message>\n  </Error>\n  <RequestId>{request_id}</RequestId>\n</ErrorResponse>\n"
    )
}

fn query_namespace(service: &str) -> &'static str {
    match service {
        "autoscaling" => "http://autoscaling.amazonaws.com/doc/2011-01-01/",
        "sts" => "https://sts.amazonaws.com/doc/2011-06-15/",
        "monitoring" => "http://monitoring.amazonaws.com/doc/2010-08-01/",
        _ => "",
    }
}

/// A request id shaped like AWS's (a UUID).
fn request_id() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let state = RandomState::new();
    let a = state.hash_one(N.fetch_add(1, Ordering::Relaxed));
    let b = state.hash_one(a);
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        b >> 52,
        b & 0xffff_ffff_ffff
    )
}

fn plain(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = status;
    response
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn call(service: &str, action: &str) -> Call {
        Call {
            service: service.into(),
            action: action.into(),
            throttled: false,
        }
    }

    #[test]
    fn a_count_window_throttles_exactly_that_many_matching_calls() {
        let mut rule = Rule {
            window: Window::Next(2),
            matching: Matching::service("sqs"),
        };
        let now = Instant::now();
        assert!(!rule.take(&call("autoscaling", "DescribeAutoScalingGroups"), now));
        assert!(rule.take(&call("sqs", "GetQueueAttributes"), now));
        assert!(rule.take(&call("sqs", "ReceiveMessage"), now));
        assert!(!rule.take(&call("sqs", "GetQueueAttributes"), now));
    }

    #[test]
    fn a_time_window_closes_at_its_end() {
        let now = Instant::now();
        let mut rule = Rule {
            window: Window::Until(now + Duration::from_secs(1)),
            matching: Matching::action("GetQueueAttributes"),
        };
        assert!(rule.take(&call("sqs", "GetQueueAttributes"), now));
        assert!(!rule.take(&call("sqs", "SendMessage"), now));
        assert!(!rule.take(
            &call("sqs", "GetQueueAttributes"),
            now + Duration::from_secs(1)
        ));
    }

    #[test]
    fn the_service_and_action_are_read_from_the_signature_and_the_request() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static(
                "AWS4-HMAC-SHA256 Credential=testing/20250101/us-east-1/autoscaling/aws4_request, \
                 SignedHeaders=host;x-amz-date, Signature=abc",
            ),
        );
        assert_eq!(signing_service(&headers).as_deref(), Some("autoscaling"));
        assert_eq!(
            action(
                &headers,
                b"Action=DescribeAutoScalingGroups&Version=2011-01-01"
            )
            .as_deref(),
            Some("DescribeAutoScalingGroups")
        );
        headers.insert(
            "x-amz-target",
            HeaderValue::from_static("AmazonSQS.GetQueueAttributes"),
        );
        assert_eq!(
            action(&headers, b"{}").as_deref(),
            Some("GetQueueAttributes")
        );
    }

    #[test]
    fn request_ids_look_like_uuids() {
        let id = request_id();
        assert_eq!(id.len(), 36, "{id}");
        assert_eq!(id.matches('-').count(), 4, "{id}");
        assert_ne!(id, request_id());
    }
}
