use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{rewrite::*, *};

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
    // Over the header list limit (h2 refuses it whole), so re-encoded with
    // a filler that keeps it over: more than one frame.
    let long = vec![b'a'; 3 * MAX_FRAME_PAYLOAD / 4];
    let mut block = request(0x01, &string(b"localhost"));
    block.push(0x00);
    block.extend(string(b"x-long"));
    block.extend(string(&long));
    let first = frame(
        HEADERS,
        END_HEADERS,
        1,
        &request(0x01, &string(b"tmp%2Fx.sock")),
    );
    let mut again = block.clone();
    again.push(0x00);
    again.extend(string(b"x-more"));
    again.extend(string(&long));
    let (a, b) = again.split_at(MAX_FRAME_PAYLOAD);
    let bytes = conversation(&[
        first,
        frame(HEADERS, 0, 3, a),
        frame(CONTINUATION, END_HEADERS, 3, b),
    ]);
    let ServerView { lists, frames } = server_view(&feed(&bytes, 4096).unwrap());
    assert_eq!(authority(&lists[1].1), Some("localhost"));
    let kept = lists[1].1.iter().find(|(n, _)| n == "x-long");
    assert_eq!(kept.map(|(_, v)| v.len()), Some(long.len()));
    assert!(
        lists[1].1.iter().all(|(n, _)| n != "x-more"),
        "over the limit"
    );
    assert_eq!(
        frames,
        [
            (SETTINGS, 0),
            (HEADERS, END_HEADERS),
            (HEADERS, 0),
            (CONTINUATION, END_HEADERS)
        ]
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
            assert!(
                rewriter
                    .block
                    .as_ref()
                    .is_none_or(|b| b.raw.len() <= MAX_BLOCK)
            );
        }
    }
}

/// An h2 server (the real one) behind an [`AuthorityStream`] on a pipe
/// that carries `pipe` bytes at a time, given `client_bytes` and then a
/// GOAWAY (the server ends the connection once it has answered): the
/// authority and path of every request it accepted, and whether a refusal
/// was reported.
async fn h2_server(client_bytes: Vec<u8>, pipe: usize) -> (Vec<(Option<String>, String)>, bool) {
    let (seen, refused, _) = h2_server_with(client_bytes, pipe, None).await;
    let seen = seen.into_iter().map(|r| (r.authority, r.path)).collect();
    (seen, refused)
}

/// A request as the h2 server accepted it.
#[derive(Debug, PartialEq, Eq)]
struct Accepted {
    authority: Option<String>,
    path: String,
    /// Its stream, and the stream tag it came with.
    stream: u32,
    tag: Option<String>,
}

/// [`h2_server`] with a ledger (tagged requests) or not; also what the
/// server wrote.
async fn h2_server_with(
    mut client_bytes: Vec<u8>,
    pipe: usize,
    ledger: Option<Arc<ConnLedger>>,
) -> (Vec<Accepted>, bool, Vec<u8>) {
    const GOAWAY: u8 = 0x7;
    // Last stream: every one sent; error code NO_ERROR.
    client_bytes.extend(frame(GOAWAY, 0, 0, &[0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0]));
    let (client, server_io) = tokio::io::duplex(pipe);
    let reports = Arc::new(Reports::default());
    let stream = AuthorityStream::new(server_io, Arc::clone(&reports), ledger);
    let server = tokio::spawn(async move {
        // The limit the agent's server sets, as h2 enforces it.
        let mut conn = match h2::server::Builder::new()
            .max_header_list_size(MAX_HEADER_LIST as u32)
            .handshake::<_, bytes::Bytes>(stream)
            .await
        {
            Ok(conn) => conn,
            Err(_) => return Vec::new(),
        };
        let mut seen = Vec::new();
        while let Some(Ok((request, mut respond))) = conn.accept().await {
            seen.push(Accepted {
                authority: request.uri().authority().map(ToString::to_string),
                path: request.uri().path().to_owned(),
                stream: respond.stream_id().as_u32(),
                tag: request
                    .headers()
                    .get(STREAM_TAG)
                    .map(|v| v.to_str().unwrap().to_owned()),
            });
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
        answers
    });
    // The server may close the connection before it has read everything.
    let _ = write.write_all(&client_bytes).await;
    let seen = server.await.unwrap();
    drop(write);
    let answers = drain.await.unwrap();
    (seen, reports.refused.load(Ordering::Relaxed), answers)
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

/// A block of `n` bytes that inserts a `size`-byte field into the dynamic
/// table and then references it (one byte each) for the rest: a small
/// block that decodes to a huge header list.
fn hpack_bomb(size: usize, n: usize) -> Vec<u8> {
    let mut b = vec![0x83, 0x86, 0x84, 0x41];
    b.extend(string(b"localhost"));
    // Literal with incremental indexing, new name: dynamic index 62.
    b.push(0x40);
    b.extend(string(b"x-bomb"));
    b.extend(string(&vec![b'a'; size]));
    b.resize(n, 0xbe);
    b
}

/// `block` as a HEADERS frame and CONTINUATIONs of at most 16 KiB.
fn header_frames(stream: u32, block: &[u8]) -> Vec<Vec<u8>> {
    let chunks: Vec<&[u8]> = block.chunks(MAX_FRAME_PAYLOAD).collect();
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let kind = if i == 0 { HEADERS } else { CONTINUATION };
            let mut flags = if i == 0 { END_STREAM } else { 0 };
            if i + 1 == chunks.len() {
                flags |= END_HEADERS;
            }
            frame(kind, flags, stream, chunk)
        })
        .collect()
}

