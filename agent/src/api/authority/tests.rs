use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;

const SETTINGS: u8 = 0x4;
const DATA: u8 = 0x0;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = u32::try_from(payload.len()).unwrap().to_be_bytes()[1..].to_vec();
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A raw (not Huffman-coded) HPACK string.
fn string(s: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    encode_integer(&mut v, 0, 7, s.len());
    v.extend_from_slice(s);
    v
}

/// A request's header block: `:method POST` and `:scheme http` indexed
/// from the static table, `:path` with an indexed name, and `:authority`
/// as `authority` encodes it (the bytes after the representation's first
/// octet, which is given).
fn request(first: u8, authority: &[u8]) -> Vec<u8> {
    let mut b = vec![0x83, 0x86, 0x04];
    b.extend(string(b"/pidmap.v1.Pidmap/Status"));
    b.push(first);
    b.extend_from_slice(authority);
    b.push(0x00);
    b.extend(string(b"content-type"));
    b.extend(string(b"application/grpc"));
    b
}

/// The client's bytes: the preface, an empty SETTINGS, then `frames`.
fn conversation(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(SETTINGS, 0, 0, &[]));
    frames.iter().for_each(|f| bytes.extend_from_slice(f));
    bytes
}

/// Feeds `bytes` in chunks of `chunk`; what the server is given.
fn feed(bytes: &[u8], chunk: usize) -> Result<BytesMut, RewriteError> {
    let (mut rewriter, reports) = (Rewriter::default(), Reports::default());
    let mut out = BytesMut::new();
    for piece in bytes.chunks(chunk) {
        rewriter.feed(piece, &mut out, &reports)?;
    }
    Ok(out)
}

/// A header list as the server decodes it.
type Fields = Vec<(String, String)>;

/// What the server makes of the bytes it is given.
struct ServerView {
    /// Per header block, its stream and its fields.
    lists: Vec<(u32, Fields)>,
    /// Every frame's (kind, flags).
    frames: Vec<(u8, u8)>,
}

/// The header lists the server decodes from `out` (one HPACK decoder for
/// the connection, as h2 has), and its frames.
fn server_view(out: &[u8]) -> ServerView {
    let mut rest = out.strip_prefix(PREFACE).expect("the preface first");
    let mut decoder = loona_hpack::Decoder::new();
    let (mut lists, mut frames, mut fragment) = (Vec::new(), Vec::new(), Vec::new());
    while !rest.is_empty() {
        let mut header = [0; FRAME_HEADER];
        header.copy_from_slice(&rest[..FRAME_HEADER]);
        let len = frame_len(&header);
        let payload = &rest[FRAME_HEADER..FRAME_HEADER + len];
        rest = &rest[FRAME_HEADER + len..];
        frames.push((header[3], header[4]));
        if header[3] == HEADERS || header[3] == CONTINUATION {
            let (_, part) =
                headers_payload(if header[3] == HEADERS { header[4] } else { 0 }, payload)
                    .expect("well-formed");
            fragment.extend_from_slice(part);
            if header[4] & END_HEADERS != 0 {
                let fields = decoder
                    .decode(&fragment)
                    .expect("the server can decode what it is given")
                    .into_iter()
                    .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
                    .collect();
                lists.push((stream_id(&header), fields));
                fragment.clear();
            }
        }
    }
    ServerView { lists, frames }
}

fn authority(fields: &Fields) -> Option<&str> {
    fields
        .iter()
        .find(|(n, _)| n == ":authority")
        .map(|(_, v)| v.as_str())
}

#[test]
fn a_percent_encoded_socket_path_becomes_localhost() {
    // Literal without indexing, indexed name 1 (:authority).
    let block = request(0x01, &string(b"tmp%2Fx.sock"));
    let bytes = conversation(&[frame(HEADERS, END_HEADERS, 1, &block)]);
    let out = feed(&bytes, bytes.len()).unwrap();
    let ServerView { lists, .. } = server_view(&out);
    assert_eq!(lists.len(), 1);
    let fields = &lists[0].1;
    assert_eq!(authority(fields), Some("localhost"));
    assert!(fields.contains(&(":path".into(), "/pidmap.v1.Pidmap/Status".into())));
    assert!(fields.contains(&("content-type".into(), "application/grpc".into())));
    assert_eq!(fields.len(), 5);
}

