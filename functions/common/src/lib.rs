//! What zerospot's Lambda functions share: their configuration from the environment, AWS and Kubernetes
//! access, and the shape of their answers. The handlers themselves live in each function's crate and
//! act only through `zerospot_effects` (a [`Responder`] over the effects traits), so every cordon, drain
//! and capacity change is the companion scaler's code.
//!
//! # Environment
//! | variable | meaning |
//! |---|---|
//! | `ZEROSPOT_CONFIG` | the scaler's YAML configuration itself (Lambda allows 4 KB of variables in all) |
//! | `ZEROSPOT_CONFIG_FILE` | else a path to it, e.g. `/var/task/zerospot.yaml` packed into the zip (default) |
//! | `ZEROSPOT_EKS_CLUSTER`, `ZEROSPOT_EKS_ENDPOINT`, `ZEROSPOT_EKS_CA` | on AWS: the cluster's name, API endpoint and certificate authority data (`aws eks describe-cluster`); the function signs an EKS token with its role, as `aws eks get-token` does |
//! | `KUBECONFIG` | when `ZEROSPOT_EKS_CLUSTER` is unset: a kubeconfig (the test bed's) |
//! | `ZEROSPOT_DRY_RUN` | `true`: log every write instead of making it |
//! | `AWS_*` | the SDK's usual variables (`AWS_ENDPOINT_URL` points it at moto on the bed) |

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use aws_lambda_events::event::sqs::{BatchItemFailure, SqsBatchResponse};
use thiserror::Error;
use zerospot_effects::disruption::{KubeInventory, Options, Responder};
use zerospot_effects::{KubeCluster, ScalerConfig, SdkAutoScaling, SdkQueues};

/// Env: the configuration's YAML text.
pub const ENV_CONFIG: &str = "ZEROSPOT_CONFIG";
/// Env: a path to the configuration.
pub const ENV_CONFIG_FILE: &str = "ZEROSPOT_CONFIG_FILE";
/// Where the configuration is looked for when neither variable is set: a file packed into the zip.
pub const DEFAULT_CONFIG_FILE: &str = "/var/task/zerospot.yaml";
/// Env: the EKS cluster's name (turns on EKS tokens).
pub const ENV_EKS_CLUSTER: &str = "ZEROSPOT_EKS_CLUSTER";
/// Env: the EKS cluster's API endpoint.
pub const ENV_EKS_ENDPOINT: &str = "ZEROSPOT_EKS_ENDPOINT";
/// Env: the EKS cluster's certificate authority data (base64 of PEM, as EKS gives it; PEM works too).
pub const ENV_EKS_CA: &str = "ZEROSPOT_EKS_CA";
/// Env: `true` for a dry run.
pub const ENV_DRY_RUN: &str = "ZEROSPOT_DRY_RUN";

/// Why a function could not start or reach Kubernetes.
#[derive(Debug, Error)]
pub enum Error {
    /// No configuration, or one that does not validate.
    #[error("configuration: {0}")]
    Config(String),
    /// A variable is missing or wrong.
    #[error("environment variable {name}: {why}")]
    Env {
        /// The variable.
        name: &'static str,
        /// What is wrong.
        why: String,
    },
    /// No Kubernetes client could be made.
    #[error("kubernetes access: {0}")]
    Kube(String),
}

/// Reads configuration through a lookup (the process environment in production, a map in tests).
pub fn load_config(lookup: impl Fn(&str) -> Option<String>) -> Result<ScalerConfig, Error> {
    if let Some(text) = lookup(ENV_CONFIG).filter(|t| !t.trim().is_empty()) {
        return ScalerConfig::from_yaml(&text)
            .map_err(|e| Error::Config(format!("{ENV_CONFIG}: {e}")));
    }
    let path = lookup(ENV_CONFIG_FILE)
        .filter(|p| !p.trim().is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_CONFIG_FILE), PathBuf::from);
    ScalerConfig::load(&path).map_err(|e| {
        Error::Config(format!(
            "{e} (set {ENV_CONFIG} to the YAML, or {ENV_CONFIG_FILE} to a file)"
        ))
    })
}

/// The [`Options`] the environment asks for.
pub fn options(lookup: impl Fn(&str) -> Option<String>) -> Options {
    Options {
        dry_run: lookup(ENV_DRY_RUN).is_some_and(|v| v.trim().eq_ignore_ascii_case("true")),
        ..Options::default()
    }
}

