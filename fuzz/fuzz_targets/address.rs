//! Any text as a path: parsed within the RFC 5321 limits, or refused.
#![no_main]
use libfuzzer_sys::fuzz_target;
use satchel::address::{ForwardPath, ReversePath};

fuzz_target!(|s: &str| {
    if let Ok(ForwardPath::Mailbox(m)) = ForwardPath::parse(s) {
        assert!(m.local.len() <= 64);
        // What we print parses back to the same mailbox.
        let again = ForwardPath::parse(&format!("<{m}>"));
        assert_eq!(again, Ok(ForwardPath::Mailbox(m)));
    }
    let _ = ReversePath::parse(s);
});
