//! zerospot's companion scaler: a kube-runtime controller that moves GPU Auto Scaling groups to and from
//! zero in step with demand.
//!
//! # What it watches
//! - **Nodes** of the pools (kube-runtime reflector; label selector per pool, default
//!   `eks.amazonaws.com/nodegroup=<pool>`): GPU readiness, device-plugin sharing labels, cordons, and
//!   the dispatcher's in-flight annotations.
//! - **Pods** of the models' Knative Services (`serving.knative.dev/service`): pods not yet scheduled.
//! - **PodAutoscalers** (`autoscaling.internal.knative.dev/v1alpha1`): `desiredScale` and
//!   `actualScale` per revision; the activator's demand shows here first.
//! - **SQS** queue depth of each model's queue, polled every `queue_poll_ms` (1 s), backing off on
//!   throttling; **Auto Scaling groups**, described every `group_poll_ms` (5 s) and after each change.
//! - The dispatcher's **published estimates** (arrival rate, gaps, silence, service time per model):
//!   the ConfigMap `zerospot-demand` in `dispatcher.demand_namespace`, read with a `get` every 10 s
//!   (the dispatcher writes it every 10 s; a `get` on one name needs no list or watch permission).
//!   `zerospot_effects::observe` uses it while it is at most two minutes old.
//!
//! Each relevant change wakes the decision loop ([`scaler`]) at once; see there for the flow.
//!
//! # Operations
//! Leader election on a `coordination.k8s.io` Lease (`kube-lease-manager`); `/metrics`, `/healthz` and
//! `/readyz` on one port; graceful shutdown releases the Lease.
//!
//! # Permissions
//! Kubernetes RBAC and IAM: see `zerospot_effects::cluster` and `zerospot_effects::aws`; plus `list`
//! and `watch` on nodes, pods and `podautoscalers.autoscaling.internal.knative.dev`, `get`,
//! `create`, `update`, `patch` on `leases` in the controller's namespace, and `get` on the ConfigMap
//! `zerospot-demand` in `dispatcher.demand_namespace`.

pub mod metrics;
pub mod scaler;
pub mod trim;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use thiserror::Error;
use tokio::sync::watch;
use zerospot_effects::config::names;
use zerospot_effects::{AutoScaling, AwsErrorKind, KubeCluster, Memory, Queues, ScalerConfig};

use crate::metrics::Metrics;
use crate::scaler::{Caches, Inputs, Scaler};

/// Why the scaler could not start or had to stop.
#[derive(Debug, Error)]
pub enum Error {
    /// The Kubernetes client could not be built.
    #[error("kubernetes client: {0}")]
    Kube(String),
    /// Leader election could not start.
    #[error("leader election: {0}")]
    Lease(String),
    /// The metrics/health port could not be opened.
    #[error("listening on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// How to run the scaler.
#[derive(Debug, Clone)]
pub struct Options {
    /// The validated configuration.
    pub config: ScalerConfig,
    /// Log actions instead of taking them.
    pub dry_run: bool,
    /// Where `/metrics`, `/healthz` and `/readyz` are served.
    pub listen: SocketAddr,
    /// This replica's identity in the Lease (the pod name).
    pub identity: String,
    /// Take part in leader election (off: act as if leader, for a single replica or local runs).
    pub leader_election: bool,
}

/// Runs the scaler until `shutdown` resolves.
pub async fn run(
    options: Options,
    kube_config: kube::Config,
    aws: &aws_config::SdkConfig,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), Error> {
    let config = options.config.clone();
    let cluster = KubeCluster::new(
        kube_config,
        &config.controller.namespace,
        "zerospot-scaler",
        Some(options.identity.clone()),
    )
    .map_err(|e| Error::Kube(e.to_string()))?;
    let client = cluster.client().clone();
    let metrics = Arc::new(Metrics::new());
    let inputs = Arc::new(Inputs::default());
    let autoscaling: Arc<dyn AutoScaling> = Arc::new(zerospot_effects::SdkAutoScaling::new(aws));
    let queues: Arc<dyn Queues> = Arc::new(zerospot_effects::SdkQueues::new(aws));

    // Watches.
    let synced = Arc::new(WatchSync::default());
    let (node_store, node_writer) = reflector::store();
    let mut tasks = Vec::new();
    let nodes_api: Api<Node> = Api::all(client.clone());
    let node_watch = watcher(
        nodes_api,
        watcher::Config::default().labels(&node_label_selector(&config)),
    )
    .modify(trim::node);
    tasks.push(spawn_watch(
        "nodes",
        reflector(node_writer, node_watch.default_backoff()),
        trim::node_fingerprint,
        inputs.clone(),
        metrics.clone(),
        synced.nodes.clone(),
    ));

    let (pod_store, pod_writer) = reflector::store();
    let pods_api: Api<Pod> = Api::all(client.clone());
    let pod_watch = watcher(
        pods_api,
        watcher::Config::default().labels(names::LABEL_KNATIVE_SERVICE),
    )
    .modify(trim::pod);
    tasks.push(spawn_watch(
        "pods",
        reflector(pod_writer, pod_watch.default_backoff()),
        trim::pod_fingerprint,
        inputs.clone(),
        metrics.clone(),
        synced.pods.clone(),
    ));

    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(
            "autoscaling.internal.knative.dev",
            "v1alpha1",
            "PodAutoscaler",
        ),
        "podautoscalers",
    );
    let pa_writer = reflector::store::Writer::<DynamicObject>::new(resource.clone());
    let pa_store = pa_writer.as_reader();
    let pa_api: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let pa_watch = watcher(
        pa_api,
        watcher::Config::default().labels(names::LABEL_KNATIVE_SERVICE),
    )
    .modify(trim::autoscaler);
    tasks.push(spawn_watch(
        "podautoscalers",
        reflector(pa_writer, pa_watch.default_backoff()),
        trim::autoscaler_fingerprint,
        inputs.clone(),
        metrics.clone(),
        synced.autoscalers.clone(),
    ));

