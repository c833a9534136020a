//! The host service: `skiffd` (task definitions, tasks, capacity, tenants over HTTP), its
//! per-task monitor, the `skiff` CLI, and `skiff-run`. The layers, one folder each, data flowing
//! one way:
//!
//! - [`http`]: the `/v1` JSON front end (routes, JSON shapes, errors, auth) — thin;
//! - [`service`]: task definitions, tasks, capacity, tenants; no HTTP types;
//! - [`state`]: the state store (a trait; SQLite embedded);
//! - [`executor`]: what makes tasks real — image pulls, one monitor process per task
//!   ([`executor::monitor`]), which runs the task through [`executor::runner`] (the control
//!   channel's host end is [`executor::guest_control`]), the jailer and the VMM.
//!
//! [`config`] reads skiffd's TOML configuration; [`client`] is the CLI's HTTP client.

pub mod client;
pub mod config;
pub mod executor;
pub mod http;
pub mod service;
pub mod state;
