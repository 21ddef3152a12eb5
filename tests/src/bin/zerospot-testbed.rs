//! Starts a test bed for a person (or another process) to use, prints how to reach it, and keeps it up
//! until Ctrl-C or SIGTERM. Tests attach to it with `ZEROSPOT_TESTBED=<dir>/bed.json`.

use tokio::signal::unix::{SignalKind, signal};
use zerospot_testbed::TestBed;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    zerospot_testbed::init_tracing();
    let bed = TestBed::start().await?;
    let info = bed.info();
    println!(
        "# test bed ready in {:.1} s; logs in {}",
        info.start_seconds,
        info.dir.display()
    );
    println!("export KUBECONFIG={}", info.kubeconfig.display());
    println!("export AWS_ENDPOINT_URL={}", info.moto_endpoint);
    println!(
        "export AWS_REGION={} AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing",
        info.region
    );
    println!("export ZEROSPOT_TESTBED={}", bed.bed_json().display());
    for (name, pid) in &info.processes {
        println!("# {name}: pid {pid}");
    }
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    println!("# stopping the test bed");
    bed.stop();
    Ok(())
}
