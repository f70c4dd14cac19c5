//! Peak resident memory of this process, for reports.

/// The peak resident set size (`VmHWM` of `/proc/self/status`) in bytes, where the system
/// reports it (Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The peak resident set size in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    peak_rss_bytes().map(|b| b as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(target_os = "linux")]
    fn peak_memory_grows_with_a_large_allocation() {
        let before = super::peak_rss_bytes().unwrap();
        let block = vec![1u8; 64 << 20];
        let after = super::peak_rss_bytes().unwrap();
        assert!(
            after >= before && after >= block.len() as u64,
            "{before} -> {after}"
        );
        drop(block);
    }
}
