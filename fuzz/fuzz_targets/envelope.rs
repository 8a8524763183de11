//! Any text as an envelope: parsed or refused; what parses round-trips.
#![no_main]
use libfuzzer_sys::fuzz_target;
use satchel::envelope::Envelope;

fuzz_target!(|s: &str| {
    if let Ok((e, _)) = Envelope::parse(s) {
        // The longest offset fits any text: the round trip must hold.
        assert_eq!(Envelope::parse(&e.to_text(u64::MAX)), Ok((e, Some(u64::MAX))));
    }
});
