//! A local test bed of real servers for zerospot's tests: moto (SQS, Auto Scaling, EC2, EventBridge, STS),
//! a real Kubernetes control plane (etcd, kube-apiserver, kube-scheduler, kube-controller-manager) with kwok
//! running fake nodes, the Knative Serving CRDs, and a [`bridge`] that turns Auto Scaling instances into
//! GPU nodes the way EC2 and the kubelet would.
//!
//! ```no_run
//! # async fn example() -> Result<(), zerospot_testbed::Error> {
//! use zerospot_testbed::TestBed;
//! let bed = TestBed::shared().await?; // started once per test binary, stopped when it exits
//! let aws = bed.aws_config().await; // an SdkConfig pointing at moto
//! let kube = bed.kube_client().await?; // a kube::Client with the admin certificate
//! let namespace = bed.namespace(&kube, "my-test").await?; // unique per test
//! # Ok(()) }
//! ```
//!
//! The binaries come from `bash tests/bed/setup.sh`, which builds and caches them outside the repository;
//! without them [`TestBed::start`] fails with [`Error::NotSetUp`], it never skips.

mod bed;
pub mod bridge;
pub mod fixtures;
pub mod model_server;
pub mod ollama;
mod process;
pub mod throttle;

use std::fmt::Display;
use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use bed::{BedInfo, ENV_ATTACH, ENV_CACHE, ENV_KEEP, REGION, TestBed, Versions};
pub use bridge::{Bridge, BridgeOptions, CapacityType, GpuSharing, NodeGroupSpec};
pub use model_server::{RecordedRequest, StandIn, StandInOptions};
pub use ollama::{Ollama, OllamaOptions};
pub use throttle::{Matching, ThrottlingProxy};

/// Why the bed could not do what a test asked. Its `Debug` is its message, so that a test's `unwrap()`
/// prints it readably.
#[derive(thiserror::Error)]
pub enum Error {
    /// The cached binaries or the moto virtualenv are missing.
    #[error(
        "the test bed is not set up: run `bash tests/bed/setup.sh` first (it builds the Kubernetes control \
         plane, etcd and kwok and installs moto into {cache}; ZEROSPOT_CACHE moves it). Missing: {missing:?}"
    )]
    NotSetUp {
        cache: PathBuf,
        missing: Vec<PathBuf>,
    },
    /// A file or process operation failed.
    #[error("{step}: {source}")]
    Io {
        step: String,
        #[source]
        source: std::io::Error,
    },
    /// A helper command (openssl) failed.
    #[error("`{command}` failed: {output}")]
    Command { command: String, output: String },
    /// A server exited or never became ready.
    #[error("{name} did not become ready: {reason}\n--- last lines of {log} ---\n{tail}")]
    NotReady {
        name: String,
        reason: String,
        log: PathBuf,
        tail: String,
    },
    /// A condition did not hold before its deadline.
    #[error("timed out after {after:?} waiting for {what}; last observation: {last}")]
    Timeout {
        what: String,
        after: Duration,
        last: String,
    },
    /// The bed shared by this test binary failed to start (the first test to use it says why).
    #[error("the shared test bed failed to start: {0}")]
    SharedStart(String),
    /// A Kubernetes API call failed.
    #[error("kubernetes: {0}")]
    Kube(#[from] kube::Error),
    /// The kubeconfig could not be read.
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// JSON (de)serialisation failed.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// An AWS call against moto failed.
    #[error("aws {call}: {message}")]
    Aws { call: &'static str, message: String },
    /// Stopping or starting a server needs a bed this process started; this one is attached.
    #[error(
        "{what} needs a bed this process started, but this one was attached from {bed_json} \
         ({ENV_ATTACH}): use `TestBed::start()` for a bed of the test's own"
    )]
    NotOwned {
        what: &'static str,
        bed_json: PathBuf,
    },
    /// The throttling proxy could not be started.
    #[error("throttling proxy: {0}")]
    Proxy(String),
    /// Ollama or its model is missing from the cache.
    #[error(
        "the real model server is not set up: run `bash tests/bed/setup-ollama.sh` first (it builds \
         Ollama and fetches the Gemma 3 270M model into {cache}; ZEROSPOT_CACHE moves it). Missing: {missing:?}"
    )]
    OllamaNotSetUp {
        cache: PathBuf,
        missing: Vec<PathBuf>,
    },
    /// A model server (the stand-in or Ollama) could not do what was asked.
    #[error("model server: {0}")]
    ModelServer(String),
}

impl std::fmt::Debug for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// Result with the bed's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(step: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let step = step.into();
        move |source| Error::Io { step, source }
    }

    pub(crate) fn aws<E: std::error::Error>(call: &'static str) -> impl FnOnce(E) -> Error {
        move |e| Error::Aws {
            call,
            message: error_chain(&e),
        }
    }
}

/// Every message in an error's source chain, so SDK errors say what actually went wrong.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// A name no other test (in this or another process sharing the bed) will use: `prefix-<pid>-<n>-<time>`,
/// lowercase, valid as a Kubernetes namespace (63 chars), an SQS queue and an Auto Scaling group name.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let prefix: String = prefix
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(36)
        .collect();
    format!("{prefix}-{}-{n}-{:x}", std::process::id(), nanos % 0xfffff)
}

/// Polls `check` every 100 ms until it returns `Ok`, for at most `timeout`; the error then names `what`
/// and the last failure `check` reported. Use for anything that converges (nodes appearing, pods running).
pub async fn eventually<T, E, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::result::Result<T, E>>,
    E: Display,
{
    let start = Instant::now();
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(last) if start.elapsed() >= timeout => {
                return Err(Error::Timeout {
                    what: what.to_owned(),
                    after: timeout,
                    last: last.to_string(),
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Installs a `tracing` subscriber for tests once (filter with `RUST_LOG`; the default `info` hides kube's
/// per-retry errors while the apiserver starts), writing through
/// the test harness's captured output.
pub fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let from_env = std::env::var("RUST_LOG").unwrap_or_default();
    let mut filter = EnvFilter::try_new(&from_env).unwrap_or_else(|_| EnvFilter::new("info"));
    if from_env.is_empty() {
        filter = EnvFilter::new("info");
    }
    if !from_env.contains("kube_client")
        && let Ok(quiet) = "kube_client::client::builder=off".parse()
    {
        filter = filter.add_directive(quiet);
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn unique_names_differ_and_are_valid_dns_labels() {
        let a = unique_name("My_Test");
        let b = unique_name("My_Test");
        assert_ne!(a, b);
        for name in [a, b] {
            assert!(name.len() <= 63, "{name}");
            assert!(name.starts_with("my-test-"), "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{name}"
            );
        }
    }

    #[tokio::test]
    async fn eventually_returns_the_first_success_and_times_out_with_the_last_failure() {
        let mut n = 0;
        let got = eventually("n reaches 3", Duration::from_secs(5), || {
            n += 1;
            let seen = n;
            async move {
                if seen >= 3 {
                    Ok(seen)
                } else {
                    Err(format!("n={seen}"))
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(got, 3);

        let err = eventually("never", Duration::from_millis(250), || async {
            Err::<(), _>("still no")
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("still no"), "{err}");
    }
}
