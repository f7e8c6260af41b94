//! io_uring blocked or missing: the server run under a seccomp filter that
//! answers io_uring's syscalls with EPERM (as Docker's default profile does)
//! or ENOSYS (as a kernel built without io_uring does). The io_uring backend
//! must fail with one clear message naming the likely cause and
//! `--backend epoll`, and a non-zero exit; the epoll backend must serve under
//! the same filter.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::seccomp::{audit_arch, install_in_child, io_uring_filter};
use common::*;

/// Runs the io_uring backend under a filter answering `errno`; returns its
/// exit code and stderr, or `None` (with the reason printed) where the filter
/// cannot be built for this architecture.
fn run_uring_blocked(errno: i32) -> Option<(Option<i32>, String)> {
    let Some(arch) = audit_arch() else {
        eprintln!("skipped: io_uring syscall numbers unknown for this architecture");
        return None;
    };
    let mut cmd = Command::new(SERVER_BIN);
    cmd.args([
        "--addr",
        "127.0.0.1",
        "--port",
        "0",
        "--backend",
        "uring",
        "--workers",
        "2",
    ])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    install_in_child(&mut cmd, io_uring_filter(arch, errno));
    let out = cmd
        .output()
        .expect("run uring-echo under the seccomp filter");
    Some((
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[test]
fn io_uring_blocked_by_seccomp_names_the_cause_and_the_epoll_fallback() {
    let Some((code, stderr)) = run_uring_blocked(libc::EPERM) else {
        return;
    };
    assert_unavailable_message(
        code,
        &stderr,
        &["Operation not permitted", "seccomp", "io_uring_disabled"],
    );
}

#[test]
fn io_uring_missing_from_the_kernel_names_the_cause_and_the_epoll_fallback() {
    let Some((code, stderr)) = run_uring_blocked(libc::ENOSYS) else {
        return;
    };
    assert_unavailable_message(code, &stderr, &["CONFIG_IO_URING"]);
}

/// uring-echo exited 1 with one line (not one per worker) that says io_uring
/// is unavailable, names each of `causes`, and points to the epoll backend.
fn assert_unavailable_message(code: Option<i32>, stderr: &str, causes: &[&str]) {
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("io_uring is not available"), "{stderr}");
    for cause in causes {
        assert!(stderr.contains(cause), "{cause:?} not named: {stderr}");
    }
    assert!(
        stderr.contains("--backend epoll"),
        "no fallback named: {stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn the_epoll_backend_serves_where_io_uring_is_blocked() {
    let Some(arch) = audit_arch() else {
        eprintln!("skipped: io_uring syscall numbers unknown for this architecture");
        return;
    };
    for errno in [libc::EPERM, libc::ENOSYS] {
        let server = Server::start_configured("epoll", &[], |cmd| {
            install_in_child(cmd, io_uring_filter(arch, errno))
        });
        let mut s = server.connect();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let msg = payload(errno as u64, 50_000);
        s.write_all(&msg).unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).unwrap();
        assert!(
            back == msg,
            "echo differs under the filter answering {errno}"
        );
        drop(s);
        let stopped = server.stop();
        assert!(stopped.status.success(), "{stopped:?}");
        assert_eq!(stopped.summary["bytes_out"], 50_000, "{stopped:?}");
        assert_eq!(stopped.summary["errors"], 0, "{stopped:?}");
    }
}

/// The filter really blocks what it claims: checked in a child of its own, so
/// that a filter that let io_uring through cannot make the tests above pass
/// for the wrong reason (for example a server that never called io_uring_setup).
#[test]
fn the_seccomp_filter_answers_io_uring_setup_with_the_chosen_errno() {
    let Some(arch) = audit_arch() else {
        eprintln!("skipped: io_uring syscall numbers unknown for this architecture");
        return;
    };
    // `python3 -c` makes the raw syscall; skip where there is no python3.
    if Command::new("python3")
        .arg("-c")
        .arg("pass")
        .status()
        .is_err()
    {
        eprintln!("skipped: python3 not found to make the raw syscall");
        return;
    }
    let probe = "import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); \
                 r = libc.syscall(425, 1, ctypes.create_string_buffer(120)); \
                 print(r, ctypes.get_errno())";
    for (errno, expected) in [(libc::EPERM, "-1 1"), (libc::ENOSYS, "-1 38")] {
        let mut cmd = Command::new("python3");
        cmd.args(["-c", probe]).stdin(Stdio::null());
        install_in_child(&mut cmd, io_uring_filter(arch, errno));
        let out = cmd.output().expect("run python3 under the filter");
        let got = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            got.trim(),
            expected,
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
