//! Two `zerospot scaler` processes on the test bed: one leads through a `coordination.k8s.io` Lease,
//! and when it is killed with SIGKILL the other takes over within the lease duration and acts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::Api;
use zerospot_testbed::fixtures::create_gpu_group;
use zerospot_testbed::{GpuSharing, NodeGroupSpec, TestBed, eventually, unique_name};

/// The `zerospot` binary that `cargo test --workspace` builds next to the test binaries (for
/// zerospot's own CLI tests). Run alone, this test needs `cargo build -p zerospot` first.
fn zerospot_binary() -> PathBuf {
    // target/<profile>/deps/<this test> -> target/<profile>/zerospot
    let exe = std::env::current_exe().unwrap();
    let bin = exe.parent().unwrap().parent().unwrap().join("zerospot");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build -p zerospot` (cargo test --workspace builds it)",
        bin.display()
    );
    bin
}

struct Scaler {
    child: Child,
    identity: String,
}

impl Drop for Scaler {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_scaler(
    bin: &PathBuf,
    bed: &TestBed,
    config: &std::path::Path,
    identity: &str,
    log: &std::path::Path,
) -> Scaler {
    let info = bed.info();
    let child = Command::new(bin)
        .args(["scaler", "--config"])
        .arg(config)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--identity",
            identity,
            "--log-format",
            "text",
        ])
        .env("KUBECONFIG", &info.kubeconfig)
        .envs(info.aws_env())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    Scaler {
        child,
        identity: identity.to_owned(),
    }
}

async fn holder(leases: &Api<Lease>, name: &str) -> Option<String> {
    let lease = leases.get_opt(name).await.ok()??;
    lease.spec?.holder_identity
}

#[tokio::test]
async fn a_second_replica_takes_over_within_the_lease_duration_when_the_leader_is_killed() {
    let bed = TestBed::shared().await.unwrap();
    let aws = bed.aws_config().await;
    let kube = bed.kube_client().await.unwrap();
    let bin = zerospot_binary();
    let namespace = bed.namespace(&kube, "scaler").await.unwrap();
    let group = unique_name("gpu");
    let spec = NodeGroupSpec::gpus(1)
        .spot()
        .sharing(GpuSharing::Mps { replicas: 2 });
    create_gpu_group(&aws, &group, "g5.xlarge", &spec, 2)
        .await
        .unwrap();
    let queue = zerospot_testbed::fixtures::create_queue(&aws, "req")
        .await
        .unwrap();
    let lease_duration = 4;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("zerospot.yaml");
    std::fs::write(
        &config,
        format!(
            "pools: [{{name: {group}, asg_name: {group}}}]\nmodels: [{{name: llama, pool: {group}, namespace: {namespace}, service: llama, queue_url: \"{queue}\"}}]\ncontroller: {{namespace: {namespace}, lease_duration_s: {lease_duration}, queue_poll_ms: 200, group_poll_ms: 500}}\n"
        ),
    )
    .unwrap();
    let leases: Api<Lease> = Api::namespaced(kube.clone(), &namespace);
    let first = spawn_scaler(&bin, bed, &config, "replica-a", &dir.path().join("a.log"));
    eventually(
        "replica-a to hold the Lease",
        Duration::from_secs(30),
        || async {
            match holder(&leases, "zerospot-scaler").await {
                Some(h) if h == first.identity => Ok(()),
                other => Err(format!("holder {other:?}")),
            }
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}",
            std::fs::read_to_string(dir.path().join("a.log")).unwrap_or_default()
        )
    });
    let second = spawn_scaler(&bin, bed, &config, "replica-b", &dir.path().join("b.log"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        holder(&leases, "zerospot-scaler").await.as_deref(),
        Some("replica-a"),
        "one leader at a time"
    );

    // SIGKILL: no chance to release the Lease.
    let mut first = first;
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    let killed = Instant::now();
    eventually(
        "replica-b to take the Lease",
        Duration::from_secs(30),
        || async {
            match holder(&leases, "zerospot-scaler").await {
                Some(h) if h == second.identity => Ok(()),
                other => Err(format!("holder {other:?}")),
            }
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}",
            std::fs::read_to_string(dir.path().join("b.log")).unwrap_or_default()
        )
    });
    let took = killed.elapsed();
    eprintln!(
        "takeover after SIGKILL: {} ms (lease {lease_duration} s)",
        took.as_millis()
    );
    assert!(
        took <= Duration::from_secs(lease_duration + 1),
        "took {took:?}"
    );

    // And it acts: a queued request scales the group from zero.
    aws_sdk_sqs::Client::new(&aws)
        .send_message()
        .queue_url(&queue)
        .message_body("{}")
        .send()
        .await
        .unwrap();
    eventually(
        "the new leader to scale the group from zero",
        Duration::from_secs(20),
        || async {
            let out = aws_sdk_autoscaling::Client::new(&aws)
                .describe_auto_scaling_groups()
                .auto_scaling_group_names(&group)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let desired = out.auto_scaling_groups()[0].desired_capacity().unwrap_or(0);
            if desired == 1 {
                Ok(())
            } else {
                Err(format!("desired {desired}"))
            }
        },
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}",
            std::fs::read_to_string(dir.path().join("b.log")).unwrap_or_default()
        )
    });
}
