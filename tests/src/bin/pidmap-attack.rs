//! `pidmap-attack`: hostile peers of the agent's socket, run as a process of
//! their own so that the test's own connections are another peer (the
//! agent budgets each root process apart). Used by `tests/tests/hostile.rs`.
//!
//! - `pidmap-attack hpack-bomb SOCKET CONNECTIONS ROUNDS`: each round opens
//!   CONNECTIONS connections and sends on each one gRPC request whose
//!   64 KiB header block decodes to about 240 MB (a 4 KB field referenced
//!   60,000 times), then reads each until the agent closes it. Prints one
//!   line with the counts.
//! - `pidmap-attack watch-flood SOCKET CONNECTIONS STREAMS`: opens
//!   CONNECTIONS connections that grant the agent the largest flow-control
//!   windows HTTP/2 allows, starts STREAMS `Watch` calls on each, prints
//!   `ready`, and then never reads its sockets, until its stdin closes.

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    process::ExitCode,
    time::Duration,
};

use pidmap_tests::wire::{
    DATA, END_HEADERS, END_STREAM, HEADERS, INITIAL_WINDOW_SIZE, MAX_WINDOW, PREFACE, frame,
    grpc_message, grpc_request_headers, header_frames, hpack_bomb, settings, window_update,
};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize| -> usize {
        args.get(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| usage())
    };
    match args.first().map(String::as_str) {
        Some("hpack-bomb") => hpack_bombs(&args[1], number(2), number(3)),
        Some("watch-flood") => watch_flood(&args[1], number(2), number(3)),
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: pidmap-attack hpack-bomb SOCKET CONNECTIONS ROUNDS | watch-flood SOCKET CONNECTIONS STREAMS"
    );
    std::process::exit(2)
}

fn hpack_bombs(socket: &str, connections: usize, rounds: usize) -> ExitCode {
    let mut request = PREFACE.to_vec();
    request.extend(settings(&[]));
    // 64 KiB in all: four frames of 16 KiB.
    request.extend(header_frames(
        1,
        END_STREAM,
        &hpack_bomb(4000, 64 * 1024 - 64),
    ));
    let (mut sent, mut closed) = (0, 0);
    for _ in 0..rounds {
        let mut open = Vec::new();
        for _ in 0..connections {
            let Ok(mut s) = UnixStream::connect(socket) else {
                continue;
            };
            if s.write_all(&request).is_ok() {
                sent += 1;
            }
            open.push(s);
        }
        for mut s in open {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf) {
                    Ok(0) => {
                        closed += 1;
                        break;
                    }
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        closed += 1;
                        break;
                    }
                }
            }
        }
    }
    println!("hpack-bomb: {sent} requests sent, {closed} connections closed by the agent");
    ExitCode::SUCCESS
}

fn watch_flood(socket: &str, connections: usize, streams: usize) -> ExitCode {
    let mut bytes = PREFACE.to_vec();
    bytes.extend(settings(&[(INITIAL_WINDOW_SIZE, MAX_WINDOW)]));
    bytes.extend(window_update(0, MAX_WINDOW - 65_535));
    let headers = grpc_request_headers("/pidmap.v1.Pidmap/Watch");
    for i in 0..streams {
        let stream = u32::try_from(2 * i + 1).expect("stream id");
        bytes.extend(frame(HEADERS, END_HEADERS, stream, &headers));
        bytes.extend(frame(DATA, END_STREAM, stream, &grpc_message(&[])));
    }
    let mut held = Vec::new();
    for _ in 0..connections {
        match UnixStream::connect(socket) {
            Ok(mut s) => {
                if let Err(e) = s.write_all(&bytes) {
                    eprintln!("pidmap-attack: write: {e}");
                    return ExitCode::FAILURE;
                }
                held.push(s);
            }
            Err(e) => {
                eprintln!("pidmap-attack: connect {socket}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    println!(
        "ready: {} connections, {streams} Watch streams each",
        held.len()
    );
    let _ = std::io::stdout().flush();
    // Never read the sockets; end when told (stdin closes).
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(held);
    ExitCode::SUCCESS
}
