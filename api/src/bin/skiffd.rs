//! `skiffd`: the task service. Serves the `/v1` HTTP API on a Unix socket (and optionally a TCP
//! address), keeps its state in `<data>/state.db`, images in `<data>/images`, and runs every task
//! in its own microVM under a monitor process that outlives skiffd (`<data>/tasks/<id>`).
//! SIGTERM or SIGINT stops skiffd and leaves the tasks running; the next skiffd adopts them.

use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use api::config::{default_capacity, Config};
use api::executor::local::{JailerSettings, LocalExecutor, LocalSettings, RegistrySettings};
use api::http::{ecs_router, router, App, Auth};
use api::service::lifecycle::{reconcile, spawn_janitor};
use api::service::{CredentialRule, Service, ServiceSettings};
use api::state::sqlite::SqliteStore;
use clap::Parser;
use images::store::registry::Credentials;

#[derive(Debug, Parser)]
#[command(name = "skiffd", version, about = "The Skiff task service")]
struct Args {
    /// The TOML configuration file (default: /etc/skiff/skiffd.toml when it exists).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The data directory (state, images, tasks).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// The Unix socket to serve on.
    #[arg(long)]
    socket: Option<PathBuf>,
    /// A TCP address to serve on as well (needs tenants with tokens).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
}

/// A file next to this program, else the name (found in PATH).
fn beside_me(name: &str) -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(name)))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// One skiffd per data directory: an exclusive lock held for the process's life.
fn lock_data_dir(dir: &Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join("skiffd.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        bail!(
            "another skiffd uses {} (it holds {})",
            dir.display(),
            path.display()
        );
    }
    Ok(file)
}

