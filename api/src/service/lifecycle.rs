//! A task's way from PROVISIONING to STOPPED, driven by one thread per task: the image (PENDING),
//! the monitor (ACTIVATING), the container (RUNNING), its end (DEACTIVATING, STOPPING), the
//! host's clean-up (DEPROVISIONING) and the record (STOPPED). At start, [`reconcile`] picks up
//! every task a previous skiffd left unfinished; [`spawn_janitor`] forgets tasks whose retention
//! ended.

use std::sync::Arc;
use std::time::Duration;

use super::model::{now_ms, DesiredStatus, StopCode, Task, TaskStatus};
use super::{Service, ServiceError};
use crate::executor::contract::{MonitorStatus, Phase};
use crate::executor::{Executor, Probe, StartRequest, Supervision};

/// How often the janitor looks for tasks past their retention.
const JANITOR_PERIOD: Duration = Duration::from_secs(30);

fn spawn_named(name: &str, work: impl FnOnce() + Send + 'static) {
    if let Err(e) = std::thread::Builder::new().name(name.into()).spawn(work) {
        eprintln!("skiffd: cannot start a {name} thread: {e}");
    }
}

/// Starts the thread that takes a new task to its end.
pub fn spawn_launch<E: Executor>(service: Arc<Service<E>>, id: String) {
    spawn_named("task", move || {
        if let Err(e) = launch(&service, &id) {
            eprintln!("skiffd: task {id}: {e}");
        }
    });
}

/// Starts the thread that follows a task whose monitor already runs (or ran).
fn spawn_supervise<E: Executor>(service: Arc<Service<E>>, id: String) {
    spawn_named("task", move || {
        if let Err(e) = supervise(&service, &id) {
            eprintln!("skiffd: task {id}: {e}");
        }
    });
}

/// Records that the task could not start (or was stopped before it did) and frees it.
fn fail_to_start<E: Executor>(
    service: &Service<E>,
    id: &str,
    reason: String,
) -> Result<(), ServiceError> {
    service.executor.release(id);
    service.modify(id, |t| {
        let user = t.desired_status == DesiredStatus::Stopped;
        t.last_status = TaskStatus::Stopped;
        t.desired_status = DesiredStatus::Stopped;
        if !user {
            t.stop_code = Some(StopCode::TaskFailedToStart);
            t.stopped_reason = Some(reason.clone());
        }
        if let Some(c) = t.containers.first_mut() {
            c.last_status = TaskStatus::Stopped;
            c.reason.get_or_insert(reason.clone());
        }
        t.stopped_at = Some(now_ms());
        Some(reason.clone())
    })?;
    Ok(())
}

fn set_status<E: Executor>(
    service: &Service<E>,
    id: &str,
    status: TaskStatus,
    message: &str,
    extra: impl FnOnce(&mut Task),
) -> Result<Task, ServiceError> {
    service.modify(id, |t| {
        if t.last_status >= status {
            return None;
        }
        t.last_status = status;
        extra(t);
        Some(message.to_owned())
    })
}

fn start_request(service: &Service<impl Executor>, task: &Task) -> Result<StartRequest, String> {
    let tenant = super::Tenant::unlimited(&task.tenant);
    let def = service
        .task_definition(&tenant, &task.task_definition)
        .map_err(|e| format!("task definition {}: {e}", task.task_definition))?;
    let container = &def.container_definitions[0];
    let overrides = task
        .overrides
        .container_overrides
        .iter()
        .find(|o| o.name == container.name);
    let mut env: Vec<String> = container
        .environment
        .iter()
        .map(|v| format!("{}={}", v.name, v.value))
        .collect();
    if let Some(o) = overrides {
        env.extend(
            o.environment
                .iter()
                .map(|v| format!("{}={}", v.name, v.value)),
        );
    }
    Ok(StartRequest {
        task_id: task.task_id.clone(),
        image: container.image.clone(),
        entrypoint: container.entry_point.clone(),
        command: overrides
            .and_then(|o| o.command.clone())
            .or_else(|| container.command.clone())
            .unwrap_or_default(),
        env,
        workdir: container.working_directory.clone(),
        user: container.user.clone(),
        hostname: format!("task-{}", &task.task_id[..task.task_id.len().min(12)]),
        cpu: task.cpu,
        memory: task.memory,
        ephemeral_gib: task.ephemeral_storage.size_in_gi_b,
        stop_timeout_s: container
            .stop_timeout
            .unwrap_or(super::validate::DEFAULT_STOP_TIMEOUT),
        jail_uid: task.jail_uid,
        privileges: container.privileges()?,
        init_process: container.init_process(),
    })
}

