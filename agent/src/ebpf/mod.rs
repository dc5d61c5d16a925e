//! Loading, attaching and reading pidmap's eBPF programs.
//!
//! [`load`] raises RLIMIT_MEMLOCK (a failure is only a warning: the kernel
//! accounts BPF memory through memcg since 5.11), looks up kernel structure
//! offsets and widths in BTF, loads the programs built by `aya-build` into
//! the kernel with those offsets, attaches every tracepoint and hands back
//! the ring buffer and drop counter, which [`ring::Ring`] reads.
//!
//! # Minimum kernel version
//!
//! 5.8 (BPF ring buffer, BTF tracepoints, `bpf_probe_read_kernel`).
//!
//! `Agent::start` loads them and hands the ring to the tracker task.

pub(crate) mod btf;
pub(crate) mod event;
pub(crate) mod ring;

use std::path::PathBuf;

use agent_common::{
    CONFIG_GLOBAL, CONTAINERS_MAP, ContainerRecord, DEFAULT_RING_BYTES, DROPS_MAP, EVENTS_MAP,
    PROGRAMS,
};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, ProgramError},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub(crate) use btf::{BtfError, VMLINUX_BTF};

/// The eBPF object built by aya-build (empty when built with AYA_BUILD_SKIP).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/agent-ebpf"));

/// Bytes one ring-buffer record takes: the event plus the 8-byte header.
pub(crate) const RECORD_BYTES: u32 = agent_common::RAW_EVENT_SIZE as u32 + 8;

/// How the programs are loaded.
#[derive(Debug, Clone)]
pub(crate) struct EbpfSettings {
    /// Size of the event ring buffer in bytes (a power of two ≥ page size).
    pub ring_buffer_bytes: u32,
    /// Wake the reader once this many events wait (0: when the first event
    /// waits, the kernel's default policy).
    pub wakeup_events: u32,
    /// Kernel BTF to take offsets from.
    pub btf_path: PathBuf,
    /// Where to pin the containers map (an existing pin there is reused);
    /// `None` keeps it unpinned.
    pub containers_pin: Option<PathBuf>,
    /// Hierarchy id of the cgroups the containers map is keyed by (0:
    /// cgroup2), or `u32::MAX` for none.
    pub containers_hierarchy_id: u32,
}

impl Default for EbpfSettings {
    fn default() -> Self {
        Self {
            ring_buffer_bytes: DEFAULT_RING_BYTES,
            wakeup_events: 0,
            btf_path: PathBuf::from(VMLINUX_BTF),
            containers_pin: None,
            containers_hierarchy_id: u32::MAX,
        }
    }
}

