//! `zerospot dispatcher` as a service: Kubernetes watches feeding the dispatcher's caches, `/metrics`
//! and `/healthz`, and graceful shutdown.
//!
//! # RBAC it needs
//! nodes: `get list watch patch` (the in-flight annotations); pods: `get list watch`; configmaps:
//! `get patch` on `zerospot-demand` and `create` in `dispatcher.demand_namespace` (the published
//! estimates, [`crate::demand`]).
//! Without a cluster ([`run_without_cluster`]) it needs none.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use tokio::sync::watch;
use zerospot_effects::config::names;
use zerospot_effects::{KubeCluster, ScalerConfig};

use crate::dispatcher::{Caches, Dispatcher, State};
use crate::model::ModelClient;
use crate::queue::SdkQueue;

/// Why the dispatcher could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The Kubernetes client could not be built.
    #[error("kubernetes client: {0}")]
    Kube(String),
    /// The metrics port could not be opened.
    #[error("listening on {0}: {1}")]
    Listen(SocketAddr, std::io::Error),
    /// The configuration cannot be used this way.
    #[error("configuration: {0}")]
    Config(String),
}

/// Runs the dispatcher until `shutdown` resolves, then hands its requests back to the queue.
pub async fn run(
    config: ScalerConfig,
    kube_config: kube::Config,
    aws: &aws_config::SdkConfig,
    listen: SocketAddr,
    identity: String,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServiceError> {
    let cluster = KubeCluster::new(
        kube_config,
        &config.controller.namespace,
        "zerospot-dispatcher",
        Some(identity),
    )
    .map_err(|e| ServiceError::Kube(e.to_string()))?;
    let client = cluster.client().clone();
    let state = Arc::new(State::default());

    let (nodes, node_writer) = reflector::store();
    let node_watch = watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
        .modify(|n: &mut Node| n.metadata.managed_fields = None)
        .default_backoff();
    let (pods, pod_writer) = reflector::store();
    let pod_watch = watcher(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().labels(names::LABEL_KNATIVE_SERVICE),
    )
    .modify(|p: &mut Pod| p.metadata.managed_fields = None)
    .default_backoff();
    let s1 = state.clone();
    let nodes_task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(reflector(node_writer, node_watch));
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(_) => s1.poke(),
                Err(e) => tracing::warn!(error = %e, "node watch failed; retrying"),
            }
        }
    });
    let s2 = state.clone();
    let pods_task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(reflector(pod_writer, pod_watch));
        while let Some(ev) = stream.next().await {
            match ev {
                Ok(_) => s2.poke(),
                Err(e) => tracing::warn!(error = %e, "pod watch failed; retrying"),
            }
        }
    });

    let http = serve_http(listen, state.clone()).await?;
    let (publish_stop, publish_stopped) = watch::channel(false);
    let publish_task = tokio::spawn(crate::demand::publish(
        client.clone(),
        config.dispatcher.demand_namespace.clone(),
        state.clone(),
        publish_stopped,
    ));
    let mut shutdown = std::pin::pin!(shutdown);
    // Dispatch only once both caches hold the cluster as it is: an empty pod cache would show the
    // pods' GPU slots as free and the nodes' work as gone.
    tokio::select! {
        r = async { tokio::try_join!(nodes.wait_until_ready(), pods.wait_until_ready()) } => {
            if let Err(e) = r {
                return Err(ServiceError::Kube(format!("node and pod caches: {e}")));
            }
        }
        () = &mut shutdown => {
            nodes_task.abort();
            pods_task.abort();
            publish_task.abort();
            http.abort();
            return Ok(());
        }
    }
    let dispatcher = Arc::new(Dispatcher {
        config,
        queue: Arc::new(SdkQueue::new(aws)),
        cluster: Some(Arc::new(cluster)),
        model: ModelClient::new(),
        caches: Some(Caches { nodes, pods }),
        state,
    });
    run_until(dispatcher, shutdown).await;
    let _ = publish_stop.send(true);
    publish_task.abort();
    nodes_task.abort();
    pods_task.abort();
    http.abort();
    Ok(())
}

