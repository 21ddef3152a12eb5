//! Starting, attaching to and stopping the bed: moto, etcd, kube-apiserver, kube-scheduler,
//! kube-controller-manager and kwok, all on 127.0.0.1 with free ports in a temporary folder.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use aws_config::{BehaviorVersion, Region, SdkConfig};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Client;
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use crate::process::{Supervisor, tail};
use crate::{Error, Result, eventually, unique_name};

/// The region the bed's moto answers for.
pub const REGION: &str = "us-east-1";
/// Set to a `bed.json` path to attach to a running bed (from `tests/bed/start.sh`) instead of starting one.
pub const ENV_ATTACH: &str = "ZEROSPOT_TESTBED";
/// Where setup.sh put the binaries; default `$HOME/.cache/zerospot`.
pub const ENV_CACHE: &str = "ZEROSPOT_CACHE";
/// Set to keep the bed's folder (logs, certificates, kubeconfig) after it stops.
pub const ENV_KEEP: &str = "ZEROSPOT_KEEP_BED";

const VERSIONS_ENV: &str = include_str!("../bed/versions.env");
const FIELD_MANAGER: &str = "zerospot-testbed";
/// How long each server may take to become ready on a busy 2-core machine.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
const APISERVER: &str = "kube-apiserver";
/// How long kube-apiserver may take to exit after SIGTERM before it gets SIGKILL. It stops listening at
/// once, but keeps open watches (kwok's, the scheduler's, ...) until its 60 s request timeout before it
/// exits; short requests in flight are done long before this.
const APISERVER_GRACE: Duration = Duration::from_secs(2);

/// The pinned versions of the bed's servers (`tests/bed/versions.env`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versions {
    pub kubernetes: String,
    pub etcd: String,
    pub kwok: String,
    pub knative_serving: String,
    pub moto: String,
}

impl Versions {
    /// The versions this crate was built with.
    pub fn pinned() -> Self {
        let get = |key: &str| {
            VERSIONS_ENV
                .lines()
                .filter_map(|l| l.trim().split_once('='))
                .find(|(k, _)| *k == key)
                .map(|(_, v)| v.trim().to_owned())
                .unwrap_or_default()
        };
        Self {
            kubernetes: get("KUBERNETES_VERSION"),
            etcd: get("ETCD_VERSION"),
            kwok: get("KWOK_VERSION"),
            knative_serving: get("KNATIVE_SERVING_VERSION"),
            moto: get("MOTO_VERSION"),
        }
    }
}

/// Where setup.sh put everything.
#[derive(Debug, Clone)]
struct Layout {
    apiserver: PathBuf,
    scheduler: PathBuf,
    controller_manager: PathBuf,
    etcd: PathBuf,
    kwok: PathBuf,
    kwok_stages: PathBuf,
    crds: PathBuf,
    moto_python: PathBuf,
}

impl Layout {
    fn resolve() -> Result<Self> {
        let cache = match std::env::var_os(ENV_CACHE) {
            Some(dir) if !dir.is_empty() => PathBuf::from(dir),
            _ => {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/zerospot")
            }
        };
        let v = Versions::pinned();
        let kube = cache.join("kubernetes").join(&v.kubernetes);
        let kwok = cache.join("kwok").join(&v.kwok);
        let layout = Self {
            apiserver: kube.join("kube-apiserver"),
            scheduler: kube.join("kube-scheduler"),
            controller_manager: kube.join("kube-controller-manager"),
            etcd: cache.join("etcd").join(&v.etcd).join("etcd"),
            kwok: kwok.join("kwok"),
            kwok_stages: kwok.join("stages.yaml"),
            crds: cache
                .join("knative-serving")
                .join(&v.knative_serving)
                .join("crds"),
            moto_python: cache.join("moto").join(&v.moto).join("bin/python"),
        };
        let missing: Vec<PathBuf> = [
            &layout.apiserver,
            &layout.scheduler,
            &layout.controller_manager,
            &layout.etcd,
            &layout.kwok,
            &layout.kwok_stages,
            &layout.crds.join(".complete"),
            &layout.moto_python,
        ]
        .into_iter()
        .filter(|p| !p.exists())
        .cloned()
        .collect();
        if missing.is_empty() {
            Ok(layout)
        } else {
            Err(Error::NotSetUp { cache, missing })
        }
    }
}

