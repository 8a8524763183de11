//! DKIM verification (RFC 6376 §6) of received mail, fed as it streams
//! in: the header section is held (up to `MAX_HEADER`), its first
//! `MAX_SIGNATURES` `DKIM-Signature:` fields are parsed when it ends, and
//! the body goes through one canonicalizing hash per signature, so the
//! message is read once. At the end each signature's key is looked up
//! (`selector._domainkey.domain` TXT) and checked with `ring`:
//! RSA-SHA256 (keys of 1024 bits and more, RFC 8301) and Ed25519-SHA256
//! (RFC 8463). RSA-SHA1 is refused (RFC 8301 §3.1). Every field of a
//! signature and of a key record is untrusted input: a defect is that
//! signature's permerror, never a panic.

use std::collections::HashMap;

use ring::digest;
use ring::signature::{self as sig, UnparsedPublicKey};

use super::{fields, relaxed_header, BodyHash, MAX_HEADER};
use crate::dns::{DnsError, Resolver};
use crate::smtp::base64;

/// Signatures verified per message; the others are not looked at.
pub const MAX_SIGNATURES: usize = 5;

/// A signature's result (RFC 8601 §2.7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DkimResult {
    Pass,
    Fail,
    Neutral,
    TempError,
    PermError,
}

impl std::fmt::Display for DkimResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DkimResult::Pass => "pass",
            DkimResult::Fail => "fail",
            DkimResult::Neutral => "neutral",
            DkimResult::TempError => "temperror",
            DkimResult::PermError => "permerror",
        })
    }
}

/// One signature's verdict, with what Authentication-Results names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub result: DkimResult,
    /// `d=` (lower case), empty when the field could not be parsed.
    pub domain: String,
    pub selector: String,
    /// The first 8 characters of `b=` (RFC 6008 header.b).
    pub b: String,
    pub why: String,
}

/// The tags of one signature that verification needs.
struct Signature {
    rsa: bool,
    domain: String,
    selector: String,
    headers: Vec<String>,
    b: Vec<u8>,
    b_text: String,
    bh: Vec<u8>,
    simple_header: bool,
    /// The whole field, as received.
    field: Vec<u8>,
}

/// A parsed signature with its body hash under way.
struct Pending {
    sig: Signature,
    body: BodyHash,
    limit: Option<u64>,
}

/// A signature being checked, or already refused.
enum Check {
    Parsed(Box<Pending>),
    Refused(Outcome),
}

/// Feed it the message (CRLF lines, as received), then `finish`.
#[derive(Default)]
pub struct Verifier {
    head: Vec<u8>,
    /// The header section has ended (or was given up on).
    body: bool,
    too_big: bool,
    checks: Vec<Check>,
}

impl Verifier {
    pub fn feed(&mut self, data: &[u8]) {
        if self.body {
            return self.hash_body(data);
        }
        let from = self.head.len().saturating_sub(3);
        self.head.extend_from_slice(data);
        let end = if self.head.starts_with(b"\r\n") {
            Some(0)
        } else {
            self.head[from..]
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|i| from + i + 2)
        };
        match end {
            Some(i) => {
                let rest = self.head.split_off(i + 2);
                self.head.truncate(i);
                self.body = true;
                self.checks = self.parse_signatures();
                self.hash_body(&rest);
            }
            None if self.head.len() > MAX_HEADER => {
                self.too_big = true;
                self.body = true;
                self.head.clear();
            }
            None => {}
        }
    }

    fn hash_body(&mut self, data: &[u8]) {
        for c in &mut self.checks {
            if let Check::Parsed(p) = c {
                p.body.update(data);
            }
        }
    }

    fn parse_signatures(&self) -> Vec<Check> {
        fields(&self.head)
            .into_iter()
            .filter(|(name, _)| name == "dkim-signature")
            .take(MAX_SIGNATURES)
            .map(|(_, field)| match parse_signature(field) {
                Ok((sig, simple_body, limit)) => Check::Parsed(Box::new(Pending {
                    sig,
                    body: BodyHash::with(simple_body, limit),
                    limit,
                })),
                Err(o) => Check::Refused(o),
            })
            .collect()
    }

    /// The domains of the From: addresses, once the header has ended.
    pub fn from_domains(&self) -> Vec<String> {
        super::from_domains(&fields(&self.head))
    }

    /// The header section was too large to keep (nothing was verified).
    pub fn gave_up(&self) -> bool {
        self.too_big
    }

    /// The verdict on each signature, in the order of the header.
    pub fn finish(self, dns: &dyn Resolver) -> Vec<Outcome> {
        if self.too_big {
            return vec![refused("", "", "", "header section too large to verify")];
        }
        let head = self.head;
        self.checks
            .into_iter()
            .map(|c| match c {
                Check::Refused(o) => o,
                Check::Parsed(p) => verify(&p.sig, p.body, p.limit, &head, dns),
            })
            .collect()
    }
}

