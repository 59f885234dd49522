//! Where an HTTP/1 request head ends: the one rule the head clock ([`super::headclock`]), the
//! connection loop ([`super::serve_connection`]) and pingora's parser (httparse) must agree on, or a client
//! can make them disagree about where one request stops and the next begins.
//!
//! RFC 9112 §2.2: a server should ignore empty lines received before the request line, and may
//! accept a bare LF as a line terminator. httparse (pingora's parser) does both, so the scanner
//! does too: leading CR and LF bytes are skipped, then the head ends at the first empty line,
//! whether lines end in CRLF or LF (`\n\n`, `\n\r\n`). A client that sends only empty lines has
//! not started a head (so `\r\n\r\n` alone cannot stop the header clock).

/// An incremental scan for the end of a request head.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HeadScan {
    state: State,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum State {
    /// Only empty lines so far (or nothing).
    #[default]
    Leading,
    /// Inside a line of the head.
    Line,
    /// Just after a line's LF: an LF now (after an optional CR) ends the head.
    LineStart,
    /// A CR at the start of a line.
    LineStartCr,
    /// The head is complete.
    Done,
}

impl HeadScan {
    /// Feeds the next bytes; the offset just past the head's end in `bytes` once it is found.
    /// Inside a line it jumps to the next LF with memchr: a head is scanned on every request,
    /// and byte by byte that cost about a thousand instructions of a ~22,000-instruction hit.
    pub fn feed(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            self.state = match self.state {
                State::Done => return None,
                State::Leading if matches!(b, b'\r' | b'\n') => State::Leading,
                State::Leading => State::Line,
                State::Line => match memchr::memchr(b'\n', &bytes[i..]) {
                    Some(at) => {
                        i += at;
                        State::LineStart
                    }
                    None => return None,
                },
                State::LineStart if b == b'\r' => State::LineStartCr,
                State::LineStart | State::LineStartCr if b == b'\n' => {
                    self.state = State::Done;
                    return Some(i + 1);
                }
                State::LineStart | State::LineStartCr => State::Line,
            };
            i += 1;
        }
        None
    }
}

/// The length of the request head at the start of `buf`, when it is complete.
pub fn head_len(buf: &[u8]) -> Option<usize> {
    HeadScan::default().feed(buf)
}

/// The request target in a request head (the request line's middle), as sent.
pub fn request_target(head: &[u8]) -> Option<&[u8]> {
    let start = head.iter().position(|b| !matches!(b, b'\r' | b'\n'))?;
    let end = memchr::memchr(b'\n', &head[start..]).map_or(head.len(), |i| start + i);
    let line = head[start..end].trim_ascii_end();
    let first = memchr::memchr(b' ', line)?;
    let last = memchr::memrchr(b' ', line)?;
    (last > first).then(|| &line[first + 1..last])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_end_at_the_first_empty_line_with_crlf_or_bare_lf() {
        for (raw, end) in [
            ("GET / HTTP/1.1\r\nHost: a\r\n\r\nrest", 27),
            ("GET / HTTP/1.1\nHost: a\n\nrest", 24),
            ("GET / HTTP/1.1\r\nHost: a\r\n\nrest", 26),
            ("GET / HTTP/1.1\nHost: a\n\r\nrest", 25),
            ("\r\n\r\nGET / HTTP/1.1\r\n\r\nGET /second", 22),
            ("\n\nGET / HTTP/1.1\n\n", 18),
        ] {
            assert_eq!(head_len(raw.as_bytes()), Some(end), "{raw:?}");
            assert!(
                httparse::Request::new(&mut [httparse::EMPTY_HEADER; 4])
                    .parse(&raw.as_bytes()[..end])
                    .unwrap()
                    .is_complete(),
                "httparse agrees on {raw:?}"
            );
        }
    }

    /// The rule, byte by byte: what `feed` must find however it skips.
    fn reference(bytes: &[u8]) -> Option<usize> {
        let mut started = false;
        let mut at_line_start = false;
        let mut cr = false;
        for (i, &b) in bytes.iter().enumerate() {
            if !started {
                started = !matches!(b, b'\r' | b'\n');
                continue;
            }
            if b == b'\n' {
                if at_line_start {
                    return Some(i + 1);
                }
                at_line_start = true;
                cr = false;
            } else if b == b'\r' && at_line_start && !cr {
                cr = true;
            } else {
                at_line_start = false;
                cr = false;
            }
        }
        None
    }

    #[test]
    fn every_short_sequence_ends_where_the_byte_by_byte_rule_says() {
        let alphabet = [b'a', b'\r', b'\n'];
        for len in 0..=9u32 {
            for n in 0..3usize.pow(len) {
                let mut k = n;
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        let b = alphabet[k % 3];
                        k /= 3;
                        b
                    })
                    .collect();
                assert_eq!(head_len(&bytes), reference(&bytes), "{bytes:?}");
                for split in 0..bytes.len() {
                    let mut scan = HeadScan::default();
                    let end = scan
                        .feed(&bytes[..split])
                        .or_else(|| scan.feed(&bytes[split..]).map(|i| i + split));
                    assert_eq!(end, reference(&bytes), "{bytes:?} split at {split}");
                }
            }
        }
    }

    #[test]
    fn the_target_is_the_request_line_as_sent() {
        let t = |raw: &str| request_target(raw.as_bytes()).map(|t| t.to_vec());
        assert_eq!(
            t("\r\nGET /a\x7fb HTTP/1.1\r\nHost: a\r\n\r\n"),
            Some(b"/a\x7fb".to_vec())
        );
        assert_eq!(t("GET account/x HTTP/1.1\n\n"), Some(b"account/x".to_vec()));
        assert_eq!(t("GET\r\n\r\n"), None);
    }

    #[test]
    fn empty_lines_alone_are_no_head_and_split_reads_find_the_same_end() {
        assert_eq!(head_len(b"\r\n\r\n\r\n"), None);
        let raw = b"\r\nGET /a HTTP/1.1\r\nHost: a\r\n\r\n";
        for split in 0..raw.len() {
            let mut scan = HeadScan::default();
            let first = scan.feed(&raw[..split]);
            let end = first.or_else(|| scan.feed(&raw[split..]).map(|i| i + split));
            assert_eq!(end, Some(raw.len()), "split at {split}");
        }
        let mut scan = HeadScan::default();
        assert_eq!(scan.feed(b"\r\n\r\n"), None);
        assert_eq!(scan.feed(b"GET / HTTP/1.1\r\n"), None);
        assert_eq!(scan.feed(b"\r\n"), Some(2));
    }
}
