//! The SMTP protocol without I/O: commands, replies, the DATA decoder and
//! the server session and the client transaction as state machines.
//! Imports only pure modules (`address`, `status`).

pub mod base64;
pub mod client;
pub mod command;
pub mod data;
pub mod reply;
pub mod session;
