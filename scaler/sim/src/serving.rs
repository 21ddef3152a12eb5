//! Serving: how long a request takes on a GPU shared by several model processes through CUDA MPS.
//!
//! Service time = prompt tokens / prefill rate + generated tokens / (decode rate x sharing factor), where the
//! sharing factor is the per-process decode speed with `N` processes on the GPU relative to one process,
//! interpolated linearly in `N` from a measured curve. `N` counts the requests being served on the GPU
//! *now*: the cluster re-times running requests whenever a neighbour starts or ends (processor sharing).
//!
//! The default curve is measured: the project's Ollama runs on one NVIDIA H200 (embedded from
//! `scaler/sim/data/gpu-sharing-h200-ollama.csv`), the 7B-shaped model with CUDA MPS
//! ([`SharingCurve::measured_default`]). Another curve can be read from measurements
//! ([`SharingCurve::from_csv`]) in the format of the project's GPU-sharing benchmark: `gpu,driver,date,model,weights_gb,sharing,processes,concurrency,
//! tokens_per_s_each,tokens_per_s_total,ttft_p50_ms,ttft_p99_ms,gpu_mem_mib`, one row per run.

use crate::error::{Result, SimError};

/// Per-process speed relative to one process, by number of processes sharing the GPU.
#[derive(Debug, Clone, PartialEq)]
pub struct SharingCurve {
    /// `(processes, steps per second each)`, ascending in processes.
    points: Vec<(f64, f64)>,
    /// Precomputed factors for 1..=16 processes.
    table: [f64; 17],
}

impl Default for SharingCurve {
    /// [`SharingCurve::measured_default`].
    fn default() -> Self {
        Self::measured_default()
    }
}