/// What a running bed exposes; written as `bed.json` in its folder so other processes can attach.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BedInfo {
    /// The bed's temporary folder: logs (`*.log`), certificates, kubeconfig.
    pub dir: PathBuf,
    /// Admin kubeconfig (client certificate in group system:masters).
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:PORT` of kube-apiserver.
    pub apiserver: String,
    /// `http://127.0.0.1:PORT` of moto.
    pub moto_endpoint: String,
    /// The AWS region moto answers for.
    pub region: String,
    /// Name and PID of every process the bed started.
    pub processes: Vec<(String, u32)>,
    /// Seconds the bed took to start.
    pub start_seconds: f64,
}

impl BedInfo {
    /// The environment a child process (a `zerospot` binary, a Lambda bootstrap) needs to reach moto:
    /// its endpoint and region and static test credentials; pass it to `Command::envs`.
    pub fn aws_env(&self) -> [(&'static str, String); 4] {
        [
            ("AWS_ENDPOINT_URL", self.moto_endpoint.clone()),
            ("AWS_REGION", self.region.clone()),
            ("AWS_ACCESS_KEY_ID", "testing".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "testing".to_owned()),
        ]
    }
}

/// A running bed, started by this process (stopped on drop) or attached to (left running).
#[derive(Debug)]
pub struct TestBed {
    info: BedInfo,
    // Field order matters: processes stop before the folder is removed.
    supervisor: Option<Supervisor>,
    _dir: Option<tempfile::TempDir>,
}

static SHARED: OnceCell<std::result::Result<TestBed, String>> = OnceCell::const_new();

impl TestBed {
    /// The bed shared by every test of this test binary: attached from `ZEROSPOT_TESTBED` if set,
    /// otherwise started on first use. Its processes are stopped by the watchdog when the test binary
    /// exits, whether tests passed, failed or panicked. Create clients per test ([`Self::kube_client`],
    /// [`Self::aws_config`]): each `#[tokio::test]` has its own runtime.
    pub async fn shared() -> Result<&'static TestBed> {
        let bed = SHARED
            .get_or_init(|| async {
                crate::init_tracing();
                let bed = match std::env::var_os(ENV_ATTACH) {
                    Some(path) if !path.is_empty() => Self::attach(Path::new(&path)),
                    _ => Self::start().await,
                };
                bed.map_err(|e| e.to_string())
            })
            .await;
        bed.as_ref().map_err(|e| Error::SharedStart(e.clone()))
    }

    /// Attaches to a bed that another process started, from its `bed.json`.
    pub fn attach(bed_json: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(bed_json).map_err(Error::io(format!(
            "reading {} (has the bed of tests/bed/start.sh stopped? then unset {ENV_ATTACH})",
            bed_json.display()
        )))?;
        let info: BedInfo = serde_json::from_str(&text)?;
        let running = info
            .processes
            .iter()
            .all(|(_, pid)| Path::new(&format!("/proc/{pid}")).exists());
        if !running {
            return Err(Error::Io {
                step: format!("attaching to the bed of {}", bed_json.display()),
                source: std::io::Error::other(format!(
                    "its processes are gone; start it again (tests/bed/start.sh) or unset {ENV_ATTACH}"
                )),
            });
        }
        tracing::info!(dir = %info.dir.display(), "attached to a running test bed");
        Ok(Self {
            info,
            supervisor: None,
            _dir: None,
        })
    }

