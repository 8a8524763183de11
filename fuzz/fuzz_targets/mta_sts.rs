//! MTA-STS texts from anywhere: TXT records, policy files and HTTP
//! responses are taken or refused, never a panic; a policy allows only
//! names its patterns match, and no response yields more than 64 KiB.
#![no_main]
use libfuzzer_sys::fuzz_target;
use satchel::mta_sts::fetch::response_body;
use satchel::mta_sts::policy::{parse, txt_id, MAX_POLICY};

fuzz_target!(|input: &[u8]| {
    if let Ok(body) = response_body(input) {
        assert!(body.len() <= MAX_POLICY);
    }
    let Ok(text) = std::str::from_utf8(input) else {
        return;
    };
    if let Some(id) = txt_id(text) {
        assert!(!id.is_empty() && id.len() <= 32);
    }
    if let Ok(p) = parse(text) {
        for host in text.lines().take(4) {
            if p.allows(host) {
                assert!(!p.mx.is_empty());
            }
        }
    }
});
