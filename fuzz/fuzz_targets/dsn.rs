//! DSN values (RFC 3461 xtext, NOTIFY, ORCPT with RFC 6533's `utf-8`
//! type): refused or decoded, never a panic; what is accepted re-encodes
//! to something accepted again.
#![no_main]
use libfuzzer_sys::fuzz_target;
use satchel::dsn::{decode_xtext, orcpt_ascii, orcpt_field, valid_orcpt, xtext, Notify};

fuzz_target!(|s: &str| {
    if let Some(text) = decode_xtext(s) {
        assert_eq!(decode_xtext(&xtext(&text)), Some(text));
    }
    if valid_orcpt(s) {
        let _ = orcpt_field(s);
        // What goes on to a hop without SMTPUTF8 is still a valid ORCPT.
        let ascii = orcpt_ascii(s);
        assert!(ascii.is_ascii() && valid_orcpt(&ascii), "{s:?} -> {ascii:?}");
    }
    if let Some(n) = Notify::parse(s) {
        assert_eq!(n.value().and_then(|v| Notify::parse(&v)), Some(n));
    }
});
