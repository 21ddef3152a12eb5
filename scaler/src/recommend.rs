//! `zerospot recommend-replicas`: how many model-server processes to share one GPU through CUDA MPS (the
//! device plugin's `sharing.mps.resources[].replicas`, a pool's `sharing: {mode: mps, replicas: N}`), read
//! off a measured sharing benchmark.
//!
//! The input is the CSV that `tests/gpu/bench.py` writes (the committed run on an H200 is
//! `scaler/sim/data/gpu-sharing-h200-ollama.csv`): one row per model, sharing mode, number of processes
//! and requests in flight per process, with per-process and aggregate generated tokens per second.
//!
//! The rule: among the MPS rows of the model at the given concurrency, keep those where every request
//! still streams at least the SLO (`tokens_per_s_each / concurrency >= SLO`: a process's throughput is
//! shared by the requests it serves at once), and recommend the number of processes with the highest
//! `tokens_per_s_total`; on a tie, the fewer processes (less memory, fewer failure domains). Only
//! measured process counts are candidates: the curve is not extrapolated. Repeated rows for the same
//! count (several runs in one file) count by their slowest, so the SLO holds for every run.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::Failure;

/// The CSV's columns, in order, as `tests/gpu/bench.py` writes them.
pub(crate) const HEADER: [&str; 13] = [
    "gpu",
    "driver",
    "date",
    "model",
    "weights_gb",
    "sharing",
    "processes",
    "concurrency",
    "tokens_per_s_each",
    "tokens_per_s_total",
    "ttft_p50_ms",
    "ttft_p99_ms",
    "gpu_mem_mib",
];

/// Options of `zerospot recommend-replicas`.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The tokens per second each request must still get (decode speed a user sees).
    #[arg(long, value_name = "X")]
    slo_tokens_per_s: f64,
    /// The benchmark's results CSV (e.g. scaler/sim/data/gpu-sharing-h200-ollama.csv).
    #[arg(long, value_name = "FILE")]
    results: PathBuf,
    /// The model (the CSV's `model` column); needed when the file holds several.
    #[arg(long, value_name = "M")]
    model: Option<String>,
    /// Requests each process serves at once (Ollama's OLLAMA_NUM_PARALLEL, the model's `concurrency`).
    #[arg(long, default_value_t = 1, value_name = "C")]
    concurrency: u32,
    /// Print the answer and every candidate as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// One row of the results CSV.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    pub gpu: String,
    pub driver: String,
    pub date: String,
    pub model: String,
    pub weights_gb: f64,
    pub sharing: Sharing,
    pub processes: u32,
    pub concurrency: u32,
    pub tokens_per_s_each: f64,
    pub tokens_per_s_total: f64,
    pub ttft_p50_ms: f64,
    pub ttft_p99_ms: f64,
    pub gpu_mem_mib: u64,
}

/// How the processes shared the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sharing {
    Mps,
    TimeSlicing,
}

/// Why no recommendation could be made.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum RecommendError {
    /// The file is not a results CSV.
    Malformed { line: usize, reason: String },
    /// The file holds no data row.
    Empty,
    /// Several models and no `--model`.
    WhichModel { models: Vec<String> },
    /// `--model` names none of the file's models.
    UnknownModel { model: String, models: Vec<String> },
    /// No MPS row for the model at that concurrency.
    NoMpsRows {
        model: String,
        concurrency: u32,
        measured: Vec<u32>,
    },
    /// The SLO is not a positive number, or the concurrency is zero.
    BadTarget(String),
    /// Not even one process per GPU meets the SLO.
    SloUnmet {
        model: String,
        concurrency: u32,
        slo: f64,
        best_processes: u32,
        best_per_request: f64,
    },
}

impl fmt::Display for RecommendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecommendError::Malformed { line, reason } => write!(f, "line {line}: {reason}"),
            RecommendError::Empty => write!(f, "no data rows (only a header, or nothing)"),
            RecommendError::WhichModel { models } => write!(
                f,
                "the results hold several models ({}): choose one with --model",
                models.join(", ")
            ),
            RecommendError::UnknownModel { model, models } => write!(
                f,
                "no rows for model {model:?}; the results hold {}",
                models.join(", ")
            ),
            RecommendError::NoMpsRows {
                model,
                concurrency,
                measured,
            } => {
                write!(f, "no MPS rows for {model} at concurrency {concurrency}")?;
                if measured.is_empty() {
                    write!(f, " (the file has no MPS rows for it at all)")
                } else {
                    let list: Vec<String> = measured.iter().map(u32::to_string).collect();
                    write!(f, "; MPS was measured at concurrency {}", list.join(", "))
                }
            }
            RecommendError::BadTarget(reason) => write!(f, "{reason}"),
            RecommendError::SloUnmet {
                model,
                concurrency,
                slo,
                best_processes,
                best_per_request,
            } => write!(
                f,
                "no measured number of processes keeps {slo} tokens/s per request for {model} at \
                 concurrency {concurrency}: the best is {best_processes} process(es) at \
                 {best_per_request:.1} tokens/s per request (lower the SLO or the concurrency)"
            ),
        }
    }
}

