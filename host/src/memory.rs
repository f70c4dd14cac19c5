//! Peak resident memory of this process, for reports.

/// The peak resident set size (`VmHWM` of `/proc/self/status`) in bytes, where the system
/// reports it (Linux).
pub fn peak_rss_bytes() -> Option<u64> {
    status_bytes("VmHWM:")
}

/// The current resident set size (`VmRSS`) in bytes, where the system reports it (Linux).
/// Only `bench memory` reads it, so the library without its command line does not.
#[cfg_attr(not(feature = "cli"), allow(dead_code))]
pub fn rss_bytes() -> Option<u64> {
    status_bytes("VmRSS:")
}

/// A `kB` field of `/proc/self/status`, in bytes.
fn status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The peak resident set size in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    peak_rss_bytes().map(|b| b as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    /// The peak is reported in bytes and counts memory the process has touched: after filling
    /// a 64 MiB block it is at least the block's size and at least the current resident size
    /// (read independently from `VmRSS`, before the peak).
    #[test]
    #[cfg(target_os = "linux")]
    fn peak_memory_is_in_bytes_and_covers_a_touched_allocation() {
        let block = vec![1u8; 64 << 20];
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let current_kib: u64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap()
            .parse()
            .unwrap();
        // Read after the resident size: the peak can only have grown since.
        let peak = super::peak_rss_bytes().unwrap();
        assert!(super::rss_bytes().unwrap() >= block.len() as u64);
        assert!(peak >= block.len() as u64, "peak {peak} bytes");
        assert!(
            peak >= current_kib * 1024,
            "peak {peak} < current {current_kib} KiB"
        );
        assert_eq!(block[block.len() - 1], 1);
    }
}
