//! Any bytes: parse as an event document; must return Ok or a typed error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zerospot_core::event::{parse_document_items, EventAction};

fuzz_target!(|data: &[u8]| {
    if let Ok(items) = parse_document_items(data) {
        for item in items {
            if let Ok(event) = item.result {
                // Everything an operator or a handler reads must be total too.
                let _ = event.event.reason();
                let _ = event.event.instance_ids();
                let _: EventAction = event.event.action();
            } else if let Err(e) = item.result {
                let _ = e.to_string();
            }
        }
    }
});
