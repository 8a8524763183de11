//! RFC 8461 §3.3: the policy file over HTTPS — a small HTTP/1.1 GET of
//! `https://mta-sts.<domain>/.well-known/mta-sts.txt`, the server's
//! certificate verified for that name, nothing followed (no redirects),
//! at most 64 KiB of policy, each read within the time-out.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::policy::MAX_POLICY;

/// What a fetch needs: the name's addresses, a verifying TLS client
/// (tls_ca_file), the port (443 but in tests) and the time-out.
pub struct Fetch<'a> {
    pub dns: &'a dyn crate::dns::Resolver,
    pub tls: Arc<rustls::ClientConfig>,
    pub port: u16,
    pub timeout: Duration,
}

/// The header section a response may have, on top of the policy.
const MAX_HEAD: usize = 16 * 1024;

/// The policy text of `domain`, or why not.
pub fn fetch(domain: &str, f: &Fetch) -> Result<String, String> {
    let host = format!("mta-sts.{domain}");
    let addrs = f.dns.addresses(&host).map_err(|e| format!("{host}: {e}"))?;
    let mut last = format!("{host}: no address");
    for ip in addrs.into_iter().take(3) {
        match get(&host, ip, f) {
            Ok(text) => return Ok(text),
            Err(e) => last = format!("{host}[{ip}]: {e}"),
        }
    }
    Err(last)
}

fn get(host: &str, ip: IpAddr, f: &Fetch) -> Result<String, String> {
    let addr = SocketAddr::new(ip, f.port);
    let sock = TcpStream::connect_timeout(&addr, f.timeout).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(f.timeout))
        .map_err(|e| e.to_string())?;
    sock.set_write_timeout(Some(f.timeout))
        .map_err(|e| e.to_string())?;
    let name = crate::tls::server_name(host)?;
    let conn = rustls::ClientConnection::new(f.tls.clone(), name).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let request = format!(
        "GET /.well-known/mta-sts.txt HTTP/1.1\r\nHost: {host}\r\nUser-Agent: satchel\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(request.as_bytes())
        .map_err(|e| format!("TLS or write: {e}"))?;
    let bytes = read_bounded(&mut tls, f.timeout * 4)?;
    response_body(&bytes)
}

/// Reads to the end (or up to the bound, and a little more to know it was
/// passed) within `total`. A TLS end without close_notify is an end
/// (the length says whether it came whole).
fn read_bounded<R: Read>(r: &mut R, total: Duration) -> Result<Vec<u8>, String> {
    let deadline = Instant::now() + total;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    while bytes.len() <= MAX_HEAD + MAX_POLICY {
        if Instant::now() > deadline {
            return Err("took too long".into());
        }
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    Ok(bytes)
}

/// Pure: the policy text of an HTTP/1.1 response, which must be 200 with
/// a text/plain body of at most 64 KiB (Content-Length, chunked, or to
/// the end); anything else (a redirect too) is an error.
pub fn response_body(bytes: &[u8]) -> Result<String, String> {
    let end = find(bytes, b"\r\n\r\n").ok_or("no end of the header section")?;
    let head = std::str::from_utf8(&bytes[..end]).map_err(|_| "header section not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    let code = status.split(' ').nth(1).unwrap_or("");
    if !status.starts_with("HTTP/1.") || code != "200" {
        return Err(format!(
            "HTTP status: {}",
            status.chars().take(60).collect::<String>()
        ));
    }
    let (mut length, mut chunked, mut plain) = (None, false, false);
    for l in lines {
        let (k, v) = l.split_once(':').unwrap_or((l, ""));
        let v = v.trim().to_ascii_lowercase();
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                length = Some(v.parse::<usize>().map_err(|_| "bad Content-Length")?)
            }
            "transfer-encoding" => chunked = v == "chunked",
            "content-type" => plain = v.starts_with("text/plain"),
            _ => {}
        }
    }
    if !plain {
        return Err("not text/plain (RFC 8461 3.3)".into());
    }
    let raw = &bytes[end + 4..];
    let body = match (chunked, length) {
        (true, _) => dechunk(raw)?,
        (false, Some(n)) if n > MAX_POLICY => return Err("policy over 64 KiB".into()),
        (false, Some(n)) => raw.get(..n).ok_or("policy cut short")?.to_vec(),
        (false, None) => raw.to_vec(),
    };
    if body.len() > MAX_POLICY {
        return Err("policy over 64 KiB".into());
    }
    String::from_utf8(body).map_err(|_| "policy not UTF-8".into())
}

/// RFC 9112 §7.1: chunk sizes in hex, each chunk and CRLF, up to a 0 chunk.
fn dechunk(mut raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = find(raw, b"\r\n").ok_or("chunk size line cut short")?;
        let line = std::str::from_utf8(&raw[..eol]).map_err(|_| "bad chunk size")?;
        let hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(hex, 16).map_err(|_| "bad chunk size")?;
        if size == 0 {
            return Ok(out);
        }
        if size > MAX_POLICY - out.len() {
            return Err("policy over 64 KiB".into());
        }
        let data = raw.get(eol + 2..eol + 2 + size).ok_or("chunk cut short")?;
        out.extend_from_slice(data);
        raw = raw.get(eol + 4 + size..).ok_or("chunk cut short")?;
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_200_text_plain_body_within_64_kib_is_a_policy() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 5\r\n\r\nhelloEXTRA";
        assert_eq!(response_body(ok).unwrap(), "hello");
        let chunked = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n";
        assert_eq!(response_body(chunked).unwrap(), "abcde");
        let to_end = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it";
        assert_eq!(response_body(to_end).unwrap(), "all of it");
        let big = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n{}",
            "x".repeat(MAX_POLICY + 1)
        );
        for bad in [
            &b"HTTP/1.1 301 Moved\r\nLocation: https://elsewhere/\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\nx",
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\nshort",
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 99999999\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffff\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n",
            big.as_bytes(),
        ] {
            assert!(response_body(bad).is_err(), "{:?}", String::from_utf8_lossy(&bad[..bad.len().min(80)]));
        }
    }
}
