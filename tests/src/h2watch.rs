//! A `Watch` call over a raw HTTP/2 connection whose flow-control window
//! the test holds shut (SETTINGS_INITIAL_WINDOW_SIZE 0: the agent can send
//! it nothing), then opens: a client that takes nothing for exactly as long
//! as the test says, whatever the machine's speed.

use std::path::Path;

use bytes::Bytes;
use tokio::{sync::oneshot, task::JoinHandle};

/// A `Watch` stream the agent cannot send anything on yet.
pub struct ShutWatch {
    body: h2::RecvStream,
    open: Option<oneshot::Sender<u32>>,
    driver: JoinHandle<()>,
}

/// What a [`ShutWatch`] received once opened.
#[derive(Debug)]
pub struct Received {
    /// Bytes of gRPC messages (with their 5-byte prefixes).
    pub bytes: usize,
    /// The `grpc-status` of its trailers, if it ended with any.
    pub grpc_status: Option<String>,
    pub grpc_message: Option<String>,
}

impl ShutWatch {
    /// Starts a `Watch` call on `socket` with a window of 0.
    pub async fn start(socket: &Path) -> Self {
        let io = tokio::net::UnixStream::connect(socket)
            .await
            .expect("connect to the agent");
        let (mut send, mut conn) = h2::client::Builder::new()
            .initial_window_size(0)
            .handshake::<_, Bytes>(io)
            .await
            .expect("HTTP/2 handshake");
        let (open, opened) = oneshot::channel::<u32>();
        let driver = tokio::spawn(async move {
            tokio::select! {
                _ = &mut conn => return,
                size = opened => {
                    if let Ok(size) = size {
                        conn.set_initial_window_size(size).expect("open the window");
                    }
                }
            }
            let _ = conn.await;
        });
        let request = http::Request::post("http://localhost/pidmap.v1.Pidmap/Watch")
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("request");
        let (response, mut body) = send.send_request(request, false).expect("send");
        // An empty WatchRequest: the 5-byte gRPC prefix of length 0.
        body.send_data(Bytes::from_static(&[0; 5]), true)
            .expect("send the request message");
        let response = response.await.expect("response headers");
        assert_eq!(response.status(), 200);
        Self {
            body: response.into_body(),
            open: Some(open),
            driver,
        }
    }

    /// Opens the window and reads to the end of the stream.
    pub async fn open_and_read(mut self) -> Received {
        if let Some(open) = self.open.take() {
            let _ = open.send(1 << 20);
        }
        let mut bytes = 0;
        while let Some(data) = self.body.data().await {
            let data = data.expect("data");
            bytes += data.len();
            let _ = self.body.flow_control().release_capacity(data.len());
        }
        let trailers = self.body.trailers().await.expect("trailers");
        let field = |name: &str| {
            trailers
                .as_ref()
                .and_then(|t| t.get(name))
                .map(|v| v.to_str().unwrap_or_default().to_owned())
        };
        let received = Received {
            bytes,
            grpc_status: field("grpc-status"),
            grpc_message: field("grpc-message"),
        };
        self.driver.abort();
        received
    }
}
