//! Any bytes as what a milter sends back: packets read one after another
//! (bounded lengths), each parsed as a reply and as an option negotiation;
//! the header changes among them applied to the input as a message; a
//! defined result or an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use satchel::guard::milter::edit::{apply, Edit};
use satchel::guard::milter::proto;

fuzz_target!(|data: &[u8]| {
    let mut input = data;
    let mut edits = Vec::new();
    for _ in 0..64 {
        let Ok((cmd, body)) = proto::read_packet(&mut input) else {
            break;
        };
        assert!(body.len() < proto::MAX_PACKET);
        match proto::parse_reply(cmd, &body) {
            Ok(proto::Reply::AddHeader(n, v)) => edits.push(Edit::Add(n, v)),
            Ok(proto::Reply::InsertHeader(i, n, v)) => edits.push(Edit::Insert(i, n, v)),
            Ok(proto::Reply::ChangeHeader(i, n, v)) => edits.push(Edit::Change(i, n, v)),
            _ => {}
        }
        let _ = proto::parse_negotiation(&body);
    }
    let _ = satchel::guard::milter::Target::parse(&String::from_utf8_lossy(data));
    let ours = data.len() % 17;
    let _ = apply(data, ours, &edits, None);
    let _ = apply(data, ours, &edits, Some(b"new\r\n"));
});
