//! CPU lists as `taskset -c` and the kernel write them (`0-7`, `0,2,4`,
//! `0-3,8`): parsing, printing back in the same compact form, and the order
//! that gives worker *i* its CPU, and the check that every listed CPU is one
//! this process may run on. Pinning a thread is `sys::pin_current_thread`,
//! steering connections is `steering`.
#![forbid(unsafe_code)]

use std::fmt;

/// The kernel's `CPU_SETSIZE`: a `cpu_set_t` (and so `sched_setaffinity`
/// through libc) holds CPUs 0..1024.
pub const MAX_CPUS: usize = 1024;

/// CPUs in the order the user listed them: worker *i* runs on the *i*-th.
///
/// Invariants: not empty, no CPU twice, every CPU below [`MAX_CPUS`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CpuList(Vec<usize>);

impl CpuList {
    /// Parses `0-7`, `0,2,4`, `0-3,8` (ranges inclusive, whitespace around
    /// items allowed). A CPU listed twice is an error: two workers pinned to
    /// one CPU compete for it, and steering could reach only one of them.
    pub fn parse(s: &str) -> Result<CpuList, String> {
        let expected = "expected a CPU list like 0-7, 0,2,4 or 0-3,8";
        if s.trim().is_empty() {
            return Err(format!("an empty CPU list ({expected})"));
        }
        let mut cpus = Vec::new();
        for item in s.split(',') {
            let item = item.trim();
            let (first, last) = match item.split_once('-') {
                Some((a, b)) => (parse_cpu(a, expected)?, parse_cpu(b, expected)?),
                None => {
                    let cpu = parse_cpu(item, expected)?;
                    (cpu, cpu)
                }
            };
            if first > last {
                return Err(format!(
                    "'{item}' is a range that runs backwards ({expected})"
                ));
            }
            for cpu in first..=last {
                if cpus.contains(&cpu) {
                    return Err(format!(
                        "CPU {cpu} is listed twice: each worker needs a CPU of its own"
                    ));
                }
                cpus.push(cpu);
            }
        }
        Ok(CpuList(cpus))
    }

    /// Builds a list from CPUs the caller already knows are distinct and in
    /// range (the kernel's own affinity masks).
    pub fn from_cpus(cpus: Vec<usize>) -> Option<CpuList> {
        let distinct = cpus.iter().enumerate().all(|(i, c)| !cpus[..i].contains(c));
        (!cpus.is_empty() && distinct && cpus.iter().all(|&c| c < MAX_CPUS))
            .then_some(CpuList(cpus))
    }

    pub fn cpus(&self) -> &[usize] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true (the invariant); here because clippy expects it beside `len`.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The CPU of worker (or thread) `index`: the list is reused round-robin
    /// when there are more threads than CPUs.
    pub fn for_index(&self, index: usize) -> usize {
        self.0[index % self.0.len()]
    }

    /// Every listed CPU must be one this process may run on, or pinning fails
    /// in a thread after the sockets are set up: say so first, naming the flag.
    pub fn check_allowed(&self) -> Result<(), String> {
        let allowed = crate::sys::allowed_cpus()
            .map_err(|e| format!("--cpus: reading this process's CPU affinity: {e}"))?;
        let allowed =
            CpuList::from_cpus(allowed).ok_or("--cpus: this process may run on no CPU")?;
        let missing = self.missing_from(&allowed);
        if missing.is_empty() {
            return Ok(());
        }
        let (cpu, verb) = match missing.len() {
            1 => ("CPU", "is"),
            _ => ("CPUs", "are"),
        };
        Err(format!(
            "--cpus {self}: {cpu} {} {verb} not in this process's allowed set ({allowed}; \
             taskset, a cgroup cpuset or offline CPUs limit it)",
            format_cpus(&missing)
        ))
    }

    /// CPUs of `self` that `other` lacks, in `self`'s order.
    pub fn missing_from(&self, other: &CpuList) -> Vec<usize> {
        self.0
            .iter()
            .copied()
            .filter(|c| !other.0.contains(c))
            .collect()
    }
}

fn parse_cpu(s: &str, expected: &str) -> Result<usize, String> {
    let s = s.trim();
    let cpu: usize = s
        .parse()
        .map_err(|_| format!("'{s}' is not a CPU number ({expected})"))?;
    if cpu >= MAX_CPUS {
        return Err(format!(
            "CPU {cpu} is out of range: CPUs are 0..={}",
            MAX_CPUS - 1
        ));
    }
    Ok(cpu)
}

/// Writes CPUs back compactly, ascending runs as ranges: `0-3,8`.
pub fn format_cpus(cpus: &[usize]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if j == i {
            out.push_str(&cpus[i].to_string());
        } else {
            out.push_str(&format!("{}-{}", cpus[i], cpus[j]));
        }
        i = j + 1;
    }
    out
}

/// The list as it would be typed: `0-3,8`.
impl fmt::Display for CpuList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_cpus(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpus(s: &str) -> Vec<usize> {
        CpuList::parse(s).unwrap().cpus().to_vec()
    }

    #[test]
    fn ranges_lists_and_mixtures_parse_in_the_order_given() {
        assert_eq!(cpus("0-7"), (0..8).collect::<Vec<_>>());
        assert_eq!(cpus("0,2,4"), [0, 2, 4]);
        assert_eq!(cpus("0-3,8"), [0, 1, 2, 3, 8]);
        assert_eq!(cpus("5"), [5]);
        assert_eq!(cpus("3,1"), [3, 1]);
        assert_eq!(cpus(" 1 , 4-5 "), [1, 4, 5]);
        assert_eq!(cpus("1023"), [1023]);
    }

    #[test]
    fn bad_lists_say_what_is_wrong() {
        for (input, needle) in [
            ("", "empty"),
            ("  ", "empty"),
            ("a", "'a' is not a CPU number"),
            ("0-", "'' is not a CPU number"),
            ("-1", "'' is not a CPU number"),
            ("1,,2", "'' is not a CPU number"),
            ("0-3-5", "'3-5' is not a CPU number"),
            ("3-1", "runs backwards"),
            ("0-3,2", "CPU 2 is listed twice"),
            ("1024", "out of range"),
            ("0-99999999999999999999", "not a CPU number"),
        ] {
            let e = CpuList::parse(input).unwrap_err();
            assert!(e.contains(needle), "{input:?}: {e}");
        }
    }

    #[test]
    fn a_list_prints_back_compactly() {
        for s in ["0-7", "0,2,4", "0-3,8", "3,1", "7"] {
            assert_eq!(CpuList::parse(s).unwrap().to_string(), s);
        }
        assert_eq!(format_cpus(&[0, 1]), "0-1");
        assert_eq!(format_cpus(&[]), "");
    }

    #[test]
    fn threads_beyond_the_list_reuse_it_round_robin() {
        let list = CpuList::parse("4,6").unwrap();
        let placed: Vec<_> = (0..5).map(|i| list.for_index(i)).collect();
        assert_eq!(placed, [4, 6, 4, 6, 4]);
    }

    #[test]
    fn missing_cpus_are_those_the_other_list_lacks() {
        let asked = CpuList::parse("0-3").unwrap();
        let allowed = CpuList::parse("0,2").unwrap();
        assert_eq!(asked.missing_from(&allowed), [1, 3]);
        assert!(CpuList::from_cpus(vec![1, 1]).is_none());
        assert!(CpuList::from_cpus(vec![]).is_none());
    }
}
