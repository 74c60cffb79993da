//! TLS on the TCP listener.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;
