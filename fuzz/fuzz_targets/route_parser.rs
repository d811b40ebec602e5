//! Fuzzes the strict route matcher with arbitrary request targets and methods.
//! It must never panic, and anything it accepts must be (modulo ASCII case) exactly the path
//! passgate forwards, and must re-parse to the same action.
#![no_main]

use http::Method;
use libfuzzer_sys::fuzz_target;
use passgate::routes::parse;

const METHODS: [Method; 5] = [
    Method::POST,
    Method::GET,
    Method::PUT,
    Method::DELETE,
    Method::CONNECT,
];

fuzz_target!(|data: &[u8]| {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let Ok(target) = std::str::from_utf8(rest) else {
        return;
    };
    let method = &METHODS[m as usize % METHODS.len()];
    if let Ok(action) = parse(method, target) {
        assert_eq!(method, Method::POST, "accepted {method} on {target:?}");
        let up = action.upstream_path();
        assert!(
            up.eq_ignore_ascii_case(target),
            "accepted {target:?} but would forward {up:?}"
        );
        assert_eq!(parse(method, &up), Ok(action), "canonical form re-parses");
    }
});
