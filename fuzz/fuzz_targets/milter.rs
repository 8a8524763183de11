//! Any bytes as what a milter sends back: packets read one after another
//! (bounded lengths), each parsed as a reply and as an option negotiation;
//! a defined result or an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use satchel::guard::milter::proto;

fuzz_target!(|data: &[u8]| {
    let mut input = data;
    for _ in 0..64 {
        let Ok((cmd, body)) = proto::read_packet(&mut input) else {
            break;
        };
        assert!(body.len() < proto::MAX_PACKET);
        let _ = proto::parse_reply(cmd, &body);
        let _ = proto::parse_negotiation(&body);
    }
    let _ = satchel::guard::milter::Target::parse(&String::from_utf8_lossy(data));
});
