//! Ring setup and the kernel feature probe: which ring flags this kernel takes,
//! whether the operations the event loop uses exist, and what to tell the user
//! when io_uring is missing or blocked.

use std::fmt;
use std::io;

use io_uring::{IoUring, Probe, opcode};

/// Why the io_uring backend cannot run here.
#[derive(Debug)]
pub enum SetupError {
    /// io_uring_setup itself failed: the kernel lacks io_uring or it is blocked.
    Unavailable { err: io::Error, cause: String },
    /// The kernel has io_uring but not a feature the event loop needs.
    UnsupportedKernel {
        feature: &'static str,
        needs: &'static str,
        running: String,
    },
    /// Anything else (memory, limits) while setting the ring up.
    Io { what: &'static str, err: io::Error },
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetupError::Unavailable { err, cause } => write!(
                f,
                "io_uring is not available: io_uring_setup failed: {err}. Likely cause: {cause}. \
                 Run with --backend epoll to use the epoll backend instead"
            ),
            SetupError::UnsupportedKernel {
                feature,
                needs,
                running,
            } => write!(
                f,
                "this kernel ({running}) lacks io_uring {feature}, which needs Linux {needs} or newer. \
                 Upgrade the kernel, or run with --backend epoll"
            ),
            SetupError::Io { what, err } => write!(f, "io_uring setup: {what}: {err}"),
        }
    }
}

impl std::error::Error for SetupError {}

/// The ring flags this kernel took, reported in the start-up line.
#[derive(Clone, Copy, Debug, Default)]
pub struct RingFlags {
    /// IORING_SETUP_SINGLE_ISSUER (6.0): only this thread submits, so the kernel
    /// skips the locking that sharing a ring between threads would need.
    pub single_issuer: bool,
    /// IORING_SETUP_DEFER_TASKRUN (6.1): completion work runs when we wait for
    /// completions, in batches, instead of interrupting us after every syscall.
    pub defer_taskrun: bool,
    /// IORING_SETUP_COOP_TASKRUN (5.19): the fallback when DEFER_TASKRUN is missing;
    /// no IPI to interrupt the thread for each completion.
    pub coop_taskrun: bool,
    /// The ring fd is registered (5.18), sparing a file lookup on every enter.
    pub registered_ring_fd: bool,
}

impl fmt::Display for RingFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names = Vec::new();
        if self.single_issuer {
            names.push("single_issuer");
        }
        if self.defer_taskrun {
            names.push("defer_taskrun");
        }
        if self.coop_taskrun {
            names.push("coop_taskrun");
        }
        if self.registered_ring_fd {
            names.push("registered_ring_fd");
        }
        write!(f, "{}", names.join(","))
    }
}

/// Builds a ring with the best flags the kernel takes, falling back step by step.
pub fn build_ring(sq_entries: u32, cq_entries: u32) -> Result<(IoUring, RingFlags), SetupError> {
    // DEFER_TASKRUN requires SINGLE_ISSUER; both need a kernel the fallbacks do not.
    type Attempt = (RingFlags, fn(&mut io_uring::Builder));
    let attempts: [Attempt; 3] = [
        (
            RingFlags {
                single_issuer: true,
                defer_taskrun: true,
                ..RingFlags::default()
            },
            |b| {
                b.setup_single_issuer()
                    .setup_defer_taskrun()
                    .setup_taskrun_flag();
            },
        ),
        (
            RingFlags {
                coop_taskrun: true,
                ..RingFlags::default()
            },
            |b| {
                b.setup_coop_taskrun().setup_taskrun_flag();
            },
        ),
        (RingFlags::default(), |_| {}),
    ];
    // TASKRUN_FLAG (5.19, with either TASKRUN mode) makes the kernel raise
    // IORING_SQ_TASKRUN in the shared ring while completion work waits to run,
    // which is how a busy-polling worker sees it without a syscall.
    let mut last_err = None;
    for (flags, apply) in attempts {
        let mut builder = IoUring::builder();
        // CQ far larger than SQ: multishot receives post many completions per
        // submission. If it still overflows, the kernel (FEAT_NODROP, 5.5)
        // keeps the extra completions and ends the multishot ops, which the
        // event loop re-arms.
        builder.setup_cqsize(cq_entries).setup_clamp();
        apply(&mut builder);
        match builder.build(sq_entries) {
            Ok(ring) => {
                let mut flags = flags;
                flags.registered_ring_fd = ring.submitter().register_ring_fd().is_ok();
                return Ok((ring, flags));
            }
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => last_err = Some(err),
            Err(err) => return Err(unavailable(err)),
        }
    }
    Err(unavailable(last_err.expect("at least one attempt")))
}

