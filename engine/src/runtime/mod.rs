//! The machinery of thread-per-core, with no knowledge of HTTP/2 or gRPC:
//! choosing cores, monoio runtimes and their drivers, the SO_REUSEPORT
//! listeners, single-thread wake-up primitives, many timers on one task, a
//! room of bounded places that evicts its longest stay, heap trimming, and
//! the mailbox through which the control
//! side talks to a worker. Depends on nothing else in
//! the engine.

pub mod cores;
pub mod driver;
pub mod fds;
pub mod heap;
pub mod listener;
pub mod mailbox;
pub mod room;
pub mod timers;
pub mod wake;
