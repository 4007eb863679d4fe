//! What the load generator's test binaries share: an echo server on a
//! free port and run options against it.

use std::time::Duration;

use grpc_loadtest::run::{Rpc, RunOptions};
use grpc_loadtest::serve::{self, ServeOptions, ServerHandle};
use grpc_proxy::{CoreSelection, Driver};

pub fn server(driver: Driver) -> ServerHandle {
    serve::start(ServeOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        cores: CoreSelection::Count(1),
        driver,
        ..ServeOptions::default()
    })
    .expect("echo server starts")
}

pub fn options(server: &ServerHandle, driver: Driver, rpc: Rpc) -> RunOptions {
    RunOptions {
        target: server.local_addr(),
        rpc,
        driver,
        connections: 2,
        streams: 4,
        messages: 5,
        calls: Some(200),
        warmup: Duration::ZERO,
        ..RunOptions::default()
    }
}