fn unavailable(err: io::Error) -> SetupError {
    let cause = match err.raw_os_error() {
        Some(libc::ENOSYS) => "the kernel was built without io_uring (CONFIG_IO_URING), or a \
                               seccomp filter (a container runtime's profile) answers ENOSYS for it"
            .to_string(),
        Some(libc::EPERM) => {
            let sysctl = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into());
            format!(
                "kernel.io_uring_disabled is {sysctl} (1 allows only the io_uring_group, 2 disables it), \
                 or a seccomp filter blocks io_uring_setup (Docker's default profile does since 25.0)"
            )
        }
        Some(libc::ENOMEM) => "not enough locked memory: kernels before 5.12, and again from \
                               about 6.14, charge ring memory to RLIMIT_MEMLOCK per user unless the \
                               process has CAP_IPC_LOCK (raise `ulimit -l`, or use fewer --workers)"
            .to_string(),
        Some(libc::EMFILE) | Some(libc::ENFILE) => "the open-files limit is reached".to_string(),
        _ => "unexpected error from io_uring_setup".to_string(),
    };
    SetupError::Unavailable { err, cause }
}

/// The running kernel's release, e.g. (6, 18) from "6.18.44-...".
pub fn kernel_version() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    parse_release(&release)
}

fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.trim().split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// An io_uring operation a ring user needs: its opcode, its name in messages,
/// and the kernel release that brought it.
pub type NeededOp = (u8, &'static str, &'static str);

/// What the server's event loop submits.
pub const SERVER_OPS: [NeededOp; 8] = [
    (opcode::AcceptMulti::CODE, "accept", "5.5"),
    (opcode::RecvMulti::CODE, "recv", "5.6"),
    (opcode::Send::CODE, "send", "5.6"),
    (opcode::Close::CODE, "close", "5.6"),
    (opcode::Shutdown::CODE, "shutdown", "5.11"),
    (opcode::AsyncCancel::CODE, "async cancel", "5.5"),
    (opcode::Read::CODE, "read", "5.6"),
    (opcode::Timeout::CODE, "timeout", "5.4"),
];

/// What the load generator's engine submits.
pub const LOADGEN_OPS: [NeededOp; 6] = [
    (opcode::Connect::CODE, "connect", "5.5"),
    (opcode::RecvMulti::CODE, "recv", "5.6"),
    (opcode::Send::CODE, "send", "5.6"),
    (opcode::SendMsg::CODE, "sendmsg", "5.3"),
    (opcode::Close::CODE, "close", "5.6"),
    (opcode::AsyncCancel::CODE, "async cancel", "5.5"),
];

/// Checks that the kernel has every operation in `ops`, and what every ring
/// user needs: multishot receive (6.0, which also brings multishot accept into
/// direct descriptors, buffer rings and cancel-any for teardown, all 5.19)
/// and, with `ext_arg`, waits with a timeout (EXT_ARG, 5.11). Opcodes are
/// probed; the multishot flags cannot be, so they are checked against the
/// kernel version that introduced them.
pub fn check_features(ring: &IoUring, ops: &[NeededOp], ext_arg: bool) -> Result<(), SetupError> {
    let running = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into());
    let lacks = |feature, needs| SetupError::UnsupportedKernel {
        feature,
        needs,
        running: running.clone(),
    };
    if ext_arg && !ring.params().is_feature_ext_arg() {
        return Err(lacks("EXT_ARG waits", "5.11"));
    }
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|_| lacks("opcode probing", "5.6"))?;
    for &(code, feature, needs) in ops {
        if !probe.is_supported(code) {
            return Err(lacks(feature, needs));
        }
    }
    if kernel_version().is_some_and(|v| v < (6, 0)) {
        return Err(lacks("multishot receive", "6.0"));
    }
    Ok(())
}

