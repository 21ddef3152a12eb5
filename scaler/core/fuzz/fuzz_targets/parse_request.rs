//! Any bytes: parse as a queued request; must return Ok or a typed error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use zerospot_core::request::Request;

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = std::str::from_utf8(data) {
        let now = chrono::DateTime::from_timestamp(1_790_000_000, 0).unwrap_or_default();
        if let Ok(request) = Request::parse(body, now) {
            // What we write back must read back the same.
            assert_eq!(Request::parse(&request.to_body(), now).ok(), Some(request));
        }
    }
});