fn refused(domain: &str, selector: &str, b: &str, why: &str) -> Outcome {
    Outcome {
        result: DkimResult::PermError,
        domain: domain.to_string(),
        selector: selector.to_string(),
        b: b.to_string(),
        why: why.to_string(),
    }
}

/// A tag=value list (RFC 6376 §3.2): names, values with folding
/// white space taken off their ends; a repeated tag is an error.
pub fn tag_list(text: &str) -> Result<HashMap<String, String>, String> {
    let mut tags = HashMap::new();
    for part in text.split(';') {
        let part = part.trim_matches(|c: char| c.is_ascii_whitespace());
        if part.is_empty() {
            continue;
        }
        let (name, value) = part
            .split_once('=')
            .ok_or(format!("'{part}' is not a tag"))?;
        let name = name.trim_matches(|c: char| c.is_ascii_whitespace());
        let value = value.trim_matches(|c: char| c.is_ascii_whitespace());
        if tags.insert(name.to_string(), value.to_string()).is_some() {
            return Err(format!("tag {name} twice"));
        }
    }
    Ok(tags)
}

/// Base64 with the white space a folded tag value may hold.
fn unfold_base64(v: &str) -> Option<Vec<u8>> {
    let compact: String = v.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    base64::decode(&compact)
}

/// §6.1.1: the tags of one `DKIM-Signature:` field, checked.
fn parse_signature(field: &[u8]) -> Result<(Signature, bool, Option<u64>), Outcome> {
    let text = String::from_utf8_lossy(field);
    let value = text.split_once(':').map(|(_, v)| v).unwrap_or("");
    let tags = tag_list(value).map_err(|e| refused("", "", "", &e))?;
    let get = |k: &str| tags.get(k).map(String::as_str);
    let (domain, selector) = (
        get("d").unwrap_or("").to_ascii_lowercase(),
        get("s").unwrap_or(""),
    );
    let b_text: String = get("b")
        .unwrap_or("")
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let short_b: String = b_text.chars().take(8).collect();
    let bad = |why: &str| refused(&domain, selector, &short_b, why);
    if get("v") != Some("1") {
        return Err(bad("v= is not 1"));
    }
    let rsa = match get("a") {
        Some("rsa-sha256") => true,
        Some("ed25519-sha256") => false,
        Some("rsa-sha1") => return Err(bad("rsa-sha1 is not accepted (RFC 8301)")),
        _ => return Err(bad("unknown algorithm")),
    };
    let headers: Vec<String> = get("h")
        .unwrap_or("")
        .split(':')
        .map(|h| {
            h.trim_matches(|c: char| c.is_ascii_whitespace())
                .to_ascii_lowercase()
        })
        .collect();
    if !headers.iter().any(|h| h == "from") {
        return Err(bad("h= does not sign From"));
    }
    if domain.is_empty() || selector.is_empty() || !valid_labels(&domain) || !valid_labels(selector)
    {
        return Err(bad("bad d= or s="));
    }
    let (simple_header, simple_body, limit) = options(get, &domain).map_err(&bad)?;
    let (Some(b), Some(bh)) = (
        unfold_base64(get("b").unwrap_or("")),
        unfold_base64(get("bh").unwrap_or("")),
    ) else {
        return Err(bad("b= or bh= is not base64"));
    };
    if b.is_empty() || bh.is_empty() {
        return Err(bad("b= or bh= is empty"));
    }
    let s = Signature {
        rsa,
        domain: domain.clone(),
        selector: selector.to_string(),
        headers,
        b,
        b_text: short_b.clone(),
        bh,
        simple_header,
        field: field.to_vec(),
    };
    Ok((s, simple_body, limit))
}