    /// Starts a whole bed; every process is stopped when it is dropped (or when this process dies).
    pub async fn start() -> Result<Self> {
        let started = Instant::now();
        let layout = Layout::resolve()?;
        let dir = tempfile::Builder::new()
            .prefix("zerospot-bed-")
            .tempdir()
            .map_err(Error::io("creating the bed's temporary folder"))?;
        let keep = std::env::var_os(ENV_KEEP).is_some_and(|v| !v.is_empty());
        let path = dir.path().to_owned();
        let supervisor = Supervisor::new((!keep).then_some(path.as_path()))?;
        tracing::info!(dir = %path.display(), "starting the test bed");

        let pki = Pki::create(&path)?;
        let [
            moto,
            etcd_client,
            etcd_peer,
            apiserver,
            scheduler,
            controller_manager,
            kwok,
        ] = free_ports()?;

        // moto and etcd have no dependencies: start both, then wait for etcd only.
        let mut cmd = Command::new(&layout.moto_python);
        cmd.args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &moto.to_string(),
        ]);
        supervisor.spawn("moto", cmd, &path.join("moto.log"))?;

        let mut cmd = Command::new(&layout.etcd);
        let client_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        cmd.arg("--name=bed")
            .arg(format!("--data-dir={}", path.join("etcd").display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=bed={peer_url}"))
            .arg("--unsafe-no-fsync=true")
            .arg("--log-level=warn");
        supervisor.spawn("etcd", cmd, &path.join("etcd.log"))?;
        wait_for_port(&supervisor, "etcd", etcd_client).await?;

        let mut cmd = Command::new(&layout.apiserver);
        cmd.arg(format!("--etcd-servers={client_url}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={apiserver}"))
            .arg("--advertise-address=127.0.0.1")
            // The "kubernetes" Service's endpoint would be 127.0.0.1, which Endpoints reject.
            .arg("--endpoint-reconciler-type=none")
            .arg(format!("--cert-dir={}", path.join("apiserver").display()))
            .arg(format!("--tls-cert-file={}", pki.serving_cert.display()))
            .arg(format!(
                "--tls-private-key-file={}",
                pki.serving_key.display()
            ))
            .arg(format!("--client-ca-file={}", pki.ca_cert.display()))
            .arg("--authorization-mode=RBAC")
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!(
                "--service-account-key-file={}",
                pki.sa_public.display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                pki.sa_key.display()
            ))
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            .arg("--allow-privileged=true");
        supervisor.spawn(APISERVER, cmd, &path.join("kube-apiserver.log"))?;

        let apiserver_url = format!("https://127.0.0.1:{apiserver}");
        let kubeconfig = path.join("kubeconfig");
        write_kubeconfig(&kubeconfig, &apiserver_url, &pki)?;
        let client = client_from(&kubeconfig).await?;
        wait_for_readyz(&supervisor, &client).await?;

        let component = |bin: &Path, port: u16, name: &str| {
            let mut cmd = Command::new(bin);
            cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
                .arg(format!(
                    "--authentication-kubeconfig={}",
                    kubeconfig.display()
                ))
                .arg(format!(
                    "--authorization-kubeconfig={}",
                    kubeconfig.display()
                ))
                .arg("--bind-address=127.0.0.1")
                .arg(format!("--secure-port={port}"))
                .arg(format!("--cert-dir={}", path.join(name).display()))
                .arg("--leader-elect=false");
            cmd
        };
        let cmd = component(&layout.scheduler, scheduler, "kube-scheduler");
        supervisor.spawn("kube-scheduler", cmd, &path.join("kube-scheduler.log"))?;
        let mut cmd = component(
            &layout.controller_manager,
            controller_manager,
            "kube-controller-manager",
        );
        cmd.arg(format!(
            "--service-account-private-key-file={}",
            pki.sa_key.display()
        ))
        .arg(format!("--root-ca-file={}", pki.ca_cert.display()))
        .arg("--use-service-account-credentials=false");
        supervisor.spawn(
            "kube-controller-manager",
            cmd,
            &path.join("kube-controller-manager.log"),
        )?;

        let mut cmd = Command::new(&layout.kwok);
        cmd.arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg("--manage-all-nodes=false")
            .arg("--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake")
            .arg(format!("--config={}", layout.kwok_stages.display()))
            .arg(format!("--server-address=127.0.0.1:{kwok}"))
            .arg("--node-lease-duration-seconds=40");
        supervisor.spawn("kwok", cmd, &path.join("kwok.log"))?;

        install_crds(&client, &layout.crds).await?;
        // The controller manager is working once it has made the default ServiceAccount.
        wait_for_default_service_account(&supervisor, &client, "default").await?;
        wait_for_port(&supervisor, "kube-scheduler", scheduler).await?;
        wait_for_port(&supervisor, "kube-controller-manager", controller_manager).await?;
        wait_for_port(&supervisor, "kwok", kwok).await?;
        wait_for_port(&supervisor, "moto", moto).await?;
        for (name, _) in supervisor.pids() {
            check_alive(&supervisor, &name)?;
        }

        let info = BedInfo {
            dir: path.clone(),
            kubeconfig,
            apiserver: apiserver_url,
            moto_endpoint: format!("http://127.0.0.1:{moto}"),
            region: REGION.to_owned(),
            processes: supervisor.pids(),
            start_seconds: started.elapsed().as_secs_f64(),
        };
        std::fs::write(path.join("bed.json"), serde_json::to_vec_pretty(&info)?)
            .map_err(Error::io("writing bed.json"))?;
        tracing::info!(
            seconds = info.start_seconds,
            dir = %path.display(),
            "test bed ready"
        );
        let dir = if keep {
            let _ = dir.keep();
            None
        } else {
            Some(dir)
        };
        Ok(Self {
            info,
            supervisor: Some(supervisor),
            _dir: dir,
        })
    }

    /// What this bed exposes (endpoints, kubeconfig, PIDs).
    pub fn info(&self) -> &BedInfo {
        &self.info
    }

    /// The path of `bed.json`, for [`ENV_ATTACH`].
    pub fn bed_json(&self) -> PathBuf {
        self.info.dir.join("bed.json")
    }

    /// `(name, pid)` of every server running now: unlike `info().processes` (the servers as started),
    /// this follows [`Self::restart_apiserver`] and [`Self::stop_apiserver`]. An attached bed gives
    /// the processes of its `bed.json`.
    pub fn processes(&self) -> Vec<(String, u32)> {
        match &self.supervisor {
            Some(s) => s.pids(),
            None => self.info.processes.clone(),
        }
    }

    /// Stops kube-apiserver (SIGTERM; SIGKILL after 2 s) and starts it again with the same arguments
    /// on the same port, then waits until `/readyz` answers ok. etcd keeps every object; clients and
    /// watches made before reconnect by themselves. Only for a bed this process started
    /// ([`Error::NotOwned`] for an attached one); on the shared bed, every test of the binary sees the
    /// outage, so give such a test a binary (or a [`Self::start`]ed bed) of its own.
    pub async fn restart_apiserver(&self) -> Result<()> {
        self.stop_apiserver().await?;
        self.start_apiserver().await
    }

    /// Stops kube-apiserver (SIGTERM; SIGKILL after 2 s) and leaves it stopped: every Kubernetes call
    /// fails (connection refused) until [`Self::start_apiserver`]. The other servers keep running. Does
    /// nothing if it is stopped already.
    pub async fn stop_apiserver(&self) -> Result<()> {
        let supervisor = self.owned("stopping kube-apiserver")?;
        if let Some(took) = supervisor.stop(APISERVER, APISERVER_GRACE).await? {
            tracing::info!(?took, "kube-apiserver stopped");
            self.write_bed_json(supervisor)?;
        }
        Ok(())
    }

    /// Starts kube-apiserver again after [`Self::stop_apiserver`], with the same arguments and port, and
    /// waits until `/readyz` answers ok. Only waits if it is running already.
    pub async fn start_apiserver(&self) -> Result<()> {
        let supervisor = self.owned("starting kube-apiserver")?;
        let started = Instant::now();
        if supervisor.start_again(APISERVER)?.is_some() {
            self.write_bed_json(supervisor)?;
        }
        let client = client_from(&self.info.kubeconfig).await?;
        wait_for_readyz(supervisor, &client).await?;
        tracing::info!(
            seconds = started.elapsed().as_secs_f64(),
            "kube-apiserver ready"
        );
        Ok(())
    }

    fn owned(&self, what: &'static str) -> Result<&Supervisor> {
        self.supervisor.as_ref().ok_or_else(|| Error::NotOwned {
            what,
            bed_json: self.bed_json(),
        })
    }

    /// Rewrites `bed.json` with the running processes, so that attaching still finds them alive.
    fn write_bed_json(&self, supervisor: &Supervisor) -> Result<()> {
        let info = BedInfo {
            processes: supervisor.pids(),
            ..self.info.clone()
        };
        std::fs::write(self.bed_json(), serde_json::to_vec_pretty(&info)?)
            .map_err(Error::io("writing bed.json"))
    }

    /// An `SdkConfig` for moto: its endpoint, region `us-east-1`, static test credentials.
    pub async fn aws_config(&self) -> SdkConfig {
        self.aws_config_with_endpoint(&self.info.moto_endpoint)
            .await
    }

    /// The same `SdkConfig` as [`Self::aws_config`] but for another endpoint, e.g. a
    /// [`ThrottlingProxy`](crate::throttle::ThrottlingProxy) in front of moto.
    pub async fn aws_config_with_endpoint(&self, endpoint_url: &str) -> SdkConfig {
        aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(self.info.region.clone()))
            .endpoint_url(endpoint_url)
            .credentials_provider(aws_sdk_sqs::config::Credentials::new(
                "testing",
                "testing",
                None,
                None,
                "zerospot-testbed",
            ))
            .load()
            .await
    }

    /// A new admin `kube::Client` (create one per test: clients are tied to the runtime that made them).
    ///
    /// It has kube's default retry layer, like a production client: a request answered 429 (an eviction
    /// refused by a PodDisruptionBudget included) is retried up to 15 times, honouring `Retry-After`, for
    /// minutes. To see a 429 at once, build a client from [`Self::kube_config`] with `default_retry = false`.
    pub async fn kube_client(&self) -> Result<Client> {
        Ok(Client::try_from(self.kube_config().await?)?)
    }

    /// The admin `kube::Config`, to adjust before building a client.
    pub async fn kube_config(&self) -> Result<kube::Config> {
        config_from(&self.info.kubeconfig).await
    }

    /// Creates a namespace with a unique name starting with `prefix` and waits until pods can be created
    /// in it (its default ServiceAccount exists).
    pub async fn namespace(&self, client: &Client, prefix: &str) -> Result<String> {
        let name = unique_name(prefix);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        let sas = Api::<ServiceAccount>::namespaced(client.clone(), &name);
        eventually(
            "the namespace's default ServiceAccount",
            Duration::from_secs(60),
            || async { sas.get("default").await },
        )
        .await?;
        Ok(name)
    }

    /// The last `lines` lines of a server's log (`moto`, `etcd`, `kube-apiserver`, ...), for diagnostics.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        tail(&self.info.dir.join(format!("{name}.log")), lines)
    }

    /// Stops every process this bed started (also done on drop).
    pub fn stop(&self) {
        if let Some(s) = &self.supervisor {
            s.shutdown();
        }
    }
}

