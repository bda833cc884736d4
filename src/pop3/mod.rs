//! The POP3 protocol: a sans-io codec, SASL mechanisms as pure step functions,
//! and the async session built on both.

pub mod auth;
pub mod choice;
pub mod codec;
pub mod session;
