//! Footprint of the companion scaler at rest: resident memory and CPU of a `zerospot scaler` process
//! whose caches hold 100 GPU nodes and 1,000 model pods, on a test bed of its own.
//!
//! Usage: `cargo run -p zerospot-testbed --bin scaler-footprint [-- PATH/TO/zerospot]` (default: the
//! `zerospot` binary next to this one, so build it first with the same profile:
//! `cargo build -p zerospot`). Prints one line of figures; the targets (read, not asserted) are
//! < 64 MiB resident and < 1% of a core while idle.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use zerospot_testbed::fixtures::{
    create_gpu_group, create_queue, gpu_pod, group_nodes, is_ready, set_desired_capacity,
};
use zerospot_testbed::{
    Bridge, BridgeOptions, GpuSharing, NodeGroupSpec, TestBed, eventually, unique_name,
};

const NODES: usize = 100;
const PODS: usize = 1000;
const MODELS: usize = 10;
const MEASURE: Duration = Duration::from_secs(10);

fn proc_field(pid: u32, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit(')').next()?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields after the command name: state is index 0, utime is 11, stime 12.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let binary = match std::env::args().nth(1) {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()?.with_file_name("zerospot"),
    };
    if !binary.exists() {
        bail!(
            "{} not found: build it first (cargo build -p zerospot) or pass its path",
            binary.display()
        );
    }
    let started = Instant::now();
    let bed = TestBed::start().await?;
    let aws = bed.aws_config().await;
    let kube = bed.kube_client().await?;
    let group = unique_name("gpu");
    let spec = NodeGroupSpec::gpus(1)
        .spot()
        .sharing(GpuSharing::Mps { replicas: 10 });
    create_gpu_group(&aws, &group, "g5.xlarge", &spec, i32::try_from(NODES)?).await?;
    let _bridge = Bridge::spawn(
        &aws,
        kube.clone(),
        BridgeOptions::new([group.clone()]).boot_delay(Duration::ZERO),
    );
    set_desired_capacity(&aws, &group, i32::try_from(NODES)?).await?;
    eventually("100 Ready GPU nodes", Duration::from_secs(180), || async {
        let ready = group_nodes(&kube, &group)
            .await
            .map_err(|e| e.to_string())?
            .iter()
            .filter(|n| is_ready(n))
            .count();
        if ready == NODES {
            Ok(())
        } else {
            Err(format!("{ready} Ready"))
        }
    })
    .await?;
    let namespace = bed.namespace(&kube, "models").await?;
    let pods: Api<Pod> = Api::namespaced(kube.clone(), &namespace);
    for i in 0..PODS {
        let mut pod = gpu_pod(&format!("m{}-{i}", i % MODELS), &group, 1);
        pod.metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(
                "serving.knative.dev/service".into(),
                format!("m{}", i % MODELS),
            );
        pods.create(&PostParams::default(), &pod).await?;
    }
    // Let the scheduler and kwok finish with them: idle means nothing moving.
    eventually("1000 pods Running", Duration::from_secs(300), || async {
        let list = pods
            .list(&Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let running = list
            .items
            .iter()
            .filter(|p| zerospot_testbed::fixtures::is_running(p))
            .count();
        if running == PODS {
            Ok(())
        } else {
            Err(format!("{running} Running"))
        }
    })
    .await?;
    let mut models = String::new();
    for m in 0..MODELS {
        let url = create_queue(&aws, &format!("m{m}")).await?;
        models.push_str(&format!(
            "  - {{name: m{m}, pool: {group}, namespace: {namespace}, service: m{m}, queue_url: \"{url}\"}}\n"
        ));
    }
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("zerospot.yaml");
    std::fs::write(
        &config,
        format!(
            "pools:\n  - {{name: {group}, asg_name: {group}}}\nmodels:\n{models}timing: {{idle_window_s: 3600}}\ncontroller: {{namespace: {namespace}}}\n"
        ),
    )?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let info = bed.info();
    let mut child = Command::new(&binary)
        .args(["scaler", "--config"])
        .arg(&config)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--identity",
            "footprint",
        ])
        .env("KUBECONFIG", &info.kubeconfig)
        .envs(info.aws_env())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let pid = child.id();
    // Ready once its caches are synced; then let the first passes settle.
    eventually("the scaler's /readyz", Duration::from_secs(60), || async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        s.write_all(b"GET /readyz HTTP/1.0\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        if answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(answer)
        }
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let ticks_per_s = 100.0; // CLK_TCK on Linux
    let before = cpu_ticks(pid).context("reading /proc/<pid>/stat")?;
    let t0 = Instant::now();
    tokio::time::sleep(MEASURE).await;
    let after = cpu_ticks(pid).context("reading /proc/<pid>/stat")?;
    let cpu = (after - before) as f64 / ticks_per_s / t0.elapsed().as_secs_f64() * 100.0;
    let rss = proc_field(pid, "VmRSS:").unwrap_or(0) as f64 / 1024.0;
    let hwm = proc_field(pid, "VmHWM:").unwrap_or(0) as f64 / 1024.0;
    let _ = child.kill();
    let _ = child.wait();
    let build = if binary.to_string_lossy().contains("/release/") {
        "release"
    } else {
        "debug"
    };
    println!(
        "scaler footprint ({build} build, {NODES} GPU nodes and {PODS} pods cached, {MODELS} queues polled every 1 s): resident {rss:.1} MiB (peak {hwm:.1} MiB), idle CPU {cpu:.2}% of a core over {}s (targets < 64 MiB, < 1%); bed set-up {:.0}s",
        MEASURE.as_secs(),
        started.elapsed().as_secs_f64() - MEASURE.as_secs_f64() - 5.0
    );
    Ok(())
}
