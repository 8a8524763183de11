//! DKIM signing (RFC 6376) with Ed25519-SHA256 (RFC 8463) and
//! RSA-SHA256, through `ring` (the crypto rustls already brings).
//!
//! `dkim_keys_file` names the keys, `DOMAIN SELECTOR /path/key.pem` a
//! line (PKCS#8 PEM; several lines for one domain sign with each, so
//! Ed25519 and RSA can sign side by side). A message is signed with the
//! keys of its `From:` domain, or of the nearest parent domain that has
//! keys. Canonicalization is relaxed/relaxed (§3.4.2, §3.4.4), so a
//! relay that refolds headers or trims trailing blanks leaves the
//! signatures valid. The delivery stage decides *whether* to sign (trusted
//! sources only) and keeps the result with the message, so that retries
//! send the same signature.

use std::collections::HashMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use ring::digest;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _, RsaKeyPair, RSA_PKCS1_SHA256};

use crate::smtp::base64;

pub mod verify;

/// The headers signed when present (RFC 6376 §5.4.1's recommendation,
/// trimmed to what a relay leaves alone). `from` is over-signed: listed
/// once more than it occurs, so nobody can add a second one.
const SIGNED: &[&str] = &[
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "reply-to",
    "in-reply-to",
    "references",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
];

/// The most header bytes read for signing; a longer header section is
/// not signed (the delivery defers and says so).
pub(crate) const MAX_HEADER: usize = 256 * 1024;

/// A signing key.
pub enum Secret {
    Ed25519(Ed25519KeyPair),
    Rsa(RsaKeyPair),
}

/// One line of `dkim_keys_file`.
pub struct Key {
    pub domain: String,
    pub selector: String,
    pub path: PathBuf,
    pub secret: Secret,
}

impl Key {
    /// `ed25519-sha256` or `rsa-sha256`.
    pub fn algorithm(&self) -> &'static str {
        match self.secret {
            Secret::Ed25519(_) => "ed25519-sha256",
            Secret::Rsa(_) => "rsa-sha256",
        }
    }
}

/// The keys of `dkim_keys_file`, by domain (lower case).
#[derive(Default)]
pub struct Signer {
    keys: HashMap<String, Vec<Key>>,
}

/// Names the keys, never their secrets.
impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut list = f.debug_list();
        for k in self.keys.values().flatten() {
            list.entry(&format_args!(
                "{} {} {}",
                k.domain,
                k.selector,
                k.algorithm()
            ));
        }
        list.finish()
    }
}

impl Signer {
    /// Reads the table at `path` and every key it names.
    pub fn load(path: &Path) -> Result<Signer, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        Signer::parse(&text, &path.display().to_string(), path.parent())
    }

    /// `FILE:LINE: what is wrong` for a bad line or key. Relative key paths
    /// are taken from `base` (the table's directory).
    pub fn parse(text: &str, file: &str, base: Option<&Path>) -> Result<Signer, String> {
        let mut keys: HashMap<String, Vec<Key>> = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = |what: String| format!("{file}:{}: {what}", n + 1);
            let words: Vec<&str> = line.split_whitespace().collect();
            let [domain, selector, key_path] = words[..] else {
                return Err(at("expected DOMAIN SELECTOR /path/key.pem".into()));
            };
            let domain = domain.trim_end_matches('.').to_ascii_lowercase();
            if !valid_name(&domain) || !valid_name(selector) {
                return Err(at(format!("bad domain or selector '{domain} {selector}'")));
            }
            let path = match base {
                Some(b) if Path::new(key_path).is_relative() => b.join(key_path),
                _ => PathBuf::from(key_path),
            };
            let secret = read_key(&path).map_err(at)?;
            keys.entry(domain.clone()).or_default().push(Key {
                domain,
                selector: selector.to_string(),
                path,
                secret,
            });
        }
        Ok(Signer { keys })
    }

    /// Keys in the table.
    pub fn len(&self) -> usize {
        self.keys.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys of `domain`, or of its nearest parent that has some.
    pub fn keys_for(&self, domain: &str) -> &[Key] {
        let mut d = domain.trim_end_matches('.').to_ascii_lowercase();
        loop {
            if let Some(k) = self.keys.get(&d) {
                return k;
            }
            match d.split_once('.') {
                Some((_, parent)) if parent.contains('.') => d = parent.to_string(),
                _ => return &[],
            }
        }
    }

    /// The `DKIM-Signature:` header lines (CRLF-terminated) for the message
    /// `content` reads, one per key of its `From:` domain; `Ok(None)` when
    /// that domain has no key (or the message has no `From:`).
    pub fn sign(&self, content: &mut dyn Read, now: u64) -> Result<Option<String>, String> {
        let (head, rest) = read_header(content).map_err(|e| format!("reading the message: {e}"))?;
        let fields = fields(&head);
        let Some(domain) = from_domain(&fields) else {
            return Ok(None);
        };
        let keys = self.keys_for(&domain);
        if keys.is_empty() {
            return Ok(None);
        }
        let mut body = BodyHash::new();
        let mut wire = Wire::default();
        wire.feed(&rest, &mut body);
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = content
                .read(&mut buf)
                .map_err(|e| format!("reading the message: {e}"))?;
            if n == 0 {
                break;
            }
            wire.feed(&buf[..n], &mut body);
        }
        let bh = base64::encode(body.finish().as_ref());
        let mut out = String::new();
        for key in keys {
            out.push_str(&signature(key, &fields, &bh, now)?);
        }
        Ok(Some(out))
    }
}

