//! Serving: how long a request takes on a GPU shared by several model processes through CUDA MPS.
//!
//! Service time = prompt tokens / prefill rate + generated tokens / (decode rate x sharing factor), where the
//! sharing factor is the per-process decode speed with `N` processes on the GPU relative to one process,
//! interpolated linearly in `N` from a measured curve. `N` counts the requests being served on the GPU when
//! this one starts, itself included, and is held for the whole request (a standard approximation of
//! processor sharing: the simulator does not re-time requests already running when a neighbour starts).

/// Per-process speed relative to one process, by number of processes sharing the GPU.
#[derive(Debug, Clone, PartialEq)]
pub struct SharingCurve {
    /// `(processes, steps per second each)`, ascending in processes.
    points: Vec<(f64, f64)>,
    /// Precomputed factors for 1..=16 processes.
    table: [f64; 17],
}

impl SharingCurve {
    /// The default: `llama-1.1b` with MPS on an H100 (`gpu-sharing-h100-decode.csv`, measured 2026-11-24):
    /// 582.2, 404.0, 265.8, 159.5 steps/s per process at 1, 2, 4, 8 processes.
    pub fn h100_llama_1b_mps() -> Self {
        Self::from_points(&[(1.0, 582.2), (2.0, 404.0), (4.0, 265.8), (8.0, 159.5)])
    }

    /// `llama-7b` with MPS on the same H100: 173.2, 104.9, 56.9 at 1, 2, 4 processes (memory-bound).
    pub fn h100_llama_7b_mps() -> Self {
        Self::from_points(&[(1.0, 173.2), (2.0, 104.9), (4.0, 56.9)])
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

    /// Per-process speed with `n` processes sharing, relative to one process alone.
    pub fn factor(&self, n: u32) -> f64 {
        match self.table.get(n as usize) {
            Some(f) if n >= 1 => *f,
            Some(_) => 1.0,
            None => self.interpolate(f64::from(n)),
        }
    }
}

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

    #[test]
    fn the_default_curve_matches_the_measured_points_and_interpolates_between() {
        let c = SharingCurve::h100_llama_1b_mps();
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
