//! Any text as a transport table, a sender relay table, a relay
//! recipient table, a sender login table, a virtual alias table or an
//! aliases file:
//! loaded, or refused with one `FILE:LINE: what` line; never a panic. A loaded table answers look-ups of the addresses the
//! fuzzer's own keys make.
#![no_main]
use libfuzzer_sys::fuzz_target;
use satchel::address::Mailbox;
use satchel::config::transport::{SenderRelays, TransportTable};
use satchel::config::virtual_alias::VirtualAliases;
use satchel::policy::{parse_relay_recipients, parse_sender_logins};

fuzz_target!(|s: &str| {
    let probes: Vec<Mailbox> = s
        .split_whitespace()
        .filter_map(|w| Mailbox::parse(w.trim_start_matches('.')).ok())
        .chain(Mailbox::parse("user@example.test").ok())
        .collect();
    match TransportTable::parse(s, "t") {
        Ok(t) => probes.iter().for_each(|m| {
            let _ = t.lookup(m);
        }),
        Err(e) => assert!(e.starts_with("t:") && !e.contains('\n'), "{e}"),
    }
    match SenderRelays::parse(s, "s") {
        Ok(t) => probes.iter().for_each(|m| {
            let _ = t.lookup(m);
        }),
        Err(e) => assert!(e.starts_with("s:") && !e.contains('\n'), "{e}"),
    }
    if let Err(e) = parse_relay_recipients(s, "r") {
        assert!(e.starts_with("r:") && !e.contains('\n'), "{e}");
    }
    if let Err(e) = parse_sender_logins(s, "l") {
        assert!(e.starts_with("l:") && !e.contains('\n'), "{e}");
    }
    if let Ok(a) = satchel::aliases::Aliases::parse(s) {
        for name in a.map.keys() {
            let _ = a.expand(name);
        }
    }
    match VirtualAliases::parse(s, "v") {
        Ok(t) => probes.iter().for_each(|m| {
            let _ = t.expand(m, "+-");
        }),
        Err(e) => assert!(e.starts_with("v:") && !e.contains('\n'), "{e}"),
    }
});