/// `N` distinct free loopback ports, held open together while chosen. They are picked at random below the
/// kernel's ephemeral range, so that no outgoing connection (which takes an ephemeral port) can grab one in
/// the moment between choosing it and the server binding it.
fn free_ports<const N: usize>() -> Result<[u16; N]> {
    use std::hash::{BuildHasher, RandomState};
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.max(10_001));
    let random = RandomState::new();
    let mut listeners = Vec::with_capacity(N);
    let mut ports = [0u16; N];
    let mut attempt = 0u64;
    for port in &mut ports {
        *port = loop {
            attempt += 1;
            if attempt > 10_000 {
                return Err(Error::Io {
                    step: "finding a free port".into(),
                    source: std::io::Error::other(format!("no free port in {low}..{high}")),
                });
            }
            let span = u64::from(high - low);
            let candidate = low + u16::try_from(random.hash_one(attempt) % span).unwrap_or(0);
            if let Ok(l) = TcpListener::bind(("127.0.0.1", candidate)) {
                listeners.push(l);
                break candidate;
            }
        };
    }
    Ok(ports)
}

fn check_alive(supervisor: &Supervisor, name: &str) -> Result<()> {
    let exited = supervisor.with(name, |p| p.exited().map(|s| (s, p.log.clone())));
    match exited {
        Some(Some((status, log))) => Err(Error::NotReady {
            name: name.to_owned(),
            reason: format!("it exited with {status}"),
            tail: tail(&log, 30),
            log,
        }),
        _ => Ok(()),
    }
}

