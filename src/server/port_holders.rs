//! Who holds a TCP port when binding it fails with EADDRINUSE: a listener (another
//! server), or only connections, such as a client's in TIME_WAIT that used the
//! port as its local port. Read from /proc/net/tcp and tcp6 of the server's own
//! network namespace; the parsing is plain logic, tested on fixtures.
#![forbid(unsafe_code)]

/// The sockets on one local port, by TCP state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortHolders {
    pub listening: usize,
    pub time_wait: usize,
    /// Any other state: established, closing, SYN sent...
    pub other: usize,
}

/// `/proc/net/tcp` state codes (include/net/tcp_states.h).
const TCP_TIME_WAIT: u8 = 0x06;
const TCP_LISTEN: u8 = 0x0A;

impl PortHolders {
    /// Reads this namespace's TCP sockets; `None` where /proc cannot be read.
    pub fn of_port(port: u16) -> Option<PortHolders> {
        let mut holders = PortHolders::default();
        let mut read_any = false;
        for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
            if let Ok(text) = std::fs::read_to_string(table) {
                read_any = true;
                holders.add_table(&text, port);
            }
        }
        read_any.then_some(holders)
    }

    /// Counts the rows of a `/proc/net/tcp{,6}` table whose local port is `port`.
    pub fn add_table(&mut self, text: &str, port: u16) {
        for line in text.lines().skip(1) {
            let mut cols = line.split_whitespace().skip(1);
            let (Some(local), Some(_remote), Some(state)) = (cols.next(), cols.next(), cols.next())
            else {
                continue;
            };
            let local_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if local_port != Some(port) {
                continue;
            }
            match u8::from_str_radix(state, 16) {
                Ok(TCP_LISTEN) => self.listening += 1,
                Ok(TCP_TIME_WAIT) => self.time_wait += 1,
                Ok(_) => self.other += 1,
                Err(_) => {}
            }
        }
    }

    /// What to tell the user about a port that is in use.
    pub fn hint(&self, port: u16) -> String {
        if self.listening == 0 && self.time_wait + self.other > 0 {
            let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
                .map(|r| r.split_whitespace().collect::<Vec<_>>().join("-"))
                .unwrap_or_else(|_| "?".into());
            format!(
                ": no process listens on TCP port {port}, but {} connection(s) use it as their \
                 local port ({} in TIME_WAIT, which ends within 60 s; {} in other states), and a \
                 listener cannot bind beside them. Wait for them to close, or pick a --port \
                 outside the ephemeral range clients draw from (net.ipv4.ip_local_port_range \
                 {range})",
                self.time_wait + self.other,
                self.time_wait,
                self.other,
            )
        } else {
            format!(
                ": another process already listens on TCP port {port} at this address; stop it \
                 or pick another --port"
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:270F 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0100007F:9C40 0100007F:270F 06 00000000:00000000 03:00000F8F 00000000     0        0 0 3 0
   2: 0100007F:9C40 0100007F:270E 06 00000000:00000000 03:00000F8F 00000000     0        0 0 3 0
   3: 0100007F:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0
   4: 0100007F:270F 0100007F:9C41 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:9C40 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4 1 0
";

    #[test]
    fn rows_are_counted_by_the_state_of_the_sockets_on_the_port() {
        let mut h = PortHolders::default();
        h.add_table(TCP, 0x9C40);
        assert_eq!(
            h,
            PortHolders {
                listening: 0,
                time_wait: 2,
                other: 1
            }
        );
        h.add_table(TCP6, 0x9C40);
        assert_eq!(h.listening, 1);
        let mut h = PortHolders::default();
        h.add_table(TCP, 0x270F);
        assert_eq!((h.listening, h.time_wait, h.other), (1, 0, 1));
    }

    #[test]
    fn the_hint_names_time_wait_only_when_nothing_listens() {
        let tw = PortHolders {
            listening: 0,
            time_wait: 2,
            other: 0,
        };
        let hint = tw.hint(40000);
        assert!(
            hint.contains("TIME_WAIT") && hint.contains("ip_local_port_range"),
            "{hint}"
        );
        assert!(!hint.contains("already listens"), "{hint}");
        let listener = PortHolders {
            listening: 1,
            time_wait: 5,
            other: 0,
        };
        assert!(listener.hint(40000).contains("already listens"));
        assert!(PortHolders::default().hint(1).contains("already listens"));
    }
}