/// How the functions reach Kubernetes.
enum KubeAccess {
    /// A fixed configuration (a kubeconfig).
    Fixed(Box<(KubeCluster, KubeInventory)>),
    /// EKS: a token signed with the function's role, renewed before it expires.
    Eks(Box<EksAccess>),
}

struct EksAccess {
    cluster: String,
    endpoint: String,
    ca: String,
    cached: Mutex<Option<(SystemTime, KubeCluster, KubeInventory)>>,
}

/// Everything a function needs, built once per execution environment.
pub struct Setup {
    /// The scaler's configuration.
    pub config: ScalerConfig,
    /// Handler settings.
    pub options: Options,
    /// Auto Scaling.
    pub aws: SdkAutoScaling,
    /// SQS.
    pub queues: SdkQueues,
    sdk: aws_config::SdkConfig,
    kube: KubeAccess,
    reporter: &'static str,
}

impl std::fmt::Debug for Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Setup")
            .field("options", &self.options)
            .field("reporter", &self.reporter)
            .finish_non_exhaustive()
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl Setup {
    /// From the process environment; `reporter` names the function in Kubernetes Events.
    pub async fn from_env(reporter: &'static str) -> Result<Setup, Error> {
        let config = load_config(env)?;
        let options = options(env);
        let sdk = aws_config::load_from_env().await;
        let kube = match env(ENV_EKS_CLUSTER).filter(|c| !c.is_empty()) {
            Some(cluster) => {
                let need = |name: &'static str| {
                    env(name).filter(|v| !v.is_empty()).ok_or(Error::Env {
                        name,
                        why: format!("required with {ENV_EKS_CLUSTER}"),
                    })
                };
                KubeAccess::Eks(Box::new(EksAccess {
                    cluster,
                    endpoint: need(ENV_EKS_ENDPOINT)?,
                    ca: need(ENV_EKS_CA)?,
                    cached: Mutex::new(None),
                }))
            }
            None => {
                let kube_config = kube::Config::infer()
                    .await
                    .map_err(|e| Error::Kube(e.to_string()))?;
                KubeAccess::Fixed(Box::new(clients(kube_config, &config, reporter)?))
            }
        };
        Ok(Setup {
            aws: SdkAutoScaling::new(&sdk),
            queues: SdkQueues::new(&sdk),
            config,
            options,
            sdk,
            kube,
            reporter,
        })
    }

    /// The Kubernetes clients for this invocation (on EKS: with a token valid for at least a few
    /// more minutes).
    pub async fn kube(&self) -> Result<(KubeCluster, KubeInventory), Error> {
        match &self.kube {
            KubeAccess::Fixed(pair) => Ok((pair.0.clone(), pair.1.clone())),
            KubeAccess::Eks(eks) => {
                let EksAccess {
                    cluster,
                    endpoint,
                    ca,
                    cached,
                } = eks.as_ref();
                let fresh_until = SystemTime::now() + Duration::from_secs(120);
                if let Ok(guard) = cached.lock()
                    && let Some((expires, c, i)) = guard.as_ref()
                    && *expires > fresh_until
                {
                    return Ok((c.clone(), i.clone()));
                }
                let token = zerospot_eks_auth::token_from_sdk_config(&self.sdk, cluster)
                    .await
                    .map_err(|e| Error::Kube(e.to_string()))?;
                let kube_config = zerospot_eks_auth::kube_config(endpoint, ca, &token)
                    .map_err(|e| Error::Kube(e.to_string()))?;
                let (c, i) = clients(kube_config, &self.config, self.reporter)?;
                if let Ok(mut guard) = cached.lock() {
                    *guard = Some((token.expires_at, c.clone(), i.clone()));
                }
                Ok((c, i))
            }
        }
    }

    /// A [`Responder`] over these clients.
    pub fn responder<'a>(
        &'a self,
        cluster: &'a KubeCluster,
        inventory: &'a KubeInventory,
    ) -> Responder<'a> {
        Responder {
            config: &self.config,
            aws: &self.aws,
            queues: &self.queues,
            cluster,
            inventory,
            options: self.options,
        }
    }
}