fn not_ready(supervisor: &Supervisor, name: &str, e: &Error) -> Error {
    let log = supervisor.with(name, |p| p.log.clone()).unwrap_or_default();
    Error::NotReady {
        name: name.to_owned(),
        reason: e.to_string(),
        tail: tail(&log, 30),
        log,
    }
}

async fn wait_for_port(supervisor: &Supervisor, name: &str, port: u16) -> Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    eventually(
        &format!("{name} to listen on {addr}"),
        READY_TIMEOUT,
        || async {
            check_alive(supervisor, name).map_err(|e| e.to_string())?;
            tokio::net::TcpStream::connect(addr)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        },
    )
    .await
    .map_err(|e| match check_alive(supervisor, name) {
        Err(exited) => exited,
        Ok(()) => not_ready(supervisor, name, &e),
    })
}

async fn wait_for_readyz(supervisor: &Supervisor, client: &Client) -> Result<()> {
    let name = APISERVER;
    eventually("kube-apiserver /readyz", READY_TIMEOUT, || async {
        check_alive(supervisor, name).map_err(|e| e.to_string())?;
        let req = http::Request::get("/readyz")
            .body(Vec::new())
            .map_err(|e| e.to_string())?;
        match client.request_text(req).await {
            Ok(body) if body.trim() == "ok" => Ok(()),
            Ok(body) => Err(body),
            Err(e) => Err(crate::error_chain(&e)),
        }
    })
    .await
    .map_err(|e| match check_alive(supervisor, name) {
        Err(exited) => exited,
        Ok(()) => not_ready(supervisor, name, &e),
    })
}

