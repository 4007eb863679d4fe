//! Worker runtimes: one monoio runtime per worker thread, pinned to its CPU.
//!
//! io_uring by default; the legacy epoll driver where io_uring cannot start
//! (old kernels, seccomp), or when asked for. The runtime always has timers
//! (deadlines, handshake and connect timeouts, drain).

use std::fmt;
use std::future::Future;
use std::str::FromStr;

use monoio::{FusionDriver, IoUringDriver, LegacyDriver, RuntimeBuilder};

/// Which monoio driver the workers use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Driver {
    /// For the workers, legacy, which measured faster for the relay (see
    /// the README's "Drivers"); elsewhere, io_uring when the kernel allows
    /// it, otherwise legacy.
    #[default]
    Auto,
    /// io_uring only; start-up fails where it is unavailable.
    IoUring,
    /// The epoll-based legacy driver.
    Legacy,
}

impl FromStr for Driver {
    type Err = String;
    fn from_str(s: &str) -> Result<Driver, String> {
        match s {
            "auto" => Ok(Driver::Auto),
            "io_uring" | "io-uring" | "iouring" | "uring" => Ok(Driver::IoUring),
            "legacy" | "epoll" => Ok(Driver::Legacy),
            _ => Err(format!(
                "unknown driver {s:?} (expected auto, io_uring or legacy)"
            )),
        }
    }
}

impl fmt::Display for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Driver::Auto => "auto",
            Driver::IoUring => "io_uring",
            Driver::Legacy => "legacy",
        })
    }
}

impl Driver {
    /// The driver `Auto` resolves to on this machine.
    pub fn resolve(self) -> Driver {
        match self {
            Driver::Auto if monoio::utils::detect_uring() => Driver::IoUring,
            Driver::Auto => Driver::Legacy,
            other => other,
        }
    }
}

/// Runs a future to completion on a new runtime of this driver, on the
/// current thread.
pub fn block_on<F, Fut>(driver: Driver, make: F) -> std::io::Result<Fut::Output>
where
    F: FnOnce() -> Fut,
    Fut: Future,
{
    const ENTRIES: u32 = 1024;
    Ok(match driver {
        Driver::Auto => RuntimeBuilder::<FusionDriver>::new()
            .with_entries(ENTRIES)
            .enable_timer()
            .build()?
            .block_on(make()),
        Driver::IoUring => RuntimeBuilder::<IoUringDriver>::new()
            .with_entries(ENTRIES)
            .enable_timer()
            .build()?
            .block_on(make()),
        Driver::Legacy => RuntimeBuilder::<LegacyDriver>::new()
            .with_entries(ENTRIES)
            .enable_timer()
            .build()?
            .block_on(make()),
    })
}
