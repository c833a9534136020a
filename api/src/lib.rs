//! The host service `skiffd` and the `skiff` CLI: task definitions, tasks, services, capacity
//! accounting, tap networking, persistence and auth. So far: the host end of the control channel
//! to guest-init ([`guest_control`]), which the task runner builds on.

pub mod guest_control;
