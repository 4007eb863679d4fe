//! Where a call goes: the [`Director`](director::Director) trait and the
//! config file's declarative route table.

pub mod bearer;
pub mod director;
pub mod edits;
pub mod jwt;
pub mod route_edits;
pub mod routes;