#[test]
fn a_huffman_coded_authority_is_decoded_and_rewritten() {
    // RFC 7541 C.6.1: "https://www.example.com", Huffman-coded (a value
    // that is no valid authority).
    let huffman = [
        0x9d, 0x29, 0xad, 0x17, 0x18, 0x63, 0xc7, 0x8f, 0x0b, 0x97, 0xc8, 0xe9, 0xae, 0x82, 0xae,
        0x43, 0xd3,
    ];
    let mut coded = vec![0x80 | huffman.len() as u8];
    coded.extend_from_slice(&huffman);
    let block = request(0x01, &coded);
    let check = loona_hpack::Decoder::new().decode(&block).unwrap();
    assert_eq!(check[3].1, b"https://www.example.com", "the test's bytes");
    let bytes = conversation(&[frame(HEADERS, END_HEADERS | END_STREAM, 1, &block)]);
    let ServerView { lists, frames } = server_view(&feed(&bytes, 7).unwrap());
    assert_eq!(authority(&lists[0].1), Some("localhost"));
    assert_eq!(frames.last(), Some(&(HEADERS, END_HEADERS | END_STREAM)));
}

#[test]
fn dynamic_table_references_resolve_and_later_blocks_are_reencoded() {
    // Block 1: a valid authority, indexed into both tables (0x41: literal
    // with incremental indexing, name 1): passes as it came.
    let valid = request(0x41, &string(b"localhost"));
    // Block 2: the raw socket path, indexed too (the dynamic table is
    // then 62 = the path, 63 = `localhost`; fields sent as 0x00 are not
    // indexed).
    let path = request(0x41, &string(b"/tmp/x.sock"));
    // Block 3: refers to block 2's entry (index 62) and block 1's
    // (index 63): only the client's table knows what they are.
    let by_index = [0x83, 0x86, 0x84, 0xbe, 0xbf];
    let bytes = conversation(&[
        frame(HEADERS, END_HEADERS, 1, &valid),
        frame(HEADERS, END_HEADERS, 3, &path),
        frame(HEADERS, END_HEADERS, 5, &by_index),
    ]);
    let out = feed(&bytes, 1).unwrap();
    let first = conversation(&[frame(HEADERS, END_HEADERS, 1, &valid)]);
    assert_eq!(&out[..first.len()], &first[..], "block 1 byte for byte");
    let ServerView { lists, .. } = server_view(&out);
    let streams: Vec<u32> = lists.iter().map(|(s, _)| *s).collect();
    assert_eq!(streams, [1, 3, 5]);
    assert_eq!(authority(&lists[0].1), Some("localhost"));
    assert_eq!(authority(&lists[1].1), Some("localhost"));
    // Index 62 was the socket path (rewritten), 63 the valid authority.
    let third: Vec<&str> = lists[2].1.iter().map(|(_, v)| v.as_str()).collect();
    assert_eq!(third, ["POST", "http", "/", "localhost", "localhost"]);
}

#[test]
fn continuation_frames_padding_and_priority() {
    let block = request(0x01, &string(b"/run/pidmap/pidmap.sock"));
    let (a, rest) = block.split_at(5);
    let (b, c) = rest.split_at(9);
    // HEADERS padded by 3, with priority fields, then two CONTINUATIONs,
    // then a DATA frame.
    let mut headers = vec![3];
    headers.extend_from_slice(&[0x80, 0, 0, 0, 7]);
    headers.extend_from_slice(a);
    headers.extend_from_slice(&[0; 3]);
    let bytes = conversation(&[
        frame(HEADERS, PADDED | PRIORITY, 1, &headers),
        frame(CONTINUATION, 0, 1, b),
        frame(CONTINUATION, END_HEADERS, 1, c),
        frame(DATA, END_STREAM, 1, b"\0\0\0\0\0"),
    ]);
    for chunk in [1, 2, 13, bytes.len()] {
        let out = feed(&bytes, chunk).unwrap();
        let ServerView { lists, frames } = server_view(&out);
        assert_eq!(authority(&lists[0].1), Some("localhost"), "chunk {chunk}");
        assert_eq!(
            frames,
            [
                (SETTINGS, 0),
                (HEADERS, PRIORITY | END_HEADERS),
                (DATA, END_STREAM)
            ]
        );
        let at = PREFACE.len() + FRAME_HEADER + FRAME_HEADER;
        assert_eq!(&out[at..at + 5], &[0x80, 0, 0, 0, 7], "the priority fields");
    }
}

