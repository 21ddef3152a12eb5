//! `zerospot explain-event`: one JSON line per event in a document.

use crate::{Failure, read_input};
use serde::Serialize;
use std::io::Write;
use zerospot_core::event::{ParsedEvent, parse_document_items};

#[derive(Debug, Serialize)]
struct Line<'a> {
    kind: &'a str,
    instance_ids: Vec<&'a str>,
    action: &'a str,
    reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    message_id: Option<&'a str>,
}

fn line(event: &ParsedEvent) -> Line<'_> {
    Line {
        kind: event.event.kind(),
        instance_ids: event.event.instance_ids(),
        action: event.event.action().as_str(),
        reason: event.event.reason(),
        message_id: event.meta.message_id.as_deref(),
    }
}

pub(crate) fn explain_event(input: &str) -> Result<(), Failure> {
    let bytes = read_input(input)?;
    let items = parse_document_items(&bytes).map_err(Failure::input)?;
    let mut out = std::io::stdout().lock();
    let mut first_error = None;
    for item in &items {
        match &item.result {
            Ok(event) => writeln!(out, "{}", serde_json::to_string(&line(event))?)?,
            Err(e) => {
                first_error.get_or_insert_with(|| e.clone());
            }
        }
    }
    match first_error {
        Some(e) => Err(Failure::input(e)),
        None => Ok(()),
    }
}
