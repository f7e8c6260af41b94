//! A seccomp filter that makes io_uring unavailable to a child process, the way
//! a container runtime's profile does (Docker's default answers EPERM for
//! io_uring_setup/enter/register), or the way a kernel built without io_uring
//! answers (ENOSYS). Built as a small classic-BPF program in the parent and
//! installed in the child between fork and exec. Nothing else is filtered.

use std::os::unix::process::CommandExt;
use std::process::Command;

/// io_uring's syscall numbers, the same on x86_64 and in the generic table aarch64 uses.
const SYS_IO_URING_SETUP: u32 = 425;
const SYS_IO_URING_REGISTER: u32 = 427;

// Classic BPF opcodes (linux/bpf_common.h) and seccomp constants (linux/seccomp.h).
/// BPF_LD (0x00) | BPF_W (0x00) | BPF_ABS (0x20).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_JMP_JGE_K: u16 = 0x05 | 0x30; // BPF_JMP | BPF_JGE | BPF_K
const BPF_JMP_JGT_K: u16 = 0x05 | 0x20; // BPF_JMP | BPF_JGT | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
/// `struct seccomp_data`: `int nr` at offset 0, `__u32 arch` at offset 4.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;

/// The audit architecture this test binary runs as, or `None` where the
/// syscall numbers above are not known to hold.
pub fn audit_arch() -> Option<u32> {
    if cfg!(target_arch = "x86_64") {
        Some(0xC000_003E) // AUDIT_ARCH_X86_64
    } else if cfg!(target_arch = "aarch64") {
        Some(0xC000_00B7) // AUDIT_ARCH_AARCH64
    } else {
        None
    }
}

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// A filter answering `errno` to io_uring_setup, io_uring_enter and
/// io_uring_register and allowing everything else. A syscall made under
/// another architecture (a 32-bit ABI) is allowed untouched.
pub fn io_uring_filter(arch: u32, errno: i32) -> Vec<libc::sock_filter> {
    let deny = SECCOMP_RET_ERRNO | (errno as u32 & 0xffff);
    vec![
        /* 0 */ stmt(BPF_LD_W_ABS, OFFSET_ARCH),
        /* 1 */ jump(BPF_JMP_JEQ_K, arch, 1, 0),
        /* 2 */ stmt(BPF_RET_K, SECCOMP_RET_ALLOW),
        /* 3 */ stmt(BPF_LD_W_ABS, OFFSET_NR),
        /* 4 */ jump(BPF_JMP_JGE_K, SYS_IO_URING_SETUP, 0, 2), // < 425 → allow
        /* 5 */ jump(BPF_JMP_JGT_K, SYS_IO_URING_REGISTER, 1, 0), // > 427 → allow
        /* 6 */ stmt(BPF_RET_K, deny),
        /* 7 */ stmt(BPF_RET_K, SECCOMP_RET_ALLOW),
    ]
}

/// Makes the child that `cmd` spawns run under `filter`.
pub fn install_in_child(cmd: &mut Command, filter: Vec<libc::sock_filter>) {
    // The program is built here, before the fork: the child may only make
    // async-signal-safe calls, so it must not allocate.
    let filter = filter.into_boxed_slice();
    // SAFETY: the closure runs in the forked child before exec and only calls
    // prctl(2), which is async-signal-safe. `prog` points into `filter`, which
    // the closure owns (a copy of the parent's memory in the child), so it is
    // live and of the length given for both calls.
    unsafe {
        cmd.pre_exec(move || {
            let prog = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            // An unprivileged process may install a filter only with no_new_privs set.
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
}
