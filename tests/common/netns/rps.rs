//! Receive packet steering masks: CPU lists such as "0-3" turned into the
//! hex bitmaps `/sys/class/net/DEV/queues/rx-0/rps_cpus` takes, and the
//! comparison of what the kernel reads back. Writing them is the parent
//! module's (inside a namespace, with `ip netns exec`).

/// The hex mask `rps_cpus` takes for a CPU list such as "0", "0-3" or
/// "0,2,4-5": comma-separated 32-bit groups, most significant first, as the
/// kernel prints bitmaps.
pub fn rps_mask(cpus: &str) -> Result<String, String> {
    let mut set: Vec<usize> = Vec::new();
    for part in cpus.split(',') {
        let part = part.trim();
        let range = match part.split_once('-') {
            Some((a, b)) => (parse_cpu(a)?, parse_cpu(b)?),
            None => (parse_cpu(part)?, parse_cpu(part)?),
        };
        if range.0 > range.1 {
            return Err(format!("CPU range {part} runs backwards"));
        }
        set.extend(range.0..=range.1);
    }
    let top = *set.iter().max().expect("split yields at least one part");
    let mut groups = vec![0u32; top / 32 + 1];
    for cpu in set {
        groups[cpu / 32] |= 1 << (cpu % 32);
    }
    let mut words: Vec<String> = groups.iter().rev().map(|g| format!("{g:08x}")).collect();
    // The most significant group without its leading zeros, like the kernel.
    words[0] = format!("{:x}", groups[groups.len() - 1]);
    Ok(words.join(","))
}

fn parse_cpu(s: &str) -> Result<usize, String> {
    s.trim()
        .parse::<usize>()
        .ok()
        .filter(|&c| c < 8192)
        .ok_or_else(|| format!("{s:?} is not a CPU number (0..8192); expected a list like 0-3,5"))
}

/// Whether two bitmaps in the kernel's hex format are the same set of CPUs
/// (the kernel pads to its CPU count: "00000001" and "1" are equal).
pub(super) fn same_mask(a: &str, b: &str) -> bool {
    let bits = |m: &str| -> Vec<u32> {
        let mut g: Vec<u32> = m
            .split(',')
            .rev()
            .map(|w| u32::from_str_radix(w.trim(), 16).unwrap_or(u32::MAX))
            .collect();
        while g.len() > 1 && g.last() == Some(&0) {
            g.pop();
        }
        g
    };
    bits(a) == bits(b)
}

pub(super) fn rps_path(dev: &str) -> String {
    format!("/sys/class/net/{dev}/queues/rx-0/rps_cpus")
}
