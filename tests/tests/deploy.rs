//! deploy/ on the test bed's real kube-apiserver, with the real kubectl (kustomize built in) that
//! `tests/bed/setup.sh` builds:
//!
//! - every overlay renders with `kubectl kustomize`, and `kubectl apply --dry-run=server` accepts every
//!   object (the Knative Serving CRDs' schemas included; the namespaces are created first); a negative
//!   control shows that the server really checks the Knative Service schema;
//! - the rendered objects are wired to each other and to the code: the scaler's configuration parses
//!   with the scaler's own parser, and each of its models has a Knative Service whose
//!   `containerConcurrency` equals its `OLLAMA_NUM_PARALLEL` and the model's `concurrency`, asking for
//!   the GPU resource of its sharing mode, placed on its pools; Knative's feature flags enable every
//!   pod-spec field the Services use; the IRSA roles come from `terraform.env`; the Deployments run
//!   hardened, with the flags' files and ports; the Grafana dashboard queries only metrics the scaler
//!   and the dispatcher export;
//! - the mps overlay applied for real, `kubectl auth can-i` as the scaler's and the dispatcher's
//!   ServiceAccounts and as the Lambda functions' group grants every call their code makes, and
//!   refuses what they must not do (secrets, deleting nodes, other Leases, ...).
//!
//! checkov over deploy/ is `bash deploy/checkov.sh` (a step of .ci/test).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ObjectMeta, PostParams};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::sync::OnceCell;
use zerospot_effects::ScalerConfig;
use zerospot_testbed::{ENV_CACHE, TestBed, Versions};

const OVERLAYS: [&str; 2] = ["mps", "mig"];
/// Namespaces deploy/ puts objects in that must exist before a server-side dry run: zerospot's own two
/// (created by the overlay itself on a real apply) and Knative Serving's (created by its install).
const NAMESPACES: [&str; 3] = ["zerospot", "models", "knative-serving"];
const SCALER_SA: &str = "system:serviceaccount:zerospot:zerospot-scaler";
const DISPATCHER_SA: &str = "system:serviceaccount:zerospot:zerospot-dispatcher";
const FUNCTIONS_GROUP: &str = "zerospot:functions";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The real kubectl of the bed's Kubernetes version, pointed at the bed.
struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    cache_dir: PathBuf,
}

struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Kubectl {
    fn for_bed(bed: &TestBed) -> Self {
        let cache = std::env::var_os(ENV_CACHE)
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/zerospot")
            });
        let bin = cache
            .join("kubectl")
            .join(Versions::pinned().kubernetes)
            .join("kubectl");
        assert!(
            bin.is_file(),
            "no kubectl at {}: run `bash tests/bed/setup.sh`",
            bin.display()
        );
        Kubectl {
            bin,
            kubeconfig: bed.info().kubeconfig.clone(),
            cache_dir: bed.info().dir.join("kubectl-cache"),
        }
    }

    async fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = tokio::process::Command::new(&self.bin);
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg(format!("--cache-dir={}", self.cache_dir.display()))
            .args(args)
            .env_remove("KUBECONFIG")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawning kubectl");
        if let Some(text) = stdin {
            let mut pipe = child.stdin.take().unwrap();
            pipe.write_all(text.as_bytes()).await.unwrap();
            drop(pipe);
        }
        let out = child.wait_with_output().await.unwrap();
        Output {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// `kubectl kustomize deploy/overlays/<overlay>`.
    async fn render(&self, overlay: &str) -> String {
        let dir = repo().join("deploy/overlays").join(overlay);
        let out = self.run(&["kustomize", dir.to_str().unwrap()], None).await;
        assert!(out.ok, "kubectl kustomize {overlay}: {}", out.stderr);
        out.stdout
    }

    /// `kubectl apply --dry-run=server -o json` of rendered YAML: the objects as the server would store
    /// them, or the server's refusal.
    async fn dry_run(&self, yaml: &str) -> Result<Vec<Value>, String> {
        let out = self
            .run(
                &["apply", "--dry-run=server", "-o", "json", "-f", "-"],
                Some(yaml),
            )
            .await;
        if !out.ok {
            return Err(out.stderr);
        }
        let v: Value = serde_json::from_str(&out.stdout).expect("kubectl -o json");
        Ok(match v["kind"].as_str() {
            Some("List") => v["items"].as_array().unwrap().clone(),
            _ => vec![v],
        })
    }

    /// `kubectl auth can-i VERB RESOURCE ...` as someone: true for yes.
    async fn can_i(&self, who: &Who, check: &Check) -> bool {
        let mut args: Vec<String> = vec![
            "auth".into(),
            "can-i".into(),
            check.verb.into(),
            check.resource.into(),
        ];
        match check.namespace {
            Some(ns) => args.push(format!("--namespace={ns}")),
            None => args.push("--all-namespaces".into()),
        }
        if let Some(sub) = check.subresource {
            args.push(format!("--subresource={sub}"));
        }
        match who {
            Who::ServiceAccount(user) => args.push(format!("--as={user}")),
            Who::Group(group) => {
                args.push("--as=zerospot-lambda".into());
                args.push(format!("--as-group={group}"));
            }
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self.run(&args, None).await;
        match out.stdout.trim() {
            "yes" => true,
            "no" => false,
            other => panic!("kubectl {args:?}: {other:?} {}", out.stderr),
        }
    }
}

/// Creates the namespaces once per test binary (the overlays' objects live in them).
async fn namespaces(bed: &TestBed) {
    static DONE: OnceCell<()> = OnceCell::const_new();
    DONE.get_or_init(|| async {
        let client = bed.kube_client().await.unwrap();
        let api = Api::<Namespace>::all(client);
        for name in NAMESPACES {
            let ns = Namespace {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    ..ObjectMeta::default()
                },
                ..Namespace::default()
            };
            match api.create(&PostParams::default(), &ns).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => panic!("creating namespace {name}: {e}"),
            }
        }
    })
    .await;
}

