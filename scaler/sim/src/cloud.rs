//! The cloud: instance types and prices, node boot and model start times, per-second billing, Spot
//! interruptions and capacity failures.
//!
//! # Sources
//! - On-demand prices: AWS EC2 On-Demand pricing page, us-east-1, Linux: g4dn.xlarge $0.526/h, g5.xlarge
//!   $1.006/h, g6.xlarge $0.8048/h (list prices unchanged since launch; g5.xlarge re-checked against a
//!   pricing summary dated 2026-06-17).
//! - Spot prices are approximate: typical us-east-1 Spot prices (lowest-AZ, 2025-2026) run at 35-45 % of
//!   on-demand for these types; we use 0.22, 0.42 and 0.34 $/h. They move by AZ and hour: check
//!   `aws ec2 describe-spot-price-history` and pass `--spot-price` for your own.
//! - Billing: Linux instances are billed per second with a 60-second minimum, from launch (pending to
//!   running) to termination; a launch that fails for lack of capacity is not billed.
//! - Boot to GPU-ready: 150-240 s for a g5 with the EKS-optimised accelerated AMI (instance start, EKS
//!   join, NVIDIA device plugin advertising the GPU), drawn uniformly per node. Then the first model pod on
//!   a node pulls the Ollama image (40 s) and every pod loads its model (20 s).
//! - Spot interruptions: EC2 gives a two-minute notice, then terminates. The rate is per node-hour
//!   (exponential lifetimes). AWS's Spot Instance Advisor puts these types at "<5 %" to "5-10 %" per
//!   *month*, far below one per day; the default 0.02 per node-hour is a deliberate stress figure so every
//!   run exercises the interruption path. Use `--interruption-rate 0` for the quiet case.
//! - Spot capacity failures (InsufficientInstanceCapacity): each Spot launch fails with a probability
//!   (default 0.02), noticed 5 s after the request; the Auto Scaling group retries 30 s later.

use crate::error::{Result, SimError};

/// An EC2 instance type the simulator knows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InstanceType {
    /// API name, e.g. `g5.xlarge`.
    pub name: &'static str,
    /// The GPU it carries.
    pub gpu: &'static str,
    /// On-demand price, USD per hour (us-east-1, Linux).
    pub on_demand_per_hour: f64,
    /// Typical Spot price, USD per hour (approximate, us-east-1).
    pub spot_per_hour: f64,
    /// Single-process decode speed of the default small model, tokens/s (memory-bandwidth bound: scaled from
    /// the A10G's 600 GB/s).
    pub decode_tokens_per_s: f64,
    /// Prefill speed, prompt tokens/s (compute bound).
    pub prefill_tokens_per_s: f64,
}

/// The instance types: single-GPU `xlarge` sizes of the three GPU families zerospot targets.
pub const INSTANCE_TYPES: &[InstanceType] = &[
    InstanceType {
        name: "g4dn.xlarge",
        gpu: "T4 16 GB, 320 GB/s",
        on_demand_per_hour: 0.526,
        spot_per_hour: 0.22,
        decode_tokens_per_s: 48.0,
        prefill_tokens_per_s: 1_200.0,
    },
    InstanceType {
        name: "g5.xlarge",
        gpu: "A10G 24 GB, 600 GB/s",
        on_demand_per_hour: 1.006,
        spot_per_hour: 0.42,
        decode_tokens_per_s: 90.0,
        prefill_tokens_per_s: 3_000.0,
    },
    InstanceType {
        name: "g6.xlarge",
        gpu: "L4 24 GB, 300 GB/s",
        on_demand_per_hour: 0.8048,
        spot_per_hour: 0.34,
        decode_tokens_per_s: 45.0,
        prefill_tokens_per_s: 2_400.0,
    },
];