/// Runs the dispatcher without Kubernetes until `shutdown` resolves: each model's `endpoint` (which
/// must be set) offers `concurrency` slots and is taken as ready; no wake-ups, no Node annotations.
/// For a single GPU box serving its model servers directly, and for benchmarks.
pub async fn run_without_cluster(
    config: ScalerConfig,
    aws: &aws_config::SdkConfig,
    listen: SocketAddr,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServiceError> {
    if let Some(m) = config.models.iter().find(|m| m.endpoint.is_none()) {
        return Err(ServiceError::Config(format!(
            "model {:?} has no endpoint: without a cluster every model needs one",
            m.name
        )));
    }
    let state = Arc::new(State::default());
    let http = serve_http(listen, state.clone()).await?;
    let dispatcher = Arc::new(Dispatcher {
        config,
        queue: Arc::new(SdkQueue::new(aws)),
        cluster: None,
        model: ModelClient::new(),
        caches: None,
        state,
    });
    run_until(dispatcher, shutdown).await;
    http.abort();
    Ok(())
}

async fn run_until(
    dispatcher: Arc<Dispatcher>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let run = tokio::spawn(dispatcher.run(stop_rx));
    shutdown.await;
    tracing::info!("shutting down: handing requests in flight back to the queue");
    let _ = stop_tx.send(true);
    let _ = run.await;
}

/// Serves `/metrics` and `/healthz` on `listen`.
async fn serve_http(
    listen: SocketAddr,
    state: Arc<State>,
) -> Result<tokio::task::JoinHandle<()>, ServiceError> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| ServiceError::Listen(listen, e))?;
    if let Ok(local) = listener.local_addr() {
        tracing::info!(%local, "serving /metrics and /healthz");
    }
    Ok(tokio::spawn(async move {
        use axum::routing::get;
        let app = axum::Router::new()
            .route(
                "/metrics",
                get(move || {
                    let s = state.clone();
                    async move { metrics_text(&s) }
                }),
            )
            .route("/healthz", get(|| async { "ok" }));
        let _ = axum::serve(listener, app).await;
    }))
}

/// The Prometheus text exposition of the dispatcher's counters.
pub fn metrics_text(state: &State) -> String {
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::gauge::Gauge;
    use prometheus_client::registry::Registry;
    let mut registry = Registry::with_prefix("zerospot_dispatcher");
    let s = &state.stats;
    for (name, help, value) in [
        (
            "requests_received",
            "Requests received from SQS",
            &s.received,
        ),
        ("requests_answered", "Final replies sent", &s.answered),
        (
            "requests_retried",
            "Requests put back after a model failure",
            &s.retried,
        ),
        (
            "requests_failed",
            "Requests given up with an error reply",
            &s.failed,
        ),
        (
            "requests_refused",
            "Requests sent to the dead-letter queue unserved",
            &s.refused,
        ),
        ("requests_timed_out", "Timeout replies sent", &s.timed_out),
        (
            "wakeups",
            "Wake-up requests sent through a Knative route",
            &s.wakes,
        ),
        (
            "requests_released",
            "Requests handed back to the queue because their pod or node went away",
            &s.released,
        ),
    ] {
        let c: Counter = Counter::default();
        c.inc_by(value.load(Ordering::Relaxed));
        registry.register(name, help, c);
    }
    let in_flight: i64 = state
        .in_flight_by_model()
        .values()
        .map(|v| i64::from(*v))
        .sum();
    let g: Gauge = Gauge::default();
    g.set(in_flight);
    registry.register("requests_in_flight", "Requests being served now", g);
    let p = &state.phases;
    for (name, help, h) in [
        (
            "queued_seconds",
            "Arrival on the queue to dispatch",
            &p.queued,
        ),
        (
            "waiting_for_capacity_seconds",
            "Of the time queued, waiting for a Ready pod with a free slot",
            &p.waiting_for_capacity,
        ),
        (
            "node_registered_seconds",
            "Arrival to the serving node's registration, for requests that waited for it",
            &p.node_registered,
        ),
        (
            "node_ready_seconds",
            "Arrival to the serving node being Ready, for requests that waited for it",
            &p.node_ready,
        ),
        (
            "pod_ready_seconds",
            "Arrival to the serving pod being Ready, for requests that waited for it",
            &p.pod_ready,
        ),
        (
            "first_token_seconds",
            "Dispatch to the first token",
            &p.first_token,
        ),
        ("total_seconds", "Arrival to the final reply", &p.total),
        (
            "dispatch_overhead_seconds",
            "Receive from SQS to the request sent to the model",
            &p.dispatch_overhead,
        ),
    ] {
        registry.register(name, help, h.clone());
    }
    let mut out = String::new();
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}
