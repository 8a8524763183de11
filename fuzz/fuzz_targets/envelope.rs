//! Any text as an envelope: parsed or refused; what parses round-trips.
#![no_main]
use libfuzzer_sys::fuzz_target;
use satchel::envelope::Envelope;

fuzz_target!(|s: &str| {
    if let Ok(e) = Envelope::parse(s) {
        assert_eq!(Envelope::parse(&e.to_text()), Ok(e));
    }
});