    // Pollers.
    tasks.push(tokio::spawn(poll_queues(
        config.clone(),
        queues,
        inputs.clone(),
        metrics.clone(),
    )));
    tasks.push(tokio::spawn(poll_published_demand(
        client.clone(),
        config.dispatcher.demand_namespace.clone(),
        inputs.clone(),
        metrics.clone(),
    )));
    tasks.push(tokio::spawn(poll_groups(
        config.clone(),
        autoscaling.clone(),
        inputs.clone(),
        metrics.clone(),
    )));

    // Leader election.
    let (leader, lease_task) = if options.leader_election {
        let duration = config.controller.lease_duration_s;
        let grace = (duration / 3).max(1);
        let manager = kube_lease_manager::LeaseManagerBuilder::new(
            client.clone(),
            &config.controller.lease_name,
        )
        .with_namespace(&config.controller.namespace)
        .with_identity(&options.identity)
        .with_duration(duration)
        .with_grace(grace)
        .build()
        .await
        .map_err(|e| Error::Lease(e.to_string()))?;
        let (rx, handle) = manager.watch().await;
        (rx, Some(handle))
    } else {
        let (tx, rx) = watch::channel(true);
        std::mem::forget(tx);
        (rx, None)
    };

    // Health and metrics.
    let ready_flag = synced.clone();
    let inputs_for_ready = inputs.clone();
    let ready = move || ready_flag.all() && inputs_for_ready.groups_synced.load(Ordering::Acquire);
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|source| Error::Listen {
            addr: options.listen,
            source,
        })?;
    tracing::info!(addr = %options.listen, "serving /metrics, /healthz, /readyz");
    tasks.push(tokio::spawn(serve_http(
        listener,
        metrics.clone(),
        Arc::new(ready.clone()),
    )));

    let scaler = Scaler {
        config,
        aws: autoscaling,
        cluster: Arc::new(cluster),
        inputs,
        caches: Caches {
            nodes: node_store,
            pods: pod_store,
            autoscalers: pa_store,
        },
        metrics,
        dry_run: options.dry_run,
        memory: Memory::default(),
    };
    tracing::info!(
        dry_run = options.dry_run,
        identity = options.identity,
        "scaler started"
    );
    scaler.run(leader, ready, shutdown).await;

    // Graceful stop: drop the Lease receiver (the manager releases the Lease) and stop the tasks.
    for task in &tasks {
        task.abort();
    }
    if let Some(handle) = lease_task {
        match tokio::time::timeout(Duration::from_secs(5), handle).await {
            Ok(Ok(Ok(_))) => tracing::info!("leader Lease released"),
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "releasing the Lease failed"),
            _ => tracing::warn!("releasing the Lease timed out"),
        }
    }
    Ok(())
}

