//! The dispatcher's demand estimates, published for the scaler.
//!
//! The dispatcher sees every request arrive and finish, so it keeps one
//! [`DemandEstimate`](zerospot_core::estimate::DemandEstimate) per model (the estimator the simulator
//! uses): an arrival at the request's SQS `SentTimestamp`, counted once per message (see
//! [`Estimates::arrived`]), and a completion with the seconds the request held its lane (receive to
//! final reply). Every [`PUBLISH_INTERVAL`] it writes them, as
//! [`PublishedDemand`] JSON, to the `demand.json` key of the ConfigMap
//! [`names::CONFIGMAP_DEMAND`] in `dispatcher.demand_namespace` (server-side apply, field manager
//! [`FIELD_MANAGER`]); the scaler reads that ConfigMap and fills each model's arrival rate, gaps,
//! silence and service time from it (`zerospot_effects::observe`). A failed write is logged and tried
//! again on the next tick; it never stops dispatching. Without a cluster nothing is published.
//!
//! A restarted dispatcher resumes from the record it finds there before it publishes its first
//! ([`resume_from_published`]): the gaps between arrivals, the last arrival, the recent and peak rates
//! and the service time carry on ([`DemandEstimate::resume`]), so the scaler's relaunch guard does not
//! go blind after every rollout or crash. Without a record (or one it cannot read) it starts empty.
//!
//! Limits: an arrival is seen when the dispatcher receives the request, so requests held in SQS while
//! no pod is Ready are counted only once capacity comes (the scaler sizes cold starts from the queue
//! depth, which it reads itself). Requests sent while no dispatcher runs count when one receives
//! them, at their `SentTimestamp`, so after a resume their gaps are those they had.
//!
//! # RBAC it needs
//! configmaps: `get` and `patch` on `zerospot-demand` and `create` (which Kubernetes cannot limit to
//! one name) in `dispatcher.demand_namespace`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams};
use tokio::sync::watch;
use zerospot_core::ModelDemand;
use zerospot_core::estimate::{DemandEstimate, PublishedDemand};
use zerospot_effects::config::names;

/// Service time assumed before any request of a model finished, seconds (the simulator's prior).
pub const PRIOR_SERVICE_S: f64 = 5.0;
/// How often the estimates are published. The scaler reads them as often and ignores a record older
/// than two minutes.
pub const PUBLISH_INTERVAL: Duration = Duration::from_secs(10);
/// The server-side apply field manager of the published ConfigMap.
pub const FIELD_MANAGER: &str = "zerospot-dispatcher";

/// A time as seconds since the Unix epoch, the clock the estimates run on.
pub fn unix_s(t: DateTime<Utc>) -> f64 {
    t.timestamp_millis() as f64 / 1000.0
}

/// One [`DemandEstimate`] per model.
#[derive(Debug, Default)]
pub struct Estimates {
    models: Mutex<BTreeMap<String, DemandEstimate>>,
}

impl Estimates {
    fn with<R>(&self, model: &str, f: impl FnOnce(&mut DemandEstimate) -> R) -> R {
        let mut m = self
            .models
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(m.entry(model.to_owned())
            .or_insert_with(|| DemandEstimate::new(PRIOR_SERVICE_S)))
    }

    /// A request for `model`, sent to SQS at `sent_at`, was received for the `receive_count`-th time.
    ///
    /// Counted only on its first delivery (`ApproximateReceiveCount` 1; 0 when SQS did not say): SQS
    /// redelivers a message after a retry, a hand-over or a crashed dispatcher, and keeps the count
    /// with the message, so this holds across dispatcher restarts and replicas and needs no memory of
    /// ids (a bounded set of ids seen would forget them on restart and count every redelivery again).
    /// Returns whether it was counted.
    pub fn arrived(&self, model: &str, sent_at: DateTime<Utc>, receive_count: u32) -> bool {
        if receive_count > 1 {
            return false;
        }
        self.with(model, |e| e.arrived(unix_s(sent_at)));
        true
    }

    /// A request for `model` finished at `at` after holding its lane `took_s` seconds.
    pub fn completed(&self, model: &str, at: DateTime<Utc>, took_s: f64) {
        self.with(model, |e| e.completed(unix_s(at), took_s));
    }