/// The optional tags of a signature (§3.5): i=, c=, l=, x= and q=,
/// checked; the canonicalizations (header, body) and the body limit.
fn options<'t>(
    get: impl Fn(&str) -> Option<&'t str>,
    domain: &str,
) -> Result<(bool, bool, Option<u64>), &'static str> {
    if let Some(i) = get("i") {
        let idomain = i
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default();
        if idomain != domain && !idomain.ends_with(&format!(".{domain}")) {
            return Err("i= is not in d=");
        }
    }
    let (simple_header, simple_body) = match get("c").unwrap_or("simple/simple") {
        "simple" | "simple/simple" => (true, true),
        "simple/relaxed" => (true, false),
        "relaxed" | "relaxed/simple" => (false, true),
        "relaxed/relaxed" => (false, false),
        _ => return Err("unknown canonicalization"),
    };
    let limit = match get("l") {
        None => None,
        Some(l) if l.len() <= 76 && l.bytes().all(|b| b.is_ascii_digit()) && !l.is_empty() => {
            Some(l.parse::<u64>().unwrap_or(u64::MAX))
        }
        Some(_) => return Err("bad l="),
    };
    if let Some(x) = get("x") {
        let expired = x.parse::<u64>().map(|x| x < crate::time::unix_now());
        if expired != Ok(false) {
            return Err("signature expired");
        }
    }
    if get("q").is_some_and(|q| !q.split(':').any(|m| m.trim() == "dns/txt")) {
        return Err("unknown query method");
    }
    Ok((simple_header, simple_body, limit))
}