#[test]
fn an_hpack_bomb_is_decoded_without_collecting_its_fields() {
    // 64 KiB of HPACK that decodes to 60,000 fields of 4 KB: 240 MB.
    let block = hpack_bomb(4000, MAX_BLOCK - 1024);
    let mut rewriter = Rewriter::tagging();
    let decoded = rewriter.decode(&block, Some("1")).expect("decodable");
    let kept: usize = decoded
        .fields
        .iter()
        .map(|(n, v)| field_size(n.len(), v.len()))
        .sum();
    assert!(kept < MAX_HEADER_LIST, "kept {kept} bytes of fields");
    assert!(decoded.way_over(), "{} bytes decoded", decoded.size);
    // The table stayed in step: a later block's reference to it decodes.
    let later = rewriter.decode(&[0x83, 0x86, 0x84, 0xbe], None).unwrap();
    assert_eq!(later.fields.last().unwrap().1.len(), 4000);

    // On the wire: passed as it came, and no longer followed (h2 closes
    // the connection for it).
    let bytes = conversation(&header_frames(1, &block));
    let out = feed(&bytes, 4096).unwrap();
    assert_eq!(out.as_ref(), bytes.as_slice());
}

#[test]
fn a_bomb_on_a_connection_already_reencoding_closes_it() {
    let mut frames = vec![frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &request(0x01, &string(b"tmp%2Fx.sock")),
    )];
    frames.extend(header_frames(3, &hpack_bomb(4000, MAX_BLOCK - 1024)));
    let bytes = conversation(&frames);
    assert!(matches!(
        feed(&bytes, bytes.len()),
        Err(RewriteError::TooLarge(_))
    ));
}

#[test]
fn a_list_over_the_limit_stays_over_it_when_reencoded() {
    // Five 4 KB fields: 20 KB, over 16 KiB but not four times over.
    let mut big = vec![0x83, 0x86, 0x84, 0x41];
    big.extend(string(b"localhost"));
    for i in 0..5 {
        big.push(0x00);
        big.extend(string(format!("x-big-{i}").as_bytes()));
        big.extend(string(&[b'b'; 4000]));
    }
    let frames = vec![frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &request(0x01, &string(b"tmp%2Fx.sock")),
    )];
    let mut frames = frames;
    frames.extend(header_frames(3, &big));
    let out = feed(&conversation(&frames), 1000).unwrap();
    let ServerView { lists, .. } = server_view(&out);
    let size: usize = lists[1]
        .1
        .iter()
        .map(|(n, v)| field_size(n.len(), v.len()))
        .sum();
    assert!(size >= MAX_HEADER_LIST, "re-encoded to {size} bytes");
    assert!(size < 2 * MAX_HEADER_LIST + 1024, "bounded: {size}");
}

