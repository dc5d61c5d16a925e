//! The HTTP/JSON API's request parser: a request target (path and query)
//! as a client sends it, with GET and another method, through
//! `pidmap::testing::api::http::Ask::parse` — what every HTTP request meets before
//! anything is answered.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pidmap::testing::api::http::{Ask, BadRequest};

/// Limits small enough for the fuzzer to cross them.
const MAX_REQUEST_BYTES: usize = 512;
const BATCH_LIMIT: usize = 8;

fuzz_target!(|data: &[u8]| {
    // What hyper hands the API: a target that parsed as a URI.
    let Ok(uri) = http::Uri::try_from(data) else {
        return;
    };
    for method in [http::Method::GET, http::Method::POST] {
        match Ask::parse(&method, &uri, MAX_REQUEST_BYTES, BATCH_LIMIT) {
            Ok(ask) => {
                assert_eq!(method, http::Method::GET, "only GET is answered");
                let target = uri.path_and_query().map_or(0, |p| p.as_str().len());
                assert!(
                    target <= MAX_REQUEST_BYTES,
                    "an oversized target was parsed"
                );
                if let Ask::Processes { requests, .. } = &ask {
                    assert!(
                        (1..=BATCH_LIMIT).contains(&requests.len()),
                        "a batch of {} pids",
                        requests.len()
                    );
                }
                let _ = ask.method();
            }
            Err(BadRequest { error, .. }) => {
                // Every refusal renders as a JSON error answer.
                let response = error.response();
                assert!(response.status().is_client_error(), "{}", response.status());
            }
        }
    }
});
