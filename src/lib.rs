//! passgate — an authorizing reverse proxy for Microsoft Graph's privileged Intune
//! `recoverPasscode` action. Operators call passgate exactly as they would call Graph; passgate
//! authenticates them, applies policy, records an audit trail, and only then forwards the call
//! with its own privileged app-only token.
//!
//! Dependency direction: `server -> pipeline -> {routes, auth, policy, graph, audit}`.
//! `policy` knows nothing of the network; nothing but the CLI and tests imports `sandbox`.

pub mod admin;
pub mod approval;
pub mod audit;
pub mod auth;
pub mod config;
pub mod console;
pub mod error;
pub mod flood;
pub mod graph;
pub mod headers;
pub mod lifecycle;
pub mod outbound;
pub mod policy;
pub mod policy_tools;
pub mod routes;
pub mod runtime;

pub mod dev;
pub mod pipeline;
pub mod sandbox;
pub mod server;
pub mod state;
pub mod telemetry;
pub mod text;
