//! grpc-loadtest's runs and echo servers close every file descriptor they
//! open. A test binary of its own: fds are counted for the whole process,
//! and other tests running beside it in the same process opened sockets
//! of their own (it failed so about one run in ten).

mod common;

use common::{options, server};
use grpc_loadtest::run::{self, Rpc};
use grpc_proxy::Driver;

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("procfs").count()
}

#[test]
fn runs_and_servers_leave_no_file_descriptors_behind() {
    // Warm up lazily created process-wide fds (io_uring probes, etc.).
    {
        let s = server(Driver::Legacy);
        let _ = run::run(&options(&s, Driver::Legacy, Rpc::Unary)).expect("run");
    }
    let before = open_fds();
    for driver in [Driver::Legacy, Driver::Auto] {
        for _ in 0..3 {
            let s = server(driver);
            let mut o = options(&s, driver, Rpc::Bidi);
            o.connections = 8;
            o.rate = Some(1000.0);
            let r = run::run(&o).expect("run");
            assert_eq!(r.calls_failed, 0);
        }
    }
    let after = open_fds();
    if after > before + 12 {
        for e in std::fs::read_dir("/proc/self/fd")
            .expect("procfs")
            .flatten()
        {
            eprintln!(
                "{:?} -> {:?}",
                e.file_name(),
                std::fs::read_link(e.path()).ok()
            );
        }
    }
    // What matters is that 6 servers and 48 connections are not still
    // open: allow a little slack (lazily made process-wide fds), not 50+.
    assert!(after <= before + 12, "fds before {before}, after {after}");
}
