//! The server's table of operation kinds: the kind byte of its `user_data`
//! (the codec and its layout are `ring::user_data`'s).
#![forbid(unsafe_code)]

use crate::ring::user_data::kind_table;

kind_table! {
    /// What an operation was; the completion handler dispatches on it.
    pub enum OpKind {
        /// Multishot accept on the worker's listener.
        Accept = 1,
        /// Multishot receive on a connection, from the buffer ring.
        Recv = 2,
        /// A send of (part of) one received buffer.
        Send = 3,
        /// Shutdown(SHUT_WR) during a graceful stop.
        Shutdown = 4,
        /// Close of a connection's direct descriptor.
        Close = 5,
        /// Close of a descriptor refused at accept (over --max-conns): no slab slot.
        CloseRejected = 6,
        /// A cancel request (its own completion; the cancelled op completes separately).
        Cancel = 7,
        /// Read of the worker's eventfd: a graceful stop was requested.
        Wake = 8,
        /// A timer tick while draining, to check the drain deadline.
        Tick = 9,
        /// Multishot recvmsg on the worker's UDP socket.
        UdpRecv = 10,
        /// A datagram's reply; the key is its buffer id.
        UdpSend = 11,
        /// A zero-copy send (`--send-zc`); the key is its id in the worker's
        /// `ZcSends`, which names its connection.
        SendZc = 12,
    }
}
