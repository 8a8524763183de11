//! Any bytes as a DNS answer: records or an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|b: &[u8]| {
    if b.len() < 2 {
        return;
    }
    let id = u16::from_be_bytes([b[0], b[1]]);
    let _ = satchel::dns::parse_mx_response(b, id);
    let _ = satchel::dns::parse_addr_response(b, id);
});