/// Applies (real or dry runs) one at a time: a dry-run create racing a real create of the same object
/// would be refused as AlreadyExists.
static APPLY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Renders an overlay and has the server dry-run it: the objects as stored.
async fn applied(kubectl: &Kubectl, overlay: &str) -> Vec<Value> {
    let _one_at_a_time = APPLY.lock().await;
    let yaml = kubectl.render(overlay).await;
    let rendered = yaml.lines().filter(|l| l.starts_with("kind:")).count();
    let objects = kubectl
        .dry_run(&yaml)
        .await
        .unwrap_or_else(|e| panic!("the server refused overlays/{overlay}: {e}"));
    assert_eq!(
        objects.len(),
        rendered,
        "overlays/{overlay}: {rendered} objects rendered, {} came back from the server",
        objects.len()
    );
    objects
}

fn find<'a>(objects: &'a [Value], kind: &str, namespace: Option<&str>, name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| {
            o["kind"] == kind
                && o["metadata"]["name"] == name
                && o["metadata"]["namespace"].as_str() == namespace
        })
        .unwrap_or_else(|| panic!("no {kind} {namespace:?}/{name}"))
}

fn env<'a>(container: &'a Value, name: &str) -> Option<&'a str> {
    container["env"]
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?["value"]
        .as_str()
}

/// `900s` -> 900.
fn seconds(text: &str) -> u64 {
    text.strip_suffix('s')
        .unwrap_or(text)
        .parse()
        .unwrap_or_else(|_| panic!("not a duration in seconds: {text:?}"))
}

fn terraform_env() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(repo().join("deploy/base/zerospot/terraform.env")).unwrap();
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').expect("key=value");
            (k.trim().to_owned(), v.trim().to_owned())
        })
        .collect()
}

#[tokio::test]
async fn every_overlay_renders_and_the_apiserver_accepts_every_object() {
    let bed = TestBed::shared().await.unwrap();
    namespaces(bed).await;
    let kubectl = Kubectl::for_bed(bed);
    for overlay in OVERLAYS {
        let objects = applied(&kubectl, overlay).await;
        let kinds: BTreeSet<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
        for kind in [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "Role",
            "Deployment",
            "DaemonSet",
            "PodDisruptionBudget",
            "ConfigMap",
            "Service",
        ] {
            assert!(kinds.contains(kind), "overlays/{overlay} has no {kind}");
        }
        // Knative's Services came back as stored by its CRD (the schema pruned nothing we set).
        let mistral = find(&objects, "Service", Some("models"), "mistral");
        assert_eq!(mistral["apiVersion"], "serving.knative.dev/v1");
        assert_eq!(
            mistral["spec"]["template"]["spec"]["containerConcurrency"],
            4
        );
        assert!(
            mistral["spec"]["template"]["spec"]["initContainers"].is_array(),
            "the CRD pruned the init container: {mistral}"
        );
    }

    // The negative control: the same server refuses a Knative Service with a field its schema does not
    // have, so the acceptance above means something.
    let yaml = kubectl.render("mps").await;
    let broken = yaml.replacen(
        "containerConcurrency: 4",
        "containerConcurrency: 4\n      containerConcurency: 4",
        1,
    );
    assert_ne!(broken, yaml);
    let refused = {
        let _one_at_a_time = APPLY.lock().await;
        kubectl.dry_run(&broken).await
    }
    .expect_err("a misspelt field");
    assert!(refused.contains("containerConcurency"), "{refused}");
}