impl std::error::Error for RecommendError {}

/// Reads a results CSV: the header must hold every column of [`HEADER`] (in any order; others are
/// ignored), every row as many fields as the header, numbers where numbers belong.
pub(crate) fn parse_results(text: &str) -> Result<Vec<Row>, RecommendError> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        return Err(RecommendError::Empty);
    };
    let names: Vec<&str> = header.split(',').map(str::trim).collect();
    let mut at = [0usize; HEADER.len()];
    for (slot, want) in at.iter_mut().zip(HEADER) {
        *slot = names
            .iter()
            .position(|n| *n == want)
            .ok_or_else(|| RecommendError::Malformed {
                line: 1,
                reason: format!(
                    "the header has no {want:?} column (expected {})",
                    HEADER.join(",")
                ),
            })?;
    }
    let mut rows = Vec::new();
    for (line, text) in lines {
        let fields: Vec<&str> = text.split(',').map(str::trim).collect();
        if fields.len() != names.len() {
            return Err(RecommendError::Malformed {
                line,
                reason: format!(
                    "{} fields, the header has {} (quoted commas are not supported)",
                    fields.len(),
                    names.len()
                ),
            });
        }
        let get = |i: usize| fields[at[i]];
        let bad = |column: &str, why: &str| RecommendError::Malformed {
            line,
            reason: format!("{column} = {:?}: {why}", fields[at[column_index(column)]]),
        };
        let number = |i: usize| -> Result<f64, RecommendError> {
            get(i)
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v >= 0.0)
                .ok_or_else(|| bad(HEADER[i], "not a number >= 0"))
        };
        let count = |i: usize| -> Result<u32, RecommendError> {
            get(i)
                .parse::<u32>()
                .ok()
                .filter(|v| *v >= 1)
                .ok_or_else(|| bad(HEADER[i], "not a whole number >= 1"))
        };
        let sharing = match get(5) {
            "mps" => Sharing::Mps,
            "time-slicing" => Sharing::TimeSlicing,
            _ => return Err(bad("sharing", "sharing is mps or time-slicing")),
        };
        let model = get(3).to_owned();
        if model.is_empty() {
            return Err(bad("model", "empty"));
        }
        rows.push(Row {
            gpu: get(0).to_owned(),
            driver: get(1).to_owned(),
            date: get(2).to_owned(),
            model,
            weights_gb: number(4)?,
            sharing,
            processes: count(6)?,
            concurrency: count(7)?,
            tokens_per_s_each: number(8)?,
            tokens_per_s_total: number(9)?,
            ttft_p50_ms: number(10)?,
            ttft_p99_ms: number(11)?,
            gpu_mem_mib: get(12)
                .parse::<u64>()
                .map_err(|_| bad("gpu_mem_mib", "not a whole number of MiB"))?,
        });
    }
    if rows.is_empty() {
        return Err(RecommendError::Empty);
    }
    Ok(rows)
}

fn column_index(name: &str) -> usize {
    HEADER.iter().position(|h| *h == name).unwrap_or(0)
}

/// One measured process count, as the rule sees it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Candidate {
    pub row: Row,
    /// `tokens_per_s_each / concurrency`: what each request streams at.
    pub per_request: f64,
    pub meets_slo: bool,
}

/// The answer: the MPS replicas value, and every candidate it was chosen from (ascending processes).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Recommendation {
    pub model: String,
    pub concurrency: u32,
    pub slo: f64,
    pub replicas: u32,
    pub candidates: Vec<Candidate>,
    /// Time-slicing at the chosen process count, when measured: what MPS buys.
    pub time_slicing_total: Option<f64>,
}

