//! The simulator's errors: each variant names the step that failed.

use std::path::PathBuf;
use thiserror::Error;

/// A `Result` whose error is [`SimError`].
pub type Result<T, E = SimError> = std::result::Result<T, E>;

/// Why a simulation could not run.
#[derive(Debug, Error)]
pub enum SimError {
    /// The trace file could not be read.
    #[error("reading trace {path}: {error}")]
    ReadTrace {
        /// The file.
        path: PathBuf,
        /// The I/O error (in the message, not chained, so it is printed once).
        error: std::io::Error,
    },
    /// A line of the trace is not `TIMESTAMP,ContextTokens,GeneratedTokens`.
    #[error("trace {source_name} line {line}: {reason}")]
    TraceLine {
        /// File name (or `(inline)`).
        source_name: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong, quoting the offending text.
        reason: String,
    },
    /// A line of a measured sharing file is malformed.
    #[error("sharing file {source_name} line {line}: {reason}")]
    SharingLine {
        /// File name.
        source_name: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The trace has a header but no requests (or nothing survived `--sample`).
    #[error("trace {0} has no requests{1}")]
    EmptyTrace(String, &'static str),
    /// A parameter is out of range.
    #[error("invalid parameter: {0}")]
    Parameter(String),
    /// The zerospot configuration the simulator built was rejected by the core.
    #[error("zerospot configuration: {0}")]
    Config(zerospot_core::ConfigError),
    /// Writing plots failed.
    #[error("writing plot {path}: {reason}")]
    Plot {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl SimError {
    /// A short label per kind, for metrics and exit codes.
    pub fn metric_label(&self) -> &'static str {
        match self {
            SimError::ReadTrace { .. } => "read_trace",
            SimError::TraceLine { .. } => "trace_line",
            SimError::SharingLine { .. } => "sharing_line",
            SimError::EmptyTrace(..) => "empty_trace",
            SimError::Parameter(_) => "parameter",
            SimError::Config(_) => "config",
            SimError::Plot { .. } => "plot",
        }
    }

    /// Whether the error comes from the user's input (a trace or a flag) rather than the environment.
    pub fn is_input(&self) -> bool {
        !matches!(self, SimError::Plot { .. })
    }
}
