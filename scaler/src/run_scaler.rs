//! `zerospot scaler` and `zerospot config check`: thin wiring of the controller crate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use crate::Failure;
use zerospot_effects::ScalerConfig;

/// Options of `zerospot scaler`; each has an environment variable.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The configuration file (YAML or JSON; see `zerospot config check`).
    #[arg(long, env = "ZEROSPOT_CONFIG", value_name = "FILE")]
    config: PathBuf,
    /// Log every action it would take, and take none.
    #[arg(long, env = "ZEROSPOT_DRY_RUN")]
    dry_run: bool,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "ZEROSPOT_LISTEN", default_value = "0.0.0.0:9090")]
    listen: SocketAddr,
    /// This replica's name in the leader Lease (default: the host name, which is the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Act without leader election (one replica only).
    #[arg(long, env = "ZEROSPOT_NO_LEADER_ELECTION")]
    no_leader_election: bool,
    /// Log format: json (default) or text.
    #[arg(long, env = "ZEROSPOT_LOG_FORMAT", default_value = "json")]
    log_format: String,
}

pub(crate) fn check(file: &Path) -> Result<(), Failure> {
    let config = ScalerConfig::load(file)
        .map_err(|e| Failure::input(anyhow::anyhow!("{}: {e}", file.display())))?;
    let text = serde_json::to_value(&config).map_err(anyhow::Error::from)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&text).map_err(anyhow::Error::from)?
    );
    eprintln!(
        "zerospot: {} is valid ({} pools, {} models)",
        file.display(),
        config.pools.len(),
        config.models.len()
    );
    Ok(())
}

pub(crate) fn init_logs(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube_lease_manager=warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "text" {
        builder.init();
    } else {
        builder.json().flatten_event(true).init();
    }
}

pub(crate) fn run(args: Args) -> Result<(), Failure> {
    let config = ScalerConfig::load(&args.config)
        .map_err(|e| Failure::input(anyhow::anyhow!("{}: {e}", args.config.display())))?;
    init_logs(&args.log_format);
    let identity = args.identity.clone().unwrap_or_else(|| {
        std::env::var("HOSTNAME")
            .unwrap_or_else(|_| format!("zerospot-scaler-{}", std::process::id()))
    });
    let runtime = tokio::runtime::Runtime::new().map_err(anyhow::Error::from)?;
    runtime.block_on(async move {
        let kube_config = kube::Config::infer().await.map_err(|e| {
            anyhow::anyhow!("no Kubernetes configuration (KUBECONFIG or in-cluster): {e}")
        })?;
        let aws = aws_config::load_from_env().await;
        let options = zerospot_controller::Options {
            config,
            dry_run: args.dry_run,
            listen: args.listen,
            identity,
            leader_election: !args.no_leader_election,
        };
        zerospot_controller::run(options, kube_config, &aws, shutdown_signal())
            .await
            .map_err(anyhow::Error::from)?;
        Ok::<(), anyhow::Error>(())
    })?;
    Ok(())
}

pub(crate) async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown signal received");
}