/// Why the eBPF programs could not be loaded or attached.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The kernel exposes no BTF; pidmap needs `CONFIG_DEBUG_INFO_BTF=y`.
    #[error(
        "kernel BTF not found at {path}: the kernel must be built with CONFIG_DEBUG_INFO_BTF=y (5.5 or newer)"
    )]
    NoBtf { path: PathBuf },
    /// A structure or member the programs read is missing from BTF.
    #[error("unsupported kernel")]
    Offsets(#[from] BtfError),
    /// aya could not parse the kernel BTF for program loading.
    #[error("cannot parse kernel BTF for program loading")]
    AyaBtf(#[source] aya::BtfError),
    /// This binary was built with AYA_BUILD_SKIP=1 and carries no programs.
    #[error(
        "this pidmap binary was built without its eBPF programs (AYA_BUILD_SKIP was set); rebuild without it"
    )]
    NotEmbedded,
    /// The kernel refused to load the programs and we are not root.
    #[error(
        "loading eBPF programs needs root (or CAP_BPF, CAP_PERFMON and CAP_SYS_RESOURCE or memcg accounting); effective uid is {euid}"
    )]
    NotPermitted {
        euid: u32,
        #[source]
        source: aya::EbpfError,
    },
    /// The kernel refused the programs or maps.
    #[error("cannot load eBPF programs")]
    Load(#[source] aya::EbpfError),
    /// A program is missing from the object.
    #[error("eBPF program {name} missing from the object")]
    MissingProgram { name: &'static str },
    /// A program could not be loaded (verifier) or attached.
    #[error("cannot load or attach eBPF program {name} to tracepoint {tracepoint}")]
    Program {
        name: &'static str,
        tracepoint: &'static str,
        #[source]
        source: ProgramError,
    },
    /// A map is missing from the object or has the wrong type.
    #[error("eBPF map {name} unusable")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
}

/// Programs loaded and attached; dropping this detaches them.
pub(crate) struct Loaded {
    /// Keeps programs and links alive; dropping it detaches them.
    pub ebpf: Ebpf,
    /// The event ring buffer.
    pub ring: RingBuf<MapData>,
    /// Per-CPU count of failed reservations.
    pub drops: PerCpuArray<MapData, u64>,
    /// cgroup id → container record, pinned for other tools when asked.
    pub containers: HashMap<MapData, u64, ContainerRecord>,
    /// Reader for `aya-log` records from the programs, if they log.
    pub logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
}

/// Raises RLIMIT_MEMLOCK; failure is expected without CAP_SYS_RESOURCE and
/// harmless on kernels that account BPF memory through memcg.
fn raise_memlock() {
    use rustix::process::{Resource, Rlimit, setrlimit};
    let unlimited = Rlimit {
        current: None,
        maximum: None,
    };
    if let Err(error) = setrlimit(Resource::Memlock, unlimited) {
        warn!(
            error = %std::io::Error::from(error),
            "cannot raise RLIMIT_MEMLOCK; continuing (kernels ≥ 5.11 charge BPF memory to the memory cgroup)"
        );
    }
}

/// Loads and attaches all programs. See the module docs.
pub(crate) fn load(settings: &EbpfSettings) -> Result<Loaded, LoadError> {
    if EBPF_OBJECT.is_empty() {
        return Err(LoadError::NotEmbedded);
    }
    if !settings.btf_path.exists() {
        return Err(LoadError::NoBtf {
            path: settings.btf_path.clone(),
        });
    }
    raise_memlock();

    let mut offsets = btf::KernelBtf::from_file(&settings.btf_path)?
        .kernel_config(settings.wakeup_events.saturating_mul(RECORD_BYTES))?;
    offsets.containers_hierarchy_id = settings.containers_hierarchy_id;
    debug!(?offsets, "kernel structure offsets from BTF");
    // `EbpfLoader::new` parses the kernel's BTF itself, for CO-RE
    // relocations, which Rust programs do not have: drop that copy at once,
    // so that it is never alive beside the one attaching needs (the two
    // were the agent's start-up peak).
    let mut loader = EbpfLoader::new();
    loader.btf(None);
    release_freed_heap();
    let aya_btf = aya::Btf::parse_file(&settings.btf_path, aya::Endianness::default())
        .map_err(LoadError::AyaBtf)?;

    loader
        .override_global(CONFIG_GLOBAL, &offsets, true)
        .map_max_entries(EVENTS_MAP, settings.ring_buffer_bytes);
    if let Some(pin) = &settings.containers_pin {
        loader.map_pin_path(CONTAINERS_MAP, pin.as_path());
    }
    let mut ebpf = loader.load(EBPF_OBJECT).map_err(|source| {
        let euid = rustix::process::geteuid().as_raw();
        if euid != 0 {
            LoadError::NotPermitted { euid, source }
        } else {
            LoadError::Load(source)
        }
    })?;

    let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
        Ok(logger) => Some(logger),
        Err(error) => {
            warn!(%error, "eBPF-side logging unavailable");
            None
        }
    };

    for (name, tracepoint) in PROGRAMS {
        attach(&mut ebpf, &aya_btf, name, tracepoint)?;
    }
    // The parsed BTF is not needed any more: give its memory back before
    // the ring buffer's pages are mapped, so the two never add up.
    drop(aya_btf);
    release_freed_heap();

    let ring = take_map(&mut ebpf, EVENTS_MAP)?;
    let drops = take_map(&mut ebpf, DROPS_MAP)?;
    let containers = take_map(&mut ebpf, CONTAINERS_MAP)?;
    info!(
        programs = PROGRAMS.len(),
        ring_buffer_bytes = settings.ring_buffer_bytes,
        "eBPF programs loaded and attached"
    );
    Ok(Loaded {
        ebpf,
        ring,
        drops,
        containers,
        logger,
    })
}

/// Hands memory freed on the heap back to the kernel. Parsing the kernel
/// BTF (offsets, then aya's loader) peaks at tens of MiB that are free once
/// the programs are attached; glibc keeps such memory for reuse unless
/// asked, and the agent would carry it for its whole life.
fn release_freed_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only walks and trims glibc's own arenas.
    unsafe {
        libc::malloc_trim(0);
    }
}

fn attach(
    ebpf: &mut Ebpf,
    btf: &aya::Btf,
    name: &'static str,
    tracepoint: &'static str,
) -> Result<(), LoadError> {
    let err = |source| LoadError::Program {
        name,
        tracepoint,
        source,
    };
    let program: &mut BtfTracePoint = ebpf
        .program_mut(name)
        .ok_or(LoadError::MissingProgram { name })?
        .try_into()
        .map_err(err)?;
    program.load(tracepoint, btf).map_err(err)?;
    program.attach().map_err(err)?;
    debug!(program = name, tracepoint, "attached");
    Ok(())
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, LoadError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(LoadError::Map {
        name,
        source: MapError::InvalidName {
            name: name.to_owned(),
        },
    })?;
    T::try_from(map).map_err(|source| LoadError::Map { name, source })
}

/// Forwards `aya-log` records from the programs to the `log` facade (and so
/// to tracing) until `shutdown`. Losing the programs' logs is not worth
/// stopping the agent for: on a poll error it warns and idles until
/// `shutdown`.
pub(crate) async fn run_logger(
    logger: aya_log::EbpfLogger<&'static dyn log::Log>,
    shutdown: CancellationToken,
) {
    let mut fd = match ring::register(logger) {
        Ok(fd) => fd,
        Err(error) => {
            warn!(%error, "cannot poll the eBPF log buffer; eBPF-side logs are lost");
            shutdown.cancelled().await;
            return;
        }
    };
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            ready = fd.readable_mut() => match ready {
                Ok(mut guard) => {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                Err(error) => {
                    warn!(%error, "eBPF log buffer poll failed; eBPF-side logs are lost");
                    shutdown.cancelled().await;
                    break;
                }
            },
        }
    }
}
