//! popsync: a one-shot POP3 fetcher. The binary (`src/main.rs`) is a thin edge
//! over this library; everything that can be tested without a process lives here.

pub mod accounts;
pub mod check;
pub mod cli;
pub mod command;
pub mod config;
pub mod deliver;
pub mod exit;
pub mod eyeballs;
pub mod filter;
pub mod headers;
pub mod hook;
pub mod import;
pub mod login;
pub mod metrics;
pub mod net;
pub mod oauth;
pub mod peek;
pub mod policy;
pub mod pop3;
pub mod probe;
pub mod report;
pub mod runner;
pub mod sanitize;
pub mod seen;
pub mod socks;
pub mod stop;
pub mod store;
pub mod sync;
pub mod timestamp;
pub mod ui;
pub mod window;