impl SharingCurve {
    /// The default curve: the rows of [`DEFAULT_SHARING_MODEL`] under [`DEFAULT_SHARING_MODE`] at
    /// concurrency 1 in the embedded [`DEFAULT_SHARING_CSV`] (Ollama on one NVIDIA H200, measured by the
    /// project on 2026-11-29; `scaler/sim/data/README.md`): 209.2, 140.1, 83.7, 44.0 tokens/s per process
    /// at 1, 2, 4, 8 processes, so factors 1, 0.670, 0.400, 0.210; linear in between (3 processes:
    /// 0.535), total throughput held flat past 8 (`N` processes: `8 x 0.210 / N`).
    ///
    /// The file is compiled in and its reading is tested, so this cannot fail at run time.
    #[expect(
        clippy::expect_used,
        reason = "the embedded file is a constant; the unit tests read it"
    )]
    pub fn measured_default() -> Self {
        Self::embedded(None, DEFAULT_SHARING_MODE)
            .expect("the embedded sharing file gives the default curve")
    }

    /// The curve for `model` (default [`DEFAULT_SHARING_MODEL`]) under `sharing` (`mps` or
    /// `time-slicing`) from the embedded measurements [`DEFAULT_SHARING_CSV`], as [`Self::from_csv`]
    /// reads them.
    pub fn embedded(model: Option<&str>, sharing: &str) -> Result<Self> {
        Self::from_csv(
            DEFAULT_SHARING_CSV,
            DEFAULT_SHARING_SOURCE,
            Some(model.unwrap_or(DEFAULT_SHARING_MODEL)),
            sharing,
        )
    }

    /// A curve from measured points; extrapolated past the last point by keeping the total throughput flat.
    pub fn from_points(points: &[(f64, f64)]) -> Self {
        let mut points: Vec<(f64, f64)> = points
            .iter()
            .copied()
            .filter(|(n, s)| *n >= 1.0 && *s > 0.0)
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        if points.is_empty() {
            points.push((1.0, 1.0));
        }
        let mut curve = SharingCurve {
            points,
            table: [1.0; 17],
        };
        for n in 1..=16 {
            curve.table[n] = curve.interpolate(n as f64);
        }
        curve
    }

    fn interpolate(&self, n: f64) -> f64 {
        let base = self.points[0].1;
        let each = match self.points.iter().position(|(pn, _)| *pn >= n) {
            Some(0) => self.points[0].1,
            Some(i) => {
                let (n0, s0) = self.points[i - 1];
                let (n1, s1) = self.points[i];
                s0 + (s1 - s0) * (n - n0) / (n1 - n0)
            }
            None => {
                let (nl, sl) = self.points[self.points.len() - 1];
                sl * nl / n
            }
        };
        each / base
    }

    /// The curve for `model` (or the file's only model) under `sharing` (`mps` or `time-slicing`), from
    /// measurement rows at concurrency 1 (one request in flight per process): the factor for `N`
    /// processes is `tokens_per_s_each(N) / tokens_per_s_each(1)`, rows for the same `N` averaged.
    /// `source_name` names the file in errors, which quote the line.
    pub fn from_csv(
        text: &str,
        source_name: &str,
        model: Option<&str>,
        sharing: &str,
    ) -> Result<Self> {
        let err = |line: usize, reason: String| SimError::SharingLine {
            source_name: source_name.to_owned(),
            line,
            reason,
        };
        let mut rows: Vec<(String, f64, f64)> = Vec::new();
        let mut header = false;
        for (i, line) in text.lines().enumerate() {
            let n = i + 1;
            let line = line.trim_start_matches('\u{feff}').trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if !header {
                if line != SHARING_HEADER {
                    return Err(err(n, format!("expected the header {SHARING_HEADER:?}")));
                }
                header = true;
                continue;
            }
            let f: Vec<&str> = line.split(',').map(str::trim).collect();
            if f.len() != 13 {
                return Err(err(n, format!("expected 13 fields, found {}", f.len())));
            }
            if f[5] != "mps" && f[5] != "time-slicing" {
                return Err(err(
                    n,
                    format!("sharing {:?} is neither mps nor time-slicing", f[5]),
                ));
            }
            let whole = |i: usize, what: &str| {
                f[i].parse::<u32>()
                    .ok()
                    .filter(|v| *v >= 1)
                    .ok_or_else(|| err(n, format!("{what} {:?} is not a whole number >= 1", f[i])))
            };
            let processes = whole(6, "processes")?;
            let concurrency = whole(7, "concurrency")?;
            let each = f[8]
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v > 0.0)
                .ok_or_else(|| {
                    err(
                        n,
                        format!("tokens_per_s_each {:?} is not a positive number", f[8]),
                    )
                })?;
            if f[5] == sharing && concurrency == 1 {
                rows.push((f[3].to_owned(), f64::from(processes), each));
            }
        }
        if !header {
            return Err(err(1, "empty file".into()));
        }
        let mut models: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
        models.sort_unstable();
        models.dedup();
        let chosen = match model {
            Some(m) if models.contains(&m) => m.to_owned(),
            None if models.len() == 1 => models[0].to_owned(),
            _ => {
                return Err(SimError::Parameter(format!(
                    "{source_name}: {} (models with {sharing} rows at concurrency 1: {}); pick one with \
                     --sharing-model",
                    model.map_or_else(
                        || "more than one model, or none".to_owned(),
                        |m| format!("no {sharing} rows at concurrency 1 for model {m:?}")
                    ),
                    if models.is_empty() {
                        "none".to_owned()
                    } else {
                        models.join(", ")
                    }
                )));
            }
        };
        let mut points: Vec<(f64, f64, u32)> = Vec::new();
        for (m, n, each) in &rows {
            if *m != chosen {
                continue;
            }
            match points.iter_mut().find(|p| p.0 == *n) {
                Some(p) => {
                    p.1 += each;
                    p.2 += 1;
                }
                None => points.push((*n, *each, 1)),
            }
        }
        if !points.iter().any(|p| p.0 == 1.0) {
            return Err(SimError::Parameter(format!(
                "{source_name}: model {chosen:?} has no {sharing} row with 1 process at concurrency 1, \
                 which every factor is relative to"
            )));
        }
        let averaged: Vec<(f64, f64)> = points
            .iter()
            .map(|(n, sum, k)| (*n, sum / f64::from(*k)))
            .collect();
        Ok(Self::from_points(&averaged))
    }

    /// Per-process speed with `n` processes sharing, relative to one process alone.
    pub fn factor(&self, n: u32) -> f64 {
        match self.table.get(n as usize) {
            Some(f) if n >= 1 => *f,
            Some(_) => 1.0,
            None => self.interpolate(f64::from(n)),
        }
    }
}

/// The measured sharing file embedded as the default curve's source: Ollama v0.17.4 on one NVIDIA H200,
/// CUDA MPS and time-slicing, two models, 1 to 8 processes (`scaler/sim/data/README.md` says how).
pub const DEFAULT_SHARING_CSV: &str = include_str!("../data/gpu-sharing-h200-ollama.csv");

/// The embedded file's path in the repository, as errors about it name it.
pub const DEFAULT_SHARING_SOURCE: &str = "scaler/sim/data/gpu-sharing-h200-ollama.csv";