/// PROVISIONING → PENDING (image) → ACTIVATING (monitor) → the rest in [`supervise`].
fn launch<E: Executor>(service: &Arc<Service<E>>, id: &str) -> Result<(), ServiceError> {
    let task = set_status(service, id, TaskStatus::Pending, "pulling the image", |t| {
        t.pull_started_at = Some(now_ms());
    })?;
    if task.desired_status == DesiredStatus::Stopped {
        return fail_to_start(service, id, "stopped before it started".into());
    }
    let request = match start_request(service, &task) {
        Ok(r) => r,
        Err(reason) => return fail_to_start(service, id, reason),
    };
    let credentials = service
        .task_definition(
            &super::Tenant::unlimited(&task.tenant),
            &task.task_definition,
        )
        .ok()
        .and_then(|d| d.container_definitions[0].repository_credentials.clone())
        .map(|c| c.credentials_parameter);
    if let Err(e) = service.prepare_image(&task.tenant, &request.image, credentials.as_deref()) {
        return fail_to_start(service, id, e.to_string());
    }
    let task = set_status(
        service,
        id,
        TaskStatus::Activating,
        "image ready; starting the microVM",
        |t| {
            t.pull_stopped_at = Some(now_ms());
        },
    )?;
    if task.desired_status == DesiredStatus::Stopped {
        return fail_to_start(service, id, "stopped before it started".into());
    }
    if let Err(e) = service.executor.start(&request) {
        return fail_to_start(service, id, e.to_string());
    }
    // A StopTask that came while the monitor was starting found nobody to tell.
    if service
        .store
        .task(None, id)?
        .is_some_and(|t| t.desired_status == DesiredStatus::Stopped)
    {
        let _ = service.executor.stop(id);
    }
    supervise(service, id)
}

/// Applies a monitor's status to the task, and tells the monitor again of a stop it has not
/// acted on yet (a StopTask whose message was lost to a crash or a failed connection).
fn observe<E: Executor>(service: &Service<E>, id: &str, status: &MonitorStatus) {
    if matches!(status.phase, Phase::Starting | Phase::Running) {
        let wants_stop = service
            .store
            .task(None, id)
            .ok()
            .flatten()
            .is_some_and(|t| t.desired_status == DesiredStatus::Stopped);
        if wants_stop {
            let _ = service.executor.stop(id);
        }
    }
    let result = match status.phase {
        Phase::Starting => Ok(()),
        Phase::Running => set_status(service, id, TaskStatus::Running, "container started", |t| {
            t.started_at = status.started_at.or(Some(now_ms()));
            if let Some(c) = t.containers.first_mut() {
                c.last_status = TaskStatus::Running;
            }
        })
        .map(|_| ()),
        Phase::Stopping => set_status(
            service,
            id,
            TaskStatus::Deactivating,
            "stopping the container",
            |t| {
                t.stopping_at
                    .get_or_insert(status.stopping_at.unwrap_or_else(now_ms));
            },
        )
        .map(|_| ()),
        Phase::Exited => set_status(
            service,
            id,
            TaskStatus::Stopping,
            "container exited; microVM shut down",
            |t| {
                let exit = status.exit.clone();
                t.stopping_at.get_or_insert(now_ms());
                if let Some(c) = t.containers.first_mut() {
                    c.last_status = TaskStatus::Stopped;
                    c.exit_code = exit.as_ref().and_then(|e| e.exit_code);
                    c.reason = exit.as_ref().and_then(|e| e.reason.clone());
                }
            },
        )
        .map(|_| ()),
    };
    if let Err(e) = result {
        eprintln!("skiffd: task {id}: cannot record {:?}: {e}", status.phase);
    }
}

