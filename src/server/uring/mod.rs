//! The io_uring backend: one ring per worker thread, multishot accept straight
//! into the ring's table of direct descriptors, multishot receive from a
//! registered provided-buffer ring, and the received buffer sent back as is.
//!
//! - [`worker`]: the event loop.
//! - [`conn`]: one connection's state, and `next_step`, its transitions.
//! - [`udp`]: UDP echo on the same ring.
//! - [`wait_policy`]: when a wait asks for a batch of completions, and
//!   [`batch_trial`]: whether batching pays at all here, found by trying it.
//! - [`op_kind`]: the kinds of operation the worker submits.
//! - this file: setting up one worker's ring on [`crate::ring`], the shared
//!   layer that submits every operation, owns the memory they point into and
//!   holds the only `unsafe` code; everything here says
//!   `#![forbid(unsafe_code)]`.
//!
//! Terms used in this module: SQE/CQE are submission/completion queue entries;
//! a *direct descriptor* is a slot in the ring's own file table (not the
//! process's fd table); *bgid* is the id of a provided-buffer group.
#![forbid(unsafe_code)]

pub mod batch_trial;
pub mod conn;
pub mod op_kind;
pub mod udp;
pub mod wait_policy;
pub mod worker;
pub mod zc_sends;

use crate::ring::setup::{self, RingFlags, SetupError};
use crate::ring::{self, Ring};

use crate::server::config::{Config, WaitBatch};

/// The buffer group every receive names.
pub const BGID: u16 = 0;

/// A worker's ring, buffers and descriptor table, set up in the thread that runs
/// them (SINGLE_ISSUER and the registered ring fd bind the ring to that thread).
pub struct RingParts {
    pub ring: Ring,
    /// The receive buffers' group in `ring`.
    pub bufs: ring::BufGroup,
    pub flags: RingFlags,
    /// Slots in the direct-descriptor table: the most connections this worker holds.
    pub table_slots: u32,
    /// Receive with bundles: asked for, and the kernel has them (6.10+).
    pub recv_bundle: bool,
    /// How the worker waits under load: as configured, or off where the
    /// kernel lacks min-wait (6.12).
    pub wait: WaitBatch,
}

/// Builds and registers everything one worker needs.
pub fn setup_worker(config: &Config) -> Result<RingParts, SetupError> {
    let (ring, flags) = setup::build_ring(config.sq_entries, config.cq_entries)?;
    setup::check_features(&ring, &setup::SERVER_OPS, false)?;
    let wait = match (
        config.wait.batch > 1,
        ring.params().is_feature_min_timeout(),
    ) {
        (true, false) if config.wait_explicit => {
            return Err(SetupError::UnsupportedKernel {
                feature: "min-wait, which --wait-batch and --min-wait use,",
                needs: "6.12",
                running: setup::kernel_version()
                    .map(|(a, b)| format!("{a}.{b}"))
                    .unwrap_or_default(),
            });
        }
        // The default falls back to waiting for the first completion; the
        // start line says so.
        (true, false) => WaitBatch::OFF,
        _ => config.wait,
    };
    if config.send_zc.is_some() {
        setup::check_send_zc(&ring)?;
    }
    let table_slots = direct_table_slots(config, crate::sys::open_files_limit());
    ring.submitter()
        .register_files_sparse(table_slots)
        .map_err(|err| SetupError::Io {
            what: "registering the direct-descriptor table",
            err,
        })?;
    let mut ring = Ring::new(ring);
    let bufs = ring
        .register_buffers(BGID, config.buf_count, config.buf_size_bytes)
        .map_err(|err| match err.raw_os_error() {
            Some(libc::EINVAL) => SetupError::UnsupportedKernel {
                feature: "provided buffer rings",
                needs: "5.19",
                running: setup::kernel_version()
                    .map(|(a, b)| format!("{a}.{b}"))
                    .unwrap_or_default(),
            },
            _ => SetupError::Io {
                what: "registering the buffer ring",
                err,
            },
        })?;
    let recv_bundle = config.recv_bundle && ring.io_uring().params().is_feature_recvsend_bundle();
    if recv_bundle {
        ring.buffers_mut(bufs).track_bundles();
    }
    Ok(RingParts {
        ring,
        bufs,
        flags,
        table_slots,
        recv_bundle,
        wait,
    })
}

/// Slots a ring's table is given at most, whatever RLIMIT_NOFILE allows: the
/// table is allocated up front, and more would be memory no benchmark uses.
pub const MAX_TABLE_SLOTS: u32 = 1 << 20;

/// The kernel caps a ring's direct-descriptor table at RLIMIT_NOFILE (per ring,
/// not per process), so each worker can hold up to that many connections while
/// the process's own fd table stays nearly empty.
pub fn direct_table_slots(config: &Config, open_files_limit: u64) -> u32 {
    let limit = open_files_limit.min(u64::from(MAX_TABLE_SLOTS));
    limit.min(config.max_conns as u64).max(1) as u32
}
