//! Any bytes as a received message whose every DKIM key record is the
//! first line of the input (the rest is the message), fed in odd pieces:
//! a result per signature (at most five), never a panic; and the first
//! line as a DMARC record.
#![no_main]
use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use satchel::dkim::verify::{Verifier, MAX_SIGNATURES};
use satchel::dns::{DnsError, Mx, Resolver};
use satchel::guard::dmarc;

struct Key(String);

impl Resolver for Key {
    fn mx(&self, _: &str) -> Result<Vec<Mx>, DnsError> {
        Err(DnsError::NxDomain)
    }
    fn addresses(&self, _: &str) -> Result<Vec<IpAddr>, DnsError> {
        Err(DnsError::NxDomain)
    }
    fn txt(&self, _: &str) -> Result<Vec<String>, DnsError> {
        Ok(vec![self.0.clone()])
    }
}

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let record = String::from_utf8_lossy(&data[..split]).into_owned();
    let message = data.get(split + 1..).unwrap_or(&[]);
    let _ = dmarc::parse_record(&record);
    let mut v = Verifier::default();
    let step = 1 + data.len() % 13;
    for piece in message.chunks(step) {
        v.feed(piece);
    }
    let _ = v.from_domains();
    let results = v.finish(&Key(record));
    assert!(results.len() <= MAX_SIGNATURES);
});