/// Follows the task's monitor to the end, then DEPROVISIONING → STOPPED.
fn supervise<E: Executor>(service: &Arc<Service<E>>, id: &str) -> Result<(), ServiceError> {
    let end = service
        .executor
        .supervise(id, &mut |status| observe(service, id, status));
    set_status(
        service,
        id,
        TaskStatus::Deprovisioning,
        "releasing the task's resources",
        |_| {},
    )?;
    service.executor.release(id);
    service.modify(id, |t| {
        t.last_status = TaskStatus::Stopped;
        t.stopped_at = Some(now_ms());
        let user = t.desired_status == DesiredStatus::Stopped;
        t.desired_status = DesiredStatus::Stopped;
        let message =
            match &end {
                Supervision::Ended(status) => {
                    let exit = status.exit.clone().unwrap_or_else(|| {
                        crate::executor::contract::ExitRecord {
                            exit_code: None,
                            reason: None,
                            failed_to_start: true,
                            stop_requested: false,
                            at: now_ms(),
                        }
                    });
                    if let Some(c) = t.containers.first_mut() {
                        c.last_status = TaskStatus::Stopped;
                        c.exit_code = exit.exit_code;
                        c.reason = exit.reason.clone();
                    }
                    if user {
                        t.stop_code.get_or_insert(StopCode::UserInitiated);
                    } else if exit.failed_to_start {
                        t.stop_code = Some(StopCode::TaskFailedToStart);
                        t.stopped_reason = Some(
                            exit.reason
                                .clone()
                                .unwrap_or_else(|| "the container did not start".into()),
                        );
                    } else {
                        t.stop_code = Some(StopCode::EssentialContainerExited);
                        t.stopped_reason = Some("Essential container in task exited".into());
                    }
                    match exit.exit_code {
                        Some(code) => format!("stopped (exit code {code})"),
                        None => format!(
                            "stopped ({})",
                            exit.reason.as_deref().unwrap_or("no exit code")
                        ),
                    }
                }
                Supervision::Lost(why) => {
                    if let Some(c) = t.containers.first_mut() {
                        c.last_status = TaskStatus::Stopped;
                        c.reason.get_or_insert(why.clone());
                    }
                    if !user || t.stop_code.is_none() {
                        t.stop_code = Some(if t.started_at.is_some() {
                            StopCode::EssentialContainerExited
                        } else {
                            StopCode::TaskFailedToStart
                        });
                    }
                    t.stopped_reason = Some(why.clone());
                    format!("stopped: {why}")
                }
            };
        Some(message)
    })?;
    Ok(())
}

/// Picks up the tasks a previous skiffd left unfinished: follows those whose monitor lives or
/// left an exit record, launches those acknowledged but never started, and records the rest as
/// STOPPED with the reason.
pub fn reconcile<E: Executor>(service: &Arc<Service<E>>) -> Result<usize, ServiceError> {
    let tasks = service.store.unfinished_tasks()?;
    let count = tasks.len();
    for task in tasks {
        let id = task.task_id.clone();
        match service.executor.probe(&id) {
            Probe::Alive | Probe::Exited(_) => spawn_supervise(service.clone(), id),
            // Acknowledged and never started (a monitor that was starting when skiffd died is
            // found by start(), which then follows it).
            Probe::NeverStarted if task.last_status <= TaskStatus::Activating => {
                spawn_launch(service.clone(), id)
            }
            Probe::NeverStarted => fail_to_start(service, &id, "its monitor is gone".into())?,
            Probe::Died(_) => {
                let service = service.clone();
                spawn_named("task", move || {
                    // supervise() finds the monitor gone and records why.
                    if let Err(e) = supervise(&service, &id) {
                        eprintln!("skiffd: task {id}: {e}");
                    }
                });
            }
        }
    }
    Ok(count)
}

/// Starts the thread that forgets STOPPED tasks once their retention ended.
pub fn spawn_janitor<E: Executor>(service: Arc<Service<E>>) {
    spawn_named("janitor", move || loop {
        let retention = i64::try_from(service.settings.retention.as_millis()).unwrap_or(i64::MAX);
        match service
            .store
            .stopped_before(now_ms().saturating_sub(retention))
        {
            Ok(ids) => {
                for id in ids {
                    service.executor.remove(&id);
                    if let Err(e) = service.store.delete_task(&id) {
                        eprintln!("skiffd: cannot forget task {id}: {e}");
                    }
                }
            }
            Err(e) => eprintln!("skiffd: retention: {e}"),
        }
        std::thread::sleep(JANITOR_PERIOD);
    });
}
