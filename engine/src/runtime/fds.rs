//! The process's file-descriptor limit and what it leaves each worker.
//!
//! A proxy holds one descriptor per client connection, so the soft
//! `RLIMIT_NOFILE` (often 1,024) is its real connection limit. The binary
//! raises the soft limit to the hard one at start, as nginx and HAProxy do,
//! and every worker's connection limit is derived from what it then is:
//! past it, new connections are closed at accept, so descriptors never run
//! out (and a worker never spins on EMFILE) while upstream connections,
//! listeners, timers and log files still get theirs.

use std::io;

/// Raises the soft descriptor limit to the hard one; `(before, after)`.
pub fn raise_limit() -> io::Result<(u64, u64)> {
    let (soft, hard) = rlimit::Resource::NOFILE.get()?;
    if soft < hard {
        rlimit::Resource::NOFILE.set(hard, hard)?;
    }
    Ok((soft, rlimit::Resource::NOFILE.get()?.0))
}

/// The soft descriptor limit now, if it can be read.
pub fn limit() -> Option<u64> {
    rlimit::Resource::NOFILE.get().ok().map(|(soft, _)| soft)
}

/// Client connections each of `workers` workers may hold under a
/// descriptor limit of `nofile`: what is left after a reserve (a tenth, at
/// least 128) for upstream connections, listeners, the runtimes' own
/// descriptors and files, shared evenly; at least 1.
pub fn connections_per_worker(nofile: u64, workers: usize) -> usize {
    let reserve = (nofile / 10).max(128);
    let left = nofile.saturating_sub(reserve);
    let each = left / (workers.max(1) as u64);
    usize::try_from(each).unwrap_or(usize::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_shared_after_a_reserve() {
        assert_eq!(connections_per_worker(1024, 1), 896);
        assert_eq!(connections_per_worker(1024, 4), 224);
        assert_eq!(connections_per_worker(1 << 20, 2), 471_859);
        assert_eq!(connections_per_worker(100, 8), 1, "never 0");
        assert!(
            connections_per_worker(u64::MAX, 1) > 1 << 60,
            "RLIM_INFINITY"
        );
    }
}