/// A DNS label sequence: letters, digits, `-`, `_`, dots between.
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// A PKCS#8 PEM private key, Ed25519 or RSA (2048 bits or more: ring
/// signs with nothing weaker).
fn read_key(path: &Path) -> Result<Secret, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: cannot read: {e}"))?;
    if text.contains("-----BEGIN RSA PRIVATE KEY-----") {
        return Err(format!(
            "{shown}: a PKCS#1 RSA key; convert it to PKCS#8 with `openssl pkcs8 -topk8 -nocrypt -in {shown}`"
        ));
    }
    let der = pem_body(&text, "PRIVATE KEY")
        .ok_or_else(|| format!("{shown}: not a PKCS#8 PEM key (-----BEGIN PRIVATE KEY-----)"))?;
    if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der) {
        return Ok(Secret::Ed25519(k));
    }
    match RsaKeyPair::from_pkcs8(&der) {
        Ok(k) => Ok(Secret::Rsa(k)),
        Err(e) if e.to_string() == "TooSmall" => Err(format!(
            "{shown}: RSA key too weak (under 2048 bits); make one with `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`"
        )),
        Err(e) => Err(format!(
            "{shown}: neither an Ed25519 nor a usable RSA key ({e})"
        )),
    }
}

/// The bytes of the first PEM block labelled `label`.
pub fn pem_body(text: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    let b64: String = text[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::decode(&b64)
}

/// The header section (up to and without the empty line) and whatever
/// of the body was read with it.
fn read_header(content: &mut dyn Read) -> io::Result<(Vec<u8>, Vec<u8>)> {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = data.split_off(i + 4);
            data.truncate(i + 2);
            return Ok((data, rest));
        }
        if data.len() > MAX_HEADER {
            return Err(io::Error::other("header section over 256 KiB"));
        }
        let n = content.read(&mut buf)?;
        if n == 0 {
            // Headers only, no body.
            return Ok((data, Vec::new()));
        }
        data.extend_from_slice(&buf[..n]);
    }
}

/// The header fields, in order: (lower-case name, the whole field with its
/// continuation lines and final CRLF); lines without a colon are left out.
pub(crate) fn fields(head: &[u8]) -> Vec<(String, &[u8])> {
    crate::rewrite::fields(head)
        .into_iter()
        .filter_map(|field| {
            let colon = field.iter().position(|&b| b == b':')?;
            let name = String::from_utf8_lossy(&field[..colon])
                .trim()
                .to_ascii_lowercase();
            Some((name, field))
        })
        .collect()
}

/// The domain of the first address of the first `From:` field.
pub(crate) fn from_domain(fields: &[(String, &[u8])]) -> Option<String> {
    from_domains(fields).into_iter().next()
}

