//! Workloads: the Azure LLM inference trace format, thinning and time stretching, model assignment, and the
//! embedded synthetic day.
//!
//! # Azure trace format
//! `TIMESTAMP,ContextTokens,GeneratedTokens`, one request per line, timestamps as
//! `2023-11-16 18:15:46.6805900` (UTC, fractional seconds); this is the format of Azure/AzurePublicDataset
//! `AzureLLMInferenceTrace_conv.csv` (CC-BY 4.0). Arrival times are kept relative to the first request.
//!
//! # Synthetic default
//! A working day generated from the seed: no requests from midnight to 07:00, two busy blocks (08:00-12:00,
//! 13:00-17:30) with a five-minute burst at a random minute of every hour, a thin lunch hour and evening, and
//! a batch burst at 22:00. Requests come in conversations (sessions): a geometric number of turns (mean 4)
//! with exponential think times (mean 30 s), all on one model. Token counts are log-normal with medians close
//! to the Azure conversation trace (prompt median 1,000, output median 130).

use crate::error::{Result, SimError};
use crate::rng::Rng;
use chrono::NaiveDateTime;
use std::path::Path;

/// One request: when it arrives (seconds from the start of the workload), for which model, and its size.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Request {
    /// Arrival, seconds from the start.
    pub at: f64,
    /// Index into [`Workload::models`].
    pub model: u16,
    /// Prompt tokens (prefill).
    pub prompt_tokens: u32,
    /// Generated tokens (decode).
    pub generated_tokens: u32,
}

/// A list of requests sorted by arrival, with the models they ask for.
#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    /// Requests, sorted by `at`.
    pub requests: Vec<Request>,
    /// Model names; a request's `model` indexes this.
    pub models: Vec<String>,
    /// The end of the observed window, seconds (at least the last arrival).
    pub horizon_s: f64,
    /// What this workload is, in words (source, thinning, scaling).
    pub description: String,
}

/// How to turn a trace into a workload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shaping {
    /// Keep each request with this probability (`--sample`), in `(0, 1]`.
    pub sample: f64,
    /// Multiply every arrival offset by this (`--time-scale`); above 1 makes the workload sparser.
    pub time_scale: f64,
    /// Number of models requests are spread over (Zipf weights 1, 1/2, 1/3, ...).
    pub models: u16,
    /// Seed for thinning and model assignment.
    pub seed: u64,
}

impl Default for Shaping {
    fn default() -> Self {
        Shaping {
            sample: 1.0,
            time_scale: 1.0,
            models: 2,
            seed: 1,
        }
    }
}

impl Shaping {
    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        if !(self.sample > 0.0 && self.sample <= 1.0) {
            return Err(SimError::Parameter(format!(
                "--sample must be in (0, 1], got {}",
                self.sample
            )));
        }
        if !(self.time_scale > 0.0 && self.time_scale <= 10_000.0) {
            return Err(SimError::Parameter(format!(
                "--time-scale must be above 0 and at most 10000, got {}",
                self.time_scale
            )));
        }
        if self.models == 0 || self.models > 64 {
            return Err(SimError::Parameter(format!(
                "--models must be 1 to 64, got {}",
                self.models
            )));
        }
        Ok(())
    }
}

fn model_names(n: u16) -> Vec<String> {
    (0..n)
        .map(|i| match u8::try_from(i) {
            Ok(i) if i < 26 => format!("model-{}", char::from(b'a' + i)),
            _ => format!("model-{i}"),
        })
        .collect()
}

/// Cumulative Zipf weights for `n` models.
fn zipf_cdf(n: u16) -> Vec<f64> {
    let weights: Vec<f64> = (1..=n).map(|k| 1.0 / f64::from(k)).collect();
    let total: f64 = weights.iter().sum();
    let mut acc = 0.0;
    weights
        .iter()
        .map(|w| {
            acc += w / total;
            acc
        })
        .collect()
}

fn pick(cdf: &[f64], u: f64) -> u16 {
    cdf.iter()
        .position(|c| u < *c)
        .unwrap_or(cdf.len().saturating_sub(1)) as u16
}

/// The expected header line.
pub const AZURE_HEADER: &str = "TIMESTAMP,ContextTokens,GeneratedTokens";

/// Reads an Azure-format trace file and shapes it.
pub fn load_azure(path: &Path, shaping: &Shaping) -> Result<Workload> {
    let bytes = std::fs::read(path).map_err(|error| SimError::ReadTrace {
        path: path.to_owned(),
        error,
    })?;
    let name = path.display().to_string();
    let text = String::from_utf8_lossy(&bytes);
    parse_azure(&text, &name, shaping)
}

