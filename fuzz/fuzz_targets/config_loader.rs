//! Fuzzes the YAML config loader (parse + validation). It must refuse bad input with a
//! `ConfigError`, never panic or hang; its error text must never echo a `client_secret` literal.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = passgate::config::load_str(text, "fuzz.yaml") {
        // Rendering the error (with its location and hint) must not panic either.
        let _ = e.to_string();
    }
});
