//! Moving one call's frames between its downstream and upstream streams:
//! the splice, with flow control, resets, deadlines and retries.

mod pump;
pub mod reply;
pub mod retry;
pub mod splice;