/// Parses Azure-format trace text (`source_name` names it in errors) and shapes it.
pub fn parse_azure(text: &str, source_name: &str, shaping: &Shaping) -> Result<Workload> {
    shaping.validate()?;
    let line_error = |line: usize, reason: String| SimError::TraceLine {
        source_name: source_name.to_owned(),
        line,
        reason,
    };
    let mut raw: Vec<(f64, u32, u32)> = Vec::new();
    let mut header_seen = false;
    let mut t0: Option<NaiveDateTime> = None;
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        let line = line.trim_start_matches('\u{feff}').trim();
        if line.is_empty() {
            continue;
        }
        if !header_seen {
            if line != AZURE_HEADER {
                return Err(line_error(
                    number,
                    format!(
                        "expected the header {AZURE_HEADER:?}, found {:?}",
                        clip(line)
                    ),
                ));
            }
            header_seen = true;
            continue;
        }
        let mut fields = line.split(',');
        let (Some(ts), Some(ctx), Some(gen_tokens), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(line_error(
                number,
                format!(
                    "expected 3 comma-separated fields (TIMESTAMP,ContextTokens,GeneratedTokens), found {:?}",
                    clip(line)
                ),
            ));
        };
        let when =
            NaiveDateTime::parse_from_str(ts.trim(), "%Y-%m-%d %H:%M:%S%.f").map_err(|_| {
                line_error(
                    number,
                    format!(
                        "timestamp {:?} is not YYYY-MM-DD HH:MM:SS[.fraction]",
                        clip(ts)
                    ),
                )
            })?;
        let tokens = |field: &str, what: &str| {
            field.trim().parse::<u32>().map_err(|_| {
                line_error(
                    number,
                    format!("{what} {:?} is not a whole number of tokens", clip(field)),
                )
            })
        };
        let ctx = tokens(ctx, "ContextTokens")?;
        let generated = tokens(gen_tokens, "GeneratedTokens")?;
        let base = *t0.get_or_insert(when);
        let offset = (when - base).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6;
        raw.push((offset, ctx, generated));
    }
    if !header_seen {
        return Err(SimError::EmptyTrace(
            source_name.to_owned(),
            " (not even a header)",
        ));
    }
    if raw.is_empty() {
        return Err(SimError::EmptyTrace(source_name.to_owned(), ""));
    }
    raw.sort_by(|a, b| a.0.total_cmp(&b.0));
    let first = raw[0].0;
    let last = raw[raw.len() - 1].0;
    let mut keep = Rng::new(shaping.seed, 0x0074_7261_6365);
    let cdf = zipf_cdf(shaping.models);
    let mut requests = Vec::with_capacity((raw.len() as f64 * shaping.sample) as usize + 1);
    for (at, prompt, generated) in raw {
        let kept = keep.uniform() < shaping.sample;
        let model = pick(&cdf, keep.uniform());
        if kept {
            requests.push(Request {
                at: (at - first) * shaping.time_scale,
                model,
                prompt_tokens: prompt,
                generated_tokens: generated,
            });
        }
    }
    if requests.is_empty() {
        return Err(SimError::EmptyTrace(
            source_name.to_owned(),
            " after --sample",
        ));
    }
    let file = Path::new(source_name).file_name().map_or_else(
        || source_name.to_owned(),
        |f| f.to_string_lossy().into_owned(),
    );
    Ok(Workload {
        horizon_s: (last - first) * shaping.time_scale,
        description: format!(
            "{file}: {} requests (sample {}, time scale {}, {} models, seed {})",
            requests.len(),
            shaping.sample,
            shaping.time_scale,
            shaping.models,
            shaping.seed
        ),
        requests,
        models: model_names(shaping.models),
    })
}

fn clip(s: &str) -> String {
    s.chars().take(60).collect()
}

/// Session rate over the synthetic day: `(start hour, end hour, relative rate)`.
const DAY: &[(f64, f64, f64)] = &[
    (0.0, 7.0, 0.0),
    (7.0, 8.0, 0.25),
    (8.0, 12.0, 1.0),
    (12.0, 13.0, 0.12),
    (13.0, 17.5, 0.9),
    (17.5, 19.0, 0.3),
    (19.0, 21.0, 0.06),
    (21.0, 22.0, 0.0),
    (22.0, 22.0 + 5.0 / 60.0, 4.0),
    (22.0 + 5.0 / 60.0, 24.0, 0.0),
];

/// Mean turns per session in the synthetic day.
const TURNS_MEAN: f64 = 4.0;
/// Mean think time between turns, seconds.
const THINK_MEAN_S: f64 = 30.0;
/// The largest synthetic day (memory stays under about 1 GB).
pub const MAX_SYNTHETIC_REQUESTS: u64 = 20_000_000;
/// Requests in the default synthetic day.
pub const SYNTHETIC_DEFAULT_REQUESTS: u64 = 2_500;

