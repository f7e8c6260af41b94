//! Command-line definitions of the binaries: clap derive structs whose doc
//! comments are the help text, and value parsers that reject bad input naming
//! the flag and the accepted range. No I/O here.
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