/// The domains of every address of every `From:` field, in order, read
/// as RFC 5322 §3.4 writes addresses: quoted strings and comments are
/// skipped, an `<angle-addr>` is the address of its mailbox, groups and
/// lists are split at the commas, colons and semicolons outside them.
pub(crate) fn from_domains(fields: &[(String, &[u8])]) -> Vec<String> {
    let mut out = Vec::new();
    for (_, field) in fields.iter().filter(|(n, _)| n == "from") {
        let text = String::from_utf8_lossy(field);
        let Some((_, value)) = text.split_once(':') else {
            continue;
        };
        for mailbox in top_level_parts(value) {
            let addr = match (mailbox.find('<'), mailbox.rfind('>')) {
                (Some(a), Some(b)) if a < b => &mailbox[a + 1..b],
                _ => mailbox.as_str(),
            };
            let Some((_, domain)) = addr.rsplit_once('@') else {
                continue;
            };
            let domain = domain.trim().trim_end_matches('.').to_ascii_lowercase();
            if !domain.is_empty() && !domain.contains(char::is_whitespace) {
                out.push(domain);
            }
        }
    }
    out
}

/// `value` without its quoted strings and comments, split at the
/// separators outside angle brackets.
fn top_level_parts(value: &str) -> Vec<String> {
    let (mut parts, mut cur) = (Vec::new(), String::new());
    let (mut quoted, mut escaped, mut depth, mut angle) = (false, false, 0usize, false);
    for c in value.chars() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted || depth > 0 => escaped = true,
            '"' if depth == 0 => quoted = !quoted,
            _ if quoted => {}
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            _ if depth > 0 => {}
            '<' => {
                angle = true;
                cur.push(c);
            }
            '>' => {
                angle = false;
                cur.push(c);
            }
            ',' | ':' | ';' if !angle => parts.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    parts.push(cur);
    parts.retain(|p| p.contains('@'));
    parts
}

