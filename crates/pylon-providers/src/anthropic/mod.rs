//! Anthropic Messages ↔ OpenAI chat, both directions, non-stream and stream.
//!
//! Upstream direction (OpenAI client → Anthropic provider), in `upstream`: [`to_messages`],
//! [`response_to_openai`], [`StreamDecoder`]. Client direction (Anthropic client → any provider),
//! in `client`: [`to_chat`], [`response_from_openai`], [`StreamEncoder`].

mod client;
mod upstream;

pub use client::*;
pub use upstream::*;

/// The fields of a Messages request the gateway reads, borrowed from the body. Blocks, tools
/// and everything else stay unparsed: a pass-through accepts every block type the API has and
/// will have (documents, server tools, search results, redacted thinking…).
#[derive(Debug, serde::Deserialize)]
pub struct MessagesHead<'a> {
    #[serde(borrow)]
    pub model: &'a serde_json::value::RawValue,
    #[serde(borrow)]
    pub messages: Vec<MessageHead<'a>>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default, borrow)]
    pub metadata: Option<MetadataHead<'a>>,
}

/// A message's role; its content is only required to be there.
#[derive(Debug, serde::Deserialize)]
pub struct MessageHead<'a> {
    #[serde(borrow)]
    pub role: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub content: &'a serde_json::value::RawValue,
}

/// `metadata.user_id`.
#[derive(Debug, serde::Deserialize)]
pub struct MetadataHead<'a> {
    #[serde(default, borrow)]
    pub user_id: Option<std::borrow::Cow<'a, str>>,
}

/// Usage of a Messages response, read without parsing its content blocks.
pub fn usage_of(body: &[u8]) -> Option<pylon_types::openai::Usage> {
    #[derive(serde::Deserialize)]
    struct UsageOnly {
        usage: pylon_types::anthropic::Usage,
    }
    let usage = match crate::json::top_level_value(body, b"usage") {
        Some(value) => {
            let mut de = serde_json::Deserializer::from_slice(value);
            serde::Deserialize::deserialize(&mut de).ok()?
        }
        None => serde_json::from_slice::<UsageOnly>(body).ok()?.usage,
    };
    Some(pylon_types::anthropic::Usage::to_openai(usage))
}

/// The `anthropic-version` header value Pylon speaks.
pub const API_VERSION: &str = "2023-06-01";

#[cfg(test)]
mod tests;
