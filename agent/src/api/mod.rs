//! The query API: gRPC over a Unix socket.
//!
//! [`proto`] is generated from `proto/pidmap/v1/pidmap.proto`; [`policy`]
//! decides who may ask what and when, and counts every request;
//! [`service`] answers from memory; [`server`] owns the socket and the
//! limits.

pub mod convert;
pub mod policy;
pub mod server;
pub mod service;

/// Generated messages, server and client of `pidmap.v1`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("pidmap.v1");

    /// The file descriptor set, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("pidmap_descriptor");
}

pub use crate::config::DEFAULT_SOCKET;