#[tokio::test]
async fn overlays_wire_the_configuration_the_models_and_the_gpus_together() {
    let bed = TestBed::shared().await.unwrap();
    namespaces(bed).await;
    let kubectl = Kubectl::for_bed(bed);
    let outputs = terraform_env();
    for overlay in OVERLAYS {
        let objects = applied(&kubectl, overlay).await;

        // The configuration: ConfigMap zerospot-config, key scaler.yaml, read by the scaler's parser.
        let cm = find(&objects, "ConfigMap", Some("zerospot"), "zerospot-config");
        let yaml = cm["data"]["scaler.yaml"].as_str().expect("scaler.yaml");
        let config = ScalerConfig::from_yaml(yaml)
            .unwrap_or_else(|e| panic!("overlays/{overlay}/scaler.yaml: {e}"));
        assert_eq!(config.controller.namespace, "zerospot");

        // IRSA: each ServiceAccount carries its role from Terraform's outputs.
        for (sa, key) in [
            ("zerospot-scaler", "scaler_role_arn"),
            ("zerospot-dispatcher", "dispatcher_role_arn"),
        ] {
            let account = find(&objects, "ServiceAccount", Some("zerospot"), sa);
            let arn = &account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"];
            assert_eq!(arn.as_str(), outputs.get(key).map(String::as_str), "{sa}");
            assert!(arn.as_str().unwrap().starts_with("arn:aws:iam::"), "{arn}");
        }

        // The Deployments: the binary's subcommand, its flags' files and ports, hardened.
        for (name, subcommand, port, ready_path) in [
            ("zerospot-scaler", "scaler", 9090, "/readyz"),
            ("zerospot-dispatcher", "dispatcher", 9091, "/healthz"),
        ] {
            let d = find(&objects, "Deployment", Some("zerospot"), name);
            let pod = &d["spec"]["template"]["spec"];
            assert_eq!(pod["serviceAccountName"], name);
            let c = &pod["containers"][0];
            assert!(
                c["image"]
                    .as_str()
                    .unwrap()
                    .starts_with("ghcr.io/zerospot/zerospot:"),
                "{name}: {}",
                c["image"]
            );
            assert_eq!(c["args"], serde_json::json!([subcommand]), "{name}");
            assert_eq!(
                env(c, "ZEROSPOT_LISTEN"),
                Some(format!("0.0.0.0:{port}").as_str())
            );
            assert_eq!(c["ports"][0]["containerPort"], port, "{name}");
            assert_eq!(c["readinessProbe"]["httpGet"]["path"], ready_path, "{name}");
            assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{name}");
            assert_eq!(
                c["env"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|e| e["name"] == "POD_NAME")
                    .unwrap()["valueFrom"]["fieldRef"]["fieldPath"],
                "metadata.name"
            );
            assert_eq!(
                env(c, "AWS_REGION"),
                outputs.get("aws_region").map(String::as_str)
            );
            // ZEROSPOT_CONFIG names the mounted key scaler.yaml of ConfigMap zerospot-config.
            let mount = &c["volumeMounts"][0];
            let volume = pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|v| v["name"] == mount["name"])
                .unwrap();
            assert_eq!(volume["configMap"]["name"], "zerospot-config");
            let item = &volume["configMap"]["items"][0];
            assert_eq!(item["key"], "scaler.yaml");
            assert_eq!(
                env(c, "ZEROSPOT_CONFIG").map(str::to_owned),
                Some(format!(
                    "{}/{}",
                    mount["mountPath"].as_str().unwrap(),
                    item["path"].as_str().unwrap()
                )),
                "{name}"
            );
            let sc = &c["securityContext"];
            assert_eq!(sc["runAsNonRoot"], true, "{name}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
            assert_eq!(
                pod["securityContext"]["seccompProfile"]["type"],
                "RuntimeDefault"
            );
            assert!(c["resources"]["limits"]["memory"].is_string(), "{name}");
        }
        let scaler = find(&objects, "Deployment", Some("zerospot"), "zerospot-scaler");
        assert!(scaler["spec"]["replicas"].as_u64().unwrap() >= 2);
        // One dispatcher: it owns each node's in-flight count.
        let dispatcher = find(
            &objects,
            "Deployment",
            Some("zerospot"),
            "zerospot-dispatcher",
        );
        assert_eq!(dispatcher["spec"]["replicas"], 1);
        assert_eq!(dispatcher["spec"]["strategy"]["type"], "Recreate");
        // The scaler's Lease name is the one its Role lets it renew.
        let role = find(&objects, "Role", Some("zerospot"), "zerospot-scaler");
        assert!(
            role["rules"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["resourceNames"] == serde_json::json!([config.controller.lease_name])),
            "{role}"
        );
        // PodDisruptionBudgets select the pods of each Deployment.
        for name in ["zerospot-scaler", "zerospot-dispatcher"] {
            let pdb = find(&objects, "PodDisruptionBudget", Some("zerospot"), name);
            let d = find(&objects, "Deployment", Some("zerospot"), name);
            assert_eq!(
                pdb["spec"]["selector"]["matchLabels"],
                d["spec"]["selector"]["matchLabels"]
            );
        }

        // Knative Serving's configuration.
        let data = |name: &str| &find(&objects, "ConfigMap", Some("knative-serving"), name)["data"];
        let features = data("config-features");
        let autoscaler = data("config-autoscaler");
        assert_eq!(autoscaler["enable-scale-to-zero"], "true");
        assert_eq!(
            seconds(autoscaler["scale-down-delay"].as_str().unwrap()) as f64,
            zerospot_sim::PolicyParams::default().zerospot_knative_scale_down_delay_s,
            "the cluster-wide default is what the model Services set"
        );
        let progress = seconds(
            data("config-deployment")["progress-deadline"]
                .as_str()
                .unwrap(),
        );
        assert!(
            progress > config.timing.launch_timeout_s,
            "Knative's progress deadline {progress}s must outlast the scaler's launch timeout"
        );
        let max_timeout: u64 = data("config-defaults")["max-revision-timeout-seconds"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();

        // Every model of the configuration: its Knative Service, wired to its queue's dispatcher.
        let prepull = find(
            &objects,
            "DaemonSet",
            Some("models"),
            "zerospot-model-prepull",
        );
        let prepulled: BTreeSet<&str> = env(
            &prepull["spec"]["template"]["spec"]["containers"][0],
            "ZEROSPOT_MODELS",
        )
        .unwrap()
        .split_whitespace()
        .collect();
        for model in &config.models {
            let svc = find(&objects, "Service", Some(&model.namespace), &model.service);
            assert_eq!(svc["apiVersion"], "serving.knative.dev/v1");
            let template = &svc["spec"]["template"];
            let spec = &template["spec"];
            let c = &spec["containers"][0];
            let name = &model.name;
            assert_eq!(env(c, "ZEROSPOT_MODEL"), Some(name.as_str()));
            assert!(
                prepulled.contains(name.as_str()),
                "{name} is not pre-pulled"
            );
            // containerConcurrency = OLLAMA_NUM_PARALLEL = the model's concurrency, which the
            // dispatcher fills.
            let parallel: u64 = env(c, "OLLAMA_NUM_PARALLEL").unwrap().parse().unwrap();
            assert_eq!(
                spec["containerConcurrency"].as_u64(),
                Some(parallel),
                "{name}"
            );
            assert_eq!(parallel, u64::from(model.concurrency), "{name}");
            // The GPU resource of the sharing mode.
            let limits = &c["resources"]["limits"];
            match overlay {
                "mig" => {
                    let profile = model.mig_profile.as_deref().expect("mig_profile");
                    assert_eq!(limits[format!("nvidia.com/mig-{profile}")], "1", "{name}");
                    assert!(limits["nvidia.com/gpu"].is_null(), "{name}: {limits}");
                }
                _ => {
                    assert_eq!(limits["nvidia.com/gpu"], "1", "{name}");
                    assert!(model.mig_profile.is_none());
                }
            }
            // On its pool and its fallback, which the scaler finds by the same label.
            let terms = &spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                ["nodeSelectorTerms"][0]["matchExpressions"][0];
            assert_eq!(terms["key"], "zerospot.io/pool");
            let pools: BTreeSet<&str> = terms["values"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect();
            let pool = config.pool(&model.pool).expect("the model's pool");
            let mut wanted = vec![pool];
            if let Some(fallback) = &pool.fallback {
                wanted.push(config.pool(fallback).expect("the fallback pool"));
            }
            for p in wanted {
                assert!(
                    pools.contains(p.name.as_str()),
                    "{name} cannot run in {}",
                    p.name
                );
                // The scaler watches the pool's nodes by its node_selector, or by default by
                // eks.amazonaws.com/nodegroup=<pool>; infra/ puts both labels on them.
                let selector = p
                    .node_selector
                    .clone()
                    .unwrap_or_else(|| format!("eks.amazonaws.com/nodegroup={}", p.name));
                assert!(
                    [
                        format!("zerospot.io/pool={}", p.name),
                        format!("eks.amazonaws.com/nodegroup={}", p.name)
                    ]
                    .contains(&selector),
                    "the scaler must watch the nodes the models are placed on, not {selector}"
                );
            }
            assert!(
                spec["tolerations"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|t| t["key"] == "nvidia.com/gpu" && t["effect"] == "NoSchedule"),
                "{name} does not tolerate the GPU taint"
            );
            // Ready only once the model is loaded: an exec probe asking `ollama ps`.
            let probe = c["readinessProbe"]["exec"]["command"].to_string();
            assert!(
                probe.contains("ollama ps") && probe.contains("ZEROSPOT_MODEL"),
                "{probe}"
            );
            // Scale to zero; the pods outlive a cold start and stay a minute after the load that needed
            // them, as the simulator models it.
            let ann = &template["metadata"]["annotations"];
            assert_eq!(ann["autoscaling.knative.dev/min-scale"], "0", "{name}");
            let deadline = seconds(
                ann["serving.knative.dev/progress-deadline"]
                    .as_str()
                    .unwrap(),
            );
            assert!(deadline > config.timing.launch_timeout_s, "{name}");
            let delay = seconds(
                ann["autoscaling.knative.dev/scale-down-delay"]
                    .as_str()
                    .unwrap(),
            );
            assert_eq!(
                delay as f64,
                zerospot_sim::PolicyParams::default().zerospot_knative_scale_down_delay_s,
                "{name}: what the simulator models"
            );
            assert!(delay <= config.timing.idle_window_s, "{name}");
            if ann["autoscaling.knative.dev/initial-scale"] == "0" {
                assert_eq!(autoscaler["allow-zero-initial-scale"], "true");
            }
            assert!(spec["timeoutSeconds"].as_u64().unwrap() <= max_timeout);
            // Knative refuses pod-spec fields behind a feature flag that is off (its webhook, which
            // the bed does not run): every one the Service uses is enabled.
            let mut gated: Vec<&str> = Vec::new();
            for (field, flag) in [
                ("affinity", "kubernetes.podspec-affinity"),
                ("tolerations", "kubernetes.podspec-tolerations"),
                ("nodeSelector", "kubernetes.podspec-nodeselector"),
                ("initContainers", "kubernetes.podspec-init-containers"),
                ("securityContext", "kubernetes.podspec-securitycontext"),
                ("runtimeClassName", "kubernetes.podspec-runtimeclassname"),
                ("priorityClassName", "kubernetes.podspec-priorityclassname"),
            ] {
                if !spec[field].is_null() {
                    gated.push(flag);
                }
            }
            for volume in spec["volumes"].as_array().into_iter().flatten() {
                if !volume["hostPath"].is_null() {
                    gated.push("kubernetes.podspec-volumes-hostpath");
                }
                if !volume["emptyDir"].is_null() {
                    gated.push("kubernetes.podspec-volumes-emptydir");
                }
                if !volume["persistentVolumeClaim"].is_null() {
                    gated.push("kubernetes.podspec-persistent-volume-claim");
                }
            }
            for flag in gated {
                assert_eq!(features[flag], "enabled", "{name} needs {flag}");
            }
        }

        // The NVIDIA device plugin's sharing configuration matches the overlay.
        let plugin_config = objects
            .iter()
            .find(|o| {
                o["kind"] == "ConfigMap"
                    && o["metadata"]["name"]
                        .as_str()
                        .unwrap()
                        .starts_with("nvidia-device-plugin-config")
            })
            .expect("the device plugin's configuration")["data"]["config.yaml"]
            .as_str()
            .unwrap();
        match overlay {
            "mig" => assert!(
                plugin_config.contains("migStrategy: mixed"),
                "{plugin_config}"
            ),
            _ => assert!(
                plugin_config.contains("mps:") && plugin_config.contains("replicas:"),
                "{plugin_config}"
            ),
        }

        // Every DaemonSet on GPU nodes tolerates their taint.
        for ds in objects.iter().filter(|o| o["kind"] == "DaemonSet") {
            let tolerations = ds["spec"]["template"]["spec"]["tolerations"].to_string();
            assert!(
                tolerations.contains("nvidia.com/gpu"),
                "{}: {tolerations}",
                ds["metadata"]["name"]
            );
        }
    }
}

/// Metric names a PromQL expression mentions (`zerospot_...`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(pos) = expr[i..].find("zerospot_") {
        let start = i + pos;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if boundary {
            names.insert(expr[start..end].to_owned());
        }
        i = end;
    }
    names
}

