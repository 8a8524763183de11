//! The DATA decoder: the bytes after `354` -> message content.
//!
//! It owns the CRLF discipline that defeats SMTP smuggling (CVE-2023-51764
//! family): the only line end is CR LF, the only end of data is
//! `<CRLF>.<CRLF>` (RFC 5321 §4.1.1.4), and a bare CR or bare LF anywhere
//! marks the message as refused while the decoder keeps reading to the real
//! end, so the client gets exactly one reply. It also removes dot-stuffing
//! (§4.5.2), enforces the 1000-octet line limit (§4.5.3.1.6) and the size
//! limit (RFC 1870), and counts `Received:` headers for loop detection
//! (§6.3). Once the message is known to be refused, no more output is
//! produced, so memory and disk stay flat whatever the client sends.
//!
//! For BDAT (RFC 3030) the same decoder runs `chunked`: the chunks'
//! sizes say where the message ends, so there is no dot-stuffing and no
//! end-of-data line, but the content keeps every other rule (CR LF only,
//! line and size limits): what is queued is the same either way.
//!
//! No I/O: bytes in, bytes out.

/// RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets including CRLF.
pub const MAX_TEXT_LINE: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the beginning of a line.
    Bol,
    /// A `.` was the first octet of the line.
    Dot,
    /// `.` CR at the beginning of a line: LF now ends the data.
    DotCr,
    /// Inside a line.
    Mid,
    /// A CR inside a line; LF must follow.
    Cr,
}

/// Why a message read to its end must still be refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Defect {
    /// A CR or LF that was not part of a CR LF pair.
    BareNewline,
    /// A line longer than `MAX_TEXT_LINE`.
    LineTooLong,
    /// More content than the size limit.
    TooBig,
}

#[derive(Debug)]
pub struct DataDecoder {
    state: State,
    line_len: usize,
    size: u64,
    max_size: u64,
    defect: Option<Defect>,
    in_headers: bool,
    prefix: [u8; 9],
    prefix_len: usize,
    received: usize,
    lines: u64,
    /// BDAT: no dot-stuffing, no end-of-data line.
    chunked: bool,
}

impl DataDecoder {
    /// The decoder for BDAT chunks (see the module's text); `finish` after
    /// the last one.
    pub fn chunked(max_size: u64) -> DataDecoder {
        DataDecoder {
            chunked: true,
            ..DataDecoder::new(max_size)
        }
    }

