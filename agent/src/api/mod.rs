//! The query API: gRPC and HTTP/JSON on one Unix socket.
//!
//! [`proto`] is generated from `proto/pidmap/v1/pidmap.proto` (by the
//! `pidmap-client` crate, so that clients and the agent share one copy);
//! [`policy`] decides who may ask what and when, and counts every request;
//! [`service`] answers from memory, and [`watch`] streams changes;
//! [`http`] answers the same questions as
//! HTTP/1.1 + JSON; [`json`] is the one JSON shape of records, containers
//! and status (the CLI prints it too); [`authority`] lets stock gRPC clients
//! in; [`server`] owns the socket and the connections, [`peer`] says who is
//! on the other end of one and [`admission`] which ones are served, and
//! [`budget`] bounds the bytes of responses they leave unread.

pub(crate) mod admission;
pub(crate) mod authority;
pub(crate) mod budget;
pub(crate) mod convert;
pub(crate) mod http;
pub(crate) mod json;
pub(crate) mod peer;
pub(crate) mod policy;
pub(crate) mod server;
pub(crate) mod service;
pub(crate) mod watch;

pub use pidmap_client::proto;

pub use crate::config::DEFAULT_SOCKET;
