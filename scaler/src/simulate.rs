//! `zerospot simulate`: replays a workload through zerospot's policy and its peers and prints cost (against
//! a provable lower bound), warm and cold waits, cold starts, flaps, and zerospot's goals side by side (see
//! `scaler/sim/README.md`).

use crate::Failure;
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use zerospot_sim::{
    DemandSignal, PolicyKind, Scenario, Shaping, SharingCurve, WorkloadClass, instance_type,
    simulate, workload,
};

/// Options of `zerospot simulate`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Azure LLM inference trace (CSV: TIMESTAMP,ContextTokens,GeneratedTokens). Default: the embedded
    /// synthetic bursty day, no file needed.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,
    /// Keep each request with this probability (thins a dense trace into a sparse one).
    #[arg(long, default_value_t = 1.0, value_name = "P")]
    sample: f64,
    /// Multiply every arrival time by X (X > 1 stretches the trace: sparser, longer).
    #[arg(long, default_value_t = 1.0, value_name = "X")]
    time_scale: f64,
    /// Spread requests over this many models (seeded, Zipf weights 1, 1/2, 1/3, ...).
    #[arg(long, default_value_t = 2)]
    models: u16,
    /// Requests in the synthetic day (ignored with --trace).
    #[arg(long, default_value_t = workload::SYNTHETIC_DEFAULT_REQUESTS)]
    requests: u64,
    /// Seed for every random choice: same seed, same output.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// GPU instance type: g4dn.xlarge, g5.xlarge or g6.xlarge.
    #[arg(long, default_value = "g5.xlarge")]
    instance_type: String,
    /// Spot price, USD per hour (default: the type's typical us-east-1 price, see the README).
    #[arg(long, value_name = "USD")]
    spot_price: Option<f64>,
    /// Spot interruptions per node-hour (two-minute notice). AWS reports far lower rates; the default
    /// stresses the interruption path.
    #[arg(long, default_value_t = 0.02, value_name = "RATE")]
    interruption_rate: f64,
    /// Probability that a Spot launch fails for lack of capacity.
    #[arg(long, default_value_t = 0.02, value_name = "P")]
    capacity_failure_probability: f64,
    /// Model pods per GPU (CUDA MPS replicas).
    #[arg(long, default_value_t = 4)]
    slots: u32,
    /// Requests one pod serves at once.
    #[arg(long, default_value_t = 1)]
    concurrency: u32,
    /// Measured sharing curve (how much slower each process decodes with N on one GPU): a CSV with the
    /// header
    /// `gpu,driver,date,model,weights_gb,sharing,processes,concurrency,tokens_per_s_each,tokens_per_s_total,ttft_p50_ms,ttft_p99_ms,gpu_mem_mib`;
    /// the factor for N processes is tokens_per_s_each(N) / tokens_per_s_each(1), at concurrency 1,
    /// linear between measured N, total throughput held flat past the largest. Default: the embedded
    /// scaler/sim/data/gpu-sharing-h200-ollama.csv (Ollama on one NVIDIA H200, measured 2026-11-29),
    /// model llama-7b-shape-random-q8_0 with mps: factors 1, 0.670, 0.400, 0.210 at 1, 2, 4, 8.
    #[arg(long, value_name = "FILE")]
    sharing: Option<PathBuf>,
    /// The model whose rows the sharing curve uses (needed when --sharing's file has more than one;
    /// default for the embedded file: llama-7b-shape-random-q8_0, also gemma3-270m-q4_k_m there).
    #[arg(long, value_name = "NAME")]
    sharing_model: Option<String>,
    /// The sharing mode whose rows the sharing curve uses (--sharing's file or the embedded one).
    #[arg(long, default_value = zerospot_sim::serving::DEFAULT_SHARING_MODE, value_parser = ["mps", "time-slicing"])]
    sharing_mode: String,
    /// A request that waited longer than this is lost, seconds.
    #[arg(long, default_value_t = 600.0, value_name = "SECONDS")]
    deadline: f64,
    /// zerospot's idle window, seconds (default: the core policy's default).
    #[arg(long, value_name = "SECONDS")]
    idle_window: Option<u64>,
    /// zerospot's headroom: square-root staffing confidence (default: the core policy's default).
    #[arg(long, value_name = "Z")]
    headroom: Option<f64>,
    /// What zerospot's controller reports to the core about each queue: `rate-aware` (the queue with
    /// arrival-rate and service-time estimates: the core keeps headroom and sizes backlogs for the work)
    /// or `queued` (no estimates: every queued or in-flight request asks for a lane, the core's fallback).
    #[arg(long, default_value = "rate-aware", value_parser = ["rate-aware", "queued"])]
    zerospot_demand: String,
    /// Which of zerospot's goals to check: `dense` (warm waits, cost against fixed-best), `sparse` (cost
    /// against the bound, longest wait) or `other` (only the goals that hold everywhere). Default: dense
    /// for a trace at --sample 1 and --time-scale 1 or less, sparse for a trace thinned to 0.1 or less or
    /// stretched, other otherwise.
    #[arg(long, value_parser = ["dense", "sparse", "other"])]
    goals: Option<String>,
    /// How often zerospot's controller calls the core policy, seconds of virtual time.
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
    tick: f64,
    /// Always-on size (default: sized for the workload's peak).
    #[arg(long, value_name = "N")]
    always_on_nodes: Option<u32>,
    /// Largest number of nodes any policy may run.
    #[arg(long, default_value_t = 64)]
    max_nodes: u32,
    /// Policies to run, comma-separated (the lower bound is always computed).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "zerospot,always-on,fixed-best,cluster-autoscaler,keda,karpenter,hindsight-greedy"
    )]
    policies: Vec<String>,
    /// Print JSON instead of the table.
    #[arg(long, conflicts_with = "markdown")]
    json: bool,
    /// Print the table as Markdown.
    #[arg(long)]
    markdown: bool,
    /// Write plots (nodes, queue depth, cumulative cost; PNG and SVG) into this directory.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
}

