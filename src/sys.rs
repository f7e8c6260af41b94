//! The one wrapper every raw libc call goes through, plus the few syscalls the
//! rest of the crate needs (eventfd, rlimit). Nothing here knows about echo.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

/// Calls a libc function and turns its `-1` into `io::Error::last_os_error()`.
///
/// Every call site passes plain values or pointers derived from live Rust
/// references (slices, `&mut` locals) sized by the same reference, which is what
/// makes the call sound; the macro only converts the C error convention.
macro_rules! syscall {
    ($fn: ident ( $($arg: expr),* $(,)* ) ) => {{
        #[allow(unused_unsafe)]
        // SAFETY: see the macro's doc: arguments are values or pointers from live
        // references with matching lengths.
        let res = unsafe { libc::$fn($($arg, )*) };
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

/// A non-blocking eventfd, used to wake a worker blocked in the kernel.
pub fn eventfd() -> io::Result<OwnedFd> {
    let fd = syscall!(eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))?;
    // SAFETY: `eventfd` just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds 1 to an eventfd's counter, waking whoever waits on it.
pub fn eventfd_signal(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    let one: u64 = 1;
    use std::os::fd::AsRawFd;
    syscall!(write(fd.as_raw_fd(), (&one as *const u64).cast(), 8))?;
    Ok(())
}

/// Reads (and so resets) an eventfd's counter; `Ok(None)` when nothing was signalled.
pub fn eventfd_drain(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<Option<u64>> {
    let mut value: u64 = 0;
    use std::os::fd::AsRawFd;
    match syscall!(read(fd.as_raw_fd(), (&mut value as *mut u64).cast(), 8)) {
        Ok(_) => Ok(Some(value)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// The soft limit on open files (RLIMIT_NOFILE). The kernel also caps a ring's
/// table of direct descriptors at this value, per ring.
pub fn open_files_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    match syscall!(getrlimit(libc::RLIMIT_NOFILE, &mut lim)) {
        Ok(_) => lim.rlim_cur,
        Err(_) => 1024,
    }
}

/// Ignores SIGPIPE process-wide: a write to a peer that reset must be an `EPIPE`
/// for the one connection, not a signal that kills the server.
pub fn ignore_sigpipe() {
    // SAFETY: SIG_IGN is a valid disposition for SIGPIPE and installing it has no
    // preconditions; it races with nothing because it is done before threads start.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Number of CPUs this process may run on (its affinity mask), at least 1.
pub fn available_cpus() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// `recv(2)` into a slice, MSG_DONTWAIT.
pub fn recv_into(fd: std::os::fd::RawFd, buf: &mut [u8]) -> io::Result<usize> {
    let n = syscall!(recv(
        fd,
        buf.as_mut_ptr().cast(),
        buf.len(),
        libc::MSG_DONTWAIT
    ))?;
    Ok(n as usize)
}

/// `send(2)` from a slice, MSG_DONTWAIT | MSG_NOSIGNAL: a reset peer is an
/// error for this connection, not a SIGPIPE for the process.
pub fn send_from(fd: std::os::fd::RawFd, buf: &[u8]) -> io::Result<usize> {
    let n = syscall!(send(
        fd,
        buf.as_ptr().cast(),
        buf.len(),
        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL
    ))?;
    Ok(n as usize)
}

/// `shutdown(fd, SHUT_WR)`: sends FIN, keeps reading possible.
pub fn shutdown_write(fd: std::os::fd::RawFd) -> io::Result<()> {
    syscall!(shutdown(fd, libc::SHUT_WR))?;
    Ok(())
}

/// `accept4` with SOCK_NONBLOCK | SOCK_CLOEXEC.
pub fn accept_nonblocking(listener: std::os::fd::RawFd) -> io::Result<OwnedFd> {
    let fd = syscall!(accept4(
        listener,
        std::ptr::null_mut(),
        std::ptr::null_mut(),
        libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC
    ))?;
    // SAFETY: accept4 just returned this descriptor and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Raises the soft open-files limit to the hard one and returns the new soft
/// limit. The load generator needs it high: the kernel caps each ring's table of
/// direct descriptors at this value.
pub fn raise_open_files_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    if syscall!(getrlimit(libc::RLIMIT_NOFILE, &mut lim)).is_ok() && lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        let _ = syscall!(setrlimit(libc::RLIMIT_NOFILE, &raised));
    }
    open_files_limit()
}

/// IP_BIND_ADDRESS_NO_PORT: a `bind` to (address, port 0) picks the port only at
/// `connect`, from the full 4-tuple, so one source address can serve ~28,000
/// connections *per destination* instead of ~28,000 in total.
pub fn set_bind_address_no_port(fd: std::os::fd::RawFd) -> io::Result<()> {
    set_socket_option(
        fd,
        libc::IPPROTO_IP,
        libc::IP_BIND_ADDRESS_NO_PORT,
        &(1 as libc::c_int),
    )
}

/// `setsockopt(2)` with a value of the option's C type (`c_int`, a struct),
/// passed by pointer and size from one reference, so the two always agree.
fn set_socket_option<T>(
    fd: std::os::fd::RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    syscall!(setsockopt(
        fd,
        level,
        name,
        (value as *const T).cast(),
        std::mem::size_of::<T>() as libc::socklen_t
    ))?;
    Ok(())
}

/// This process's CPU time so far (all threads), as (user, system) seconds.
pub fn cpu_time() -> (f64, f64) {
    // SAFETY: `rusage` is plain old data; all-zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if syscall!(getrusage(libc::RUSAGE_SELF, &mut usage)).is_err() {
        return (0.0, 0.0);
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(usage.ru_utime), secs(usage.ru_stime))
}

/// An empty `msghdr` (its padding fields are private on some targets, so it
/// cannot be written as a literal).
pub fn zeroed_msghdr() -> libc::msghdr {
    // SAFETY: msghdr is plain C data; all-zero is a valid empty header.
    unsafe { std::mem::zeroed() }
}

/// `sendmsg(2)` of several slices at once (a gathered write), MSG_DONTWAIT |
/// MSG_NOSIGNAL.
pub fn send_vectored(fd: std::os::fd::RawFd, bufs: &[std::io::IoSlice<'_>]) -> io::Result<usize> {
    let mut msg = zeroed_msghdr();
    // `IoSlice` is guaranteed ABI-compatible with `iovec` on Unix; the kernel
    // only reads through the pointer.
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = bufs.len() as _;
    let n = syscall!(sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL))?;
    Ok(n as usize)
}

/// Pins the calling thread to one CPU (`sched_setaffinity` on thread id 0,
/// which means "this thread"). Threads it spawns later inherit the mask.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: `cpu_set_t` is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` < CPU_SETSIZE (checked above), the number of bits in `set`,
    // so CPU_SET writes inside the local `set`.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    syscall!(sched_setaffinity(
        0,
        std::mem::size_of::<libc::cpu_set_t>(),
        &set
    ))?;
    Ok(())
}

/// The CPUs this process may run on (its affinity mask: taskset, a cgroup
/// cpuset), ascending.
pub fn allowed_cpus() -> io::Result<Vec<usize>> {
    // SAFETY: `cpu_set_t` is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    syscall!(sched_getaffinity(
        0,
        std::mem::size_of::<libc::cpu_set_t>(),
        &mut set
    ))?;
    Ok((0..libc::CPU_SETSIZE as usize)
        // SAFETY: `cpu` < CPU_SETSIZE, the number of bits in the local `set`.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect())
}

/// The CPUs the kernel has online (`/sys/devices/system/cpu/online`, in the
/// kernel's list form, `0-7`); `None` where it cannot be read.
pub fn online_cpus() -> Option<Vec<usize>> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").ok()?;
    crate::cpus::CpuList::parse(text.trim())
        .ok()
        .map(|list| list.cpus().to_vec())
}

