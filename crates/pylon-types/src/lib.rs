//! Wire types shared by every layer: OpenAI chat and Anthropic Messages bodies, and API errors. No I/O.

pub mod anthropic;
pub mod day;
pub mod error;
pub mod openai;
pub mod principal;

pub use error::{ApiError, Dialect, ErrorKind};
pub use principal::{BudgetPeriod, Principal, Quota};
