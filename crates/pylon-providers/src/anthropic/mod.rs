//! Anthropic Messages ↔ OpenAI chat, both directions, non-stream and stream.
//!
//! Upstream direction (OpenAI client → Anthropic provider), in `upstream`: [`to_messages`],
//! [`response_to_openai`], [`StreamDecoder`]. Client direction (Anthropic client → any provider),
//! in `client`: [`to_chat`], [`response_from_openai`], [`StreamEncoder`].

mod client;
mod upstream;

pub use client::*;
pub use upstream::*;

/// The `anthropic-version` header value Pylon speaks.
pub const API_VERSION: &str = "2023-06-01";

#[cfg(test)]
mod tests;