/// RFC 6376 §3.4.2, relaxed: the name in lower case, unfolded, runs of
/// blanks made one space, blanks at the ends of the value and around the
/// colon removed; ends with CRLF.
pub(crate) fn relaxed_header(field: &[u8], out: &mut Vec<u8>) {
    let Some(colon) = field.iter().position(|&b| b == b':') else {
        return;
    };
    let name = &field[..colon];
    out.extend(
        name.iter()
            .filter(|b| !b.is_ascii_whitespace())
            .map(u8::to_ascii_lowercase),
    );
    out.push(b':');
    let mut blank = false;
    let mut started = false;
    for &b in &field[colon + 1..] {
        match b {
            b'\r' | b'\n' => {}
            b' ' | b'\t' => blank = true,
            _ => {
                if blank && started {
                    out.push(b' ');
                }
                blank = false;
                started = true;
                out.push(b);
            }
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// The body as the SMTP client sends it (`smtp::client::DataEncoder`):
/// a line over 998 octets is broken with CRLF and a space (RFC 5321
/// §4.5.3.1.6; the transparency dot of a line that starts with one
/// counts, and the next hop takes it away again). What a verifier there
/// reads is what the signature covers, not the queued bytes. The queued
/// content has CRLF line ends only (the receiving side sees to that).
struct Wire {
    /// Octets of the current line sent so far.
    col: usize,
    at_bol: bool,
}

impl Default for Wire {
    fn default() -> Self {
        Wire {
            col: 0,
            at_bol: true,
        }
    }
}

/// As `smtp::client`: at most 998 octets of text on a line.
const MAX_LINE: usize = 998;

impl Wire {
    fn feed(&mut self, data: &[u8], body: &mut BodyHash) {
        let mut rest = data;
        while !rest.is_empty() {
            let end = rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |i| i + 1);
            self.part(&rest[..end], body);
            if rest[end - 1] == b'\n' {
                self.col = 0;
                self.at_bol = true;
            }
            rest = &rest[end..];
        }
    }

    /// Part of one line (with its CRLF when it ends there).
    fn part(&mut self, part: &[u8], body: &mut BodyHash) {
        let text_len = part
            .iter()
            .rposition(|&b| b != b'\r' && b != b'\n')
            .map_or(0, |p| p + 1);
        let mut text = &part[..text_len];
        if self.at_bol && text.first() == Some(&b'.') {
            self.col += 1;
        }
        if !text.is_empty() {
            self.at_bol = false;
        }
        while self.col + text.len() > MAX_LINE {
            let room = MAX_LINE.saturating_sub(self.col);
            body.update(&text[..room]);
            body.update(b"\r\n ");
            text = &text[room..];
            self.col = 1;
        }
        body.update(text);
        self.col += text.len();
        body.update(&part[text_len..]);
    }
}

/// RFC 6376 §3.4.4, relaxed, fed in pieces: blanks at line ends dropped,
/// runs of blanks made one space, empty lines at the end dropped, a
/// final CRLF added to a body that lacks one; hashed with SHA-256. Or
/// §3.4.3, simple (for verifying): only the empty lines at the end
/// dropped, and an empty body is one CRLF. With a limit (`l=`, §3.5)
/// only that many canonical octets are hashed; all are counted.
pub(crate) struct BodyHash {
    hash: digest::Context,
    out: Vec<u8>,
    /// Empty lines seen and not yet known to be inside the body.
    empty_lines: usize,
    /// A blank (or several) waiting for the next non-blank of its line.
    blank: bool,
    /// A CR waiting to see whether an LF follows.
    cr: bool,
    /// The current line has something in it.
    in_line: bool,
    simple: bool,
    limit: Option<u64>,
    /// Canonical octets produced so far (hashed or past the limit).
    length: u64,
}

impl BodyHash {
    fn new() -> BodyHash {
        BodyHash::with(false, None)
    }

    pub(crate) fn with(simple: bool, limit: Option<u64>) -> BodyHash {
        BodyHash {
            hash: digest::Context::new(&digest::SHA256),
            out: Vec::with_capacity(64 * 1024 + 64),
            empty_lines: 0,
            blank: false,
            cr: false,
            in_line: false,
            simple,
            limit,
            length: 0,
        }
    }

    /// Hashes what is buffered, up to the limit.
    fn flush(&mut self) {
        let room = match self.limit {
            Some(l) => l.saturating_sub(self.length).min(self.out.len() as u64) as usize,
            None => self.out.len(),
        };
        self.hash.update(&self.out[..room]);
        self.length += self.out.len() as u64;
        self.out.clear();
    }

    pub(crate) fn update(&mut self, data: &[u8]) {
        let mut i = 0;
        while i < data.len() {
            if self.out.len() >= 64 * 1024 {
                self.flush();
            }
            let b = data[i];
            if self.cr && b != b'\n' {
                // A bare CR is text.
                self.cr = false;
                self.text(b"\r");
            }
            match b {
                b'\r' => self.cr = true,
                b'\n' => {
                    self.cr = false;
                    self.blank = false;
                    if self.in_line {
                        self.out.extend_from_slice(b"\r\n");
                    } else {
                        self.empty_lines += 1;
                    }
                    self.in_line = false;
                }
                b' ' | b'\t' if !self.simple => self.blank = true,
                _ => {
                    // A run of ordinary octets is copied in one go.
                    let simple = self.simple;
                    let end = data[i..]
                        .iter()
                        .position(|c| {
                            matches!(c, b'\r' | b'\n') || (!simple && matches!(c, b' ' | b'\t'))
                        })
                        .map_or(data.len(), |p| i + p);
                    self.text(&data[i..end]);
                    i = end;
                    continue;
                }
            }
            i += 1;
        }
    }

    fn text(&mut self, run: &[u8]) {
        if !self.in_line {
            for _ in 0..self.empty_lines {
                self.out.extend_from_slice(b"\r\n");
            }
            self.empty_lines = 0;
            self.in_line = true;
        }
        if self.blank {
            self.out.push(b' ');
            self.blank = false;
        }
        self.out.extend_from_slice(run);
    }

    /// The end of the body: a CR still waiting is text, a last line
    /// without CRLF gets one; a simple empty body is one CRLF.
    fn end(&mut self) {
        if self.cr {
            self.cr = false;
            self.text(b"\r");
        }
        if self.in_line {
            self.out.extend_from_slice(b"\r\n");
            self.in_line = false;
        }
        if self.simple && self.length == 0 && self.out.is_empty() {
            self.out.extend_from_slice(b"\r\n");
        }
    }

    fn finish(mut self) -> digest::Digest {
        self.end();
        self.flush();
        self.hash.finish()
    }

    /// The hash, and the whole canonical length (to check `l=` against).
    pub(crate) fn finish_counted(mut self) -> (digest::Digest, u64) {
        self.end();
        self.flush();
        (self.hash.finish(), self.length)
    }
}

/// One `DKIM-Signature:` field for `key` (RFC 6376 §3.5, §5).
fn signature(key: &Key, fields: &[(String, &[u8])], bh: &str, now: u64) -> Result<String, String> {
    let mut names: Vec<&str> = Vec::new();
    for &name in SIGNED {
        let n = fields.iter().filter(|(f, _)| f == name).count();
        let times = if name == "from" { n + 1 } else { n };
        names.extend(std::iter::repeat_n(name, times));
    }
    let tags = format!(
        "v=1; a={}; c=relaxed/relaxed; d={}; s={};\r\n\tt={now}; h={};\r\n\tbh={bh};\r\n\tb=",
        key.algorithm(),
        key.domain,
        key.selector,
        names.join(":")
    );
    // §5.4.2: instances of a name are taken from the bottom up; a name
    // listed more often than it occurs adds nothing.
    let mut data = Vec::with_capacity(2048);
    let mut used: HashMap<&str, usize> = HashMap::new();
    for name in &names {
        let k = used.entry(name).or_insert(0);
        let instance = fields.iter().rev().filter(|(f, _)| f == name).nth(*k);
        *k += 1;
        if let Some((_, field)) = instance {
            relaxed_header(field, &mut data);
        }
    }
    // The signature field itself, `b=` empty and without its CRLF.
    relaxed_header(format!("DKIM-Signature: {tags}").as_bytes(), &mut data);
    data.truncate(data.len() - 2);
    let b = sign_bytes(&key.secret, &data)?;
    Ok(format!("DKIM-Signature: {tags}{}\r\n", base64::encode(&b)))
}

fn sign_bytes(secret: &Secret, data: &[u8]) -> Result<Vec<u8>, String> {
    match secret {
        // RFC 8463 §3: Ed25519 signs the SHA-256 hash of the data.
        Secret::Ed25519(k) => Ok(k
            .sign(digest::digest(&digest::SHA256, data).as_ref())
            .as_ref()
            .to_vec()),
        Secret::Rsa(k) => {
            let mut sig = vec![0u8; k.public().modulus_len()];
            k.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), data, &mut sig)
                .map_err(|_| "RSA signing failed".to_string())?;
            Ok(sig)
        }
    }
}

