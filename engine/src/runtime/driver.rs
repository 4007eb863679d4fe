//! Worker runtimes: one monoio runtime per worker thread, pinned to its CPU.
//!
//! io_uring by default; the legacy epoll driver where io_uring cannot start
//! (old kernels, seccomp), or when asked for. The runtime always has timers
//! (deadlines, handshake and connect timeouts, drain).
//!
//! An io_uring worker's ring defers the kernel's completion work to the
//! worker's own wait (`IORING_SETUP_DEFER_TASKRUN`, Linux 6.1): without it,
//! every socket that becomes ready while the worker runs interrupts it (an
//! inter-processor interrupt, which on a VM is an exit to the hypervisor)
//! to post the completion. Older kernels get the cooperative variant
//! (`COOP_TASKRUN`, 5.19), then the plain ring.

use std::fmt;
use std::future::Future;
use std::str::FromStr;

use monoio::time::TimeDriver;
use monoio::{FusionDriver, IoUringDriver, LegacyDriver, Runtime, RuntimeBuilder};

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
        Driver::IoUring => uring_runtime(ENTRIES)?.0.block_on(make()),
        Driver::Legacy => RuntimeBuilder::<LegacyDriver>::new()
            .with_entries(ENTRIES)
            .enable_timer()
            .build()?
            .block_on(make()),
    })
}

/// How an io_uring worker's ring is set up, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RingSetup {
    /// Completion work runs only when the worker waits for it.
    DeferTaskrun,
    /// Completion work does not interrupt the worker; it runs at its next
    /// entry to the kernel.
    CoopTaskrun,
    /// The kernel's default.
    Plain,
}

impl RingSetup {
    const BEST_FIRST: [RingSetup; 3] = [
        RingSetup::DeferTaskrun,
        RingSetup::CoopTaskrun,
        RingSetup::Plain,
    ];

    fn builder(self) -> io_uring::Builder {
        let mut b = io_uring::IoUring::builder();
        match self {
            RingSetup::DeferTaskrun => {
                // The ring is made and used by this thread alone.
                b.setup_single_issuer().setup_defer_taskrun();
            }
            RingSetup::CoopTaskrun => {
                b.setup_coop_taskrun().setup_taskrun_flag();
            }
            RingSetup::Plain => {}
        }
        b
    }
}

/// An io_uring runtime on this thread with the best ring set-up the kernel
/// takes (a kernel refuses flags it does not know with EINVAL), and which
/// set-up that was.
fn uring_runtime(entries: u32) -> std::io::Result<(Runtime<TimeDriver<IoUringDriver>>, RingSetup)> {
    let mut last = None;
    for setup in RingSetup::BEST_FIRST {
        match RuntimeBuilder::<IoUringDriver>::new()
            .with_entries(entries)
            .uring_builder(setup.builder())
            .enable_timer()
            .build()
        {
            Ok(runtime) => {
                tracing::debug!(?setup, "io_uring ring");
                return Ok((runtime, setup));
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's (major, minor) version.
    fn kernel() -> (u32, u32) {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease");
        let mut parts = release.trim().split(['.', '-']);
        let mut next = || parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        (next(), next())
    }

    #[test]
    fn a_kernel_from_6_1_defers_completion_work_to_the_worker() {
        if !monoio::utils::detect_uring() {
            return;
        }
        let (_, setup) = uring_runtime(256).expect("runtime");
        let expected = match kernel() {
            k if k >= (6, 1) => RingSetup::DeferTaskrun,
            k if k >= (5, 19) => RingSetup::CoopTaskrun,
            _ => RingSetup::Plain,
        };
        assert_eq!(setup, expected, "kernel {:?}", kernel());
    }

    #[test]
    fn an_io_uring_runtime_starts_with_the_best_setup_the_kernel_takes() {
        if !monoio::utils::detect_uring() {
            return;
        }
        // The runtime runs I/O and timers: a TCP round trip on loopback
        // and a sleep complete, whatever set-up the kernel took.
        let echoed = block_on(Driver::IoUring, || async {
            use monoio::io::{AsyncReadRentExt, AsyncWriteRentExt};
            let listener = monoio::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().expect("addr");
            let server = monoio::spawn(async move {
                let (mut s, _) = listener.accept().await.expect("accept");
                let (r, buf) = s.read_exact(vec![0u8; 4]).await;
                r.expect("read");
                let (r, _) = s.write_all(buf).await;
                r.expect("write");
            });
            let mut c = monoio::net::TcpStream::connect(addr)
                .await
                .expect("connect");
            let (r, _) = c.write_all(b"ping".to_vec()).await;
            r.expect("write");
            monoio::time::sleep(std::time::Duration::from_millis(5)).await;
            let (r, buf) = c.read_exact(vec![0u8; 4]).await;
            r.expect("read");
            server.await;
            buf
        })
        .expect("runtime");
        assert_eq!(echoed, b"ping");
    }
}
