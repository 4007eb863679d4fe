//! Giving memory that was freed back to the system.
//!
//! glibc's malloc keeps freed memory in its arenas (one per worker
//! thread) for reuse. After a burst (clients that read nothing make the
//! proxy buffer megabytes, then leave) the process stays at its peak RSS though
//! nothing is in use: measured by `bench soak`, 7 MiB before the first
//! slow readers, 34 MiB for the rest of the run. So the first worker
//! asks malloc, every [`TRIM_EVERY`], to return the free pages of every
//! arena (`malloc_trim(0)` also releases free pages inside the heap, not
//! only at its top), as Envoy's `shrink_heap` does with tcmalloc.
//!
//! Between those trims, freed memory stays. A busy connection's memory
//! swings by megabytes within a millisecond (read buffers that DATA frames
//! borrow until they are written, stream windows filling and draining),
//! and glibc by default gives the top of a heap back to the kernel as soon
//! as 128 KiB of it is free: the next burst then takes it back a page at a
//! time, each page a fault and a zeroing. Streaming 1 MiB messages that
//! was 15-55 page faults per message and about a tenth of the proxy's CPU
//! (see [`keep_freed_memory`]).

use std::time::Duration;

/// How often the heap is trimmed.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// Free memory at the top of a heap that glibc keeps for the next burst
/// rather than returning it at once ([`trim`] returns it).
pub const KEEP_FREED: usize = 32 << 20;

/// Allocations up to this size come from the heap and are reused; larger
/// ones are mapped and unmapped each time.
pub const MAP_ABOVE: usize = 4 << 20;

/// Raises glibc's trim threshold to [`KEEP_FREED`] and its mmap threshold
/// to [`MAP_ABOVE`] (setting the first turns off glibc's own growth of the
/// second, which starts at 128 KiB), unless the environment sets glibc's
/// own `MALLOC_TRIM_THRESHOLD_`. For the proxy's process, at start;
/// returns whether they were set.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn keep_freed_memory() -> bool {
    if std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_some() {
        return false;
    }
    let (Ok(keep), Ok(map)) = (
        libc::c_int::try_from(KEEP_FREED),
        libc::c_int::try_from(MAP_ABOVE),
    ) else {
        return false;
    };
    // SAFETY: mallopt takes no pointers; it sets one of malloc's
    // parameters, under malloc's own lock.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, map) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, keep) == 1
    }
}

/// Other allocators have their own policies.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn keep_freed_memory() -> bool {
    false
}

/// Returns the free memory of every malloc arena to the system.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn trim() {
    // SAFETY: malloc_trim takes no pointers and only changes what malloc
    // holds that is already free; glibc makes it safe to call from any
    // thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Other allocators give memory back on their own.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn trim() {}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_takes_the_thresholds() {
        if std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_none() {
            assert!(super::keep_freed_memory());
        }
    }
}