/// Applies the rule in the module docs.
pub(crate) fn recommend(
    rows: &[Row],
    slo: f64,
    model: Option<&str>,
    concurrency: u32,
) -> Result<Recommendation, RecommendError> {
    if !(slo.is_finite() && slo > 0.0) {
        return Err(RecommendError::BadTarget(format!(
            "--slo-tokens-per-s {slo}: give a number of tokens per second above 0"
        )));
    }
    if concurrency == 0 {
        return Err(RecommendError::BadTarget(
            "--concurrency 0: each process serves at least one request".into(),
        ));
    }
    let mut models: Vec<String> = rows.iter().map(|r| r.model.clone()).collect();
    models.sort();
    models.dedup();
    let model = match model {
        Some(m) if models.iter().any(|x| x == m) => m.to_owned(),
        Some(m) => {
            return Err(RecommendError::UnknownModel {
                model: m.to_owned(),
                models,
            });
        }
        None if models.len() == 1 => models[0].clone(),
        None => return Err(RecommendError::WhichModel { models }),
    };
    let name: &str = &model;
    let mine = |sharing: Sharing| {
        rows.iter()
            .filter(move |r| r.model == name && r.sharing == sharing)
    };
    // The slowest row per process count, for the sharing mode at this concurrency.
    let slowest = |sharing: Sharing| {
        let mut by_n: Vec<Row> = Vec::new();
        for r in mine(sharing).filter(|r| r.concurrency == concurrency) {
            match by_n.iter_mut().find(|x| x.processes == r.processes) {
                Some(x) if r.tokens_per_s_each < x.tokens_per_s_each => *x = r.clone(),
                Some(_) => {}
                None => by_n.push(r.clone()),
            }
        }
        by_n.sort_by_key(|r| r.processes);
        by_n
    };
    let mps = slowest(Sharing::Mps);
    if mps.is_empty() {
        let mut measured: Vec<u32> = mine(Sharing::Mps).map(|r| r.concurrency).collect();
        measured.sort_unstable();
        measured.dedup();
        return Err(RecommendError::NoMpsRows {
            model,
            concurrency,
            measured,
        });
    }
    let candidates: Vec<Candidate> = mps
        .into_iter()
        .map(|row| {
            let per_request = row.tokens_per_s_each / f64::from(concurrency);
            Candidate {
                meets_slo: per_request >= slo,
                per_request,
                row,
            }
        })
        .collect();
    // Ascending processes, so `>` keeps the fewer processes on a tie.
    let mut best: Option<&Candidate> = None;
    for c in candidates.iter().filter(|c| c.meets_slo) {
        if best.is_none_or(|b| c.row.tokens_per_s_total > b.row.tokens_per_s_total) {
            best = Some(c);
        }
    }
    let Some(best) = best else {
        let fastest = candidates
            .iter()
            .max_by(|a, b| a.per_request.total_cmp(&b.per_request))
            .map(|c| (c.row.processes, c.per_request))
            .unwrap_or((1, 0.0));
        return Err(RecommendError::SloUnmet {
            model,
            concurrency,
            slo,
            best_processes: fastest.0,
            best_per_request: fastest.1,
        });
    };
    let replicas = best.row.processes;
    let time_slicing_total = slowest(Sharing::TimeSlicing)
        .iter()
        .find(|r| r.processes == replicas)
        .map(|r| r.tokens_per_s_total);
    Ok(Recommendation {
        model,
        concurrency,
        slo,
        replicas,
        candidates,
        time_slicing_total,
    })
}

/// `zerospot recommend-replicas`.
pub(crate) fn run(args: Args) -> Result<(), Failure> {
    let text = read(&args.results)?;
    let rows = parse_results(&text)
        .map_err(|e| Failure::input(anyhow::anyhow!("{}: {e}", args.results.display())))?;
    let rec = recommend(
        &rows,
        args.slo_tokens_per_s,
        args.model.as_deref(),
        args.concurrency,
    )
    .map_err(|e| match e {
        // A valid question the measurements cannot answer yes to: not an input error.
        RecommendError::SloUnmet { .. } => Failure::from(anyhow::anyhow!("{e}")),
        e => Failure::input(anyhow::anyhow!("{}: {e}", args.results.display())),
    })?;
    if args.json {
        println!("{}", to_json(&rec));
    } else {
        print!("{}", to_table(&rec));
    }
    Ok(())
}

fn read(path: &Path) -> Result<String, Failure> {
    std::fs::read_to_string(path)
        .map_err(|e| Failure::input(anyhow::anyhow!("reading {}: {e}", path.display())))
}