    /// Resumes every model of `record` (a record this dispatcher or an earlier one published) that has
    /// no estimate yet ([`DemandEstimate::resume`] at the record's time). Returns how many it resumed.
    pub fn resume(&self, record: &PublishedDemand) -> usize {
        let mut m = self
            .models
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let at = unix_s(record.observed_at);
        let mut resumed = 0;
        for d in &record.models {
            if d.model.is_empty() || m.contains_key(&d.model) {
                continue;
            }
            m.insert(
                d.model.clone(),
                DemandEstimate::resume(d, at, PRIOR_SERVICE_S),
            );
            resumed += 1;
        }
        resumed
    }

    /// The record to publish at `now`: every model seen so far, only its estimate fields filled. Before
    /// any model was seen it names none: the scaler keeps its fallback for every model, and knows the
    /// dispatcher is there (no "no published demand estimates" note on every decision).
    pub fn record(&self, now: DateTime<Utc>) -> PublishedDemand {
        let m = self
            .models
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let t = unix_s(now);
        let models = m
            .iter()
            .map(|(name, e)| {
                let mut d = ModelDemand {
                    model: name.clone(),
                    ..ModelDemand::default()
                };
                e.fill(t, &mut d);
                d
            })
            .collect();
        PublishedDemand {
            observed_at: now,
            models,
        }
    }
}

/// The ConfigMap holding `record`.
pub fn config_map(namespace: &str, record: &PublishedDemand) -> ConfigMap {
    ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some(names::CONFIGMAP_DEMAND.to_owned()),
            namespace: Some(namespace.to_owned()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_owned(),
                FIELD_MANAGER.to_owned(),
            )])),
            ..kube::api::ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            names::DEMAND_KEY.to_owned(),
            record.to_json(),
        )])),
        ..ConfigMap::default()
    }
}

/// Writes the record once (server-side apply: creates the ConfigMap if missing).
pub async fn publish_once(
    api: &Api<ConfigMap>,
    namespace: &str,
    record: &PublishedDemand,
) -> Result<(), kube::Error> {
    let mut cm = config_map(namespace, record);
    // Server-side apply needs the type in the body.
    let body = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": std::mem::take(&mut cm.metadata),
        "data": cm.data,
    });
    api.patch(
        names::CONFIGMAP_DEMAND,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

/// How long the first read of the earlier record may take before the dispatcher starts without it.
pub const RESUME_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads the record in the ConfigMap, if there is one and it can be read, and resumes `estimates` from
/// it. Never fails: a missing ConfigMap, a bad record or an API error (logged) leave them as they are.
/// Returns how many models it resumed.
pub async fn resume_from_published(api: &Api<ConfigMap>, estimates: &Estimates) -> usize {
    // Read as the scaler reads it (`zerospot_controller`'s poll): no ConfigMap and no key are alike.
    let text = match tokio::time::timeout(RESUME_TIMEOUT, api.get_opt(names::CONFIGMAP_DEMAND))
        .await
    {
        Ok(Ok(found)) => found.and_then(|cm| cm.data?.remove(names::DEMAND_KEY)),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "reading the earlier demand record failed; the estimates start empty");
            return 0;
        }
        Err(_) => {
            tracing::warn!(
                timeout_s = RESUME_TIMEOUT.as_secs(),
                "reading the earlier demand record timed out; the estimates start empty"
            );
            return 0;
        }
    };
    let Some(text) = text else {
        tracing::info!("no earlier demand record; the estimates start empty");
        return 0;
    };
    match PublishedDemand::parse(&text) {
        Ok(record) => {
            let resumed = estimates.resume(&record);
            tracing::info!(
                resumed,
                observed_at = %record.observed_at,
                "demand estimates resumed from the earlier record"
            );
            resumed
        }
        Err(e) => {
            tracing::warn!(error = %e, "the earlier demand record cannot be read; the estimates start empty");
            0
        }
    }
}

