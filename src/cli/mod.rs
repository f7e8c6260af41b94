//! Command-line definitions of the binaries: clap derive structs whose doc
//! comments are the help text, and value parsers that reject bad input naming
//! the flag and the accepted range. No I/O here, but for resolving a host
//! name given as an address (once, at parse time).
#![forbid(unsafe_code)]

pub mod loadgen;
pub mod server;

/// A clap value parser for a u32 that must be a power of two within a range.
pub fn power_of_two_u32(min: u32, max: u32) -> impl Fn(&str) -> Result<u32, String> + Clone {
    move |s: &str| {
        let v: u32 = s.parse().map_err(|_| {
            format!("'{s}' is not a number (expected a power of two in {min}..={max})")
        })?;
        if !v.is_power_of_two() || v < min || v > max {
            return Err(format!("{v} is not a power of two in {min}..={max}"));
        }
        Ok(v)
    }
}

/// A clap value parser for a duration in (fractional) seconds within a range.
pub fn seconds(min: f64, max: f64) -> impl Fn(&str) -> Result<std::time::Duration, String> + Clone {
    move |s: &str| {
        let v: f64 = s
            .parse()
            .map_err(|_| format!("'{s}' is not a number of seconds (expected {min}..={max})"))?;
        if !v.is_finite() || v < min || v > max {
            return Err(format!("{v} is not in {min}..={max} seconds"));
        }
        Ok(std::time::Duration::from_secs_f64(v))
    }
}

/// A clap value parser for a CPU list (`0-7`, `0,2,4`, `0-3,8`); clap puts the
/// flag's name in front of the error.
pub fn cpu_list(s: &str) -> Result<crate::cpus::CpuList, String> {
    crate::cpus::CpuList::parse(s)
}

/// An address as typed: an IP literal, or a host name resolved once, when the
/// flags are parsed, so the whole run uses one address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostAddr {
    /// What the user typed.
    pub given: String,
    pub ip: std::net::IpAddr,
    /// Every address the name resolved to (empty for a literal).
    pub resolved: Vec<std::net::IpAddr>,
}

impl HostAddr {
    /// `--addr localhost resolved to 127.0.0.1`, for a name; `None` for a literal.
    pub fn resolution_note(&self, flag: &str) -> Option<String> {
        if self.resolved.is_empty() {
            return None;
        }
        let mut note = format!("{flag} {} resolved to {}", self.given, self.ip);
        if self.resolved.len() > 1 {
            let all: Vec<String> = self.resolved.iter().map(|a| a.to_string()).collect();
            note.push_str(&format!(" (of {}; IPv4 first)", all.join(", ")));
        }
        Some(note)
    }
}

/// A clap value parser for an IP address or a host name. A name is resolved
/// here, once; of several addresses the first IPv4 one is taken (the default
/// listen address and clients' default target are IPv4). Something that looks
/// numeric must be a strict IP literal: the resolver would read `1.2.3` as
/// 1.2.0.3 and `0` as 0.0.0.0.
pub fn host_addr(s: &str) -> Result<HostAddr, String> {
    use std::net::{IpAddr, ToSocketAddrs};
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(HostAddr {
            given: s.to_string(),
            ip,
            resolved: Vec::new(),
        });
    }
    if s.is_empty() {
        return Err("an empty address (expected an IP address or a host name)".into());
    }
    if s.contains(':') || s.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(format!("'{s}' is not an IP address"));
    }
    let resolved: Vec<IpAddr> = (s, 0)
        .to_socket_addrs()
        .map_err(|e| format!("'{s}' is neither an IP address nor a host name that resolves: {e}"))?
        .map(|a| a.ip())
        .collect();
    let ip = resolved
        .iter()
        .find(|a| a.is_ipv4())
        .or(resolved.first())
        .copied()
        .ok_or_else(|| format!("host name '{s}' resolves to no address"))?;
    Ok(HostAddr {
        given: s.to_string(),
        ip,
        resolved,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_a_literal_or_a_name_that_resolves() {
        let lit = host_addr("::1").unwrap();
        assert_eq!(lit.ip, "::1".parse::<std::net::IpAddr>().unwrap());
        assert_eq!(lit.resolution_note("--addr"), None);
        let name = host_addr("localhost").unwrap();
        assert!(name.ip.is_loopback(), "{name:?}");
        let note = name.resolution_note("--addr").unwrap();
        assert!(note.starts_with("--addr localhost resolved to "), "{note}");
        for bad in ["", "1.2.3", "0", "256.0.0.1", "::g", "no-such-host.invalid"] {
            assert!(host_addr(bad).is_err(), "{bad}");
        }
    }
}
