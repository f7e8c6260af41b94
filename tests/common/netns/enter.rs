//! Moving one thread between network namespaces: setns(2), and the guard
//! that moves it back. Opening the namespaces is `Topology::enter`'s.

/// The calling thread's way back to the namespace it was in before
/// [`super::Topology::enter`]; dropping it returns there.
#[derive(Debug)]
pub struct NetnsGuard {
    pub(super) home: std::fs::File,
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        // It can hardly fail (the file is open, we are root); a panic here
        // while unwinding would abort, so it is said instead.
        if let Err(e) = set_thread_netns(&self.home) {
            eprintln!("netns: cannot return this thread to its network namespace: {e}");
        }
    }
}

/// setns(2) of the calling thread into the network namespace `ns` refers to.
pub(super) fn set_thread_netns(ns: &std::fs::File) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: `ns` is an open file for the whole call, so its descriptor is
    // valid; setns(2) reads nothing from our memory and changes only this
    // thread's network namespace, which no Rust invariant depends on.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