fn valid_labels(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// §6.1.2 and §6.1.3 for one parsed signature.
fn verify(
    s: &Signature,
    body: BodyHash,
    limit: Option<u64>,
    head: &[u8],
    dns: &dyn Resolver,
) -> Outcome {
    let out = |result, why: &str| Outcome {
        result,
        domain: s.domain.clone(),
        selector: s.selector.clone(),
        b: s.b_text.clone(),
        why: why.to_string(),
    };
    let (digest, length) = body.finish_counted();
    if limit.is_some_and(|l| l > length) {
        return out(DkimResult::PermError, "l= is longer than the body");
    }
    if digest.as_ref() != s.bh.as_slice() {
        return out(DkimResult::Fail, "body hash did not verify");
    }
    let key = match public_key(s, dns) {
        Ok(k) => k,
        Err((result, why)) => return out(result, &why),
    };
    let data = signed_data(s, head);
    let ok = if s.rsa {
        UnparsedPublicKey::new(&sig::RSA_PKCS1_1024_8192_SHA256_FOR_LEGACY_USE_ONLY, &key)
            .verify(&data, &s.b)
            .is_ok()
    } else {
        let hashed = digest::digest(&digest::SHA256, &data);
        UnparsedPublicKey::new(&sig::ED25519, &key)
            .verify(hashed.as_ref(), &s.b)
            .is_ok()
    };
    match ok {
        true => out(DkimResult::Pass, ""),
        false => out(DkimResult::Fail, "signature did not verify"),
    }
}

/// Why a key could not be had: the signature's result and the reason.
type KeyError = (DkimResult, String);

/// §3.6: the key of `s._domainkey.d`, as `ring` wants it (RSAPublicKey
/// DER, or the 32 bytes of an Ed25519 key).
fn public_key(s: &Signature, dns: &dyn Resolver) -> Result<Vec<u8>, KeyError> {
    let name = format!("{}._domainkey.{}", s.selector, s.domain);
    let records = match dns.txt(&name) {
        Ok(r) => r,
        Err(DnsError::NxDomain) => {
            return Err((DkimResult::PermError, format!("no key at {name}")))
        }
        Err(DnsError::Temporary(why)) => return Err((DkimResult::TempError, why)),
    };
    let [record] = records.as_slice() else {
        return Err((
            DkimResult::PermError,
            format!("{} key records at {name}", records.len()),
        ));
    };
    let perm = |why: &str| (DkimResult::PermError, why.to_string());
    let tags = tag_list(record).map_err(|e| perm(&e))?;
    if tags.get("v").is_some_and(|v| v != "DKIM1") {
        return Err(perm("key record is not v=DKIM1"));
    }
    let rsa = match tags.get("k").map(String::as_str).unwrap_or("rsa") {
        "rsa" => true,
        "ed25519" => false,
        _ => return Err(perm("unknown key type")),
    };
    if rsa != s.rsa {
        return Err(perm("key type does not match a="));
    }
    if tags
        .get("h")
        .is_some_and(|h| !h.split(':').any(|a| a.trim() == "sha256"))
    {
        return Err(perm("key does not allow sha256"));
    }
    let p = unfold_base64(tags.get("p").map(String::as_str).unwrap_or(""))
        .ok_or_else(|| perm("p= is not base64"))?;
    if p.is_empty() {
        return Err(perm("key revoked"));
    }
    match rsa {
        true => Ok(rsa_public_key(&p).to_vec()),
        false if p.len() == 32 => Ok(p),
        false => Err(perm("Ed25519 key is not 32 bytes")),
    }
}

/// The RSAPublicKey inside a SubjectPublicKeyInfo; a key that is not one
/// is passed on as it is (some publish the bare RSAPublicKey).
fn rsa_public_key(p: &[u8]) -> &[u8] {
    // SEQUENCE { SEQUENCE { OID, NULL }, BIT STRING { 0, RSAPublicKey } }
    let inner = der_contents(p, 0x30).and_then(|outer| {
        let alg_len = der_element_len(outer, 0x30)?;
        let bits = der_contents(&outer[alg_len..], 0x03)?;
        bits.strip_prefix(&[0])
    });
    inner.unwrap_or(p)
}

/// The contents of the DER element at the start of `d`, if it has `tag`.
fn der_contents(d: &[u8], tag: u8) -> Option<&[u8]> {
    let (header, len) = der_header(d, tag)?;
    d.get(header..header + len)
}

/// The whole length (header and contents) of the element at `d`'s start.
fn der_element_len(d: &[u8], tag: u8) -> Option<usize> {
    let (header, len) = der_header(d, tag)?;
    (header + len <= d.len()).then_some(header + len)
}

fn der_header(d: &[u8], tag: u8) -> Option<(usize, usize)> {
    if *d.first()? != tag {
        return None;
    }
    let first = *d.get(1)?;
    if first < 0x80 {
        return Some((2, usize::from(first)));
    }
    let n = usize::from(first & 0x7f);
    if n == 0 || n > 4 {
        return None;
    }
    let len = d
        .get(2..2 + n)?
        .iter()
        .fold(0usize, |a, &b| (a << 8) | usize::from(b));
    Some((2 + n, len))
}

/// §3.7: the canonical header fields `h=` names (instances from the
/// bottom up), then the signature field with an empty `b=`, no CRLF.
fn signed_data(s: &Signature, head: &[u8]) -> Vec<u8> {
    let all = fields(head);
    let mut data = Vec::with_capacity(2048);
    let mut used: HashMap<&str, usize> = HashMap::new();
    for name in &s.headers {
        let k = used.entry(name).or_insert(0);
        let instance = all.iter().rev().filter(|(f, _)| f == name).nth(*k);
        *k += 1;
        if let Some((_, field)) = instance {
            canon_header(field, s.simple_header, &mut data);
        }
    }
    canon_header(&without_b(&s.field), s.simple_header, &mut data);
    if data.ends_with(b"\r\n") {
        data.truncate(data.len() - 2);
    }
    data
}

fn canon_header(field: &[u8], simple: bool, out: &mut Vec<u8>) {
    match simple {
        true => out.extend_from_slice(field),
        false => relaxed_header(field, out),
    }
}

/// The signature field with the value of its `b=` tag taken out (§3.5),
/// everything else (folding included) as it was.
fn without_b(field: &[u8]) -> Vec<u8> {
    let Some(colon) = field.iter().position(|&b| b == b':') else {
        return field.to_vec();
    };
    let mut out = field[..=colon].to_vec();
    let value = &field[colon + 1..];
    let mut parts = value.split(|&b| b == b';').peekable();
    while let Some(part) = parts.next() {
        let name_end = part.iter().position(|&b| b == b'=');
        let is_b = name_end.is_some_and(|e| {
            part[..e]
                .iter()
                .filter(|b| !b.is_ascii_whitespace())
                .eq(b"b".iter())
        });
        match (is_b, name_end) {
            (true, Some(e)) => {
                out.extend_from_slice(&part[..=e]);
                // A field's last tag keeps the line end after its value.
                if parts.peek().is_none() && part.ends_with(b"\r\n") {
                    out.extend_from_slice(b"\r\n");
                }
            }
            _ => out.extend_from_slice(part),
        }
        if parts.peek().is_some() {
            out.push(b';');
        }
    }
    out
}

#[cfg(test)]
mod tests;