/// Sample names an OpenMetrics exposition can have, from its `# TYPE` lines.
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let (name, kind) = rest.split_once(' ').unwrap();
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_sum", "_count"],
            _ => &[""],
        };
        for s in suffixes {
            names.insert(format!("{name}{s}"));
        }
    }
    names
}

#[tokio::test]
async fn the_dashboard_queries_only_metrics_the_scaler_and_the_dispatcher_export() {
    let bed = TestBed::shared().await.unwrap();
    namespaces(bed).await;
    let kubectl = Kubectl::for_bed(bed);
    let objects = applied(&kubectl, "mps").await;
    let cm = find(
        &objects,
        "ConfigMap",
        Some("zerospot"),
        "zerospot-dashboard",
    );
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let dashboard: Value =
        serde_json::from_str(cm["data"]["zerospot-dashboard.json"].as_str().unwrap()).unwrap();

    // A family shows in the exposition once it has a member: give each one.
    let scaler = zerospot_controller::metrics::Metrics::new();
    use zerospot_controller::metrics::{ActionLabels, DecisionLabels, PoolLabels};
    let pool = PoolLabels { pool: "p".into() };
    scaler.nodes_desired.get_or_create(&pool).set(1);
    scaler.nodes_actual.get_or_create(&pool).set(1);
    scaler.nodes_ready.get_or_create(&pool).set(1);
    scaler
        .decisions
        .get_or_create(&DecisionLabels {
            outcome: "none".into(),
        })
        .inc();
    scaler
        .actions
        .get_or_create(&ActionLabels {
            action: "cordon".into(),
            outcome: "done".into(),
        })
        .inc();
    scaler.api_error("aws", "DescribeAutoScalingGroups", "throttled");
    let mut available = exported(&scaler.encode());
    available.extend(exported(&zerospot_custody::service::metrics_text(
        &zerospot_custody::dispatcher::State::default(),
    )));
    assert!(
        available.contains("zerospot_decisions_total"),
        "{available:?}"
    );
    assert!(
        available.contains("zerospot_dispatcher_requests_received_total"),
        "{available:?}"
    );

    let mut used = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            used.extend(metric_names(target["expr"].as_str().unwrap()));
        }
    }
    let templating = dashboard["templating"].to_string();
    used.extend(metric_names(&templating));
    let unknown: Vec<&String> = used.difference(&available).collect();
    assert!(
        unknown.is_empty(),
        "the dashboard queries metrics nobody exports: {unknown:?}"
    );
    // It covers both processes: the pools, the decisions, and the requests.
    for must in [
        "zerospot_pool_nodes_desired",
        "zerospot_pool_nodes_gpu_ready",
        "zerospot_actions_total",
        "zerospot_api_errors_total",
        "zerospot_dispatcher_requests_answered_total",
        "zerospot_dispatcher_requests_in_flight",
        "zerospot_dispatcher_requests_released_total",
        "zerospot_dispatcher_pod_ready_seconds_bucket",
        "zerospot_dispatcher_total_seconds_bucket",
    ] {
        assert!(used.contains(must), "the dashboard does not show {must}");
    }
}