#[test]
fn a_block_larger_than_a_frame_is_split_again() {
    let long = vec![b'a'; 3 * MAX_FRAME_PAYLOAD / 2];
    let mut block = request(0x01, &string(b"tmp%2Fx.sock"));
    block.push(0x00);
    block.extend(string(b"x-long"));
    block.extend(string(&long));
    let (a, b) = block.split_at(MAX_FRAME_PAYLOAD);
    let bytes = conversation(&[
        frame(HEADERS, 0, 1, a),
        frame(CONTINUATION, END_HEADERS, 1, b),
    ]);
    let ServerView { lists, frames } = server_view(&feed(&bytes, 4096).unwrap());
    assert_eq!(authority(&lists[0].1), Some("localhost"));
    assert_eq!(lists[0].1.last().map(|(_, v)| v.len()), Some(long.len()));
    assert_eq!(
        frames,
        [(SETTINGS, 0), (HEADERS, 0), (CONTINUATION, END_HEADERS)]
    );
}

#[test]
fn valid_authorities_pass_byte_for_byte() {
    let bytes = conversation(&[
        frame(
            HEADERS,
            END_HEADERS,
            1,
            &request(0x41, &string(b"localhost")),
        ),
        frame(DATA, END_STREAM, 1, b"\0\0\0\0\0"),
        frame(HEADERS, END_HEADERS, 3, &[0x83, 0x86, 0x84, 0xbe]),
        frame(SETTINGS, 1, 0, &[]),
        frame(HEADERS, END_HEADERS, 5, &request(0x01, &string(b"[::]:80"))),
    ]);
    for chunk in [1, 3, bytes.len()] {
        assert_eq!(feed(&bytes, chunk).unwrap(), bytes[..], "chunk {chunk}");
    }
}

#[test]
fn http1_and_garbage_pass_untouched() {
    for bytes in [
        &b"GET /v1/status HTTP/1.1\r\nHost: localhost\r\n\r\n"[..],
        &b"PRI * HTTP/1.1\r\n"[..],
        &b"\x00\xff\x13\x37"[..],
    ] {
        for chunk in [1, bytes.len()] {
            let (mut rewriter, reports) = (Rewriter::default(), Reports::default());
            let mut out = BytesMut::new();
            for piece in bytes.chunks(chunk) {
                rewriter.feed(piece, &mut out, &reports).unwrap();
            }
            assert_eq!(out, bytes, "chunk {chunk}");
            assert!(rewriter.is_transparent());
        }
    }
}

#[test]
fn protocol_errors_pass_as_they_came_and_the_rest_untouched() {
    let block = request(0x01, &string(b"tmp%2Fx.sock"));
    let cases = [
        // A DATA frame inside a header block.
        vec![
            frame(HEADERS, 0, 1, &block[..4]),
            frame(DATA, 0, 1, b"x"),
            frame(CONTINUATION, END_HEADERS, 1, &block[4..]),
        ],
        // A CONTINUATION without a HEADERS frame.
        vec![frame(CONTINUATION, END_HEADERS, 1, &block)],
        // Padding longer than the frame.
        vec![frame(HEADERS, END_HEADERS | PADDED, 1, &[200, 0x83])],
        // An undecodable block (index 70 of an empty dynamic table).
        vec![frame(HEADERS, END_HEADERS, 1, &[0x80 | 70])],
        // A header frame over the server's frame size.
        vec![frame(
            HEADERS,
            END_HEADERS,
            1,
            &vec![0x83; MAX_FRAME_PAYLOAD + 1],
        )],
    ];
    for (i, frames) in cases.iter().enumerate() {
        let bytes = conversation(frames);
        assert_eq!(feed(&bytes, 1).unwrap(), bytes[..], "case {i}");
        assert_eq!(feed(&bytes, bytes.len()).unwrap(), bytes[..], "case {i}");
    }
}

#[test]
fn an_undecodable_block_after_a_rewrite_closes_the_connection() {
    let bytes = conversation(&[
        frame(
            HEADERS,
            END_HEADERS,
            1,
            &request(0x01, &string(b"tmp%2Fx.sock")),
        ),
        frame(HEADERS, END_HEADERS, 3, &[0x80 | 70]),
    ]);
    assert!(matches!(feed(&bytes, 5), Err(RewriteError::Hpack(_))));
}

