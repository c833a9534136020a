//! The service with a fake executor: lifecycle, capacity under concurrent RunTask, tenants,
//! stops, failures to start, and reconciliation after a restart.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::executor::contract::{ExitRecord, MonitorStatus, Phase};
use crate::executor::{Probe, StartRequest, Supervision};
use crate::state::sqlite::SqliteStore;

#[derive(Default)]
pub(crate) struct FakeState {
    started: HashMap<String, StartRequest>,
    /// Exit code to end a task with.
    finish: HashMap<String, i32>,
    stopped: Vec<String>,
    released: Vec<String>,
    probes: HashMap<String, Probe>,
}

#[derive(Clone, Default)]
pub(crate) struct Fake {
    state: Arc<(Mutex<FakeState>, Condvar)>,
    fail_pull: bool,
}

impl Fake {
    pub(crate) fn finish(&self, id: &str, code: i32) {
        let (lock, cv) = &*self.state;
        lock.lock().unwrap().finish.insert(id.into(), code);
        cv.notify_all();
    }
}

impl Executor for Fake {
    fn check_image(&self, image: &str) -> Result<(), ExecError> {
        if image.starts_with("missing") {
            return Err(ExecError::UnknownImage {
                image: image.into(),
            });
        }
        Ok(())
    }
    fn has_image(&self, image: &str) -> bool {
        !image.contains('/')
    }
    fn prepare_image(&self, _: &str, _: Option<&str>) -> Result<(), ExecError> {
        if self.fail_pull {
            return Err(ExecError::Pull("connection refused".into()));
        }
        Ok(())
    }
    fn start(&self, request: &StartRequest) -> Result<(), ExecError> {
        let (lock, _) = &*self.state;
        lock.lock()
            .unwrap()
            .started
            .insert(request.task_id.clone(), request.clone());
        Ok(())
    }
    fn supervise(&self, id: &str, on_status: &mut dyn FnMut(&MonitorStatus)) -> Supervision {
        if let Some(Probe::Died(_)) = self.state.0.lock().unwrap().probes.get(id) {
            return Supervision::Lost("the task's monitor died".into());
        }
        let mut status = MonitorStatus {
            phase: Phase::Running,
            pid: 1,
            started_at: Some(now_ms()),
            stopping_at: None,
            vmm_overhead_kib: None,
            exit: None,
        };
        on_status(&status);
        let (lock, cv) = &*self.state;
        let mut state = lock.lock().unwrap();
        let code = loop {
            if let Some(code) = state.finish.get(id) {
                break *code;
            }
            if state.stopped.iter().any(|s| s == id) {
                break 143;
            }
            state = cv.wait(state).unwrap();
        };
        status.phase = Phase::Exited;
        status.exit = Some(ExitRecord {
            exit_code: Some(code),
            reason: None,
            failed_to_start: false,
            stop_requested: code == 143,
            at: now_ms(),
        });
        on_status(&status);
        Supervision::Ended(status)
    }
    fn stop(&self, id: &str) -> Result<(), ExecError> {
        let (lock, cv) = &*self.state;
        lock.lock().unwrap().stopped.push(id.into());
        cv.notify_all();
        Ok(())
    }
    fn probe(&self, id: &str) -> Probe {
        let (lock, _) = &*self.state;
        lock.lock()
            .unwrap()
            .probes
            .get(id)
            .cloned()
            .unwrap_or(Probe::NeverStarted)
    }
    fn release(&self, id: &str) {
        let (lock, _) = &*self.state;
        lock.lock().unwrap().released.push(id.into());
    }
    fn remove(&self, _: &str) {}
    fn log_files(&self, _: &str) -> LogFiles {
        LogFiles {
            current: "/nonexistent".into(),
            rotated: "/nonexistent.1".into(),
        }
    }
    fn images(&self) -> Result<Vec<crate::executor::ImageInfo>, ExecError> {
        Ok(vec![])
    }
    fn remove_image(&self, name: &str) -> Result<(), ExecError> {
        Err(ExecError::NoSuchImage(name.into()))
    }
}

pub(crate) fn settings() -> ServiceSettings {
    ServiceSettings {
        capacity_cpu: 2560,
        capacity_memory: 10 * 512,
        uid_base: 200_000,
        uid_count: 1000,
        retention: Duration::from_secs(3600),
        credentials: [(
            "reg".to_owned(),
            CredentialRule {
                registry: "registry.test:5000".into(),
                tenants: vec!["a".into()],
            },
        )]
        .into(),
    }
}