/// Resumes from the earlier record ([`resume_from_published`]), then publishes `estimates` every
/// [`PUBLISH_INTERVAL`] (the first at once, naming no model until one was seen) until `shutdown` turns
/// true. Failures are logged and retried on the next tick.
pub async fn publish(
    client: kube::Client,
    namespace: String,
    state: Arc<crate::dispatcher::State>,
    mut shutdown: watch::Receiver<bool>,
) {
    let api: Api<ConfigMap> = Api::namespaced(client, &namespace);
    resume_from_published(&api, &state.estimates).await;
    let mut last: Option<std::time::Instant> = None;
    while !*shutdown.borrow() {
        let due = last.is_none_or(|t| t.elapsed() >= PUBLISH_INTERVAL);
        if due {
            let record = state.estimates.record(Utc::now());
            last = Some(std::time::Instant::now());
            match publish_once(&api, &namespace, &record).await {
                Ok(()) => tracing::debug!(
                    namespace,
                    models = record.models.len(),
                    "demand estimates published"
                ),
                Err(e) => tracing::warn!(
                    namespace,
                    error = %e,
                    "publishing the demand estimates failed; trying again in 10 s"
                ),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shutdown.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap()
    }

    #[test]
    fn arrivals_count_once_per_message_and_completions_move_the_service_time() {
        let e = Estimates::default();
        let empty = e.record(at(0));
        assert_eq!(empty.observed_at, at(0));
        assert!(empty.models.is_empty(), "nothing seen: no model named");
        for i in 0..10 {
            assert!(e.arrived("llama", at(i), 1));
        }
        // Redeliveries of the same messages are not new arrivals.
        for i in 0..10 {
            assert!(!e.arrived("llama", at(i), 2));
        }
        assert!(e.arrived("llama", at(10), 0), "no count from SQS: first");
        e.completed("llama", at(11), 1.0);
        let record = e.record(at(11));
        assert_eq!(record.observed_at, at(11));
        assert_eq!(record.models.len(), 1);
        let d = &record.models[0];
        assert_eq!(d.model, "llama");
        let mut reference = DemandEstimate::new(PRIOR_SERVICE_S);
        for i in 0..=10 {
            reference.arrived(unix_s(at(i)));
        }
        reference.completed(unix_s(at(11)), 1.0);
        let mut want = ModelDemand {
            model: "llama".into(),
            ..ModelDemand::default()
        };
        reference.fill(unix_s(at(11)), &mut want);
        assert_eq!(*d, want, "the same figures as the estimator fed directly");
        assert_eq!(d.service_time_s, Some(3.0), "(1 + the 5 s prior) / 2");
        assert_eq!(d.silent_for_s, Some(1.0));
        assert_eq!(d.queued, 0, "only the estimate fields are published");

        let cm = config_map("zerospot", &record);
        assert_eq!(cm.metadata.name.as_deref(), Some(names::CONFIGMAP_DEMAND));
        let text = &cm.data.unwrap()[names::DEMAND_KEY];
        assert_eq!(PublishedDemand::parse(text).unwrap(), record);
    }

    #[test]
    fn a_new_dispatcher_resumes_the_models_of_an_earlier_record_and_keeps_its_own() {
        let earlier = Estimates::default();
        for i in 0..10 {
            earlier.arrived("llama", at(i * 3), 1);
            earlier.arrived("qwen", at(i * 7), 1);
        }
        earlier.completed("llama", at(28), 2.0);
        let record = earlier.record(at(70));

        let new = Estimates::default();
        // One model already seen by the new dispatcher keeps its own estimate.
        assert!(new.arrived("qwen", at(75), 1));
        assert_eq!(new.resume(&record), 1);
        assert_eq!(new.resume(&record), 0, "resuming twice changes nothing");
        let now = new.record(at(80));
        let llama = now.models.iter().find(|m| m.model == "llama").unwrap();
        let before = record.models.iter().find(|m| m.model == "llama").unwrap();
        assert_eq!(llama.gaps, before.gaps);
        assert_eq!(
            llama.silent_for_s,
            Some(before.silent_for_s.unwrap() + 10.0),
            "the silence carries on"
        );
        let qwen = now.models.iter().find(|m| m.model == "qwen").unwrap();
        assert_eq!(qwen.gaps.as_ref().map(|g| g.total()), Some(0.0));
        assert_eq!(qwen.silent_for_s, Some(5.0));
        // A nameless entry is skipped.
        let nameless = PublishedDemand {
            observed_at: at(0),
            models: vec![ModelDemand::default()],
        };
        assert_eq!(Estimates::default().resume(&nameless), 0);
    }
}
