//! The SMTP protocol without I/O: commands, replies, the DATA decoder and
//! the server session state machine. Imports only `address`.

pub mod base64;
pub mod client;
pub mod command;
pub mod data;
pub mod reply;
pub mod session;
