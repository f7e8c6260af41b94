//! Graceful stop: SIGINT/SIGTERM set a flag and wake every worker through its
//! eventfd, whichever backend it runs (io_uring reads the eventfd with an
//! operation in the ring, epoll watches it).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};

/// Shared between the signal thread and the workers.
#[derive(Debug)]
pub struct Shutdown {
    requested: AtomicBool,
    wakers: Vec<OwnedFd>,
}

impl Shutdown {
    /// One eventfd per worker.
    pub fn new(workers: usize) -> io::Result<Arc<Shutdown>> {
        let wakers = (0..workers)
            .map(|_| crate::sys::eventfd())
            .collect::<io::Result<Vec<_>>>()?;
        Ok(Arc::new(Shutdown {
            requested: AtomicBool::new(false),
            wakers,
        }))
    }

    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    /// The eventfd worker `id` waits on.
    pub fn waker(&self, id: usize) -> &OwnedFd {
        &self.wakers[id]
    }

    /// Starts the stop: idempotent, callable from any thread.
    pub fn request(&self) {
        if !self.requested.swap(true, Ordering::AcqRel) {
            for fd in &self.wakers {
                // A full eventfd counter (EAGAIN) still wakes the reader.
                let _ = crate::sys::eventfd_signal(fd.as_fd());
            }
        }
    }
}

/// The thread that turns SIGINT/SIGTERM into `Shutdown::request`. Dropping the
/// guard stops the thread.
pub struct SignalThread {
    handle: Handle,
    thread: Option<thread::JoinHandle<()>>,
}

impl SignalThread {
    pub fn spawn(shutdown: Arc<Shutdown>) -> io::Result<SignalThread> {
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        let handle = signals.handle();
        let thread = thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                if signals.forever().next().is_some() {
                    shutdown.request();
                }
            })?;
        Ok(SignalThread {
            handle,
            thread: Some(thread),
        })
    }
}

impl Drop for SignalThread {
    fn drop(&mut self) {
        self.handle.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
