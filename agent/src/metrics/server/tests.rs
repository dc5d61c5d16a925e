use std::{net::SocketAddr, sync::Arc, time::Duration};

use prometheus_client::{metrics::counter::Counter, registry::Registry};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;

use super::*;

/// Generous bound for things that must happen; never a timing check.
const EVENTUALLY: Duration = Duration::from_secs(20);

fn registry() -> (Arc<Registry>, Counter) {
    let mut registry = Registry::with_prefix("pidmap");
    let counter = Counter::default();
    registry.register("test_things", "Things for the test", counter.clone());
    (Arc::new(registry), counter)
}

struct Running {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    counter: Counter,
}

async fn start(limits: Limits) -> Running {
    let (registry, counter) = registry();
    let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
        .with_limits(limits);
    let addr = server.local_addr();
    assert_ne!(addr.port(), 0);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(server.serve(registry, shutdown.clone()));
    Running {
        addr,
        shutdown,
        task,
        counter,
    }
}

/// Sends `request` raw and reads the whole answer (the server closes).
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(EVENTUALLY, stream.read_to_end(&mut answer))
        .await
        .expect("the server answers and closes")
        .unwrap();
    String::from_utf8(answer).unwrap()
}

async fn get(addr: SocketAddr, path: &str) -> String {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes(),
    )
    .await
}

fn status(answer: &str) -> &str {
    answer.lines().next().unwrap_or_default()
}

#[tokio::test]
async fn metrics_are_served_and_other_paths_are_not_found() {
    let s = start(Limits::default()).await;
    s.counter.inc_by(3);
    let answer = get(s.addr, "/metrics").await;
    assert_eq!(status(&answer), "HTTP/1.1 200 OK", "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains(&format!(
            "content-type: {}",
            exposition::CONTENT_TYPE.to_ascii_lowercase()
        )),
        "{answer}"
    );
    assert!(
        answer.contains("\npidmap_test_things_total 3\n"),
        "{answer}"
    );
    assert!(answer.ends_with("# EOF\n"), "{answer}");

    let answer = get(s.addr, "/nope").await;
    assert_eq!(status(&answer), "HTTP/1.1 404 Not Found", "{answer}");
    let answer = get(s.addr, "/metrics/extra").await;
    assert_eq!(status(&answer), "HTTP/1.1 404 Not Found", "{answer}");

    let answer = exchange(
        s.addr,
        b"POST /metrics HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(
        status(&answer),
        "HTTP/1.1 405 Method Not Allowed",
        "{answer}"
    );
    assert!(answer.to_ascii_lowercase().contains("allow: get, head"));

    // The query string does not change the path.
    let answer = get(s.addr, "/metrics?name=x").await;
    assert_eq!(status(&answer), "HTTP/1.1 200 OK", "{answer}");

    s.shutdown.cancel();
    tokio::time::timeout(EVENTUALLY, s.task)
        .await
        .expect("the server stops on shutdown")
        .unwrap();
}

#[tokio::test]
async fn silent_client_is_dropped_and_others_are_still_served() {
    let s = start(Limits {
        max_connections: 2,
        header_timeout: Duration::from_millis(200),
        ..Limits::default()
    })
    .await;
    let mut silent = TcpStream::connect(s.addr).await.unwrap();
    let mut half = TcpStream::connect(s.addr).await.unwrap();
    half.write_all(b"GET /metrics HTTP/1.1\r\nHost: te")
        .await
        .unwrap();
    // Both slots are taken; this scrape waits in the backlog until the
    // server has dropped one of them.
    let answer = get(s.addr, "/metrics").await;
    assert_eq!(status(&answer), "HTTP/1.1 200 OK", "{answer}");
    for client in [&mut silent, &mut half] {
        let mut rest = Vec::new();
        let read = tokio::time::timeout(EVENTUALLY, client.read_to_end(&mut rest))
            .await
            .expect("the server closes a client that sends no full request");
        // Closed: EOF, a reset, or hyper's 408 before closing.
        if let Ok(n) = read {
            let text = String::from_utf8_lossy(&rest[..n]);
            assert!(n == 0 || text.starts_with("HTTP/1.1 408"), "{text}");
        }
    }
    s.shutdown.cancel();
}

#[tokio::test]
async fn oversized_request_head_is_refused() {
    let s = start(Limits::default()).await;
    let big = format!(
        "GET /metrics HTTP/1.1\r\nHost: test\r\nX-Big: {}\r\n\r\n",
        "a".repeat(MAX_REQUEST_BYTES * 2)
    );
    let mut stream = TcpStream::connect(s.addr).await.unwrap();
    // The server may close before it has read everything.
    let _ = stream.write_all(big.as_bytes()).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(EVENTUALLY, stream.read_to_end(&mut answer))
        .await
        .expect("the server answers or closes");
    if read.is_ok() {
        let text = String::from_utf8_lossy(&answer);
        assert!(!text.starts_with("HTTP/1.1 200"), "{text}");
    }
    // And it still serves.
    assert_eq!(status(&get(s.addr, "/metrics").await), "HTTP/1.1 200 OK");
    s.shutdown.cancel();
}

#[tokio::test]
async fn a_taken_address_is_a_bind_error() {
    let first = MetricsServer::bind("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let addr = first.local_addr();
    let error = MetricsServer::bind(addr).await.unwrap_err();
    assert!(
        matches!(&error, MetricsError::Bind { addr: a, .. } if *a == addr),
        "{error:?}"
    );
    assert_eq!(error.to_string(), format!("cannot serve metrics on {addr}"));
}

#[test]
fn head_is_answered_like_get() {
    let (registry, _) = registry();
    let req = Request::head("/metrics").body(()).unwrap();
    let response = respond(&req, &registry);
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers().get(CONTENT_TYPE).unwrap(),
        exposition::CONTENT_TYPE
    );
}
