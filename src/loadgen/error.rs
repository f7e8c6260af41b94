//! The one error type of the load generator's library: what went wrong, by
//! stage, with a one-line message that already names the flag or the thread
//! involved. The binary prints it and picks the exit status; nothing here
//! decides either.
#![forbid(unsafe_code)]

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// `--target` or `--source-addrs`: resolving, or nothing answering there.
    Target(String),
    /// A ring, a thread or its pinning could not be set up.
    Setup(String),
    /// The load itself failed (an engine thread's ring, or no connection at all).
    Run(String),
    /// A `merge` input that is not a result, or results that cannot be merged.
    Merge(String),
}

impl Error {
    /// The same error, its message prefixed with where it happened.
    pub fn context(self, at: impl fmt::Display) -> Error {
        let with = |m: String| format!("{at}: {m}");
        match self {
            Error::Target(m) => Error::Target(with(m)),
            Error::Setup(m) => Error::Setup(with(m)),
            Error::Run(m) => Error::Run(with(m)),
            Error::Merge(m) => Error::Merge(with(m)),
        }
    }

    fn message(&self) -> &str {
        match self {
            Error::Target(m) | Error::Setup(m) | Error::Run(m) | Error::Merge(m) => m,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_prefixes_the_message_and_keeps_the_stage() {
        let e =
            Error::Setup("registering the receive buffer ring: ENOMEM".into()).context("thread 3");
        assert_eq!(
            e.to_string(),
            "thread 3: registering the receive buffer ring: ENOMEM"
        );
        assert!(matches!(e, Error::Setup(_)));
    }
}