pub(crate) fn service(fake: Fake) -> Arc<Service<Fake>> {
    Service::new(
        Box::new(SqliteStore::in_memory().unwrap()),
        fake,
        settings(),
    )
}

fn register(svc: &Service<Fake>, tenant: &Tenant, image: &str) -> TaskDefinition {
    let input = serde_json::from_value(serde_json::json!({
        "family": "echo",
        "containerDefinitions": [{"name": "app", "image": image, "command": ["echo", "hi"],
            "environment": [{"name": "A", "value": "1"}]}]
    }))
    .unwrap();
    svc.register_task_definition(tenant, input).unwrap()
}

fn run(svc: &Arc<Service<Fake>>, tenant: &Tenant) -> Result<Vec<Task>, ServiceError> {
    svc.run_task(
        tenant,
        RunTaskInput {
            task_definition: "echo".into(),
            ..Default::default()
        },
    )
}

fn wait_for(svc: &Service<Fake>, tenant: &Tenant, id: &str, status: TaskStatus) -> Task {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let task = svc.task(tenant, id).unwrap();
        if task.last_status >= status {
            return task;
        }
        assert!(
            Instant::now() < deadline,
            "task {id} stuck in {:?}",
            task.last_status
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_task_goes_through_the_lifecycle_and_records_its_exit() {
    let fake = Fake::default();
    let svc = service(fake.clone());
    let a = Tenant::unlimited("a");
    register(&svc, &a, "busybox:latest");
    let task = run(&svc, &a).unwrap().remove(0);
    assert_eq!(task.last_status, TaskStatus::Provisioning);
    let running = wait_for(&svc, &a, &task.task_id, TaskStatus::Running);
    assert!(running.started_at.is_some() && running.pull_started_at.is_some());
    let started = fake.state.0.lock().unwrap().started[&task.task_id].clone();
    assert_eq!(started.command, ["echo", "hi"]);
    assert_eq!(started.env, ["A=1"]);
    assert_eq!(started.jail_uid, 200_000);
    fake.finish(&task.task_id, 3);
    let stopped = wait_for(&svc, &a, &task.task_id, TaskStatus::Stopped);
    assert_eq!(stopped.exit_code(), Some(3));
    assert_eq!(stopped.stop_code, Some(StopCode::EssentialContainerExited));
    assert_eq!(stopped.desired_status, DesiredStatus::Stopped);
    let events: Vec<TaskStatus> = svc
        .events(&a, &task.task_id)
        .unwrap()
        .iter()
        .map(|e| e.last_status)
        .collect();
    assert_eq!(
        events,
        [
            TaskStatus::Provisioning,
            TaskStatus::Pending,
            TaskStatus::Activating,
            TaskStatus::Running,
            TaskStatus::Stopping,
            TaskStatus::Deprovisioning,
            TaskStatus::Stopped
        ]
    );
    assert!(fake
        .state
        .0
        .lock()
        .unwrap()
        .released
        .contains(&task.task_id));
    assert_eq!(
        svc.capacity().unwrap().used,
        Resources { cpu: 0, memory: 0 }
    );
}

#[test]
fn concurrent_run_tasks_never_oversubscribe() {
    let fake = Fake::default();
    let svc = service(fake.clone());
    let a = Tenant::unlimited("a");
    register(&svc, &a, "busybox:latest");
    let threads: Vec<_> = (0..30)
        .map(|_| {
            let (svc, a) = (svc.clone(), a.clone());
            std::thread::spawn(move || run(&svc, &a))
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let ok: Vec<Task> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .flatten()
        .cloned()
        .collect();
    let refused = results
        .iter()
        .filter(|r| {
            matches!(
                r,
                Err(ServiceError::Refused(Refusal::Capacity {
                    resource: "RESOURCE:CPU",
                    ..
                }))
            )
        })
        .count();
    assert_eq!((ok.len(), refused), (10, 20));
    let mut uids: Vec<u32> = ok.iter().map(|t| t.jail_uid).collect();
    uids.sort();
    uids.dedup();
    assert_eq!(uids.len(), 10, "every task has a jail uid of its own");
    assert_eq!(svc.capacity().unwrap().free.cpu, 0);
    for t in &ok {
        wait_for(&svc, &a, &t.task_id, TaskStatus::Running);
        fake.finish(&t.task_id, 0);
    }
    for t in &ok {
        wait_for(&svc, &a, &t.task_id, TaskStatus::Stopped);
    }
    let cap = svc.capacity().unwrap();
    assert_eq!((cap.used.cpu, cap.used.memory, cap.tasks), (0, 0, 0));
}

#[test]
fn tenants_see_only_their_own() {
    let svc = service(Fake::default());
    let (a, b) = (Tenant::unlimited("a"), Tenant::unlimited("b"));
    register(&svc, &a, "busybox:latest");
    let task = run(&svc, &a).unwrap().remove(0);
    assert!(matches!(
        svc.task(&b, &task.task_id),
        Err(ServiceError::NotFound(_))
    ));
    assert!(matches!(
        svc.stop_task(&b, &task.task_id, None, StopCode::UserInitiated),
        Err(ServiceError::NotFound(_))
    ));
    assert!(matches!(
        svc.log_files(&b, &task.task_id),
        Err(ServiceError::NotFound(_))
    ));
    assert!(matches!(
        svc.task_definition(&b, "echo"),
        Err(ServiceError::NotFound(_))
    ));
    assert!(matches!(run(&svc, &b), Err(ServiceError::NotFound(_))));
    assert!(svc
        .list_tasks(
            &b,
            &TaskFilter::default(),
            Page {
                after: None,
                limit: 10
            }
        )
        .unwrap()
        .0
        .is_empty());
    let mut quota = Tenant::unlimited("a");
    quota.max_tasks = Some(1);
    assert!(matches!(
        run(&svc, &quota),
        Err(ServiceError::Refused(Refusal::Quota { what: "tasks", .. }))
    ));
}

#[test]
fn stop_task_is_recorded_as_user_initiated() {
    let fake = Fake::default();
    let svc = service(fake.clone());
    let a = Tenant::unlimited("a");
    register(&svc, &a, "busybox:latest");
    let task = run(&svc, &a).unwrap().remove(0);
    wait_for(&svc, &a, &task.task_id, TaskStatus::Running);
    let stopping = svc
        .stop_task(
            &a,
            &task.task_id,
            Some("enough".into()),
            StopCode::UserInitiated,
        )
        .unwrap();
    assert_eq!(stopping.desired_status, DesiredStatus::Stopped);
    let stopped = wait_for(&svc, &a, &task.task_id, TaskStatus::Stopped);
    assert_eq!(stopped.stop_code, Some(StopCode::UserInitiated));
    assert_eq!(stopped.stopped_reason.as_deref(), Some("enough"));
    assert_eq!(stopped.exit_code(), Some(143));
}

#[test]
fn bad_input_changes_nothing_and_pull_failures_fail_the_task() {
    let svc = service(Fake::default());
    let a = Tenant::unlimited("a");
    register(&svc, &a, "missing:latest");
    assert!(matches!(run(&svc, &a), Err(ServiceError::Unprocessable(_))));
    let bad = RunTaskInput {
        task_definition: "echo".into(),
        count: Some(11),
        ..Default::default()
    };
    assert!(matches!(
        svc.run_task(&a, bad),
        Err(ServiceError::Invalid(_))
    ));
    assert!(matches!(
        svc.run_task(
            &a,
            RunTaskInput {
                task_definition: "nope:1".into(),
                ..Default::default()
            }
        ),
        Err(ServiceError::NotFound(_))
    ));
    assert_eq!(svc.capacity().unwrap().tasks, 0);

    let svc = service(Fake {
        fail_pull: true,
        ..Default::default()
    });
    register(&svc, &a, "registry.test:5000/app:1");
    let task = run(&svc, &a).unwrap().remove(0);
    let stopped = wait_for(&svc, &a, &task.task_id, TaskStatus::Stopped);
    assert_eq!(stopped.stop_code, Some(StopCode::TaskFailedToStart));
    assert!(stopped
        .stopped_reason
        .unwrap()
        .starts_with("CannotPullContainerError"));
    assert_eq!(svc.capacity().unwrap().tasks, 0);
}

#[test]
fn reconciliation_adopts_launches_and_records_the_dead() {
    let fake = Fake::default();
    let store = SqliteStore::in_memory().unwrap();
    // What a killed skiffd left: three tasks in three situations.
    let first = service(fake.clone());
    let a = Tenant::unlimited("a");
    register(&first, &a, "busybox:latest");
    let def = first.task_definition(&a, "echo").unwrap();
    store.register_task_definition("a", def).unwrap();
    let mk = |id: &str, status: TaskStatus| {
        let mut t = crate::state::sqlite::tests_support::task(id, "a", 256, 512);
        t.task_definition = "echo:1".into();
        t.family = "echo".into();
        t.last_status = status;
        t.containers = vec![Container {
            name: "app".into(),
            image: "busybox:latest".into(),
            last_status: TaskStatus::Pending,
            exit_code: None,
            reason: None,
        }];
        t
    };
    let admission = Admission {
        cpu: 10_000,
        memory: 100_000,
        tenant_cpu: None,
        tenant_memory: None,
        tenant_tasks: None,
        uid_base: 1,
        uid_count: 10,
    };
    store
        .create_tasks(
            vec![
                mk("alive", TaskStatus::Running),
                mk("never", TaskStatus::Provisioning),
                mk("dead", TaskStatus::Running),
            ],
            &admission,
            "x",
        )
        .unwrap()
        .unwrap();
    {
        let mut s = fake.state.0.lock().unwrap();
        s.probes.insert("alive".into(), Probe::Alive);
        s.probes.insert("dead".into(), Probe::Died(None));
    }
    let svc = Service::new(Box::new(store), fake.clone(), settings());
    assert_eq!(lifecycle::reconcile(&svc).unwrap(), 3);
    wait_for(&svc, &a, "never", TaskStatus::Running);
    assert!(
        fake.state.0.lock().unwrap().started.contains_key("never"),
        "acknowledged, never started: launched now"
    );
    assert_eq!(
        svc.task(&a, "alive").unwrap().last_status,
        TaskStatus::Running
    );
    fake.finish("alive", 0);
    fake.finish("never", 0);
    assert_eq!(
        wait_for(&svc, &a, "alive", TaskStatus::Stopped).exit_code(),
        Some(0)
    );
    wait_for(&svc, &a, "never", TaskStatus::Stopped);
    let _ = wait_for(&svc, &a, "dead", TaskStatus::Stopped);
    assert_eq!(svc.capacity().unwrap().tasks, 0);
}

#[test]
fn registry_credentials_are_the_tenants_and_their_images_private() {
    let svc = service(Fake::default());
    let (a, b) = (Tenant::unlimited("a"), Tenant::unlimited("b"));
    let private = "registry.test:5000/app:1";
    let field = |r: Result<(), ServiceError>| match r {
        Err(ServiceError::Invalid(i)) => i.field,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        field(svc.check_image_access(&b, private, Some("reg"))),
        "repositoryCredentials.credentialsParameter",
        "another tenant's credentials"
    );
    assert_eq!(
        field(svc.check_image_access(&a, "elsewhere.test:5000/app:1", Some("reg"))),
        "repositoryCredentials.credentialsParameter",
        "credentials go to their own registry only"
    );
    svc.check_image_access(&a, private, Some("reg")).unwrap();
    // Pulled with a's credentials: a's image; b cannot run it, even with no credentials.
    svc.prepare_image("a", private, Some("reg")).unwrap();
    assert!(matches!(
        svc.check_image_access(&b, private, None),
        Err(ServiceError::Unprocessable(_))
    ));
    svc.check_image_access(&a, private, None).unwrap();
    // A public image stays public when pulled again with credentials.
    svc.prepare_image("a", "busybox:latest", Some("reg"))
        .unwrap();
    svc.check_image_access(&b, "busybox:latest", None).unwrap();
    assert!(matches!(
        svc.remove_image(&b, private),
        Err(ServiceError::NotFound(_))
    ));
    assert!(matches!(
        svc.remove_image(&a, "busybox:latest"),
        Err(ServiceError::Conflict(_))
    ));
}

#[test]
fn a_run_task_repeated_with_its_client_token_starts_nothing_more() {
    let svc = service(Fake::default());
    let a = Tenant::unlimited("a");
    let b = Tenant::unlimited("b");
    register(&svc, &a, "busybox:latest");
    register(&svc, &b, "busybox:latest");
    let input = RunTaskInput {
        task_definition: "echo".into(),
        count: Some(2),
        client_token: Some("retry-me".into()),
        ..Default::default()
    };
    let first = svc.run_task(&a, input.clone()).unwrap();
    let again = svc.run_task(&a, input.clone()).unwrap();
    let ids = |t: &[Task]| t.iter().map(|t| t.task_id.clone()).collect::<Vec<_>>();
    let mut first_ids = ids(&first);
    first_ids.sort();
    assert_eq!(ids(&again), first_ids, "the same two tasks");
    assert_eq!(svc.capacity().unwrap().tasks, 2, "nothing more admitted");
    // Another tenant's identical token is its own.
    assert_eq!(svc.run_task(&b, input.clone()).unwrap().len(), 2);
    let bad = RunTaskInput {
        client_token: Some("x".repeat(65)),
        ..input
    };
    assert!(matches!(
        svc.run_task(&a, bad),
        Err(ServiceError::Invalid(_))
    ));
}

#[test]
fn listings_page_with_a_next_token() {
    let svc = service(Fake::default());
    let a = Tenant::unlimited("a");
    for _ in 0..3 {
        register(&svc, &a, "busybox:latest");
    }
    let (first, next) = svc
        .list_task_definitions(
            &a,
            &DefinitionFilter {
                status: Some(crate::service::model::DefinitionStatus::Active),
                ..Default::default()
            },
            Page {
                after: None,
                limit: 2,
            },
        )
        .unwrap();
    assert_eq!(first.iter().map(|d| d.revision).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(next.as_deref(), Some("echo:2"));
    let (rest, next) = svc
        .list_task_definitions(
            &a,
            &DefinitionFilter {
                status: Some(crate::service::model::DefinitionStatus::Active),
                ..Default::default()
            },
            Page {
                after: next,
                limit: 2,
            },
        )
        .unwrap();
    assert_eq!(rest.iter().map(|d| d.revision).collect::<Vec<_>>(), [3]);
    assert_eq!(next, None, "no token after the last page");
    for _ in 0..3 {
        run(&svc, &a).unwrap();
    }
    let (tasks, next) = svc
        .list_tasks(
            &a,
            &TaskFilter::default(),
            Page {
                after: None,
                limit: 2,
            },
        )
        .unwrap();
    let (more, last) = svc
        .list_tasks(
            &a,
            &TaskFilter::default(),
            Page {
                after: next,
                limit: 2,
            },
        )
        .unwrap();
    assert_eq!((tasks.len(), more.len(), last), (2, 1, None));
    assert!(!tasks.iter().any(|t| t.task_id == more[0].task_id));
}

#[test]
fn a_definitions_process_settings_reach_the_executor_and_bad_ones_are_refused() {
    let fake = Fake::default();
    let svc = service(fake.clone());
    let a = Tenant::unlimited("a");
    let input = serde_json::from_value(serde_json::json!({
        "family": "echo",
        "containerDefinitions": [{"name": "app", "image": "busybox:latest",
            "linuxParameters": {"capabilities": {"add": ["NET_ADMIN"], "drop": ["MKNOD"]},
                "initProcessEnabled": true},
            "ulimits": [{"name": "nofile", "softLimit": 1024, "hardLimit": 2048}],
            "dockerSecurityOptions": ["no-new-privileges=false"]}]
    }))
    .unwrap();
    svc.register_task_definition(&a, input).unwrap();
    let task = run(&svc, &a).unwrap().remove(0);
    wait_for(&svc, &a, &task.task_id, TaskStatus::Running);
    let started = fake.state.0.lock().unwrap().started[&task.task_id].clone();
    assert!(started.init_process);
    assert_eq!(started.privileges.cap_add, ["NET_ADMIN"]);
    assert_eq!(started.privileges.cap_drop, ["MKNOD"]);
    assert!(!started.privileges.no_new_privileges);
    assert_eq!(started.privileges.ulimits.len(), 1);
    fake.finish(&task.task_id, 0);
    wait_for(&svc, &a, &task.task_id, TaskStatus::Stopped);

    // Without them: no init process, no_new_privs on.
    register(&svc, &a, "busybox:latest");
    let task = run(&svc, &a).unwrap().remove(0);
    wait_for(&svc, &a, &task.task_id, TaskStatus::Running);
    let started = fake.state.0.lock().unwrap().started[&task.task_id].clone();
    assert!(!started.init_process && started.privileges.no_new_privileges);

    for (field, value, named) in [
        (
            "linuxParameters",
            serde_json::json!({"capabilities": {"add": ["NO_SUCH_CAP"]}}),
            "NO_SUCH_CAP",
        ),
        (
            "ulimits",
            serde_json::json!([{"name": "nofile", "softLimit": 9, "hardLimit": 1}]),
            "nofile",
        ),
        (
            "dockerSecurityOptions",
            serde_json::json!(["seccomp=unconfined"]),
            "seccomp",
        ),
    ] {
        let mut container = serde_json::json!({"name": "app", "image": "busybox:latest"});
        container[field] = value;
        let input = serde_json::from_value(
            serde_json::json!({"family": "bad", "containerDefinitions": [container]}),
        )
        .unwrap();
        match svc.register_task_definition(&a, input) {
            Err(ServiceError::Invalid(invalid)) => {
                let message = invalid.to_string();
                assert!(message.contains(named), "{field}: {message}")
            }
            other => panic!("{field}: {other:?}"),
        }
    }
    assert!(svc.task_definition(&a, "bad").is_err(), "nothing stored");
}
