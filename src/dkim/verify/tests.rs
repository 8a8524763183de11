//! Verification of messages signed by satchel's own signer (Ed25519),
//! then tampered with; RSA and other signers are checked by
//! `scripts/interop` against dkimpy's signatures.

use std::collections::HashMap;
use std::net::IpAddr;

use super::*;
use crate::dkim::{generate_ed25519, Signer};
use crate::dns::Mx;

struct Keys(HashMap<String, Vec<String>>);

impl Resolver for Keys {
    fn mx(&self, _: &str) -> Result<Vec<Mx>, DnsError> {
        Err(DnsError::NxDomain)
    }
    fn addresses(&self, _: &str) -> Result<Vec<IpAddr>, DnsError> {
        Err(DnsError::NxDomain)
    }
    fn txt(&self, name: &str) -> Result<Vec<String>, DnsError> {
        if name.contains(".broken.") {
            return Err(DnsError::Temporary("SERVFAIL".into()));
        }
        self.0.get(name).cloned().ok_or(DnsError::NxDomain)
    }
}

/// A signer for example.test (selector sel) and the DNS with its key.
fn signer(tag: &str) -> (Signer, Keys) {
    let (pem, record) = generate_ed25519().unwrap();
    let dir = std::env::temp_dir().join(format!("satchel-verify-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("k.pem"), pem).unwrap();
    let s = Signer::parse("example.test sel k.pem\n", "k", Some(&dir)).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let dns = Keys(HashMap::from([(
        "sel._domainkey.example.test".to_string(),
        vec![record],
    )]));
    (s, dns)
}

const MSG: &[u8] = b"From: Alice <alice@example.test>\r\nTo: bob@far.test\r\nSubject: hello\r\n\r\nHi Bob,\r\n\r\n  see you  \r\n\r\n";

fn signed(s: &Signer, msg: &[u8]) -> Vec<u8> {
    let mut out = s
        .sign(&mut &msg[..], 1_700_000_000)
        .unwrap()
        .unwrap()
        .into_bytes();
    out.extend_from_slice(msg);
    out
}

fn check(msg: &[u8], dns: &Keys, pieces: usize) -> Vec<Outcome> {
    let mut v = Verifier::default();
    for chunk in msg.chunks(pieces) {
        v.feed(chunk);
    }
    v.finish(dns)
}

#[test]
fn our_signatures_verify_whole_and_in_pieces() {
    let (s, dns) = signer("pass");
    let m = signed(&s, MSG);
    for pieces in [1, 3, 7, 64, 100_000] {
        let r = check(&m, &dns, pieces);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].result, DkimResult::Pass, "{pieces}: {r:?}");
        assert_eq!(
            (r[0].domain.as_str(), r[0].selector.as_str()),
            ("example.test", "sel")
        );
        assert_eq!(r[0].b.len(), 8);
    }
}

#[test]
fn relaxed_survives_refolding_and_tampering_fails() {
    let (s, dns) = signer("tamper");
    let m = signed(&s, MSG);
    let text = String::from_utf8(m.clone()).unwrap();
    // A relay that refolds a header and trims trailing blanks: still valid.
    let refolded = text
        .replace("Subject: hello", "Subject:   hello")
        .replace("  see you  \r\n", "  see you\r\n");
    assert_eq!(
        check(refolded.as_bytes(), &dns, 5)[0].result,
        DkimResult::Pass
    );
    let body = text.replace("see you", "see me");
    let r = check(body.as_bytes(), &dns, 5);
    assert_eq!(
        (r[0].result, r[0].why.as_str()),
        (DkimResult::Fail, "body hash did not verify")
    );
    let head = text.replace("Subject: hello", "Subject: hullo");
    let r = check(head.as_bytes(), &dns, 5);
    assert_eq!(
        (r[0].result, r[0].why.as_str()),
        (DkimResult::Fail, "signature did not verify")
    );
    // A second From: added above: From is over-signed, so it breaks.
    let added = format!("From: mallory@evil.test\r\n{text}");
    let r = check(added.as_bytes(), &dns, 5);
    assert_eq!(r[0].result, DkimResult::Fail, "{r:?}");
}

#[test]
fn keys_that_are_missing_revoked_or_unreachable() {
    let (s, mut dns) = signer("keys");
    let m = signed(&s, MSG);
    let record = dns.0.remove("sel._domainkey.example.test").unwrap();
    assert_eq!(check(&m, &dns, 9)[0].result, DkimResult::PermError);
    dns.0.insert(
        "sel._domainkey.example.test".into(),
        vec!["v=DKIM1; k=ed25519; p=".into()],
    );
    assert_eq!(check(&m, &dns, 9)[0].why, "key revoked");
    dns.0.insert(
        "sel._domainkey.example.test".into(),
        vec![record[0].replace("ed25519", "rsa")],
    );
    assert_eq!(check(&m, &dns, 9)[0].why, "key type does not match a=");
    let text = String::from_utf8(m)
        .unwrap()
        .replace("d=example.test", "d=broken.example.test");
    let r = check(text.as_bytes(), &dns, 9);
    assert_eq!(r[0].result, DkimResult::TempError, "{r:?}");
}