/// The TXT record that publishes `secret`'s public key (RFC 6376 §3.6.1;
/// RFC 8463 §4 for Ed25519: the bare 32-byte key).
pub fn txt_record(secret: &Secret) -> String {
    match secret {
        Secret::Ed25519(k) => format!(
            "v=DKIM1; k=ed25519; p={}",
            base64::encode(k.public_key().as_ref())
        ),
        Secret::Rsa(k) => format!(
            "v=DKIM1; k=rsa; p={}",
            base64::encode(&rsa_spki(k.public().as_ref()))
        ),
    }
}

/// An RSAPublicKey (PKCS#1 DER) inside a SubjectPublicKeyInfo, the form
/// DKIM verifiers (OpenDKIM through OpenSSL, dkimpy) read from `p=`.
pub(crate) fn rsa_spki(pkcs1: &[u8]) -> Vec<u8> {
    // AlgorithmIdentifier: rsaEncryption (1.2.840.113549.1.1.1), NULL.
    const ALG: &[u8] = &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ];
    let mut bits = vec![0u8];
    bits.extend_from_slice(pkcs1);
    let mut inner = ALG.to_vec();
    inner.extend(der(0x03, &bits));
    der(0x30, &inner)
}

/// A DER element: tag, definite length, contents.
fn der(tag: u8, contents: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = contents.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let bytes: Vec<u8> = n
            .to_be_bytes()
            .iter()
            .copied()
            .skip_while(|&b| b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(contents);
    out
}

/// A new Ed25519 key as PKCS#8 PEM, and its TXT record.
pub fn generate_ed25519() -> Result<(String, String), String> {
    let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
        .map_err(|_| "no randomness for a new key".to_string())?;
    let key = Ed25519KeyPair::from_pkcs8(doc.as_ref()).map_err(|e| e.to_string())?;
    let b64 = base64::encode(doc.as_ref());
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(chunk));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    Ok((pem, txt_record(&Secret::Ed25519(key))))
}

