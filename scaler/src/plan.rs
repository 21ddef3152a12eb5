//! `zerospot plan` and `zerospot check-request`.

use crate::{Failure, read_input};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use zerospot_core::request::Request;
use zerospot_core::{Config, Snapshot, decide};

/// The example snapshot, embedded so `zerospot plan` runs with no file.
pub(crate) const EXAMPLE_SNAPSHOT: &str = include_str!("../examples/snapshot.json");

/// A `plan` input file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanInput {
    #[serde(default)]
    now: Option<DateTime<Utc>>,
    config: Config,
    #[serde(default)]
    snapshot: Snapshot,
}

pub(crate) fn plan(
    path: Option<&str>,
    now: Option<DateTime<Utc>>,
    compact: bool,
) -> Result<(), Failure> {
    let bytes = match path {
        Some(path) => read_input(path)?,
        None => EXAMPLE_SNAPSHOT.as_bytes().to_vec(),
    };
    let input: PlanInput = serde_json::from_slice(&bytes).map_err(|e| {
        Failure::input(anyhow::anyhow!(
            "snapshot {}: {e}",
            path.unwrap_or("(example)")
        ))
    })?;
    input
        .config
        .validate()
        .map_err(|e| Failure::input(anyhow::anyhow!("config: {e}")))?;
    let now = now.or(input.now).unwrap_or_else(Utc::now);
    let decision = decide(&input.snapshot, &input.config, now);
    let text = if compact {
        serde_json::to_string(&decision)?
    } else {
        serde_json::to_string_pretty(&decision)?
    };
    println!("{text}");
    Ok(())
}

pub(crate) fn check_request(path: &str, now: Option<DateTime<Utc>>) -> Result<(), Failure> {
    let bytes = read_input(path)?;
    let body = String::from_utf8(bytes)
        .map_err(|_| Failure::input(anyhow::anyhow!("request is not UTF-8")))?;
    let request = Request::parse(&body, now.unwrap_or_else(Utc::now)).map_err(Failure::input)?;
    println!("{}", request.to_body());
    Ok(())
}
