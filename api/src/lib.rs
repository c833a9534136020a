//! The host service: `skiffd` (task definitions, tasks, capacity, tenants over HTTP), its
//! per-task monitor, the `skiff` CLI, and `skiff-run`. The layers, one folder each, data flowing
//! one way:
//!
//! - [`http`]: the `/v1` JSON front end (routes, JSON shapes, errors, auth) — thin;
//! - [`service`]: task definitions, tasks, capacity, tenants; no HTTP types;
//! - [`state`]: the state store (a trait; SQLite embedded);
//! - [`executor`]: what makes tasks real — image pulls, one monitor process per task
//!   ([`executor::monitor`]), which runs the task through [`runner`], the jailer and the VMM.
//!
//! [`config`] reads skiffd's TOML configuration; [`client`] is the CLI's HTTP client.

pub mod client;
pub mod config;
pub mod executor;
pub mod guest_control;
pub mod http;
pub mod runner;
pub mod service;
pub mod state;
