//! What pidmap's own tests, fuzz targets and benchmark reach inside the agent: the
//! parsers of untrusted input, the state behind the API and a few of its constants.
//!
//! Not a stable API (hidden from the docs): it changes with the code it re-exports.
//! Programs that embed the agent use [`crate::Agent`], [`crate::Config`] and
//! [`crate::api::proto`]; the modules here mirror the crate's own layout.

/// The query API's parsers.
pub mod api {
    /// The `:authority` rewriter that lets stock gRPC clients in.
    pub mod authority {
        pub use crate::api::authority::{MAX_BLOCK, MAX_FRAME_PAYLOAD, Reports, Rewriter};
    }
    /// HTTP/JSON requests.
    pub mod http {
        pub use crate::api::http::{Ask, BadRequest};
    }
}

/// cgroup paths, `/proc/PID/cgroup` and mountinfo.
pub mod cgroup {
    pub use crate::cgroup::{
        CgroupError, CgroupFs, CgroupPaths, Hierarchy, PathContainer, PathRuntime,
        container_from_path, join_normalized, parse_proc_cgroup,
    };
}

/// Ring buffer events.
pub mod ebpf {
    /// The fixed-layout event decoder.
    pub mod event {
        pub use crate::ebpf::event::decode;
    }
}

/// The metrics endpoint.
pub mod metrics {
    /// Its HTTP server.
    pub mod server {
        pub use crate::metrics::server::HEADER_TIMEOUT;
    }
}

/// The pinned containers map's contents.
pub mod pinned {
    pub use crate::pinned::{Keyed, desired};
}

/// `/proc`.
pub mod proc {
    pub use crate::proc::{parse_stat, parse_stat_bytes, scan};
}

/// PID → container.
pub mod resolver {
    pub use crate::resolver::{Resolution, Resolved, Source, resolve};
}

/// containerd's OCI specs, NRI's wire.
pub mod runtime {
    /// NRI.
    pub mod nri {
        pub use crate::runtime::nri::{Update, answer};
        /// Its framing and messages.
        pub mod wire {
            pub use crate::runtime::nri::wire::{
                Decoder, MAX_MUX_PAYLOAD, MAX_TTRPC_MESSAGE, Message, Response, WireError,
            };
        }
    }
    /// containerd.
    pub mod containerd {
        /// The OCI spec parser.
        pub mod spec {
            pub use crate::runtime::containerd::spec::{cgroup_dir, parse_spec};
        }
    }
}

/// The agent's state.
pub mod state {
    pub use crate::state::{NriLink, ProcessState, QUERY_CATCH_UP, STALL_LIMIT, State};
    /// Containers.
    pub mod container {
        pub use crate::state::container::{ContainerKey, TaskStatus};
    }
}

/// Keys and ids.
pub mod types {
    pub use crate::types::{CgroupId, ProcKey, StartTime};
}

/// Clocks.
pub mod util {
    pub use crate::util::monotonic_ns;
}
