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

use std::time::Duration;

/// How often the heap is trimmed.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

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
