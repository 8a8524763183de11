//! Any line: a command or a reply, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    if let Err(r) = satchel::smtp::command::parse(line) {
        // Every refusal is a well-formed reply with CRLF-only line ends.
        let wire = r.to_wire();
        assert!(wire.ends_with(b"\r\n"));
        assert!(r.code >= 400);
    }
});