async fn wait_for_default_service_account(
    supervisor: &Supervisor,
    client: &Client,
    namespace: &str,
) -> Result<()> {
    let sas = Api::<ServiceAccount>::namespaced(client.clone(), namespace);
    let name = "kube-controller-manager";
    eventually(
        "kube-controller-manager to create the default ServiceAccount",
        READY_TIMEOUT,
        || async {
            check_alive(supervisor, name).map_err(|e| e.to_string())?;
            sas.get("default").await.map_err(|e| e.to_string())
        },
    )
    .await
    .map(drop)
    .map_err(|e| match check_alive(supervisor, name) {
        Err(exited) => exited,
        Ok(()) => not_ready(supervisor, name, &e),
    })
}

/// Server-side applies every CRD in `dir` (JSON files made by setup.sh from Knative's YAML) and waits
/// until each is Established.
async fn install_crds(client: &Client, dir: &Path) -> Result<()> {
    let api = Api::<CustomResourceDefinition>::all(client.clone());
    let mut names = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(Error::io(format!("reading {}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    entries.sort();
    for file in entries {
        let text = std::fs::read_to_string(&file)
            .map_err(Error::io(format!("reading {}", file.display())))?;
        let crd: CustomResourceDefinition = serde_json::from_str(&text)?;
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&crd),
        )
        .await?;
        names.push(name);
    }
    for name in &names {
        eventually(
            &format!("CRD {name} to be Established"),
            Duration::from_secs(60),
            || async {
                let crd = api.get(name).await.map_err(|e| e.to_string())?;
                let established = crd
                    .status
                    .and_then(|s| s.conditions)
                    .unwrap_or_default()
                    .iter()
                    .any(|c| c.type_ == "Established" && c.status == "True");
                if established {
                    Ok(())
                } else {
                    Err("not Established yet".to_owned())
                }
            },
        )
        .await?;
    }
    tracing::info!(crds = ?names, "Knative Serving CRDs established");
    Ok(())
}

async fn config_from(kubeconfig: &Path) -> Result<kube::Config> {
    Ok(kube::Config::from_custom_kubeconfig(
        Kubeconfig::read_from(kubeconfig)?,
        &KubeConfigOptions::default(),
    )
    .await?)
}

async fn client_from(kubeconfig: &Path) -> Result<Client> {
    Ok(Client::try_from(config_from(kubeconfig).await?)?)
}

fn write_kubeconfig(path: &Path, server: &str, pki: &Pki) -> Result<()> {
    // JSON is YAML: kube-rs and client-go both read it.
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "zerospot-testbed", "cluster": {
            "server": server,
            "certificate-authority": pki.ca_cert,
        }}],
        "users": [{"name": "admin", "user": {
            "client-certificate": pki.admin_cert,
            "client-key": pki.admin_key,
        }}],
        "contexts": [{"name": "zerospot-testbed", "context": {"cluster": "zerospot-testbed", "user": "admin"}}],
        "current-context": "zerospot-testbed",
    });
    std::fs::write(path, serde_json::to_vec_pretty(&config)?)
        .map_err(Error::io("writing the kubeconfig"))
}