/// Who asks.
enum Who {
    ServiceAccount(&'static str),
    Group(&'static str),
}

/// One `kubectl auth can-i` question.
#[derive(Clone, Copy)]
struct Check {
    verb: &'static str,
    resource: &'static str,
    subresource: Option<&'static str>,
    /// `None`: in every namespace (`--all-namespaces`).
    namespace: Option<&'static str>,
}

const fn ask(verb: &'static str, resource: &'static str, namespace: Option<&'static str>) -> Check {
    Check {
        verb,
        resource,
        subresource: None,
        namespace,
    }
}

const fn ask_sub(
    verb: &'static str,
    resource: &'static str,
    subresource: &'static str,
    namespace: Option<&'static str>,
) -> Check {
    Check {
        verb,
        resource,
        subresource: Some(subresource),
        namespace,
    }
}

const PA: &str = "podautoscalers.autoscaling.internal.knative.dev";
const EVENTS: &str = "events.events.k8s.io";
const LEASE: &str = "leases.coordination.k8s.io/zerospot-scaler";
const LEASES: &str = "leases.coordination.k8s.io";
const DEMAND: &str = "configmaps/zerospot-demand";

/// Answers every question; returns the ones answered otherwise than expected.
async fn mismatches(
    kubectl: &Kubectl,
    who: Who,
    allowed: &[Check],
    denied: &[Check],
) -> Vec<String> {
    let questions = allowed
        .iter()
        .map(|c| (c, true))
        .chain(denied.iter().map(|c| (c, false)));
    let answers = futures::future::join_all(questions.map(|(c, want)| {
        let who = &who;
        async move { (c, want, kubectl.can_i(who, c).await) }
    }))
    .await;
    let who = match who {
        Who::ServiceAccount(u) => u,
        Who::Group(g) => g,
    };
    answers
        .into_iter()
        .filter(|(_, want, got)| want != got)
        .map(|(c, want, _)| {
            format!(
                "{who} {} {} {}{} in {}",
                if want { "cannot" } else { "can" },
                c.verb,
                c.resource,
                c.subresource.map(|s| format!("/{s}")).unwrap_or_default(),
                c.namespace.unwrap_or("every namespace")
            )
        })
        .collect()
}

#[tokio::test]
async fn rbac_grants_each_identity_exactly_the_calls_its_code_makes() {
    let bed = TestBed::shared().await.unwrap();
    namespaces(bed).await;
    let kubectl = Kubectl::for_bed(bed);
    let yaml = kubectl.render("mps").await;
    let out = {
        let _one_at_a_time = APPLY.lock().await;
        kubectl.run(&["apply", "-f", "-"], Some(&yaml)).await
    };
    assert!(out.ok, "kubectl apply of overlays/mps: {}", out.stderr);

    // Refused to every identity: secrets, more RBAC, other workloads, impersonation, tokens.
    let never = [
        ask("get", "secrets", Some("zerospot")),
        ask("list", "secrets", None),
        ask("get", "secrets", Some("kube-system")),
        ask("create", "pods", Some("models")),
        ask_sub("create", "pods", "exec", Some("models")),
        ask("patch", "deployments.apps", Some("zerospot")),
        ask("patch", "configmaps", Some("zerospot")),
        ask(
            "create",
            "rolebindings.rbac.authorization.k8s.io",
            Some("zerospot"),
        ),
        ask("escalate", "clusterroles.rbac.authorization.k8s.io", None),
        ask("impersonate", "users", None),
        ask_sub("create", "serviceaccounts", "token", Some("zerospot")),
        ask("create", "nodes", None),
        ask("update", "nodes", None),
        ask("patch", PA, None),
        ask("patch", "services.serving.knative.dev", Some("models")),
    ];

    // The scaler (scaler/controller/src/lib.rs, scaler/effects/src/cluster.rs and act.rs).
    let scaler_allowed = [
        ask("list", "nodes", None),  // Node reflector; node_for_instance
        ask("watch", "nodes", None), // Node reflector
        ask("patch", "nodes", None), // cordon, annotations
        ask("list", "pods", None),   // model pods' reflector; evictable_pods
        ask("watch", "pods", None),  // model pods' reflector
        ask_sub("create", "pods", "eviction", Some("models")), // drain
        ask_sub("create", "pods", "eviction", Some("kube-system")), // a drain evicts every pod
        ask("list", PA, None),       // PodAutoscaler reflector
        ask("watch", PA, None),
        ask("create", EVENTS, Some("default")), // Events on Nodes
        ask("patch", EVENTS, Some("default")),  // the Recorder's series
        ask("create", EVENTS, Some("zerospot")), // Events on groups
        ask("patch", EVENTS, Some("zerospot")),
        ask("create", LEASES, Some("zerospot")), // leader election
        ask("get", LEASE, Some("zerospot")),
        ask("patch", LEASE, Some("zerospot")),
        ask("update", LEASE, Some("zerospot")),
        ask("get", DEMAND, Some("zerospot")), // the dispatcher's demand estimates
    ];
    let scaler_denied = [
        ask("patch", DEMAND, Some("zerospot")),
        ask("create", "configmaps", Some("zerospot")),
        ask("list", "configmaps", Some("zerospot")),
        ask("get", "configmaps/someone-else", Some("zerospot")),
        ask("get", DEMAND, Some("models")),
        ask("delete", "nodes", None),
        ask("delete", "pods", Some("models")),
        ask(
            "get",
            "leases.coordination.k8s.io/someone-else",
            Some("zerospot"),
        ),
        ask("patch", LEASE, Some("kube-system")),
        ask("create", LEASES, Some("default")),
        ask("create", EVENTS, Some("kube-system")),
        ask("delete", EVENTS, Some("zerospot")),
    ];
    // The dispatcher (scaler/custody/src/service.rs and dispatcher.rs).
    let dispatcher_allowed = [
        ask("list", "nodes", None),
        ask("watch", "nodes", None),
        ask("patch", "nodes", None), // zerospot.io/in-flight, zerospot.io/idle-since
        ask("list", "pods", None),
        ask("watch", "pods", None),
        ask("patch", DEMAND, Some("zerospot")), // server-side apply of the demand estimates
        ask("create", "configmaps", Some("zerospot")), // its first apply (no resourceNames for create)
        ask("get", DEMAND, Some("zerospot")),          // resuming from the earlier record at start
    ];
    let dispatcher_denied = [
        ask("patch", "configmaps/someone-else", Some("zerospot")),
        ask("update", DEMAND, Some("zerospot")),
        ask("delete", DEMAND, Some("zerospot")),
        ask("get", "configmaps/someone-else", Some("zerospot")),
        ask("list", "configmaps", Some("zerospot")),
        ask("get", DEMAND, Some("models")),
        ask("create", "configmaps", Some("models")),
        ask("patch", DEMAND, Some("models")),
        ask("delete", "nodes", None),
        ask("delete", "pods", Some("models")),
        ask_sub("create", "pods", "eviction", Some("models")),
        ask("create", EVENTS, Some("zerospot")),
        ask("get", LEASE, Some("zerospot")),
        ask("create", LEASES, Some("zerospot")),
        ask("list", PA, None),
    ];
    // The Lambda functions' group (functions/README.md; scaler/effects/src/disruption.rs).
    let functions_allowed = [
        ask("get", "nodes", None),             // taint: read, then write back
        ask("list", "nodes", None),            // node_for_instance, the snapshot
        ask("patch", "nodes", None),           // cordon, taint, annotations
        ask("delete", "nodes", None),          // a terminated instance's Node
        ask("list", "pods", None),             // the snapshot, the drain
        ask("delete", "pods", Some("models")), // a dead node's pods; the last resort
        ask_sub("create", "pods", "eviction", Some("models")),
        ask("list", PA, None),
        ask("create", EVENTS, Some("default")),
        ask("patch", EVENTS, Some("default")),
        ask("create", EVENTS, Some("zerospot")),
        ask("patch", EVENTS, Some("zerospot")),
    ];
    let functions_denied = [
        ask("watch", "nodes", None),
        ask("create", LEASES, Some("zerospot")),
        ask("get", LEASE, Some("zerospot")),
        ask("create", EVENTS, Some("kube-system")),
    ];

    let mut wrong = Vec::new();
    for (who, allowed, denied) in [
        (
            Who::ServiceAccount(SCALER_SA),
            &scaler_allowed[..],
            &scaler_denied[..],
        ),
        (
            Who::ServiceAccount(DISPATCHER_SA),
            &dispatcher_allowed[..],
            &dispatcher_denied[..],
        ),
        (
            Who::Group(FUNCTIONS_GROUP),
            &functions_allowed[..],
            &functions_denied[..],
        ),
    ] {
        let denied: Vec<Check> = denied.iter().chain(never.iter()).copied().collect();
        wrong.extend(mismatches(&kubectl, who, allowed, &denied).await);
    }
    assert!(
        wrong.is_empty(),
        "RBAC differs from the code's calls:\n{}",
        wrong.join("\n")
    );
}
