//! The harness stops what it starts: by PID when a bed is dropped, and through its watchdog when the
//! process that started the bed dies without dropping it (a panic in a shared bed, SIGKILL).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use zerospot_testbed::{BedInfo, TestBed, eventually};

/// Whether `pid` is a live process (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

fn pids(info: &BedInfo) -> Vec<u32> {
    info.processes.iter().map(|(_, pid)| *pid).collect()
}

#[tokio::test]
async fn dropping_a_bed_stops_every_process_it_started_and_removes_its_folder() {
    zerospot_testbed::init_tracing();
    let bed = TestBed::start().await.unwrap();
    let info = bed.info().clone();
    let names: Vec<&str> = info.processes.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "moto",
            "etcd",
            "kube-apiserver",
            "kube-scheduler",
            "kube-controller-manager",
            "kwok"
        ]
    );
    assert!(pids(&info).into_iter().all(alive));
    drop(bed);
    let left: Vec<u32> = pids(&info).into_iter().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "still running: {left:?}");
    assert!(!info.dir.exists(), "{} was not removed", info.dir.display());
}

#[tokio::test]
async fn a_killed_bed_owner_leaves_no_server_behind() {
    // The `zerospot-testbed` binary owns a bed; SIGKILL gives it no chance to clean up.
    let mut owner = Command::new(env!("CARGO_BIN_EXE_zerospot-testbed"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Read its output to the end on a thread, so that it never dies of a closed pipe instead.
    let stdout = BufReader::new(owner.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            if let Some(path) = line.strip_prefix("export ZEROSPOT_TESTBED=") {
                let _ = tx.send(PathBuf::from(path));
            }
        }
    });
    let bed_json = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(120)))
        .await
        .unwrap()
        .expect("the bed started");
    let info: BedInfo = serde_json::from_str(&std::fs::read_to_string(&bed_json).unwrap()).unwrap();
    assert_eq!(info.processes.len(), 6);
    assert!(pids(&info).into_iter().all(alive));

    owner.kill().unwrap();
    owner.wait().unwrap();
    eventually(
        "every server to be stopped by the watchdog",
        Duration::from_secs(15),
        || async {
            let left: Vec<u32> = pids(&info).into_iter().filter(|p| alive(*p)).collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("still running: {left:?}"))
            }
        },
    )
    .await
    .unwrap();
    eventually(
        "the folder to be removed",
        Duration::from_secs(5),
        || async {
            if info.dir.exists() {
                Err("still there")
            } else {
                Ok(())
            }
        },
    )
    .await
    .unwrap();
}
