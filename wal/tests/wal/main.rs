//! Integration tests of the WAL against real files in temporary
//! directories. One binary, one module per concern.

mod common;
mod corruption;
mod model;
mod round_trip;
mod torn_tail;
mod validation;