#[test]
fn bad_signature_fields_are_permerrors() {
    let dns = Keys(HashMap::new());
    let base = "v=1; a=ed25519-sha256; d=example.test; s=sel; h=from; bh=AAAA; b=AAAA";
    for (bad, why) in [
        (base.replace("v=1", "v=2"), "v= is not 1"),
        (
            base.replace("ed25519-sha256", "rsa-sha1"),
            "rsa-sha1 is not accepted (RFC 8301)",
        ),
        (base.replace("h=from", "h=subject"), "h= does not sign From"),
        (
            base.replace("d=example.test", "d=exa mple.test"),
            "bad d= or s=",
        ),
        (format!("{base}; i=a@other.test"), "i= is not in d="),
        (format!("{base}; c=fancy"), "unknown canonicalization"),
        (format!("{base}; l=12x"), "bad l="),
        (format!("{base}; x=1"), "signature expired"),
        (base.replace("b=AAAA", "b=!!"), "b= or bh= is not base64"),
        (format!("{base}; s=again"), "tag s twice"),
        ("garbage".to_string(), "'garbage' is not a tag"),
    ] {
        let msg = format!("DKIM-Signature: {bad}\r\nFrom: a@example.test\r\n\r\nx\r\n");
        let r = check(msg.as_bytes(), &dns, 1000);
        assert_eq!(
            (r[0].result, r[0].why.as_str()),
            (DkimResult::PermError, why),
            "{bad}"
        );
    }
}

#[test]
fn a_huge_l_tag_and_many_signatures_have_defined_results() {
    let dns = Keys(HashMap::new());
    let mut msg = String::new();
    for i in 0..8 {
        msg.push_str(&format!(
            "DKIM-Signature: v=1; a=ed25519-sha256; d=example.test; s=s{i}; h=from; l={}; bh=AAAA; b=AAAA\r\n",
            "9".repeat(70)
        ));
    }
    msg.push_str("From: a@example.test\r\n\r\nshort\r\n");
    let r = check(msg.as_bytes(), &dns, 10);
    assert_eq!(r.len(), MAX_SIGNATURES);
    assert!(
        r.iter().all(|o| o.why == "l= is longer than the body"),
        "{r:?}"
    );
}

#[test]
fn l_limits_the_body_hash_and_simple_keeps_blanks() {
    for (simple, body, want) in [
        (true, &b""[..], &b"\r\n"[..]),
        (true, b"a  b \r\n\r\n\r\n", b"a  b \r\n"),
        (false, b"a  b \r\n\r\n", b"a b\r\n"),
    ] {
        let mut h = BodyHash::with(simple, None);
        h.update(body);
        let (d, len) = h.finish_counted();
        assert_eq!(
            d.as_ref(),
            digest::digest(&digest::SHA256, want).as_ref(),
            "{body:?}"
        );
        assert_eq!(len, want.len() as u64);
    }
    let mut h = BodyHash::with(false, Some(3));
    h.update(b"abcdef\r\n");
    let (d, len) = h.finish_counted();
    assert_eq!(d.as_ref(), digest::digest(&digest::SHA256, b"abc").as_ref());
    assert_eq!(len, 8);
}

#[test]
fn the_b_tag_is_emptied_in_place() {
    let f = b"DKIM-Signature: v=1; b=abc\r\n\t def; bh=xyz; d=x.test\r\n";
    assert_eq!(
        without_b(f),
        b"DKIM-Signature: v=1; b=; bh=xyz; d=x.test\r\n"
    );
    let last = b"DKIM-Signature: v=1; bh=xyz;\r\n b=abc\r\n def\r\n";
    assert_eq!(without_b(last), b"DKIM-Signature: v=1; bh=xyz;\r\n b=\r\n");
}

#[test]
fn spki_keys_give_their_rsa_public_key() {
    let pkcs1 = [0x30, 0x03, 0x02, 0x01, 0x05];
    let spki = crate::dkim::rsa_spki(&pkcs1);
    assert_eq!(rsa_public_key(&spki), pkcs1);
    assert_eq!(rsa_public_key(&pkcs1), pkcs1, "a bare key passes as it is");
    assert_eq!(rsa_public_key(&[0x30, 0x84, 0xff]), [0x30, 0x84, 0xff]);
}