#[tokio::test]
async fn h2_refuses_oversized_lists_and_closes_on_bombs_behind_the_rewriter() {
    let mut big = vec![0x83, 0x86, 0x84, 0x41];
    big.extend(string(b"localhost"));
    for i in 0..5 {
        big.push(0x00);
        big.extend(string(format!("x-big-{i}").as_bytes()));
        big.extend(string(&[b'b'; 4000]));
    }
    let (peer, total) = (
        super::super::budget::Pool::per_peer(1 << 20),
        super::super::budget::Pool::total(1 << 20, Arc::default()),
    );
    for reencoding in [false, true] {
        let mut frames = Vec::new();
        if reencoding {
            frames.push(frame(
                HEADERS,
                END_HEADERS | END_STREAM,
                1,
                &request(0x01, &string(b"tmp%2Fx.sock")),
            ));
        }
        frames.extend(header_frames(3, &big));
        frames.push(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            5,
            &request(0x01, &string(b"localhost")),
        ));
        let ledger = ConnLedger::new(Arc::clone(&peer), Arc::clone(&total), false);
        let (seen, _, answers) = h2_server_with(conversation(&frames), 1 << 20, Some(ledger)).await;
        // h2 answers the oversized request itself: 431, or a reset.
        let mut scan = WriteScan::default();
        let mut found = Vec::new();
        scan.scan(&answers, &mut found);
        assert!(found.contains(&Written::Ended(3)), "{found:?}");
        let streams: Vec<u32> = seen.iter().map(|a| a.stream).collect();
        let want: &[u32] = if reencoding { &[1, 5] } else { &[5] };
        assert_eq!(streams, want, "the oversized request (3) is refused alone");
        assert!(seen.iter().all(|a| a.tag == Some(a.stream.to_string())));
    }
    // A bomb: h2 closes the connection; nothing after it is served.
    let mut frames = header_frames(1, &hpack_bomb(4000, MAX_BLOCK - 1024));
    frames.push(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        3,
        &request(0x01, &string(b"localhost")),
    ));
    let ledger = ConnLedger::new(peer, total, false);
    let (seen, _, _) = h2_server_with(conversation(&frames), 1 << 20, Some(ledger)).await;
    assert!(seen.is_empty(), "{seen:?}");
}

#[tokio::test]
async fn tagged_requests_reach_h2_with_their_stream_and_the_ledger_follows_them() {
    let (peer, total) = (
        super::super::budget::Pool::per_peer(1 << 20),
        super::super::budget::Pool::total(1 << 20, Arc::default()),
    );
    let ledger = ConnLedger::new(Arc::clone(&peer), total, false);
    let frames = vec![
        // Padded and with priority: the tag goes into a new frame.
        {
            let mut payload = vec![3, 0, 0, 0, 0, 16];
            payload.extend(request(0x01, &string(b"localhost")));
            payload.extend([0; 3]);
            frame(
                HEADERS,
                END_HEADERS | END_STREAM | PADDED | PRIORITY,
                1,
                &payload,
            )
        },
        frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            3,
            &request(0x01, &string(b"tmp%2Fx.sock")),
        ),
        frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            5,
            &request(0x01, &string(b"localhost")),
        ),
    ];
    for pipe in [1 << 20, 7] {
        let (seen, _, _) =
            h2_server_with(conversation(&frames), pipe, Some(Arc::clone(&ledger))).await;
        let tags: Vec<_> = seen.iter().map(|a| (a.stream, a.tag.clone())).collect();
        assert_eq!(
            tags,
            [
                (1, Some("1".into())),
                (3, Some("3".into())),
                (5, Some("5".into()))
            ]
        );
    }
    // Accounts opened for the streams are closed by their END_STREAM.
    let account = ledger.open(7);
    account.charge(100).unwrap();
    assert_eq!(peer.held(), 100);
    let mut scan = WriteScan::default();
    let mut found = Vec::new();
    let mut written = frame(DATA, 0, 7, &[0; 60]);
    written.extend(frame(DATA, END_STREAM, 7, &[0; 40]));
    for piece in written.chunks(5) {
        scan.scan(piece, &mut found);
    }
    assert_eq!(
        found
            .iter()
            .filter_map(|w| match w {
                Written::Data(7, n) => Some(*n),
                _ => None,
            })
            .sum::<usize>(),
        100
    );
    assert_eq!(found.last(), Some(&Written::Ended(7)));
}
