//! A thin owner of an epoll instance: create, register, wait. Nothing about
//! connections or echo lives here.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

pub struct Poller {
    epfd: OwnedFd,
}

/// Interest for a connection: edge-triggered, so a socket is reported once per
/// new readiness and its registration never changes (no epoll_ctl per message).
pub const CONN_INTEREST: u32 =
    (libc::EPOLLIN | libc::EPOLLOUT | libc::EPOLLRDHUP | libc::EPOLLET) as u32;
/// Interest for listeners and the waker: level-triggered, so a partial accept
/// burst is reported again on the next wait.
pub const LEVEL_READ: u32 = libc::EPOLLIN as u32;

impl Poller {
    pub fn new() -> io::Result<Poller> {
        let fd = syscall!(epoll_create1(libc::EPOLL_CLOEXEC))?;
        // SAFETY: epoll_create1 just returned this descriptor; nothing else owns it.
        let epfd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Poller { epfd })
    }

    pub fn add(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        syscall!(epoll_ctl(
            self.epfd.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            fd,
            &mut ev
        ))?;
        Ok(())
    }

    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        syscall!(epoll_ctl(
            self.epfd.as_raw_fd(),
            libc::EPOLL_CTL_DEL,
            fd,
            std::ptr::null_mut()
        ))?;
        Ok(())
    }

    /// Waits for events; `None` blocks. Returns how many of `events` were filled.
    pub fn wait(
        &self,
        events: &mut [libc::epoll_event],
        timeout: Option<Duration>,
    ) -> io::Result<usize> {
        // `Duration::as_millis` truncates: round up so a 0.5 ms timeout does not spin.
        let ms = timeout.map_or(-1, |t| {
            t.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32
        });
        match syscall!(epoll_wait(
            self.epfd.as_raw_fd(),
            events.as_mut_ptr(),
            events.len() as i32,
            ms
        )) {
            Ok(n) => Ok(n as usize),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(0),
            Err(e) => Err(e),
        }
    }
}
