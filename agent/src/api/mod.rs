//! The query API: gRPC over a Unix socket.
//!
//! [`proto`] is generated from `proto/pidmap/v1/pidmap.proto` (by the
//! `pidmap-client` crate, so that clients and the agent share one copy);
//! [`policy`] decides who may ask what and when, and counts every request;
//! [`service`] answers from memory; [`json`] is the one JSON shape of
//! records, containers and status; [`authority`] lets stock gRPC clients
//! in; [`server`] owns the socket, the connections and the limits.

pub mod authority;
pub mod convert;
pub mod json;
pub mod policy;
pub mod server;
pub mod service;

pub use pidmap_client::proto;

pub use crate::config::DEFAULT_SOCKET;