/// The synthetic bursty day with about `requests` requests (the exact count depends on the seed).
pub fn synthetic_day(requests: u64, shaping: &Shaping) -> Result<Workload> {
    shaping.validate()?;
    if requests == 0 || requests > MAX_SYNTHETIC_REQUESTS {
        return Err(SimError::Parameter(format!(
            "--requests must be 1 to {MAX_SYNTHETIC_REQUESTS}, got {requests}"
        )));
    }
    let mut rng = Rng::new(shaping.seed, 0x0073_796e_7468);
    // Bursts: in each busy hour, five minutes at three times the rate.
    let mut segments: Vec<(f64, f64, f64)> = Vec::new();
    for &(start, end, rate) in DAY {
        if rate >= 0.5 {
            let mut h = start;
            while h < end {
                let hour_end = (h + 1.0).min(end);
                let burst = h + rng.between(0.0, (hour_end - h - 5.0 / 60.0).max(0.0));
                segments.push((h, burst, rate));
                segments.push((burst, burst + 5.0 / 60.0, rate * 3.0));
                segments.push((burst + 5.0 / 60.0, hour_end, rate));
                h = hour_end;
            }
        } else {
            segments.push((start, end, rate));
        }
    }
    let weight: f64 = segments.iter().map(|(s, e, r)| (e - s) * r).sum();
    let sessions_per_hour = requests as f64 / TURNS_MEAN / weight;
    let cdf = zipf_cdf(shaping.models);
    let mut out = Vec::with_capacity(requests as usize + requests as usize / 8);
    let horizon = 24.0 * 3600.0;
    for (start, end, rate) in segments {
        let lambda = sessions_per_hour * rate / 3600.0;
        if lambda <= 0.0 || end <= start {
            continue;
        }
        let mut t = start * 3600.0 + rng.exponential(1.0 / lambda);
        while t < end * 3600.0 {
            let model = pick(&cdf, rng.uniform());
            let mut at = t;
            loop {
                if rng.uniform() < shaping.sample {
                    let prompt = (1000.0 * (0.6 * rng.normal()).exp()).clamp(16.0, 8000.0) as u32;
                    let generated = (130.0 * (0.9 * rng.normal()).exp()).clamp(1.0, 1500.0) as u32;
                    out.push(Request {
                        at,
                        model,
                        prompt_tokens: prompt,
                        generated_tokens: generated,
                    });
                }
                if rng.uniform() < 1.0 / TURNS_MEAN {
                    break;
                }
                at += rng.exponential(THINK_MEAN_S);
            }
            t += rng.exponential(1.0 / lambda);
        }
    }
    for r in &mut out {
        r.at *= shaping.time_scale;
    }
    out.sort_by(|a, b| a.at.total_cmp(&b.at));
    if out.is_empty() {
        return Err(SimError::EmptyTrace(
            "(synthetic day)".into(),
            " after --sample",
        ));
    }
    let last = out[out.len() - 1].at;
    Ok(Workload {
        horizon_s: (horizon * shaping.time_scale).max(last),
        description: format!(
            "synthetic bursty day: {} requests (seed {}, sample {}, time scale {}, {} models)",
            out.len(),
            shaping.seed,
            shaping.sample,
            shaping.time_scale,
            shaping.models
        ),
        requests: out,
        models: model_names(shaping.models),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_azure_format_relative_to_the_first_request() {
        let text = "TIMESTAMP,ContextTokens,GeneratedTokens\n\
                    2023-11-16 18:15:46.6805900,374,44\r\n\
                    2023-11-16 18:15:50.9951690,396,109\n";
        let w = parse_azure(text, "t.csv", &Shaping::default()).unwrap();
        assert_eq!(w.requests.len(), 2);
        assert_eq!(w.requests[0].at, 0.0);
        assert!((w.requests[1].at - 4.314579).abs() < 1e-6);
        assert_eq!(w.requests[1].prompt_tokens, 396);
        assert_eq!(w.requests[1].generated_tokens, 109);
    }

    #[test]
    fn time_scale_stretches_arrivals() {
        let text = "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:00:00,1,1\n2023-11-16 18:00:10,1,1\n";
        let shaping = Shaping {
            time_scale: 3.0,
            ..Shaping::default()
        };
        let w = parse_azure(text, "t.csv", &shaping).unwrap();
        assert_eq!(w.requests[1].at, 30.0);
        assert_eq!(w.horizon_s, 30.0);
    }

    #[test]
    fn the_synthetic_day_has_idle_hours_and_about_the_requested_size() {
        let w = synthetic_day(20_000, &Shaping::default()).unwrap();
        let n = w.requests.len() as f64;
        assert!((n - 20_000.0).abs() < 2_000.0, "{n}");
        assert!(w.requests.iter().all(|r| r.at >= 7.0 * 3600.0));
        assert!(w.requests.windows(2).all(|p| p[0].at <= p[1].at));
    }
}