    /// The end of the last chunk: a last line without its CR LF gets one
    /// (as a DATA message always has); a CR alone at the very end is bare.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        match self.state {
            State::Mid => self.end_line(out),
            State::Cr => self.flag(Defect::BareNewline),
            State::Bol | State::Dot | State::DotCr => {}
        }
    }

    pub fn new(max_size: u64) -> DataDecoder {
        DataDecoder {
            state: State::Bol,
            line_len: 0,
            size: 0,
            max_size,
            defect: None,
            in_headers: true,
            prefix: [0; 9],
            prefix_len: 0,
            received: 0,
            lines: 0,
            chunked: false,
        }
    }

    /// The first defect seen, if any (the message must then be refused).
    pub fn defect(&self) -> Option<Defect> {
        self.defect
    }

    /// Content octets produced so far (after un-stuffing).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// `Received:` header lines seen in the header section.
    pub fn received_headers(&self) -> usize {
        self.received
    }

    fn flag(&mut self, d: Defect) {
        if self.defect.is_none() {
            self.defect = Some(d);
        }
    }

    fn emit(&mut self, out: &mut Vec<u8>, bytes: &[u8]) {
        if self.defect.is_some() {
            return;
        }
        self.size += bytes.len() as u64;
        if self.size > self.max_size {
            self.flag(Defect::TooBig);
            return;
        }
        out.extend_from_slice(bytes);
    }

    fn note_line_byte(&mut self, c: u8) {
        if self.in_headers && self.prefix_len < self.prefix.len() {
            self.prefix[self.prefix_len] = c;
            self.prefix_len += 1;
        }
    }

    /// Lines completed so far (the connection loop's progress clock).
    pub fn lines(&self) -> u64 {
        self.lines
    }

    fn end_line(&mut self, out: &mut Vec<u8>) {
        self.lines += 1;
        self.emit(out, b"\r\n");
        if self.line_len + 2 > MAX_TEXT_LINE {
            self.flag(Defect::LineTooLong);
        }
        if self.in_headers {
            if self.line_len == 0 {
                self.in_headers = false;
            } else if self.prefix_len == 9 && self.prefix.eq_ignore_ascii_case(b"received:") {
                self.received += 1;
            }
        }
        self.line_len = 0;
        self.prefix_len = 0;
        self.state = State::Bol;
    }

    /// Decodes `input`, appending content to `out`. Returns how many input
    /// bytes were used and whether the end of data was reached; bytes after
    /// the end belong to the next command and are not consumed.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
        let mut i = 0;
        while i < input.len() {
            let c = input[i];
            // Each state's step says how many bytes it used: 0 hands the
            // same byte to the state it moved to.
            i += match self.state {
                State::Mid => self.mid(&input[i..], out),
                State::Bol => self.line_start(c, false),
                State::Dot => self.line_start(c, true),
                State::DotCr if c == b'\n' => return (i + 1, true),
                State::DotCr => {
                    // "." CR <x>: the CR was bare.
                    self.flag(Defect::BareNewline);
                    self.state = State::Mid;
                    0
                }
                State::Cr => self.cr(c, out),
            };
        }
        (i, false)
    }

    /// Inside a line. Fast path: content up to the next CR or LF in one go.
    #[inline]
    fn mid(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        let run = input
            .iter()
            .position(|&b| b == b'\r' || b == b'\n')
            .unwrap_or(input.len());
        if run > 0 {
            for &b in &input[..run.min(9)] {
                self.note_line_byte(b);
            }
            self.line_len += run;
            self.emit(out, &input[..run]);
            return run;
        }
        if input[0] == b'\r' {
            self.state = State::Cr;
        } else {
            self.flag(Defect::BareNewline);
        }
        1
    }

    /// At the beginning of a line, or after its leading dot (`after_dot`;
    /// §4.5.2: the first period of a line is removed).
    #[inline]
    fn line_start(&mut self, c: u8, after_dot: bool) -> usize {
        if after_dot {
            self.line_len += 1;
        }
        match c {
            b'.' if !after_dot && !self.chunked => self.state = State::Dot,
            b'\r' if after_dot => self.state = State::DotCr,
            b'\r' => self.state = State::Cr,
            b'\n' => {
                self.flag(Defect::BareNewline);
                self.state = State::Mid;
            }
            _ => {
                // Ordinary content: handled as such in the next step.
                self.state = State::Mid;
                return 0;
            }
        }
        1
    }

    /// After a CR: only LF may follow.
    #[inline]
    fn cr(&mut self, c: u8, out: &mut Vec<u8>) -> usize {
        match c {
            b'\n' => self.end_line(out),
            b'\r' => self.flag(Defect::BareNewline),
            _ => {
                self.flag(Defect::BareNewline);
                self.state = State::Mid;
                return 0;
            }
        }
        1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_keep_dots_and_the_crlf_rules() {
        let mut d = DataDecoder::chunked(1000);
        let mut out = Vec::new();
        // A chunk boundary anywhere, even between CR and LF.
        for part in [&b"Subject: a\r"[..], b"\n\r\n.\r\n..x\r\n", b"last line"] {
            assert_eq!(d.feed(part, &mut out), (part.len(), false));
        }
        d.finish(&mut out);
        assert_eq!(out, b"Subject: a\r\n\r\n.\r\n..x\r\nlast line\r\n");
        assert_eq!(d.defect(), None);
        for bad in [&b"a\nb"[..], b"a\rb", b"a\r"] {
            let mut d = DataDecoder::chunked(1000);
            d.feed(bad, &mut out);
            d.finish(&mut out);
            assert_eq!(d.defect(), Some(Defect::BareNewline), "{bad:?}");
        }
        let mut d = DataDecoder::chunked(10);
        d.feed(b"0123456789\r\n", &mut out);
        assert_eq!(d.defect(), Some(Defect::TooBig));
    }

    /// Feeds `input` in pieces of `chunk` bytes; returns content, bytes
    /// consumed and whether the end was found.
    fn decode_chunked(input: &[u8], chunk: usize, max: u64) -> (Vec<u8>, usize, bool, DataDecoder) {
        let mut d = DataDecoder::new(max);
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < input.len() {
            let end = (pos + chunk).min(input.len());
            let (n, done) = d.feed(&input[pos..end], &mut out);
            pos += n;
            if done {
                return (out, pos, true, d);
            }
        }
        (out, pos, false, d)
    }

    fn decode(input: &[u8]) -> (Vec<u8>, usize, bool, DataDecoder) {
        decode_chunked(input, input.len().max(1), 1 << 20)
    }

    #[test]
    fn plain_message_ends_at_crlf_dot_crlf() {
        let (out, used, done, d) = decode(b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n");
        assert!(done);
        assert_eq!(out, b"Subject: x\r\n\r\nhello\r\n");
        assert_eq!(used, 24, "bytes after the end belong to the next command");
        assert_eq!(d.defect(), None);
    }

    #[test]
    fn empty_message_ends_immediately() {
        let (out, _, done, _) = decode(b".\r\n");
        assert!(done);
        assert!(out.is_empty());
    }

    #[test]
    fn leading_dots_are_unstuffed() {
        let (out, _, done, _) = decode(b"..hidden\r\n...\r\n.x\r\n.\r\n");
        assert!(done);
        assert_eq!(out, b".hidden\r\n..\r\nx\r\n");
    }

    #[test]
    fn every_split_point_gives_the_same_result() {
        let input = b"A: b\r\nReceived: x\r\n\r\n..dot\r\nline\r\n.\r\nNEXT";
        let (whole, used, _, _) = decode(input);
        for chunk in 1..input.len() {
            let (out, u, done, d) = decode_chunked(input, chunk, 1 << 20);
            assert!(done);
            assert_eq!(out, whole, "chunk {chunk}");
            assert_eq!(u, used);
            assert_eq!(d.received_headers(), 1);
        }
    }

    /// The smuggling variants of CVE-2023-51764 and friends: none of them
    /// ends the data, and each marks the message as refused.
    #[test]
    fn bare_newline_variants_never_end_data_and_refuse_the_message() {
        for fake_end in [
            &b"\n.\n"[..],
            b"\n.\r\n",
            b"\r.\r\n",
            b"\r\n.\r",
            b"\r\n.\n",
        ] {
            let mut input = b"Subject: a\r\n\r\nbody".to_vec();
            input.extend_from_slice(fake_end);
            input.extend_from_slice(b"MAIL FROM:<evil@x>\r\nRCPT TO:<v@y>\r\nDATA\r\nsmuggled\r\n");
            let (_, used, done, d) = decode(&input);
            assert!(!done, "{fake_end:?} must not end the data");
            assert_eq!(used, input.len());
            assert_eq!(d.defect(), Some(Defect::BareNewline), "{fake_end:?}");
            // The real end still ends it, exactly once.
            let mut full = input.clone();
            full.extend_from_slice(b"\r\n.\r\n");
            let (_, used, done, d) = decode(&full);
            assert!(done);
            assert_eq!(used, full.len());
            assert_eq!(d.defect(), Some(Defect::BareNewline));
        }
    }

    #[test]
    fn bare_cr_and_bare_lf_inside_a_line_are_defects() {
        assert_eq!(
            decode(b"a\rb\r\n.\r\n").3.defect(),
            Some(Defect::BareNewline)
        );
        assert_eq!(
            decode(b"a\nb\r\n.\r\n").3.defect(),
            Some(Defect::BareNewline)
        );
        assert_eq!(
            decode(b"a\r\r\n.\r\n").3.defect(),
            Some(Defect::BareNewline)
        );
        assert_eq!(decode(b"\n\r\n.\r\n").3.defect(), Some(Defect::BareNewline));
    }

    #[test]
    fn line_of_1000_octets_passes_and_1001_is_refused() {
        let mut ok = vec![b'a'; 998];
        ok.extend_from_slice(b"\r\n.\r\n");
        assert_eq!(decode(&ok).3.defect(), None);
        let mut long = vec![b'a'; 999];
        long.extend_from_slice(b"\r\n.\r\n");
        let (_, _, done, d) = decode(&long);
        assert!(done);
        assert_eq!(d.defect(), Some(Defect::LineTooLong));
    }

    #[test]
    fn size_limit_stops_output_but_reads_to_the_end() {
        let mut input = vec![b'x'; 50];
        input.extend_from_slice(b"\r\n");
        for _ in 0..100 {
            input.extend_from_slice(&[b'y'; 50]);
            input.extend_from_slice(b"\r\n");
        }
        input.extend_from_slice(b".\r\n");
        let (out, used, done, d) = decode_chunked(&input, 7, 100);
        assert!(done);
        assert_eq!(used, input.len());
        assert!(out.len() <= 100);
        assert_eq!(d.defect(), Some(Defect::TooBig));
    }

    #[test]
    fn received_headers_are_counted_only_in_the_header_section() {
        let (_, _, _, d) =
            decode(b"Received: a\r\nRECEIVED: b\r\nX: y\r\n\r\nReceived: body\r\n.\r\n");
        assert_eq!(d.received_headers(), 2);
    }
}
