//! Any text as an envelope: parsed or refused; what parses round-trips.
#![no_main]
use libfuzzer_sys::fuzz_target;
use satchel::envelope::{Data, Envelope};

fuzz_target!(|s: &str| {
    if let Ok((e, _)) = Envelope::parse(s) {
        // The longest offset fits any text: the round trip must hold.
        let here = Data::Here(u64::MAX);
        assert_eq!(Envelope::parse(&e.to_text(here)), Ok((e.clone(), here)));
        let apart = Data::Msg(7);
        assert_eq!(Envelope::parse(&e.to_text(apart)), Ok((e, apart)));
    }
});
