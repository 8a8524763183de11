//! The Sendmail milter protocol, version 6, as Postfix speaks it to
//! OpenDKIM, rspamd and other filters: packets of a 4-octet big-endian
//! length, a command octet and its data. Pure: building the MTA's
//! packets and parsing the filter's replies, so the parser can be fuzzed
//! with bytes.

use std::io::{self, Read, Write};

/// Protocol version we speak (Sendmail 8.14, Postfix 2.6 and later).
pub const VERSION: u32 = 6;

/// The longest packet we read: the filter's replies are small, body
/// replacement comes in chunks of at most 64 KiB (1 MiB with
/// SMFIP_MDS_1M); anything larger is a broken filter.
pub const MAX_PACKET: usize = 1024 * 1024;

/// Body chunks we send are at most this long (MILTER_CHUNK_SIZE).
pub const CHUNK: usize = 65535;

// Commands (MTA to filter).
pub const OPTNEG: u8 = b'O';
pub const MACRO: u8 = b'D';
pub const CONNECT: u8 = b'C';
pub const HELO: u8 = b'H';
pub const MAIL: u8 = b'M';
pub const RCPT: u8 = b'R';
pub const DATA: u8 = b'T';
pub const HEADER: u8 = b'L';
pub const EOH: u8 = b'N';
pub const BODY: u8 = b'B';
pub const EOM: u8 = b'E';
pub const ABORT: u8 = b'A';
pub const QUIT: u8 = b'Q';

// Actions the filter may take at the end of a message (SMFIF_*).
pub const ADD_HEADERS: u32 = 0x01;
pub const CHANGE_BODY: u32 = 0x02;
pub const CHANGE_HEADERS: u32 = 0x10;
pub const QUARANTINE: u32 = 0x20;

// Protocol steps (SMFIP_*): what the filter does not want, and the
// stages it will not reply to.
pub const NO_CONNECT: u32 = 0x01;
pub const NO_HELO: u32 = 0x02;
pub const NO_MAIL: u32 = 0x04;
pub const NO_RCPT: u32 = 0x08;
pub const NO_BODY: u32 = 0x10;
pub const NO_HEADERS: u32 = 0x20;
pub const NO_EOH: u32 = 0x40;
pub const NR_HEADER: u32 = 0x80;
pub const NO_UNKNOWN: u32 = 0x100;
pub const NO_DATA: u32 = 0x200;
pub const SKIP: u32 = 0x400;
pub const NR_CONNECT: u32 = 0x1000;
pub const NR_HELO: u32 = 0x2000;
pub const NR_MAIL: u32 = 0x4000;
pub const NR_RCPT: u32 = 0x8000;
pub const NR_DATA: u32 = 0x10000;
pub const NR_EOH: u32 = 0x40000;
pub const NR_BODY: u32 = 0x80000;
pub const HEADER_LEADING_SPACE: u32 = 0x100000;

/// The steps we can leave out or go without replies for.
pub const STEPS_WE_KNOW: u32 = NO_CONNECT
    | NO_HELO
    | NO_MAIL
    | NO_RCPT
    | NO_BODY
    | NO_HEADERS
    | NO_EOH
    | NR_HEADER
    | NO_UNKNOWN
    | NO_DATA
    | SKIP
    | NR_CONNECT
    | NR_HELO
    | NR_MAIL
    | NR_RCPT
    | NR_DATA
    | NR_EOH
    | NR_BODY
    | HEADER_LEADING_SPACE;

/// One packet on the wire.
pub fn packet(cmd: u8, data: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(5 + data.len());
    p.extend_from_slice(&((data.len() + 1) as u32).to_be_bytes());
    p.push(cmd);
    p.extend_from_slice(data);
    p
}

pub fn write_packet(w: &mut impl Write, cmd: u8, data: &[u8]) -> io::Result<()> {
    w.write_all(&packet(cmd, data))
}

/// Strings joined as the protocol wants them: each ended by a NUL (a NUL
/// inside one, which SMTP never gives us, is cut there).
pub fn strings(parts: &[&str]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend(p.bytes().take_while(|&b| b != 0));
        out.push(0);
    }
    out
}

/// The next packet: (command, data). A length of 0 or over `MAX_PACKET`
/// is a protocol error.
pub fn read_packet(r: &mut impl Read) -> io::Result<(u8, Vec<u8>)> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len == 0 || len > MAX_PACKET {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a packet of {len} octets"),
        ));
    }
    let mut data = vec![0u8; len];
    r.read_exact(&mut data)?;
    let cmd = data.remove(0);
    Ok((cmd, data))
}

/// The filter's answer to a stage, or a change it asks for at the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Continue,
    Accept,
    Reject,
    Tempfail,
    Discard,
    /// SMFIR_REPLYCODE: a whole reply, e.g. `554 5.7.1 Spam`.
    Code(u16, String),
    Quarantine(String),
    Skip,
    Progress,
    AddHeader(String, String),
    InsertHeader(u32, String, String),
    ChangeHeader(u32, String, String),
    ReplaceBody(Vec<u8>),
    /// Anything we did not offer (recipients, sender changes, ...).
    Unsupported(char),
}