/// Looks an instance type up by name.
pub fn instance_type(name: &str) -> Result<InstanceType> {
    INSTANCE_TYPES
        .iter()
        .copied()
        .find(|t| t.name == name)
        .ok_or_else(|| {
            let known: Vec<&str> = INSTANCE_TYPES.iter().map(|t| t.name).collect();
            SimError::Parameter(format!(
                "unknown instance type {name:?} (known: {})",
                known.join(", ")
            ))
        })
}

/// How nodes come and go, and what they cost.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cloud {
    /// The GPU instance type of every pool.
    pub instance: InstanceType,
    /// Spot price used, USD/h (defaults to the type's typical price).
    pub spot_per_hour: f64,
    /// Boot to GPU-ready, lower bound, seconds.
    pub boot_min_s: f64,
    /// Boot to GPU-ready, upper bound, seconds.
    pub boot_max_s: f64,
    /// Image pull for the first model pod on a node, seconds.
    pub image_pull_s: f64,
    /// Model load for every model pod, seconds.
    pub model_load_s: f64,
    /// Spot interruptions per node-hour.
    pub interruption_rate_per_hour: f64,
    /// Interruption notice, seconds (EC2: 120).
    pub interruption_notice_s: f64,
    /// Probability that a Spot launch fails for lack of capacity.
    pub capacity_failure_probability: f64,
    /// How long until a failed launch is noticed, seconds.
    pub capacity_failure_detect_s: f64,
    /// How long an Auto Scaling group waits before retrying a failed launch, seconds.
    pub asg_retry_s: f64,
    /// Minimum billed time per instance, seconds (EC2 Linux: 60).
    pub min_billed_s: f64,
}

impl Cloud {
    /// Defaults for `instance`.
    pub fn new(instance: InstanceType) -> Self {
        Cloud {
            instance,
            spot_per_hour: instance.spot_per_hour,
            boot_min_s: 150.0,
            boot_max_s: 240.0,
            image_pull_s: 40.0,
            model_load_s: 20.0,
            interruption_rate_per_hour: 0.02,
            interruption_notice_s: 120.0,
            capacity_failure_probability: 0.02,
            capacity_failure_detect_s: 5.0,
            asg_retry_s: 30.0,
            min_billed_s: 60.0,
        }
    }

    /// The longest time from a launch request to a model pod serving on a fresh node.
    pub fn cold_start_max_s(&self) -> f64 {
        self.boot_max_s + self.image_pull_s + self.model_load_s
    }

    /// The shortest such time (what the oracle assumes).
    pub fn cold_start_min_s(&self) -> f64 {
        self.boot_min_s + self.image_pull_s + self.model_load_s
    }

    /// Price per second of a node of this capacity type.
    pub fn price_per_s(&self, spot: bool) -> f64 {
        if spot {
            self.spot_per_hour / 3600.0
        } else {
            self.instance.on_demand_per_hour / 3600.0
        }
    }

    /// Billed seconds for an instance that ran `seconds`.
    pub fn billed_s(&self, seconds: f64) -> f64 {
        seconds.max(self.min_billed_s)
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str, v: f64| SimError::Parameter(format!("{what} out of range: {v}"));
        if !(self.boot_min_s >= 0.0
            && self.boot_max_s >= self.boot_min_s
            && self.boot_max_s.is_finite())
        {
            return Err(bad("boot time range", self.boot_max_s));
        }
        if !(0.0..=1.0).contains(&self.capacity_failure_probability) {
            return Err(bad(
                "--capacity-failure-probability",
                self.capacity_failure_probability,
            ));
        }
        if !(self.interruption_rate_per_hour >= 0.0 && self.interruption_rate_per_hour.is_finite())
        {
            return Err(bad("--interruption-rate", self.interruption_rate_per_hour));
        }
        if !(self.spot_per_hour > 0.0 && self.spot_per_hour.is_finite()) {
            return Err(bad("--spot-price", self.spot_per_hour));
        }
        for (what, v) in [
            ("image pull", self.image_pull_s),
            ("model load", self.model_load_s),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(bad(what, v));
            }
        }
        Ok(())
    }
}