fn clients(
    kube_config: kube::Config,
    config: &ScalerConfig,
    reporter: &str,
) -> Result<(KubeCluster, KubeInventory), Error> {
    let cluster = KubeCluster::new(
        kube_config,
        &config.controller.namespace,
        reporter,
        env("AWS_LAMBDA_LOG_STREAM_NAME"),
    )
    .map_err(|e| Error::Kube(e.to_string()))?;
    let inventory = KubeInventory::new(cluster.client().clone());
    Ok((cluster, inventory))
}

/// The time left in an invocation whose deadline is `deadline_ms` (milliseconds since the epoch, as the
/// Runtime API gives it); 15 minutes (Lambda's longest) when it is unknown or past.
pub fn budget(deadline_ms: u64) -> Duration {
    let deadline = SystemTime::UNIX_EPOCH + Duration::from_millis(deadline_ms);
    deadline
        .duration_since(SystemTime::now())
        .ok()
        .filter(|d| !d.is_zero())
        .unwrap_or(Duration::from_secs(900))
}

/// Whether a payload is a Lambda SQS event (`Records` from `aws:sqs`), which asks for a
/// [`SqsBatchResponse`].
pub fn is_sqs_batch(payload: &serde_json::Value) -> bool {
    payload
        .get("Records")
        .and_then(serde_json::Value::as_array)
        .is_some_and(|r| {
            r.iter().any(|rec| {
                rec.get("eventSource").and_then(serde_json::Value::as_str) == Some("aws:sqs")
                    || rec.get("messageId").is_some()
            })
        })
}

/// The message ids of a Lambda SQS event, in order.
pub fn message_ids(payload: &serde_json::Value) -> Vec<String> {
    payload
        .get("Records")
        .and_then(serde_json::Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(|rec| rec.get("messageId").and_then(serde_json::Value::as_str))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// An SQS batch answer naming these messages as failed (Lambda returns them to the queue; the event
/// source mapping needs `FunctionResponseTypes: ReportBatchItemFailures`).
pub fn batch_response(failed: impl IntoIterator<Item = String>) -> serde_json::Value {
    let mut response = SqsBatchResponse::default();
    for id in failed {
        let mut item = BatchItemFailure::default();
        item.item_identifier = id;
        response.batch_item_failures.push(item);
    }
    serde_json::to_value(&response).unwrap_or_else(|_| serde_json::json!({"batchItemFailures": []}))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    const YAML: &str = "pools: [{name: gpu, asg_name: gpu-asg}]\nmodels: [{name: llama, pool: gpu, namespace: m, service: llama}]\n";

    #[test]
    fn the_configuration_comes_from_the_variable_first_then_the_file() {
        let config = load_config(|k| (k == ENV_CONFIG).then(|| YAML.to_owned())).unwrap();
        assert_eq!(config.pools[0].asg_name, "gpu-asg");
        let dir = std::env::temp_dir().join(format!("zerospot-fn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("zerospot.yaml");
        std::fs::write(&file, YAML).unwrap();
        let path = file.display().to_string();
        let config = load_config(|k| (k == ENV_CONFIG_FILE).then(|| path.clone())).unwrap();
        assert_eq!(config.models[0].name, "llama");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_or_invalid_configuration_says_what_to_set() {
        let err = load_config(|k| (k == ENV_CONFIG_FILE).then(|| "/nonexistent.yaml".to_owned()))
            .unwrap_err()
            .to_string();
        assert!(err.contains(ENV_CONFIG), "{err}");
        let err = load_config(|k| (k == ENV_CONFIG).then(|| "pools: []".to_owned()))
            .unwrap_err()
            .to_string();
        assert!(err.contains(ENV_CONFIG), "{err}");
    }

    #[test]
    fn a_batch_answer_names_exactly_the_failed_messages() {
        let v = batch_response(["m-2".to_owned()]);
        assert_eq!(
            v,
            serde_json::json!({"batchItemFailures": [{"itemIdentifier": "m-2"}]})
        );
        assert_eq!(
            batch_response(Vec::new()),
            serde_json::json!({"batchItemFailures": []})
        );
    }

    #[test]
    fn the_budget_is_the_time_to_the_deadline() {
        let now_ms = u64::try_from(
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap();
        let b = budget(now_ms + 30_000);
        assert!(
            b > Duration::from_secs(28) && b <= Duration::from_secs(30),
            "{b:?}"
        );
        assert_eq!(budget(0), Duration::from_secs(900));
    }
}
