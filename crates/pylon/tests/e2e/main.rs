//! End-to-end tests: the real gateway on an ephemeral port, in-process mock providers, real HTTP.

// Test code fails loudly by design: an unwrap here is an assertion.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod accounting;
mod acme;
mod alerts;
mod alerts_by;
mod alerts_rules;
mod app_routes;
mod cache;
mod cloud;
mod compat;
mod compression;
mod dashboard;
mod edge;
mod edge_routes;
mod faults;
mod flags;
mod formats;
mod hardening;
mod harness;
mod keys;
mod lifecycle;
mod limits;
mod observe;
mod observe_bin;
mod operations;
mod resilience;
mod rollouts;
mod secrets;
mod semantic;
mod streaming;
mod tls;
mod validation;
