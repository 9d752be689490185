//! Property tests of the response framing: an answer split at any points parses to the same
//! head and body as when it arrives whole, and the bytes after it are left exactly as they
//! were (what the pool's rule 3 relies on); an answer cut short is never whole; junk never
//! panics, and never decodes to more chunk data than there is.

use bytes::BytesMut;
use http::{HeaderMap, Method};
use proptest::prelude::*;

use super::wire::{parse_response_head, Chunked, Framing, Step};

/// An answer as it goes on the wire: head and body, framed by length or chunked.
fn answer() -> impl Strategy<Value = (Vec<u8>, Vec<u8>)> {
    (
        prop::sample::select(vec![200u16, 201, 203, 404, 500]),
        prop::collection::vec(any::<u8>(), 0..300),
        any::<bool>(),
        prop::collection::vec(1usize..40, 1..8),
        prop::collection::vec(("[a-z]{1,8}", "[ -~]{0,20}"), 0..5),
    )
        .prop_map(|(status, body, chunked, sizes, fields)| {
            let mut wire = format!("HTTP/1.1 {status} X\r\n").into_bytes();
            for (name, value) in fields {
                wire.extend_from_slice(format!("x-{name}: {}\r\n", value.trim()).as_bytes());
            }
            if chunked {
                wire.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                let mut rest = &body[..];
                for size in sizes.iter().cycle() {
                    if rest.is_empty() {
                        break;
                    }
                    let n = (*size).min(rest.len());
                    wire.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                    wire.extend_from_slice(&rest[..n]);
                    wire.extend_from_slice(b"\r\n");
                    rest = &rest[n..];
                }
                wire.extend_from_slice(b"0\r\n\r\n");
            } else {
                wire.extend_from_slice(
                    format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes(),
                );
                wire.extend_from_slice(&body);
            }
            (wire, body)
        })
}

/// A body read whole, and the bytes left in the buffer after it.
type Read = (Vec<u8>, Vec<u8>);

/// Reads one answer from `pieces` as a client would, a piece at a time: the head, then the
/// body by its framing. `None`: the pieces ended first.
fn read(pieces: &[&[u8]]) -> Result<Option<Read>, String> {
    let mut buf = BytesMut::new();
    let mut pieces = pieces.iter();
    let mut headers = HeaderMap::new();
    let head = loop {
        if let Some(head) = parse_response_head(&mut buf, &Method::GET, &mut headers)? {
            break head;
        }
        match pieces.next() {
            Some(p) => buf.extend_from_slice(p),
            None => return Ok(None),
        }
    };
    let mut body = Vec::new();
    match head.framing {
        Framing::Length(n) => loop {
            let take = (n as usize - body.len()).min(buf.len());
            body.extend_from_slice(&buf.split_to(take));
            if body.len() == n as usize {
                break;
            }
            match pieces.next() {
                Some(p) => buf.extend_from_slice(p),
                None => return Ok(None),
            }
        },
        Framing::Chunked => {
            let mut decoder = Chunked::Size;
            loop {
                match decoder.step(&mut buf)? {
                    Step::Data(d) => body.extend_from_slice(&d),
                    Step::Trailer(_) => {}
                    Step::Done => break,
                    Step::NeedMore => match pieces.next() {
                        Some(p) => buf.extend_from_slice(p),
                        None => return Ok(None),
                    },
                }
            }
        }
        Framing::Empty | Framing::Close => return Err("unexpected framing".into()),
    }
    for p in pieces {
        buf.extend_from_slice(p);
    }
    Ok(Some((body, buf.to_vec())))
}

/// `bytes` cut at the given points (taken modulo its length, sorted).
fn split<'a>(bytes: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
    at.sort_unstable();
    let mut pieces = Vec::new();
    let mut from = 0;
    for a in at {
        pieces.push(&bytes[from..a]);
        from = a;
    }
    pieces.push(&bytes[from..]);
    pieces
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_split_reads_the_same_answer_and_leaves_the_surplus(
        (wire, body) in answer(),
        surplus in prop::collection::vec(any::<u8>(), 0..64),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let stream = [wire.as_slice(), surplus.as_slice()].concat();
        let (got, left) = read(&split(&stream, &cuts)).unwrap().expect("a whole answer");
        prop_assert_eq!(got, body);
        // Nothing after the answer is consumed as part of it: a non-empty rest is what
        // keeps the connection out of the pool.
        prop_assert_eq!(left, surplus);
    }

    #[test]
    fn junk_is_an_error_or_more_to_read_never_a_panic(
        junk in prop::collection::vec(any::<u8>(), 0..2048),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let _ = read(&split(&junk, &cuts));
        let mut buf = BytesMut::from(&junk[..]);
        let mut decoder = Chunked::Size;
        let mut out = 0;
        loop {
            match decoder.step(&mut buf) {
                Ok(Step::Data(d)) => out += d.len(),
                Ok(Step::Trailer(_)) => {}
                _ => break,
            }
        }
        prop_assert!(out <= junk.len());
    }

    #[test]
    fn an_answer_cut_short_is_never_a_whole_answer(
        (wire, _body) in answer(),
        cut in any::<usize>(),
    ) {
        // Whatever its framing, an answer missing its last bytes is "read more" (and, at the
        // close, a body cut short), never a complete answer that frees the connection.
        let cut = cut % wire.len();
        prop_assert!(!matches!(read(&[&wire[..cut]]), Ok(Some(_))));
    }
}
