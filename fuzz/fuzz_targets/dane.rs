//! Certificates and TLSA records from anywhere: the SubjectPublicKeyInfo
//! is found inside the certificate or not at all, and matching never
//! panics, whatever the record's fields.
#![no_main]
use libfuzzer_sys::fuzz_target;
use satchel::dane::{matches, spki, usable, Tlsa};

fuzz_target!(|input: &[u8]| {
    if input.len() < 3 {
        return;
    }
    let cert = &input[3..];
    if let Some(s) = spki(cert) {
        assert!(cert.windows(s.len()).any(|w| w == s), "the SPKI is in the certificate");
    }
    let r = Tlsa {
        usage: input[0] % 5,
        selector: input[1] % 3,
        matching: input[2] % 4,
        data: cert.iter().take(64).copied().collect(),
    };
    let _ = usable(&r);
    let _ = matches(&r, cert);
});