/// NUL-ended strings of `data`, at most `n`.
fn split_nul(data: &[u8], n: usize) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut rest = data;
    while out.len() < n {
        let end = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or("a string without its NUL")?;
        out.push(String::from_utf8_lossy(&rest[..end]).into_owned());
        rest = &rest[end + 1..];
    }
    Ok(out)
}

fn index_and_pair(data: &[u8]) -> Result<(u32, String, String), String> {
    let idx = data.get(..4).ok_or("a short header change")?;
    let idx = u32::from_be_bytes([idx[0], idx[1], idx[2], idx[3]]);
    let s = split_nul(&data[4..], 2)?;
    Ok((idx, s[0].clone(), s[1].clone()))
}

/// Parses one reply packet.
pub fn parse_reply(cmd: u8, data: &[u8]) -> Result<Reply, String> {
    Ok(match cmd {
        b'c' => Reply::Continue,
        b'a' => Reply::Accept,
        b'r' => Reply::Reject,
        b't' => Reply::Tempfail,
        b'd' => Reply::Discard,
        b's' => Reply::Skip,
        b'p' => Reply::Progress,
        b'y' => {
            let text = split_nul(data, 1)?.remove(0);
            let code = text
                .get(..3)
                .and_then(|c| c.parse::<u16>().ok())
                .filter(|c| (400..600).contains(c))
                .ok_or(format!("a reply code that is not 4xx or 5xx: {text:.40}"))?;
            Reply::Code(code, text)
        }
        b'q' => Reply::Quarantine(split_nul(data, 1)?.remove(0)),
        b'h' => {
            let s = split_nul(data, 2)?;
            Reply::AddHeader(s[0].clone(), s[1].clone())
        }
        b'i' => {
            let (i, n, v) = index_and_pair(data)?;
            Reply::InsertHeader(i, n, v)
        }
        b'm' => {
            let (i, n, v) = index_and_pair(data)?;
            Reply::ChangeHeader(i, n, v)
        }
        b'b' => Reply::ReplaceBody(data.to_vec()),
        b'+' | b'-' | b'2' | b'e' | b'l' => Reply::Unsupported(cmd as char),
        other => return Err(format!("unknown reply '{}'", other.escape_ascii())),
    })
}

/// The filter's answer to OPTNEG: its version, the actions it wants and
/// the steps it does without.
pub fn parse_negotiation(data: &[u8]) -> Result<(u32, u32, u32), String> {
    let word = |i: usize| {
        data.get(i * 4..i * 4 + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or("a short option negotiation")
    };
    Ok((word(0)?, word(1)?, word(2)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_round_trip() {
        let p = packet(HELO, &strings(&["client.test"]));
        assert_eq!(&p[..5], &[0, 0, 0, 13, b'H']);
        assert_eq!(
            read_packet(&mut &p[..]).unwrap(),
            (b'H', b"client.test\0".to_vec())
        );
        assert!(read_packet(&mut &[0u8, 0, 0, 0][..]).is_err());
        assert!(read_packet(&mut &[0x7fu8, 0, 0, 0, b'c'][..]).is_err());
        assert!(
            read_packet(&mut &[0u8, 0, 0, 9, b'c'][..]).is_err(),
            "short"
        );
    }

    #[test]
    fn replies_parse() {
        assert_eq!(parse_reply(b'c', b""), Ok(Reply::Continue));
        assert_eq!(
            parse_reply(b'y', b"554 5.7.1 Gtube pattern\0"),
            Ok(Reply::Code(554, "554 5.7.1 Gtube pattern".into()))
        );
        assert!(parse_reply(b'y', b"250 ok\0").is_err(), "not a refusal");
        assert!(parse_reply(b'y', b"554 no nul").is_err());
        assert_eq!(
            parse_reply(b'h', b"X-Spam\0yes\0"),
            Ok(Reply::AddHeader("X-Spam".into(), "yes".into()))
        );
        assert_eq!(
            parse_reply(b'i', b"\0\0\0\0DKIM-Signature\0v=1\0"),
            Ok(Reply::InsertHeader(
                0,
                "DKIM-Signature".into(),
                "v=1".into()
            ))
        );
        assert!(parse_reply(b'm', b"\0\0").is_err());
        assert_eq!(parse_reply(b'+', b"<x@y>\0"), Ok(Reply::Unsupported('+')));
        assert!(parse_reply(b'Z', b"").is_err());
        assert_eq!(
            parse_negotiation(&[0, 0, 0, 6, 0, 0, 0, 1, 0, 0, 0, 2]),
            Ok((6, 1, 2))
        );
        assert!(parse_negotiation(&[0, 0, 0, 6]).is_err());
    }
}