pub(crate) fn run(args: Args) -> Result<(), Failure> {
    let shaping = Shaping {
        sample: args.sample,
        time_scale: args.time_scale,
        models: args.models,
        seed: args.seed,
    };
    let workload = match &args.trace {
        Some(path) => workload::load_azure(path, &shaping),
        None => workload::synthetic_day(args.requests, &shaping),
    }
    .map_err(Failure::input)?;
    let instance = instance_type(&args.instance_type).map_err(Failure::input)?;
    let mut scenario = Scenario::new(workload, args.seed);
    let cloud = &mut scenario.cluster.cloud;
    *cloud = zerospot_sim::Cloud::new(instance);
    if let Some(price) = args.spot_price {
        cloud.spot_per_hour = price;
    }
    cloud.interruption_rate_per_hour = args.interruption_rate;
    cloud.capacity_failure_probability = args.capacity_failure_probability;
    let serving = &mut scenario.cluster.serving;
    serving.slots_per_gpu = args.slots;
    serving.pod_concurrency = args.concurrency;
    serving.prefill_tokens_per_s = instance.prefill_tokens_per_s;
    serving.decode_tokens_per_s = instance.decode_tokens_per_s;
    serving.curve = match &args.sharing {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Failure::input(anyhow::anyhow!("reading {}: {e}", path.display())))?;
            SharingCurve::from_csv(
                &text,
                &path.display().to_string(),
                args.sharing_model.as_deref(),
                &args.sharing_mode,
            )
        }
        None => SharingCurve::embedded(args.sharing_model.as_deref(), &args.sharing_mode),
    }
    .map_err(Failure::input)?;
    scenario.cluster.deadline_s = args.deadline;
    scenario.cluster.max_nodes = args.max_nodes;
    scenario.cluster.series_points = if args.out.is_some() { 2_000 } else { 0 };
    scenario.policies.zerospot_tick_s = args.tick;
    scenario.policies.always_on_nodes = args.always_on_nodes;
    scenario.policies.zerospot_demand = match args.zerospot_demand.as_str() {
        "queued" => DemandSignal::Queued,
        _ => DemandSignal::RateAware {
            prior_service_s: 5.0,
        },
    };
    let timing = &mut scenario.policies.zerospot_timing;
    if let Some(idle) = args.idle_window {
        timing.idle_window_s = idle;
    }
    if let Some(h) = args.headroom {
        timing.headroom = h;
    }
    scenario.class = match args.goals.as_deref() {
        Some("dense") => WorkloadClass::Dense,
        Some("sparse") => WorkloadClass::Sparse,
        Some(_) => WorkloadClass::Other,
        None if args.trace.is_none() => WorkloadClass::Other,
        None if args.sample >= 1.0 && args.time_scale <= 1.0 => WorkloadClass::Dense,
        None if args.sample <= 0.1 || args.time_scale > 1.0 => WorkloadClass::Sparse,
        None => WorkloadClass::Other,
    };
    scenario.run = args
        .policies
        .iter()
        .map(|name| {
            PolicyKind::parse(name.trim()).ok_or_else(|| {
                let known: Vec<&str> = PolicyKind::ALL.iter().map(|p| p.name()).collect();
                Failure::input(anyhow::anyhow!(
                    "unknown policy {name:?} (known: {})",
                    known.join(", ")
                ))
            })
        })
        .collect::<Result<_, _>>()?;
    scenario.validate().map_err(Failure::input)?;

    let total = scenario.workload.requests.len() as u64 * scenario.run.len() as u64;
    let progress = AtomicU64::new(0);
    let report = std::thread::scope(|scope| {
        let job = scope.spawn(|| simulate(&scenario, &progress));
        if total >= 500_000 {
            let bar = ProgressBar::new(total).with_style(
                ProgressStyle::with_template(
                    "{spinner} simulating {bar:40} {percent}% ({elapsed})",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            while !job.is_finished() {
                bar.set_position(progress.load(Ordering::Relaxed).min(total));
                std::thread::sleep(Duration::from_millis(100));
            }
            bar.finish_and_clear();
        }
        job.join()
    })
    .map_err(|_| anyhow::anyhow!("the simulation panicked"))?
    .map_err(Failure::input)?;

    if let Some(dir) = &args.out {
        let files = zerospot_sim::plot::write_plots(&report, dir)?;
        for f in files {
            eprintln!("wrote {}", f.display());
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if args.markdown {
        print!("{}", report.markdown());
    } else {
        print!("{}", report.table());
    }
    Ok(())
}
