//! The DATA decoder on any byte stream, split anywhere: the same result
//! whatever the split, output never larger than the input, no bare CR/LF
//! accepted. The same for its BDAT (chunked) mode, whose output may grow
//! by the CR LF it adds at the end.
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

/// The BDAT decoder over `input` in chunks of `chunk` octets.
fn chunked(input: &[u8], chunk: usize) -> (Vec<u8>, bool) {
    let mut d = DataDecoder::chunked(4096);
    let mut out = Vec::new();
    for part in input.chunks(chunk) {
        assert_eq!(d.feed(part, &mut out), (part.len(), false));
    }
    d.finish(&mut out);
    (out, d.defect().is_some())
}

fn crlf_only(out: &[u8]) {
    for (i, &b) in out.iter().enumerate() {
        if b == b'\n' {
            assert!(i > 0 && out[i - 1] == b'\r');
        }
        if b == b'\r' {
            assert_eq!(out.get(i + 1), Some(&b'\n'));
        }
    }
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
        crlf_only(&out);
    }
    let (bdat, defect) = chunked(&input[1..], chunk);
    assert_eq!((bdat.clone(), defect), chunked(&input[1..], usize::MAX));
    assert!(bdat.len() <= input.len() + 2);
    if !defect {
        crlf_only(&bdat);
    }
});
