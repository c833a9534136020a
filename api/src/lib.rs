//! The host service `skiffd` and the `skiff` CLI: task definitions, tasks, services, capacity
//! accounting, tap networking, persistence and auth. So far: the host end of the control channel
//! to guest-init ([`guest_control`]) and the task runner built on it ([`runner`]: one container
//! task in its own microVM, used by `skiff-run`).

pub mod guest_control;
pub mod runner;