fn to_json(rec: &Recommendation) -> serde_json::Value {
    let chosen = rec
        .candidates
        .iter()
        .find(|c| c.row.processes == rec.replicas);
    serde_json::json!({
        "replicas": rec.replicas,
        "model": rec.model,
        "concurrency": rec.concurrency,
        "slo_tokens_per_s": rec.slo,
        "tokens_per_s_total": chosen.map(|c| c.row.tokens_per_s_total),
        "tokens_per_s_per_request": chosen.map(|c| c.per_request),
        "time_slicing_tokens_per_s_total": rec.time_slicing_total,
        "gpu": chosen.map(|c| c.row.gpu.clone()),
        "candidates": rec.candidates.iter().map(|c| serde_json::json!({
            "processes": c.row.processes,
            "tokens_per_s_each": c.row.tokens_per_s_each,
            "tokens_per_s_per_request": c.per_request,
            "tokens_per_s_total": c.row.tokens_per_s_total,
            "ttft_p99_ms": c.row.ttft_p99_ms,
            "gpu_mem_mib": c.row.gpu_mem_mib,
            "meets_slo": c.meets_slo,
        })).collect::<Vec<_>>(),
    })
}

fn to_table(rec: &Recommendation) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let first = &rec.candidates[0].row;
    let _ = writeln!(
        out,
        "{} with MPS, {} request(s) in flight per process, SLO {} tokens/s per request \
         (measured on {}, driver {}, {})",
        rec.model, rec.concurrency, rec.slo, first.gpu, first.driver, first.date
    );
    let _ = writeln!(
        out,
        "{:>9}  {:>13}  {:>11}  {:>12}  {:>12}  {:>9}  SLO",
        "processes", "tok/s each", "tok/s/req", "tok/s total", "TTFT p99 ms", "GPU MiB"
    );
    for c in &rec.candidates {
        let _ = writeln!(
            out,
            "{:>9}  {:>13.1}  {:>11.1}  {:>12.1}  {:>12.1}  {:>9}  {}{}",
            c.row.processes,
            c.row.tokens_per_s_each,
            c.per_request,
            c.row.tokens_per_s_total,
            c.row.ttft_p99_ms,
            c.row.gpu_mem_mib,
            if c.meets_slo { "ok" } else { "missed" },
            if c.row.processes == rec.replicas {
                "  <- most tokens/s within the SLO"
            } else {
                ""
            }
        );
    }
    if let Some(ts) = rec.time_slicing_total {
        let chosen = rec
            .candidates
            .iter()
            .find(|c| c.row.processes == rec.replicas)
            .map_or(0.0, |c| c.row.tokens_per_s_total);
        let _ = writeln!(
            out,
            "time-slicing with {} processes: {ts:.1} tokens/s in total (MPS: {chosen:.1})",
            rec.replicas
        );
    }
    let _ = writeln!(out, "replicas: {}", rec.replicas);
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    const HEAD: &str = "gpu,driver,date,model,weights_gb,sharing,processes,concurrency,\
                        tokens_per_s_each,tokens_per_s_total,ttft_p50_ms,ttft_p99_ms,gpu_mem_mib";

    /// A results file from `(model, sharing, processes, concurrency, each, total)` rows.
    fn csv(rows: &[(&str, &str, u32, u32, f64, f64)]) -> String {
        let mut s = format!("{HEAD}\n");
        for (model, sharing, n, c, each, total) in rows {
            s.push_str(&format!(
                "GPU,1.0,2026-11-29,{model},1.00,{sharing},{n},{c},{each},{total},10,20,1000\n"
            ));
        }
        s
    }

    fn pick(text: &str, slo: f64, model: Option<&str>, c: u32) -> Result<u32, RecommendError> {
        recommend(&parse_results(text).unwrap(), slo, model, c).map(|r| r.replicas)
    }

    /// A curve like a memory-bound decoder's: each process slows, the total grows then flattens.
    fn curve() -> String {
        csv(&[
            ("m", "mps", 1, 1, 400.0, 400.0),
            ("m", "mps", 2, 1, 300.0, 600.0),
            ("m", "mps", 4, 1, 180.0, 720.0),
            ("m", "mps", 8, 1, 95.0, 760.0),
            ("m", "time-slicing", 4, 1, 110.0, 440.0),
        ])
    }

    #[test]
    fn the_most_processes_that_keep_the_slo_win_when_the_total_keeps_growing() {
        assert_eq!(pick(&curve(), 90.0, None, 1), Ok(8));
        assert_eq!(pick(&curve(), 100.0, None, 1), Ok(4));
        assert_eq!(
            pick(&curve(), 180.0, None, 1),
            Ok(4),
            "exactly the SLO meets it"
        );
        assert_eq!(pick(&curve(), 181.0, None, 1), Ok(2));
        assert_eq!(pick(&curve(), 400.0, None, 1), Ok(1));
    }

    #[test]
    fn a_total_that_falls_with_more_processes_is_not_chosen_even_within_the_slo() {
        let text = csv(&[
            ("m", "mps", 1, 1, 500.0, 500.0),
            ("m", "mps", 2, 1, 400.0, 800.0),
            ("m", "mps", 4, 1, 150.0, 600.0),
        ]);
        assert_eq!(pick(&text, 100.0, None, 1), Ok(2));
    }

    #[test]
    fn a_tie_goes_to_fewer_processes() {
        let text = csv(&[
            ("m", "mps", 4, 1, 200.0, 800.0),
            ("m", "mps", 2, 1, 400.0, 800.0),
        ]);
        assert_eq!(pick(&text, 100.0, None, 1), Ok(2));
    }

    #[test]
    fn with_concurrency_the_slo_applies_to_each_request_of_a_process() {
        let text = csv(&[
            ("m", "mps", 1, 4, 800.0, 800.0),
            ("m", "mps", 2, 4, 600.0, 1200.0),
            ("m", "mps", 4, 4, 380.0, 1520.0),
            ("m", "mps", 4, 1, 180.0, 720.0),
        ]);
        // 380 / 4 = 95 per request at 4 processes, 150 at 2.
        assert_eq!(pick(&text, 90.0, None, 4), Ok(4));
        assert_eq!(pick(&text, 100.0, None, 4), Ok(2));
        // Concurrency 1 reads its own rows only.
        assert_eq!(pick(&text, 100.0, None, 1), Ok(4));
    }

    #[test]
    fn time_slicing_rows_are_reported_but_never_chosen() {
        let text = csv(&[
            ("m", "time-slicing", 2, 1, 1000.0, 2000.0),
            ("m", "mps", 1, 1, 300.0, 300.0),
            ("m", "mps", 2, 1, 250.0, 500.0),
        ]);
        let rec = recommend(&parse_results(&text).unwrap(), 100.0, None, 1).unwrap();
        assert_eq!(rec.replicas, 2);
        assert_eq!(rec.time_slicing_total, Some(2000.0));
        assert!(rec.candidates.iter().all(|c| c.row.sharing == Sharing::Mps));
    }

    #[test]
    fn repeated_rows_count_by_their_slowest_run() {
        let text = csv(&[
            ("m", "mps", 1, 1, 300.0, 300.0),
            ("m", "mps", 2, 1, 160.0, 320.0),
            ("m", "mps", 2, 1, 140.0, 280.0),
        ]);
        // One run of 2 processes missed 150 per request: 2 is not safe.
        assert_eq!(pick(&text, 150.0, None, 1), Ok(1));
        let rec = recommend(&parse_results(&text).unwrap(), 100.0, None, 1).unwrap();
        assert_eq!(rec.candidates.len(), 2);
        assert_eq!(rec.candidates[1].row.tokens_per_s_each, 140.0);
    }

    #[test]
    fn an_slo_no_count_meets_names_the_best_there_is() {
        let err = pick(&curve(), 500.0, None, 1).unwrap_err();
        assert_eq!(
            err,
            RecommendError::SloUnmet {
                model: "m".into(),
                concurrency: 1,
                slo: 500.0,
                best_processes: 1,
                best_per_request: 400.0
            }
        );
        assert!(err.to_string().contains("1 process(es) at 400.0 tokens/s"));
    }

    #[test]
    fn several_models_need_a_choice_and_the_choice_must_exist() {
        let text = csv(&[
            ("small", "mps", 1, 1, 900.0, 900.0),
            ("big", "mps", 1, 1, 150.0, 150.0),
            ("big", "mps", 2, 1, 120.0, 240.0),
        ]);
        assert_eq!(
            pick(&text, 100.0, None, 1),
            Err(RecommendError::WhichModel {
                models: vec!["big".into(), "small".into()]
            })
        );
        assert_eq!(pick(&text, 100.0, Some("big"), 1), Ok(2));
        assert_eq!(pick(&text, 100.0, Some("small"), 1), Ok(1));
        let err = pick(&text, 100.0, Some("huge"), 1).unwrap_err();
        assert!(matches!(err, RecommendError::UnknownModel { .. }));
        assert!(err.to_string().contains("big, small"), "{err}");
    }

    #[test]
    fn a_concurrency_without_mps_rows_says_which_were_measured() {
        let err = pick(&curve(), 100.0, None, 4).unwrap_err();
        assert_eq!(
            err,
            RecommendError::NoMpsRows {
                model: "m".into(),
                concurrency: 4,
                measured: vec![1]
            }
        );
        let only_ts = csv(&[("m", "time-slicing", 1, 1, 100.0, 100.0)]);
        assert!(
            pick(&only_ts, 10.0, None, 1)
                .unwrap_err()
                .to_string()
                .contains("no MPS rows for it at all")
        );
    }

    #[test]
    fn a_meaningless_target_is_refused() {
        for slo in [0.0, -5.0, f64::NAN, f64::INFINITY] {
            assert!(
                matches!(
                    pick(&curve(), slo, None, 1),
                    Err(RecommendError::BadTarget(_))
                ),
                "{slo}"
            );
        }
        assert!(matches!(
            pick(&curve(), 10.0, None, 0),
            Err(RecommendError::BadTarget(_))
        ));
    }

    #[test]
    fn malformed_files_name_the_line_and_the_column() {
        let cases = [
            ("", "no data rows"),
            (HEAD, "no data rows"),
            ("gpu,driver\nA,B\n", "no \"date\" column"),
            (
                &format!("{HEAD}\nGPU,1,d,m,1,mps,2,1,10,20,1,2\n"),
                "line 2: 12 fields",
            ),
            (
                &format!(
                    "{HEAD}\nGPU,1,d,m,1,mps,2,1,10,20,1,2,3\nGPU,1,d,m,1,exclusive,2,1,10,20,1,2,3\n"
                ),
                "line 3: sharing = \"exclusive\"",
            ),
            (
                &format!("{HEAD}\nGPU,1,d,m,1,mps,0,1,10,20,1,2,3\n"),
                "processes = \"0\": not a whole number >= 1",
            ),
            (
                &format!("{HEAD}\nGPU,1,d,m,1,mps,2,1,fast,20,1,2,3\n"),
                "tokens_per_s_each = \"fast\"",
            ),
            (
                &format!("{HEAD}\nGPU,1,d,m,1,mps,2,1,10,-20,1,2,3\n"),
                "tokens_per_s_total = \"-20\"",
            ),
            (
                &format!("{HEAD}\nGPU,1,d,,1,mps,2,1,10,20,1,2,3\n"),
                "model = \"\": empty",
            ),
            (
                &format!("{HEAD}\nGPU,1,d,m,1,mps,2,1,10,20,1,2,1.5\n"),
                "gpu_mem_mib",
            ),
        ];
        for (text, want) in cases {
            let err = parse_results(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err:?} lacks {want:?}");
        }
    }

    #[test]
    fn columns_may_come_in_any_order_with_extra_ones_and_blank_lines() {
        let text = "model,extra,sharing,processes,concurrency,tokens_per_s_each,tokens_per_s_total,\
                    gpu,driver,date,weights_gb,ttft_p50_ms,ttft_p99_ms,gpu_mem_mib\r\n\
                    \r\n\
                    m,x,mps,2,1,150,300,H200,580,2026-11-29,7.2,30,60,20000\r\n";
        let rows = parse_results(text).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].processes, 2);
        assert_eq!(rows[0].gpu, "H200");
        assert_eq!(rows[0].gpu_mem_mib, 20000);
        assert_eq!(rows[0].weights_gb, 7.2);
    }

    #[test]
    fn the_table_marks_the_choice_and_ends_with_the_answer() {
        let rec = recommend(&parse_results(&curve()).unwrap(), 100.0, None, 1).unwrap();
        let table = to_table(&rec);
        assert!(table.lines().last().unwrap() == "replicas: 4", "{table}");
        let marked: Vec<&str> = table.lines().filter(|l| l.contains("<-")).collect();
        assert_eq!(marked.len(), 1);
        assert!(marked[0].trim_start().starts_with("4 "), "{table}");
        assert!(
            table.contains("missed"),
            "8 processes miss 100 tok/s: {table}"
        );
        assert!(table.contains("time-slicing with 4 processes: 440.0"));
        let json = to_json(&rec);
        assert_eq!(json["replicas"], 4);
        assert_eq!(json["candidates"].as_array().unwrap().len(), 4);
        assert_eq!(json["time_slicing_tokens_per_s_total"], 440.0);
    }
}