/// The kernel's thread id of the calling thread (what `/proc/self/task/`
/// lists).
pub fn thread_id() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

/// Attaches a classic BPF program to a SO_REUSEPORT socket's group
/// (`SO_ATTACH_REUSEPORT_CBPF`, Linux 4.5+): from then on the kernel runs it
/// for each incoming connection (TCP) or datagram (UDP) and hands it to the
/// group's socket at the index the program returns; an index past the group's
/// end falls back to the usual hash. One socket's attach applies to the group.
pub fn attach_reuseport_cbpf(
    fd: std::os::fd::RawFd,
    program: &[libc::sock_filter],
) -> io::Result<()> {
    let len =
        u16::try_from(program.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let fprog = libc::sock_fprog {
        len,
        // The kernel copies the program during the call and never writes it;
        // the pointer is mutable only because the C struct says so.
        filter: program.as_ptr().cast_mut(),
    };
    set_socket_option(fd, libc::SOL_SOCKET, libc::SO_ATTACH_REUSEPORT_CBPF, &fprog)
}

/// Which of `fds` are readable (for a listener: a connection is waiting),
/// waiting up to `timeout` for the first. `poll(2)`.
pub fn poll_readable(
    fds: &[std::os::fd::RawFd],
    timeout: std::time::Duration,
) -> io::Result<Vec<bool>> {
    let mut polled: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let millis = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    syscall!(poll(
        polled.as_mut_ptr(),
        polled.len() as libc::nfds_t,
        millis
    ))?;
    Ok(polled
        .iter()
        .map(|p| p.revents & libc::POLLIN != 0)
        .collect())
}