/// Checks what `--send-zc` needs: the zero-copy send opcodes (SEND_ZC 6.0,
/// SENDMSG_ZC 6.1), probed, and the usage report of their notifications
/// (6.2), which cannot be probed and is checked against the version.
pub fn check_send_zc(ring: &IoUring) -> Result<(), SetupError> {
    const ZC_OPS: [NeededOp; 2] = [
        (
            opcode::SendZc::CODE,
            "zero-copy send (SEND_ZC), which --send-zc uses,",
            "6.0",
        ),
        (
            opcode::SendMsgZc::CODE,
            "zero-copy sendmsg (SENDMSG_ZC), which --send-zc uses,",
            "6.1",
        ),
    ];
    check_features(ring, &ZC_OPS, false)?;
    if kernel_version().is_some_and(|v| v < (6, 2)) {
        return Err(SetupError::UnsupportedKernel {
            feature: "zero-copy usage reports (IORING_SEND_ZC_REPORT_USAGE), which --send-zc uses,",
            needs: "6.2",
            running: kernel_version()
                .map(|(a, b)| format!("{a}.{b}"))
                .unwrap_or_default(),
        });
    }
    Ok(())
}

/// Offset of `len` in `struct io_uring_sqe`: after opcode (1), flags (1),
/// ioprio (2), fd (4), off (8) and addr (8).
pub const SQE_LEN_OFFSET: usize = 24;
/// Offset of `optlen` (a union with `file_index` and `splice_fd_in`), after
/// len, op flags (4), user_data (8), buf_group (2) and personality (2).
pub const SQE_OPTLEN_OFFSET: usize = 44;

/// Sets a 32-bit field of an SQE that the io-uring crate's builders do not
/// expose (0.7.16 has `len` on `RecvMulti` but not on `RecvMultiBundle`, and
/// nothing for `optlen`, nor a setter for `ioprio` that would let the bundle
/// flag ride on `RecvMulti`). The one wrapper that does; only `ring/mod.rs` calls
/// it, and `ring::tests::the_kernel_ends_a_multishot_receive_at_its_total_byte_limit`
/// checks that the kernel honours what it writes:
/// - `len` of a receive bundle caps the bytes, so the buffers, one completion
///   may take (6.10+);
/// - `optlen` of a multishot receive caps the bytes it takes in total before
///   it ends itself (6.17+; older kernels refuse it with EINVAL).
pub fn with_sqe_u32(
    entry: io_uring::squeue::Entry,
    offset: usize,
    value: u32,
) -> io_uring::squeue::Entry {
    assert!(offset == SQE_LEN_OFFSET || offset == SQE_OPTLEN_OFFSET);
    // SAFETY: `Entry` is `#[repr(C)]` around the 64-byte `io_uring_sqe`, plain
    // data with no invalid bit patterns; transmute checks the sizes match.
    let mut raw: [u8; 64] = unsafe { std::mem::transmute(entry) };
    raw[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
    // SAFETY: as above; only one 32-bit field changed.
    unsafe { std::mem::transmute::<[u8; 64], io_uring::squeue::Entry>(raw) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_releases_parse_with_distro_suffixes() {
        assert_eq!(parse_release("6.18.44-fc-v595\n"), Some((6, 18)));
        assert_eq!(parse_release("5.15.0-91-generic"), Some((5, 15)));
        assert_eq!(parse_release("6.1-rc3"), Some((6, 1)));
        assert_eq!(parse_release("garbage"), None);
    }

    #[test]
    fn with_sqe_u32_sets_only_that_field() {
        let entry = opcode::RecvMultiBundle::new(io_uring::types::Fixed(7), 3)
            .build()
            .user_data(99);
        // SAFETY: Entry is a 64-byte repr(C) plain-data struct.
        let before: [u8; 64] = unsafe { std::mem::transmute(entry.clone()) };
        // SAFETY: as above.
        let after: [u8; 64] =
            unsafe { std::mem::transmute(with_sqe_u32(entry, SQE_OPTLEN_OFFSET, 0x0102_0304)) };
        assert_eq!(&after[44..48], &0x0102_0304u32.to_ne_bytes());
        assert_eq!(before[..44], after[..44]);
        assert_eq!(before[48..], after[48..]);
    }

    #[test]
    fn unavailable_names_the_sysctl_and_the_fallback() {
        let e = unavailable(io::Error::from_raw_os_error(libc::EPERM));
        let msg = e.to_string();
        assert!(msg.contains("io_uring_disabled"), "{msg}");
        assert!(msg.contains("--backend epoll"), "{msg}");
    }
}