/// The bed's own CA and the certificates signed by it, made with openssl.
#[derive(Debug)]
struct Pki {
    ca_cert: PathBuf,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    admin_cert: PathBuf,
    admin_key: PathBuf,
    sa_key: PathBuf,
    sa_public: PathBuf,
}

impl Pki {
    fn create(dir: &Path) -> Result<Self> {
        let pki = dir.join("pki");
        std::fs::create_dir_all(&pki).map_err(Error::io("creating the pki folder"))?;
        let p = |name: &str| pki.join(name);
        let openssl = |args: &[&str]| -> Result<()> {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&pki)
                .output()
                .map_err(Error::io("running openssl (is it installed?)"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(Error::Command {
                    command: format!("openssl {}", args.join(" ")),
                    output: String::from_utf8_lossy(&out.stderr).into_owned(),
                })
            }
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "3650",
            "-subj",
            "/CN=zerospot-testbed-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])?;
        let leaf = |name: &str, subject: &str, ext: &str| -> Result<()> {
            let ext_file = format!("{name}.ext");
            std::fs::write(p(&ext_file), ext).map_err(Error::io("writing an openssl ext file"))?;
            let (key, csr, crt) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
            );
            openssl(&[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                subject,
            ])?;
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "365",
                "-extfile",
                &ext_file,
            ])
        };
        leaf(
            "apiserver",
            "/CN=kube-apiserver",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,\
             DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,\
             DNS:kubernetes.default.svc.cluster.local\n",
        )?;
        leaf(
            "admin",
            "/O=system:masters/CN=zerospot-testbed-admin",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=clientAuth\n",
        )?;
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            "sa.key",
        ])?;
        openssl(&["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
        Ok(Self {
            ca_cert: p("ca.crt"),
            serving_cert: p("apiserver.crt"),
            serving_key: p("apiserver.key"),
            admin_cert: p("admin.crt"),
            admin_key: p("admin.key"),
            sa_key: p("sa.key"),
            sa_public: p("sa.pub"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_versions_are_read_from_versions_env() {
        let v = Versions::pinned();
        assert!(v.kubernetes.starts_with("v1."), "{v:?}");
        assert!(v.etcd.starts_with("v3."), "{v:?}");
        assert!(v.kwok.starts_with('v'), "{v:?}");
        assert!(!v.knative_serving.is_empty(), "{v:?}");
        assert!(!v.moto.is_empty(), "{v:?}");
    }
}
