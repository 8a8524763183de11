//! Any argument list for the sendmail command: parsed, or refused with a
//! line; never a panic, and every argument is either consumed by an
//! option or a recipient.
#![no_main]
use libfuzzer_sys::fuzz_target;
use satchel::sendmail::parse_args;

fuzz_target!(|s: &str| {
    let args: Vec<String> = s.split('\0').map(str::to_string).collect();
    if let Ok(o) = parse_args(&args) {
        assert!(o.recipients.len() <= args.len());
    }
});
