//! The integration tests, one test binary: the real agent binary over HTTP against the real
//! engine, a module per concern, and the harness they share in `support`.
//!
//! `cargo test --locked` runs them all; a module's name picks its tests (`-- stop::`). The modules
//! that need no engine (`cli:: systemd:: hostile:: service:: socket:: tls::`, the README's quick
//! run) pass without one; the others fail naming the engine they could not reach.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod api;
mod authz;
mod cli;
mod drain;
mod engine;
mod engine_allowlist;
mod fleet;
mod floods;
mod generation;
mod history;
mod hostile;
mod kill9;
mod lifecycle;
mod node_e2e;
mod okeanos;
mod openapi;
mod ops;
mod package;
mod report;
mod sampling;
mod service;
mod shutdown;
mod socket;
mod start;
mod stop;
mod systemd;
mod tls;
mod world;