fn executor_settings(config: &Config, data: &Path) -> LocalSettings {
    let e = &config.executor;
    let jailer = e
        .jailer
        .clone()
        .unwrap_or_else(|| beside_me("skiff-jailer"));
    let jail = (e.jailed != Some(false)).then(|| JailerSettings {
        jailer,
        chroot_base: e.chroot_base.clone().unwrap_or_else(|| data.join("jails")),
        vmm_overhead_mib: e.vmm_overhead_mib.unwrap_or(32),
        pids: 64,
        nofile: 256,
    });
    LocalSettings {
        images_dir: data.join("images"),
        tasks_dir: data.join("tasks"),
        monitor: e
            .monitor
            .clone()
            .unwrap_or_else(|| beside_me("skiff-monitor")),
        vmm: e.vmm.clone().unwrap_or_else(|| beside_me("skiff-vmm")),
        kernel: e.kernel.clone().unwrap_or_else(|| data.join("vmlinux")),
        initramfs: e
            .initramfs
            .clone()
            .unwrap_or_else(|| data.join("initramfs.cpio")),
        jail,
        boot_timeout: Duration::from_secs(e.boot_timeout_seconds.unwrap_or(120)),
        log_max_bytes: e.log_max_mib.unwrap_or(64) << 20,
        registries: config
            .registries
            .iter()
            .map(|(host, r)| {
                (
                    host.clone(),
                    RegistrySettings {
                        plain_http: r.plain_http,
                        ca_file: r.ca_file.clone(),
                        token_hosts: r.token_hosts.clone(),
                    },
                )
            })
            .collect(),
        credentials: config
            .credentials
            .iter()
            .map(|(name, c)| {
                let secret = Credentials {
                    username: c.username.clone(),
                    password: c.password.clone(),
                };
                (name.clone(), (c.registry.clone(), secret))
            })
            .collect(),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config_path = args.config.clone().or_else(|| {
        let default = PathBuf::from("/etc/skiff/skiffd.toml");
        default.is_file().then_some(default)
    });
    let mut config = match &config_path {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if args.data_dir.is_some() {
        config.data_dir = args.data_dir.clone();
    }
    if args.socket.is_some() {
        config.socket = args.socket.clone();
    }
    if args.listen.is_some() {
        config.listen = args.listen;
    }
    config.check()?;
    let data = config.data_dir();
    for dir in [data.clone(), data.join("images"), data.join("tasks")] {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::set_permissions(data.join("tasks"), std::fs::Permissions::from_mode(0o711))?;
    let _lock = lock_data_dir(&data)?;
    let store = SqliteStore::open(&data.join("state.db"))?;
    let (default_cpu, default_memory) = default_capacity();
    let e = &config.executor;
    let settings = ServiceSettings {
        capacity_cpu: config.capacity.cpu.unwrap_or(default_cpu),
        capacity_memory: config.capacity.memory_mib.unwrap_or(default_memory),
        uid_base: e.uid_base.unwrap_or(100_000),
        uid_count: e.uid_count.unwrap_or(10_000),
        retention: Duration::from_secs(config.retention_seconds.unwrap_or(3600)),
        credentials: config
            .credentials
            .iter()
            .map(|(name, c)| {
                let tenants = if c.tenants.is_empty() {
                    vec![api::config::DEFAULT_TENANT.to_owned()]
                } else {
                    c.tenants.clone()
                };
                (
                    name.clone(),
                    CredentialRule {
                        registry: c.registry.clone(),
                        tenants,
                    },
                )
            })
            .collect(),
    };
    let executor = LocalExecutor::new(executor_settings(&config, &data));
    let service = Service::new(Box::new(store), executor, settings.clone());
    let adopted = reconcile(&service)?;
    spawn_janitor(service.clone());
    if config.executor.jailed == Some(false) {
        eprintln!("skiffd: warning: executor.jailed = false: task VMMs run unjailed, as root");
    }
    eprintln!(
        "skiffd: data {}, capacity {} CPU units / {} MiB, {} unfinished task(s) picked up",
        data.display(),
        settings.capacity_cpu,
        settings.capacity_memory,
        adopted
    );
    let app = App {
        service: Arc::clone(&service),
        auth: Auth {
            tenants: config.tenants(),
            open: config.tenants.is_empty(),
        },
        ecs: api::http::ecs::keys(config.ecs_keys()),
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let socket = config.socket();
        if let Some(dir) = socket.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        match std::fs::remove_file(&socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("cannot replace {}", socket.display()))
            }
        }
        let unix = tokio::net::UnixListener::bind(&socket)
            .with_context(|| format!("cannot listen on {}", socket.display()))?;
        std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o660))?;
        eprintln!("skiffd: listening on {}", socket.display());
        let unix_server =
            axum::serve(unix, router(app.clone())).with_graceful_shutdown(shutdown_signal());
        let tcp = |addr: std::net::SocketAddr, what: &'static str, routes: axum::Router| async move {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            eprintln!("skiffd: {what} on http://{addr}");
            axum::serve(listener, routes)
                .with_graceful_shutdown(shutdown_signal())
                .await
                .context(what)
        };
        let ecs_on_listen = if app.ecs.is_some() && config.ecs.listen.is_none() {
            " and ECS"
        } else {
            ""
        };
        let v1_tcp = async {
            match config.listen {
                Some(addr) => {
                    let what = if ecs_on_listen.is_empty() { "/v1" } else { "/v1 and ECS" };
                    tcp(addr, what, router(app.clone())).await
                }
                None => Ok(()),
            }
        };
        let ecs_tcp = async {
            match (config.ecs.listen, &app.ecs) {
                (Some(addr), Some(_)) => tcp(addr, "ECS", ecs_router(app.clone())).await,
                _ => Ok(()),
            }
        };
        tokio::try_join!(
            async { unix_server.await.context("the Unix socket") },
            v1_tcp,
            ecs_tcp
        )?;
        let _ = std::fs::remove_file(&socket);
        eprintln!("skiffd: stopped; tasks keep running under their monitors");
        anyhow::Ok(())
    })
}
