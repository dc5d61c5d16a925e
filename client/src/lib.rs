//! Client of the pidmap node agent.
//!
//! pidmap answers "which container and which pod is PID N in?" over gRPC on
//! a Unix socket. This crate connects to it the way every pidmap tool does
//! ([`Settings`]: the socket from `--socket`, `$PIDMAP_SOCKET` or
//! [`DEFAULT_SOCKET`], bounded timeouts, the `localhost` authority), offers
//! the calls typed ([`Client`]), and keeps a local copy of the agent's map
//! fed by its `Watch` stream ([`Cache`]) for programs that look up pids per
//! event, such as profilers: a cached lookup is a hash-map read in the
//! calling thread, no socket round trip.
//!
//! # Examples
//!
//! ```no_run
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use pidmap_client::{Cache, Client, Settings};
//!
//! let settings = Settings::from_env();
//! let mut client = Client::connect(&settings).await?;
//! let record = client.resolve(4711, None).await?;
//! println!("{:?}", record.container.map(|c| c.id));
//!
//! let cache = Cache::spawn(settings.into());
//! cache.wait_synced().await;
//! if let Some(entry) = cache.get(4711, None) {
//!     println!("{:?}", entry.container.map(|c| c.id.clone()));
//! }
//! # Ok(())
//! # }
//! ```

mod cache;
mod client;

pub use cache::{Cache, CacheSettings, CacheStats, Entry};
pub use client::{
    AUTHORITY, Client, ConnectError, DEFAULT_SOCKET, MAX_RESPONSE_BYTES, MAX_SOCKET_PATH,
    SOCKET_ENV, Settings,
};

/// The generated `pidmap.v1` messages and client (and, with the `server`
/// feature, the server side), from `proto/pidmap/v1/pidmap.proto`.
#[allow(clippy::all, missing_docs, unused_qualifications, unreachable_pub)]
pub mod proto {
    tonic::include_proto!("pidmap.v1");

    /// The file descriptor set of `pidmap.v1`, for gRPC reflection.
    #[cfg(feature = "server")]
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("pidmap_descriptor");
}
