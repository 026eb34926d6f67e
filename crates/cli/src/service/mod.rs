//! Talking to a running Blindfold service: a typed API client with presigned transfers
//! ([`client`]), the saved login ([`config`]), the hospital's workflows, one function per step
//! ([`flows`], also what the in-process demo calls), and the commands ([`commands`]).

pub mod client;
pub mod commands;
pub mod config;
pub mod flows;

pub use client::{ApiClient, OnBytes, ServiceError};
pub use commands::Connection;
pub use flows::JobEnded;