/// xorshift64*: random enough to shake a parser, and reproducible.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Up to `most - 1` random bytes.
    fn bytes(&mut self, most: usize) -> Vec<u8> {
        let n = self.below(most);
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn random_input_never_panics_and_output_stays_bounded() {
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    let kinds = [
        DATA,
        HEADERS,
        0x2,
        RST_STREAM,
        SETTINGS,
        0x8,
        CONTINUATION,
        0xff,
    ];
    for _ in 0..3_000 {
        let mut frames = Vec::new();
        for _ in 0..random.below(8) {
            let kind = kinds[random.below(kinds.len())];
            let flags = random.next() as u8;
            let stream = random.below(4) as u32;
            let payload = if random.below(2) == 0 {
                random.bytes(64)
            } else {
                // Plausible HPACK: a request with random bytes spliced in.
                let mut b = request(0x41, &string(b"tmp%2Fx.sock"));
                let at = random.below(b.len());
                b.splice(at..at, random.bytes(6));
                b
            };
            frames.push(frame(kind, flags, stream, &payload));
        }
        let mut bytes = conversation(&frames);
        if random.below(4) == 0 {
            bytes.extend(random.bytes(40));
        }
        let chunk = 1 + random.below(bytes.len());
        let (mut rewriter, reports) = (Rewriter::default(), Reports::default());
        let mut out = BytesMut::new();
        for piece in bytes.chunks(chunk) {
            if rewriter.feed(piece, &mut out, &reports).is_err() {
                break;
            }
            // What is held back is at most one header frame and one block.
            assert!(rewriter.input.len() <= FRAME_HEADER + MAX_FRAME_PAYLOAD);
            assert!(rewriter
                .block
                .as_ref()
                .is_none_or(|b| b.raw.len() <= MAX_BLOCK));
        }
    }
}

/// An h2 server (the real one) behind an [`AuthorityStream`] on a pipe
/// that carries `pipe` bytes at a time, given `client_bytes` and then a
/// GOAWAY (the server ends the connection once it has answered): the
/// authority and path of every request it accepted, and whether a refusal
/// was reported.
async fn h2_server(
    mut client_bytes: Vec<u8>,
    pipe: usize,
) -> (Vec<(Option<String>, String)>, bool) {
    const GOAWAY: u8 = 0x7;
    // Last stream: every one sent; error code NO_ERROR.
    client_bytes.extend(frame(GOAWAY, 0, 0, &[0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0]));
    let (client, server_io) = tokio::io::duplex(pipe);
    let reports = Arc::new(Reports::default());
    let stream = AuthorityStream::new(server_io, Arc::clone(&reports));
    let server = tokio::spawn(async move {
        let mut conn = h2::server::handshake(stream).await.expect("handshake");
        let mut seen = Vec::new();
        while let Some(Ok((request, mut respond))) = conn.accept().await {
            seen.push((
                request.uri().authority().map(ToString::to_string),
                request.uri().path().to_owned(),
            ));
            let _ = respond.send_response(http::Response::new(()), true);
        }
        seen
    });
    let (mut read, mut write) = tokio::io::split(client);
    // The server's answers are drained as they come: a small pipe would
    // otherwise block it.
    let drain = tokio::spawn(async move {
        let mut answers = Vec::new();
        let _ = read.read_to_end(&mut answers).await;
    });
    write.write_all(&client_bytes).await.unwrap();
    let seen = server.await.unwrap();
    drop(write);
    drain.await.unwrap();
    (seen, reports.refused.load(Ordering::Relaxed))
}

#[tokio::test]
async fn h2_serves_rewritten_requests_and_a_refusal_is_reported() {
    // Whole, and one byte per read and per write.
    for pipe in [1 << 20, 1] {
        h2_serves_rewritten_requests(pipe).await;
    }
}

async fn h2_serves_rewritten_requests(pipe: usize) {
    let bytes = conversation(&[
        frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &request(0x41, &string(b"tmp%2Fx.sock")),
        ),
        frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            3,
            &[0x83, 0x86, 0x84, 0xbe],
        ),
        frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            5,
            &request(0x01, &string(b"localhost")),
        ),
    ]);
    let (seen, refused) = h2_server(bytes, pipe).await;
    let localhost = Some("localhost".to_owned());
    assert_eq!(
        seen,
        [
            (localhost.clone(), "/pidmap.v1.Pidmap/Status".to_owned()),
            (localhost.clone(), "/".to_owned()),
            (localhost, "/pidmap.v1.Pidmap/Status".to_owned()),
        ]
    );
    assert!(!refused);

    // A path h2 refuses (a space in it): RST_STREAM(PROTOCOL_ERROR), seen
    // on the way out.
    let mut bad = vec![0x83, 0x86, 0x04];
    bad.extend(string(b"/a b"));
    bad.push(0x01);
    bad.extend(string(b"tmp%2Fx.sock"));
    let bytes = conversation(&[frame(HEADERS, END_HEADERS | END_STREAM, 1, &bad)]);
    let (seen, refused) = h2_server(bytes, pipe).await;
    assert!(seen.is_empty());
    assert!(refused, "the refusal was reported");
}
