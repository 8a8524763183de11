//! The DATA decoder on any byte stream, split anywhere: the same result
//! whatever the split, output never larger than the input, no bare CR/LF
//! accepted.
#![no_main]
use libfuzzer_sys::fuzz_target;
use satchel::smtp::data::DataDecoder;

fn run(input: &[u8], chunk: usize) -> (Vec<u8>, usize, bool, bool) {
    let mut d = DataDecoder::new(4096);
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < input.len() {
        let end = (pos + chunk).min(input.len());
        let (n, done) = d.feed(&input[pos..end], &mut out);
        pos += n;
        if done {
            return (out, pos, true, d.defect().is_some());
        }
    }
    (out, pos, false, d.defect().is_some())
}

fuzz_target!(|input: &[u8]| {
    if input.is_empty() {
        return;
    }
    let chunk = usize::from(input[0] % 16) + 1;
    let whole = run(&input[1..], usize::MAX);
    let split = run(&input[1..], chunk);
    assert_eq!(whole, split);
    let (out, _, _, defect) = whole;
    assert!(out.len() <= input.len());
    if !defect {
        // Accepted content has CRLF-only line ends.
        for (i, &b) in out.iter().enumerate() {
            if b == b'\n' {
                assert!(i > 0 && out[i - 1] == b'\r');
            }
            if b == b'\r' {
                assert_eq!(out.get(i + 1), Some(&b'\n'));
            }
        }
    }
});
