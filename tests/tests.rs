//! passgate's integration tests, as one test binary (`[[test]] integration` in Cargo.toml, with
//! `autotests = false`): one link of the crate instead of one per file. Each `tests/<name>.rs` is
//! a module here and its tests are named `<name>::<test>` (`cargo test gateway::` runs one file's).
//! Shared helpers live in `tests/common/mod.rs`, used as `use crate::common::*;`.
//!
//! All tests run as parallel threads of this one process, so a test must not rely on being
//! alone in it:
//! - no `std::env::set_var`/`remove_var`: a child process gets its environment through
//!   `Command::env`, an in-process gateway through its config text;
//! - no process-global tracing subscriber: a test that captures logs installs its subscriber
//!   for its own runtime's threads only (see `secrets.rs`);
//! - every child process is ended by its own handle, also when the test panics
//!   (`common::ChildGuard`, `kill_on_drop`, or a `Drop` like `lifecycle::Served`);
//! - every test starts its own gateway, sandbox and temp directory on ephemeral ports.

mod common;

mod app_credentials;
mod approvals;
mod audit_tools;
mod cli;
mod concurrency;
mod console;
mod console_browser;
mod controls;
mod crash;
mod docs;
mod faults;
mod flood;
mod gateway;
mod hostile_paths;
mod hostile_tokens;
mod lifecycle;
mod load;
mod metrics;
mod prometheus;
mod protocol;
mod redis;
mod secrets;
mod tls;