/// One set-based selector for all pools' nodes where they use the node-group label; else no selector.
fn node_label_selector(config: &ScalerConfig) -> String {
    if config.pools.iter().any(|p| p.node_selector.is_some()) {
        // Pools with their own selectors: watch every node; pool membership comes from the groups.
        if let [only] = config.pools.as_slice() {
            return only.node_selector.clone().unwrap_or_default();
        }
        return String::new();
    }
    let names: Vec<&str> = config.pools.iter().map(|p| p.name.as_str()).collect();
    format!("{} in ({})", names::LABEL_NODEGROUP, names.join(","))
}

#[derive(Debug, Default)]
struct WatchSync {
    nodes: Arc<AtomicBool>,
    pods: Arc<AtomicBool>,
    autoscalers: Arc<AtomicBool>,
}

impl WatchSync {
    fn all(&self) -> bool {
        self.nodes.load(Ordering::Acquire)
            && self.pods.load(Ordering::Acquire)
            && self.autoscalers.load(Ordering::Acquire)
    }
}

/// Follows one watch: every event that changes what the policy reads wakes the decision loop; events
/// that change nothing it reads (a kubelet heartbeat, a status field it ignores) do not.
fn spawn_watch<K>(
    what: &'static str,
    stream: impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
    fingerprint: fn(&K) -> u64,
    inputs: Arc<Inputs>,
    metrics: Arc<Metrics>,
    synced: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource + Send + 'static,
{
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        let mut seen: std::collections::HashMap<(Option<String>, String), u64> =
            std::collections::HashMap::new();
        let key = |o: &K| {
            (
                o.meta().namespace.clone(),
                o.meta().name.clone().unwrap_or_default(),
            )
        };
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::InitDone) => {
                    synced.store(true, Ordering::Release);
                    inputs.changed();
                }
                Ok(watcher::Event::Init) => {}
                Ok(watcher::Event::InitApply(o)) => {
                    seen.insert(key(&o), fingerprint(&o));
                }
                Ok(watcher::Event::Apply(o)) => {
                    let print = fingerprint(&o);
                    if seen.insert(key(&o), print) != Some(print) {
                        inputs.changed();
                    }
                }
                Ok(watcher::Event::Delete(o)) => {
                    seen.remove(&key(&o));
                    inputs.changed();
                }
                Err(e) => {
                    metrics.api_error("kubernetes", &format!("watch {what}"), watch_error_kind(&e));
                    tracing::warn!(what, error = %e, "watch failed; retrying with back-off");
                }
            }
        }
    })
}

fn watch_error_kind(e: &watcher::Error) -> &'static str {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
            if s.code == 404 =>
        {
            "not_found"
        }
        watcher::Error::WatchError(_) => "watch_error",
        _ => "unavailable",
    }
}

/// Reads each model's queue depth every `queue_poll_ms`; on throttling, doubles the interval (up to
/// 30 s) until a read succeeds.
async fn poll_queues(
    config: ScalerConfig,
    queues: Arc<dyn Queues>,
    inputs: Arc<Inputs>,
    metrics: Arc<Metrics>,
) {
    let base = config.controller.queue_poll();
    let max = Duration::from_secs(30).max(base);
    let mut interval = base;
    loop {
        let mut throttled = false;
        for model in &config.models {
            let Some(url) = &model.queue_url else {
                continue;
            };
            match queues.depth(url).await {
                Ok(depth) => inputs.set_queue(&model.name, depth),
                Err(e) => {
                    metrics.api_error("aws", e.call, e.kind.as_str());
                    throttled |= e.kind == AwsErrorKind::Throttled;
                    tracing::warn!(model = model.name, error = %e, "reading the queue depth failed");
                }
            }
        }
        interval = next_interval(interval, base, max, throttled);
        tokio::time::sleep(interval).await;
    }
}

/// How often the dispatcher's published estimates are read: as often as the dispatcher writes them.
pub const PUBLISHED_DEMAND_POLL: Duration = Duration::from_secs(10);

