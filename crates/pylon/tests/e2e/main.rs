//! End-to-end tests: the real gateway on an ephemeral port, in-process mock providers, real HTTP.

mod app_routes;
mod formats;
mod harness;
mod lifecycle;
mod resilience;
mod streaming;
mod validation;