/// The model whose rows of [`DEFAULT_SHARING_CSV`] give the default curve: a llama with Llama 2 7B's
/// shape (32 layers x 4096, Q8_0), the shape of the models zerospot deploys.
pub const DEFAULT_SHARING_MODEL: &str = "llama-7b-shape-random-q8_0";

/// The sharing mode of the default curve: CUDA MPS, as zerospot's GPU nodes run.
pub const DEFAULT_SHARING_MODE: &str = "mps";

/// The header line of a measured sharing file.
pub const SHARING_HEADER: &str = "gpu,driver,date,model,weights_gb,sharing,processes,concurrency,tokens_per_s_each,tokens_per_s_total,ttft_p50_ms,ttft_p99_ms,gpu_mem_mib";

/// What serving a request costs in time.
#[derive(Debug, Clone, PartialEq)]
pub struct Serving {
    /// Model pods per GPU (MPS replicas).
    pub slots_per_gpu: u32,
    /// Requests one pod serves at once.
    pub pod_concurrency: u32,
    /// Prefill, prompt tokens/s, one process.
    pub prefill_tokens_per_s: f64,
    /// Decode, tokens/s, one process.
    pub decode_tokens_per_s: f64,
    /// Slowdown when processes share the GPU.
    pub curve: SharingCurve,
}