/// Reads a key file for `dkim-record`.
pub fn record_of(path: &Path) -> Result<String, String> {
    read_key(path).map(|s| txt_record(&s))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The canonical body itself, through the code that feeds the hash.
    fn body(data: &[u8]) -> Vec<u8> {
        let mut h = BodyHash::new();
        h.update(data);
        h.end();
        h.out
    }

    #[test]
    fn relaxed_canonicalization_follows_the_rfc_example() {
        // RFC 6376 §3.4.5.
        let mut out = Vec::new();
        for f in fields(b"A: X\r\nB : Y\t\r\n\tZ  \r\n") {
            relaxed_header(f.1, &mut out);
        }
        assert_eq!(out, b"a:X\r\nb:Y Z\r\n");
        assert_eq!(body(b" C \r\nD \t E\r\n\r\n\r\n"), b" C\r\nD E\r\n");
    }

    #[test]
    fn body_edges_empty_missing_crlf_and_pieces() {
        assert_eq!(body(b""), b"");
        assert_eq!(body(b"\r\n\r\n"), b"");
        assert_eq!(body(b"x"), b"x\r\n");
        assert_eq!(body(b"a\r\n\r\nb  \t\r\n"), b"a\r\n\r\nb\r\n");
        // Fed in pieces, split inside CRLF and inside a run of blanks.
        let mut h = BodyHash::new();
        for piece in [&b"a \r"[..], b"\n  b", b" \r\n", b"\r\n"] {
            h.update(piece);
        }
        let whole = {
            let mut w = BodyHash::new();
            w.update(b"a \r\n  b \r\n\r\n");
            w.finish()
        };
        assert_eq!(h.finish().as_ref(), whole.as_ref());
        assert_eq!(body(b"a \r\n  b \r\n\r\n"), b"a\r\n b\r\n");
    }

    #[test]
    fn a_large_body_hashes_the_same_whole_and_in_odd_pieces() {
        let mut body = Vec::new();
        for i in 0..20_000 {
            body.extend_from_slice(format!("line {i}  with\tblanks \r\n").as_bytes());
            if i % 7 == 0 {
                body.extend_from_slice(b"\r\n  \r\n");
            }
        }
        let mut whole = BodyHash::new();
        whole.update(&body);
        let mut pieces = BodyHash::new();
        for chunk in body.chunks(977) {
            pieces.update(chunk);
        }
        assert_eq!(whole.finish().as_ref(), pieces.finish().as_ref());
    }

    #[test]
    fn the_body_is_hashed_as_the_client_sends_it() {
        let hash = |data: &[u8]| {
            let mut h = BodyHash::new();
            let mut w = Wire::default();
            for piece in data.chunks(7) {
                w.feed(piece, &mut h);
            }
            h.finish().as_ref().to_vec()
        };
        let plain = |data: &[u8]| {
            let mut h = BodyHash::new();
            h.update(data);
            h.finish().as_ref().to_vec()
        };
        // Dots are the next hop's business: the hash is the text's.
        assert_eq!(hash(b".a\r\n..b\r\nc.\r\n"), plain(b".a\r\n..b\r\nc.\r\n"));
        // A line over 998 octets is hashed broken, as it is sent.
        let long = [b'x'; 1500];
        let mut sent = long[..998].to_vec();
        sent.extend_from_slice(b"\r\n ");
        sent.extend_from_slice(&long[998..]);
        sent.extend_from_slice(b"\r\n");
        let mut queued = long.to_vec();
        queued.extend_from_slice(b"\r\n");
        assert_eq!(hash(&queued), plain(&sent));
        assert_ne!(hash(&queued), plain(&queued));
        // The same as the client's encoder, dots taken out again, for
        // lines around the limit, with and without a leading dot.
        for n in [996, 997, 998, 999, 1995, 1996, 1997, 3000] {
            for lead in ["", "."] {
                let mut body = format!("{lead}{}\r\nshort\r\n", "y".repeat(n)).into_bytes();
                body.extend_from_slice(b".\r\n");
                let mut enc = crate::smtp::client::DataEncoder::default();
                let mut sent = Vec::new();
                enc.encode(&body, &mut sent);
                let unstuffed: Vec<u8> = sent
                    .split(|&b| b == b'\n')
                    .map(|l| l.strip_prefix(b".").unwrap_or(l).to_vec())
                    .collect::<Vec<_>>()
                    .join(&b'\n');
                assert_eq!(hash(&body), plain(&unstuffed), "{n} {lead:?}");
            }
        }
    }

    #[test]
    fn from_addresses_are_read_past_quotes_comments_and_groups() {
        let d = |h: &[u8]| from_domains(&fields(h));
        assert_eq!(
            d(b"From: \"x@evil.example <x@evil.example>\" <ceo@bank.example>\r\n"),
            ["bank.example"]
        );
        assert_eq!(
            d(b"From: (x@evil.example) ceo@bank.example\r\n"),
            ["bank.example"]
        );
        assert_eq!(
            d(b"From: a@one.example, \"B, b\" <b@two.example>\r\nFrom: c@three.example\r\n"),
            ["one.example", "two.example", "three.example"]
        );
        assert_eq!(
            d(b"From: team: a@one.example, b@one.example;\r\n"),
            ["one.example", "one.example"]
        );
        assert!(d(b"From: undisclosed\r\n").is_empty());
    }

    #[test]
    fn the_from_domain_is_found_in_the_usual_forms() {
        let d = |h: &[u8]| from_domain(&fields(h));
        assert_eq!(
            d(b"From: a@Example.TEST\r\n").as_deref(),
            Some("example.test")
        );
        assert_eq!(
            d(b"Subject: x\r\nFrom: \"A, B\" <a@b.test>\r\n").as_deref(),
            Some("b.test")
        );
        assert_eq!(d(b"From: a@c.test (Alice)\r\n").as_deref(), Some("c.test"));
        assert_eq!(d(b"To: a@b.test\r\n"), None);
    }

    #[test]
    fn bad_lines_and_keys_name_their_file_and_line() {
        let e = |t: &str| Signer::parse(t, "k", None).err().unwrap_or_default();
        assert_eq!(
            e("example.test sel\n"),
            "k:1: expected DOMAIN SELECTOR /path/key.pem"
        );
        assert!(e("# c\nexample.test sel /nonexistent/k.pem\n")
            .starts_with("k:2: /nonexistent/k.pem: cannot read:"));
        assert!(e("ex*mple sel k.pem\n").starts_with("k:1: bad domain or selector"));
    }

    #[test]
    fn keys_are_found_for_subdomains_and_signatures_name_them() {
        let (pem, record) = generate_ed25519().unwrap();
        assert!(record.starts_with("v=DKIM1; k=ed25519; p="));
        let dir = std::env::temp_dir().join(format!("satchel-dkim-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("k.pem"), pem).unwrap();
        let s = Signer::parse("example.test sel k.pem\n", "k", Some(&dir)).unwrap();
        assert_eq!(s.len(), 1);
        assert_eq!(s.keys_for("mail.Example.test").len(), 1);
        assert!(s.keys_for("test").is_empty());
        let msg = b"From: a@host.example.test\r\nFrom: b@x.test\r\nSubject: s\r\n\r\nbody\r\n";
        let sig = s.sign(&mut &msg[..], 1).unwrap().unwrap();
        assert!(sig.starts_with(
            "DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed; d=example.test; s=sel;"
        ));
        assert!(sig.contains("h=from:from:from:subject;"), "{sig}");
        assert!(s
            .sign(&mut &b"From: a@other.test\r\n\r\nx\r\n"[..], 1)
            .unwrap()
            .is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn der_lengths_use_the_long_form_past_127() {
        assert_eq!(der(0x04, &[0; 3]), [0x04, 3, 0, 0, 0]);
        assert_eq!(&der(0x04, &[0; 300])[..4], [0x04, 0x82, 0x01, 0x2c]);
    }
}