/// Reads the ConfigMap `zerospot-demand` every [`PUBLISHED_DEMAND_POLL`]. A failed read keeps what was
/// read before (observe ignores it once it is too old); an absent ConfigMap or key clears it.
async fn poll_published_demand(
    client: kube::Client,
    namespace: String,
    inputs: Arc<Inputs>,
    metrics: Arc<Metrics>,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    loop {
        match api.get_opt(names::CONFIGMAP_DEMAND).await {
            Ok(found) => {
                inputs.set_published_demand(found.and_then(|cm| cm.data?.remove(names::DEMAND_KEY)))
            }
            Err(e) => {
                let e = zerospot_effects::KubeError::from_kube("get configmap", e);
                metrics.api_error("kubernetes", e.call, e.kind.as_str());
                tracing::warn!(namespace, error = %e, "reading the published demand estimates failed");
            }
        }
        tokio::time::sleep(PUBLISHED_DEMAND_POLL).await;
    }
}

/// The next polling interval: doubled after throttling (capped), back to the base otherwise.
pub fn next_interval(
    current: Duration,
    base: Duration,
    max: Duration,
    throttled: bool,
) -> Duration {
    if throttled {
        (current * 2).min(max)
    } else {
        base
    }
}

/// Describes the groups every `group_poll_ms` or when asked, and their capacity failures every 30 s.
async fn poll_groups(
    config: ScalerConfig,
    aws: Arc<dyn AutoScaling>,
    inputs: Arc<Inputs>,
    metrics: Arc<Metrics>,
) {
    let base = config.controller.group_poll();
    let max = Duration::from_secs(60).max(base);
    let mut interval = base;
    let names: Vec<String> = config.pools.iter().map(|p| p.asg_name.clone()).collect();
    let mut last_failures_check: Option<std::time::Instant> = None;
    loop {
        let throttled = match aws.describe_groups(&names).await {
            Ok(groups) => {
                inputs.set_groups(groups);
                false
            }
            Err(e) => {
                metrics.api_error("aws", e.call, e.kind.as_str());
                tracing::warn!(error = %e, "describing the groups failed");
                e.kind == AwsErrorKind::Throttled
            }
        };
        if last_failures_check.is_none_or(|t| t.elapsed() >= Duration::from_secs(30)) {
            last_failures_check = Some(std::time::Instant::now());
            let window = chrono::Duration::seconds(
                i64::try_from(config.timing.capacity_failure_window_s).unwrap_or(600),
            );
            let since = Utc::now() - window;
            for pool in &config.pools {
                if pool.fallback.is_none() {
                    continue;
                }
                match aws.capacity_failures(&pool.asg_name, since).await {
                    Ok(failures) => {
                        let mut all = inputs
                            .capacity_failures
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner);
                        if all.get(&pool.name) != Some(&failures) {
                            all.insert(pool.name.clone(), failures);
                            drop(all);
                            inputs.changed();
                        }
                    }
                    Err(e) => {
                        metrics.api_error("aws", e.call, e.kind.as_str());
                        tracing::warn!(pool = pool.name, error = %e, "reading scaling activities failed");
                    }
                }
            }
        }
        interval = next_interval(interval, base, max, throttled);
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = inputs.refresh_requested() => {}
        }
    }
}

async fn serve_http(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    ready: Arc<dyn Fn() -> bool + Send + Sync>,
) {
    use axum::http::{StatusCode, header};
    use axum::routing::get;
    let m = metrics.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = m.clone();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready.clone();
                async move {
                    if ready() {
                        (StatusCode::OK, "ok")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "caches not synced")
                    }
                }
            }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "metrics server stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polling_backs_off_on_throttling_and_recovers_at_once() {
        let base = Duration::from_secs(1);
        let max = Duration::from_secs(30);
        let mut i = base;
        let mut seen = vec![];
        for _ in 0..7 {
            i = next_interval(i, base, max, true);
            seen.push(i.as_secs());
        }
        assert_eq!(seen, vec![2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(next_interval(i, base, max, false), base);
    }

    #[test]
    fn pools_on_node_group_labels_share_one_set_based_selector() {
        let config = ScalerConfig::from_yaml(
            "pools: [{name: a, asg_name: a-asg}, {name: b, asg_name: b-asg}]\nmodels: []\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            node_label_selector(&config),
            "eks.amazonaws.com/nodegroup in (a,b)"
        );
    }
}