impl Serving {
    /// Seconds to serve `prompt` + `generated` tokens with `sharing` requests on the GPU (itself included).
    pub fn service_s(&self, prompt: u32, generated: u32, sharing: u32) -> f64 {
        f64::from(prompt) / self.prefill_tokens_per_s
            + f64::from(generated) / (self.decode_tokens_per_s * self.curve.factor(sharing.max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../tests/fixtures/gpu-sharing-sample.csv");

    #[test]
    fn a_measured_file_gives_each_over_one_process_for_the_chosen_model_and_sharing() {
        let c = SharingCurve::from_csv(FIXTURE, "f.csv", Some("llama3.2:1b"), "mps").unwrap();
        assert_eq!(c.factor(1), 1.0);
        // Two runs at 2 processes (80 and 76 tokens/s each) average to 78; one process: 100.
        assert!((c.factor(2) - 0.78).abs() < 1e-12, "{}", c.factor(2));
        assert!((c.factor(4) - 0.5).abs() < 1e-12);
        assert!((c.factor(3) - 0.64).abs() < 1e-12, "interpolated");
        // Concurrency 4 rows and time-slicing rows are not mixed in.
        let ts =
            SharingCurve::from_csv(FIXTURE, "f.csv", Some("llama3.2:1b"), "time-slicing").unwrap();
        assert!((ts.factor(2) - 0.5).abs() < 1e-12);
        // The other model.
        let big = SharingCurve::from_csv(FIXTURE, "f.csv", Some("gemma3:12b"), "mps").unwrap();
        assert!((big.factor(2) - 0.6).abs() < 1e-12);
    }

    #[test]
    fn a_measured_file_is_checked_line_by_line_and_the_model_must_be_named_when_ambiguous() {
        let err = |text: &str, model: Option<&str>| {
            SharingCurve::from_csv(text, "f.csv", model, "mps")
                .unwrap_err()
                .to_string()
        };
        let e = err(FIXTURE, None);
        assert!(
            e.contains("gemma3:12b, llama3.2:1b") && e.contains("--sharing-model"),
            "{e}"
        );
        assert!(
            err(FIXTURE, Some("phi")).contains("no mps rows at concurrency 1 for model \"phi\"")
        );
        let header = SHARING_HEADER;
        let row = "h200,570,2026-11-29,m,1.3,mps,2,1,50,100,10,20,2000";
        let e = err(&format!("{header}\n{row}\n"), None);
        assert!(e.contains("no mps row with 1 process"), "{e}");
        let e = err(
            &format!("{header}\n{}\n", row.replace(",mps,", ",mig,")),
            None,
        );
        assert!(
            e.contains("line 2") && e.contains("neither mps nor time-slicing"),
            "{e}"
        );
        let e = err(
            &format!("{header}\n{}\n", row.replace(",2,1,50,", ",two,1,50,")),
            None,
        );
        assert!(
            e.contains("line 2") && e.contains("processes \"two\""),
            "{e}"
        );
        let e = err(
            &format!("{header}\n{}\n", row.replace(",50,100,", ",-5,100,")),
            None,
        );
        assert!(e.contains("tokens_per_s_each \"-5\""), "{e}");
        let e = err(&format!("{header}\n{row},9\n"), None);
        assert!(e.contains("expected 13 fields, found 14"), "{e}");
        assert!(err("gpu,model\n", None).contains("line 1"));
        assert!(err("", None).contains("empty file"));
    }

    #[test]
    fn the_default_curve_is_the_7b_mps_rows_of_the_measured_h200_file() {
        // Read the committed file independently of the loader: per-process tokens/s of the 7B-shaped
        // model with MPS at concurrency 1, by process count.
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/data/gpu-sharing-h200-ollama.csv"
        );
        let text = std::fs::read_to_string(path).unwrap();
        assert_eq!(
            text, DEFAULT_SHARING_CSV,
            "the embedded file is the committed one"
        );
        let mut lines = text.lines();
        let head: Vec<&str> = lines.next().unwrap().split(',').collect();
        let col = |name: &str| head.iter().position(|h| *h == name).unwrap();
        let (model, sharing, procs, conc, each) = (
            col("model"),
            col("sharing"),
            col("processes"),
            col("concurrency"),
            col("tokens_per_s_each"),
        );
        let mut measured: Vec<(u32, f64)> = lines
            .map(|l| l.split(',').collect::<Vec<&str>>())
            .filter(|f| {
                f[model] == "llama-7b-shape-random-q8_0" && f[sharing] == "mps" && f[conc] == "1"
            })
            .map(|f| (f[procs].parse().unwrap(), f[each].parse().unwrap()))
            .collect();
        measured.sort_by_key(|p| p.0);
        let ns: Vec<u32> = measured.iter().map(|p| p.0).collect();
        assert_eq!(ns, [1, 2, 4, 8], "one row per process count");
        let one = measured[0].1;

        let c = SharingCurve::default();
        assert_eq!(c, SharingCurve::measured_default());
        assert_eq!(DEFAULT_SHARING_MODEL, "llama-7b-shape-random-q8_0");
        assert_eq!(DEFAULT_SHARING_MODE, "mps");
        for (n, each) in &measured {
            let want = each / one;
            assert!(
                (c.factor(*n) - want).abs() < 1e-12,
                "{n}: {} vs {want}",
                c.factor(*n)
            );
        }
        // Linear between measured points.
        let at = |n: u32| measured.iter().find(|p| p.0 == n).unwrap().1 / one;
        assert!((c.factor(3) - (at(2) + at(4)) / 2.0).abs() < 1e-12);
        assert!((c.factor(6) - (at(4) + at(8)) / 2.0).abs() < 1e-12);
        assert!((c.factor(5) - (at(4) + (at(8) - at(4)) / 4.0)).abs() < 1e-12);
        // Past 8 processes the total throughput stays at 8 processes' (no data there).
        for n in [9, 12, 16, 17, 40] {
            assert!(
                (c.factor(n) * f64::from(n) - at(8) * 8.0).abs() < 1e-9,
                "{n}: total throughput flat past the data"
            );
        }
        assert!(c.factor(16) < c.factor(8));
        // Not the old synthetic H100 curve (0.694 at 2 processes).
        assert!(c.factor(2) < 0.68, "{}", c.factor(2));

        // The other mode and model of the embedded file, and a clear error for one it lacks.
        let ts = SharingCurve::embedded(None, "time-slicing").unwrap();
        assert!(
            ts.factor(2) < c.factor(2),
            "time-slicing shares worse than MPS"
        );
        let gemma = SharingCurve::embedded(Some("gemma3-270m-q4_k_m"), "mps").unwrap();
        assert!(gemma.factor(2) > c.factor(2));
        let e = SharingCurve::embedded(Some("phi"), "mps")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(DEFAULT_SHARING_SOURCE)
                && e.contains("gemma3-270m-q4_k_m, llama-7b-shape-random-q8_0"),
            "{e}"
        );
    }

    #[test]
    fn a_curve_from_points_interpolates_and_keeps_total_throughput_flat_past_the_data() {
        let c =
            SharingCurve::from_points(&[(1.0, 582.2), (2.0, 404.0), (4.0, 265.8), (8.0, 159.5)]);
        assert_eq!(c.factor(1), 1.0);
        assert!((c.factor(2) - 404.0 / 582.2).abs() < 1e-12);
        assert!((c.factor(3) - (404.0 + 265.8) / 2.0 / 582.2).abs() < 1e-12);
        assert!((c.factor(8) - 159.5 / 582.2).abs() < 1e-12);
        assert!(c.factor(16) < c.factor(8));
        assert!(
            (c.factor(16) * 16.0 - c.factor(8) * 8.0).abs() < 1e-9,
            "total throughput flat past the data"
        );
    }
}
