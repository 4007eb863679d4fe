//! Allocations per proxied call: a counting global allocator that counts
//! only on grpc-proxy worker threads (named `grpc-proxy-w*`), around an
//! in-process proxy between an in-process echo upstream and load.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use grpc_loadtest::run::{self, Rpc, RunOptions};
use grpc_loadtest::serve::{self, ServeOptions};
use grpc_proxy::{CoreSelection, ProxyBuilder, Route};

/// Counts allocations made on proxy worker threads.
pub struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    // 0: not yet known, 1: a proxy worker, 2: another thread, 3: finding out.
    static ROLE: Cell<u8> = const { Cell::new(0) };
}

fn counted() -> bool {
    ROLE.with(|role| match role.get() {
        1 => true,
        2 | 3 => false,
        _ => {
            // Finding the name may allocate: mark the thread first so that
            // those allocations do not recurse here.
            role.set(3);
            let worker = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with("grpc-proxy-w"));
            role.set(if worker { 1 } else { 2 });
            worker
        }
    })
}

// SAFETY: every method forwards to `System` unchanged; the counting touches
// only atomics and a const-initialised thread-local without a destructor,
// neither of which allocates.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if counted() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if counted() {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
            BYTES.fetch_add(new_size as u64, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Measures and prints allocations per call for a few call shapes.
pub fn report(calls: u64) -> anyhow::Result<()> {
    println!("| call | allocations per call | bytes allocated per call |");
    println!("| --- | ---: | ---: |");
    let upstream = serve::start(ServeOptions {
        listen: "127.0.0.1:0".parse()?,
        cores: CoreSelection::Count(1),
        ..ServeOptions::default()
    })?;
    let mut builder = ProxyBuilder::new("127.0.0.1:0".parse()?)
        .cores(CoreSelection::Count(1))
        .settings(grpc_proxy::Settings::default());
    let echo = builder.cluster("echo", [upstream.local_addr()]);
    let proxy = builder.start(move |_| move |_: &grpc_proxy::Call<'_>| Route::to(echo))?;
    for (name, rpc, payload, messages) in [
        ("unary 10B", Rpc::Unary, 10, 1),
        ("unary 16KiB", Rpc::Unary, 16 << 10, 1),
        ("bidi 10B x 10 round trips", Rpc::Bidi, 10, 10),
    ] {
        let options = RunOptions {
            target: proxy.local_addr(),
            rpc,
            payload,
            messages,
            connections: 4,
            streams: 16,
            calls: Some(calls),
            warmup: Duration::ZERO,
            ..RunOptions::default()
        };
        // Warm the worker's pools, then count a measured run.
        let _ = run::run(&RunOptions {
            calls: Some(calls / 10),
            ..options.clone()
        })?;
        let (a0, b0) = (
            ALLOCATIONS.load(Ordering::Relaxed),
            BYTES.load(Ordering::Relaxed),
        );
        let r = run::run(&options)?;
        let (a1, b1) = (
            ALLOCATIONS.load(Ordering::Relaxed),
            BYTES.load(Ordering::Relaxed),
        );
        let made = (r.calls_ok + r.calls_failed).max(1) as f64;
        println!(
            "| {name} | {:.1} | {:.0} |",
            (a1 - a0) as f64 / made,
            (b1 - b0) as f64 / made
        );
    }
    proxy.shutdown();
    Ok(())
}
