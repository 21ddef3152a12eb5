//! The `zerospot` command: operator tools around the scaling core (and, as they land, the simulator, the
//! companion scaler and the dispatcher).

mod custody_cli;
mod explain;
mod plan;
mod recommend;
mod run_scaler;
mod simulate;

use clap::{Parser, Subcommand};
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

/// zerospot: serve LLMs on AWS Spot GPUs that scale to zero, without losing a request.
///
/// Requests wait in SQS until the MPS-shared model pods are ready; Lambda functions and a companion
/// scaler move the GPU Auto Scaling group to and from zero with demand and Spot interruptions.
#[derive(Debug, Parser)]
#[command(name = "zerospot", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// What would zerospot do with this event? Reads one document and prints one JSON line per event.
    ///
    /// Accepts an EventBridge event, an SQS ReceiveMessage output (`aws sqs receive-message`), a Lambda
    /// SQS event, or a CloudWatch alarm's Lambda action payload. Each line is
    /// `{"kind", "instance_ids", "action", "reason"}`. Exits 0 when the document parsed (ignored events
    /// included) and 2, with a one-line error on stderr, when it is malformed.
    #[command(name = "explain-event")]
    ExplainEvent {
        /// File to read, or `-` for standard input.
        #[arg(default_value = "-", value_name = "FILE|-")]
        input: String,
    },
    /// Prints the scaling decision for a demand-and-capacity snapshot (JSON in, JSON out).
    ///
    /// The snapshot file holds `config` (pools, models, timing), `snapshot` (Auto Scaling groups, nodes,
    /// demand) and an optional `now`; see README "Snapshot format". Without --snapshot, the embedded
    /// example (scaler/examples/snapshot.json) is used.
    Plan {
        /// Snapshot file, or `-` for standard input.
        #[arg(long, value_name = "FILE|-")]
        snapshot: Option<String>,
        /// Decide as of this time (RFC 3339); default: the snapshot's `now`, else the clock.
        #[arg(long)]
        now: Option<chrono::DateTime<chrono::Utc>>,
        /// One line of JSON instead of indented output.
        #[arg(long)]
        compact: bool,
    },
    /// Validates a request body as clients put it on the queue; prints it normalised or says what is
    /// wrong (exit 2).
    #[command(name = "check-request")]
    CheckRequest {
        /// File to read, or `-` for standard input.
        #[arg(default_value = "-", value_name = "FILE|-")]
        input: String,
        /// Validate as of this time (RFC 3339); default: the clock.
        #[arg(long)]
        now: Option<chrono::DateTime<chrono::Utc>>,
    },
    /// What would zerospot save, and what would users wait? Replays a workload through zerospot's real
    /// policy, its peers (always-on, Cluster Autoscaler, KEDA, Karpenter) and a perfect-foresight oracle.
    ///
    /// With no arguments it runs the embedded synthetic bursty day; `--trace FILE` replays an Azure LLM
    /// inference CSV (thin it with --sample, stretch it with --time-scale). Prints a table per policy (or
    /// --json); --out DIR writes plots. Deterministic for a given --seed. Exits 2 on bad input (a
    /// malformed trace names its line).
    Simulate(Box<simulate::Args>),
    /// Runs the companion scaler: watches the cluster, the queues and the GPU Auto Scaling groups, and
    /// moves the groups to and from zero with demand (see README "The companion scaler").
    ///
    /// Kubernetes access comes from KUBECONFIG or the in-cluster service account; AWS access from the
    /// usual AWS environment (AWS_REGION, credentials, AWS_ENDPOINT_URL). Logs are JSON lines on stderr
    /// (RUST_LOG sets the level). Stops gracefully on SIGTERM or Ctrl-C, releasing its leader Lease.
    Scaler(run_scaler::Args),
    /// Runs the dispatcher: holds each request in SQS until its model has a Ready pod with a free slot,
    /// sends it to the model, streams the answer to the reply queue, and deletes it only then (see
    /// README "Request custody"). Same configuration file as the scaler.
    Dispatcher(custody_cli::DispatcherArgs),
    /// Puts one request on its model's queue and (unless --no-wait) prints the reply as it streams.
    /// Exit 1 with the reason when the reply is an error or a timeout.
    Submit(custody_cli::SubmitArgs),
    /// Two models talk through zerospot's queues: each turn is a request to the other model carrying
    /// the dialogue so far, printed as it streams.
    Converse(custody_cli::ConverseArgs),
    /// How many model servers should share one GPU through MPS? Reads a GPU sharing benchmark's results
    /// (tests/gpu/bench.py; scaler/sim/data/gpu-sharing-h200-ollama.csv is one on an H200) and prints the
    /// MPS `replicas` value with the most aggregate tokens/s while every request still streams at least
    /// --slo-tokens-per-s.
    ///
    /// Only measured process counts are candidates. Exit 2 on a malformed file or an unknown model, 1
    /// when no measured count meets the SLO (the message names the best there is).
    #[command(name = "recommend-replicas")]
    RecommendReplicas(recommend::Args),
    /// Checks a scaler configuration file and prints it with every default filled in (exit 2 when
    /// it is invalid, with what to fix).
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validates FILE (YAML or JSON); prints the effective configuration as YAML.
    Check {
        /// The configuration file.
        file: PathBuf,
    },
}

/// A failure and the exit code it maps to: 2 for input we could not use, 1 for anything else.
#[derive(Debug)]
pub(crate) struct Failure {
    code: u8,
    error: anyhow::Error,
}

impl Failure {
    pub(crate) fn input(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            code: 2,
            error: error.into(),
        }
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure {
            code: 1,
            error: error.into(),
        }
    }
}

/// Reads a file, or standard input for `-`.
pub(crate) fn read_input(path: &str) -> Result<Vec<u8>, Failure> {
    let mut buf = Vec::new();
    if path == "-" {
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| Failure::input(anyhow::anyhow!("reading standard input: {e}")))?;
    } else {
        buf = std::fs::read(PathBuf::from(path))
            .map_err(|e| Failure::input(anyhow::anyhow!("reading {path}: {e}")))?;
    }
    Ok(buf)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::ExplainEvent { input } => explain::explain_event(&input),
        Command::Plan {
            snapshot,
            now,
            compact,
        } => plan::plan(snapshot.as_deref(), now, compact),
        Command::CheckRequest { input, now } => plan::check_request(&input, now),
        Command::Simulate(args) => simulate::run(*args),
        Command::Scaler(args) => run_scaler::run(args),
        Command::Dispatcher(args) => custody_cli::dispatcher(args),
        Command::Submit(args) => custody_cli::submit_cmd(args),
        Command::Converse(args) => custody_cli::converse(args),
        Command::RecommendReplicas(args) => recommend::run(args),
        Command::Config {
            command: ConfigCommand::Check { file },
        } => run_scaler::check(&file),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, error }) => {
            let line = format!("{error:#}").replace('\n', " ");
            eprintln!("zerospot: {line}");
            ExitCode::from(code)
        }
    }
}
