//! The host service `skiffd` and the `skiff` CLI: task definitions, tasks, services, capacity
//! accounting, tap networking, persistence and auth. Nothing here yet: the API follows once
//! `skiff-vmm` runs containers (see the project's issues for the order).
