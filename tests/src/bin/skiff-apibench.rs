//! `skiff-apibench`: load for skiffd's `/v1` API (used by `scripts/bench-api.sh` inside the
//! nested test host).
//!
//! - `launch --clients N --tasks M IMAGE -- CMD…`: M tasks of IMAGE, N clients at a time; prints
//!   one `bench launch N running MS stopped MS` line per task (RunTask → startedAt and →
//!   stoppedAt, from the task's own times) and `bench rate N TASKS_PER_S`.
//! - `describe --clients N --requests M TASK`: M DescribeTasks, N at a time; prints
//!   `bench describe US` per request.
//!
//! Every request is bounded: the counts are fixed and each wait has a deadline.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use api::client::{Client, Target};
use api::service::model::rfc3339;
use clap::{Parser, Subcommand};
use hyper::Method;
use serde_json::{json, Value};

#[derive(Debug, Parser)]
struct Args {
    /// skiffd's address.
    #[arg(long, default_value = "unix:///run/skiff/skiffd.sock")]
    host: String,
    #[arg(long, env = "SKIFF_TOKEN")]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Launch {
        #[arg(long)]
        clients: usize,
        #[arg(long)]
        tasks: usize,
        /// Task CPU units and MiB.
        #[arg(long, default_value_t = 1024)]
        cpu: u32,
        #[arg(long, default_value_t = 2048)]
        memory: u32,
        image: String,
        #[arg(last = true)]
        command: Vec<String>,
    },
    Describe {
        #[arg(long)]
        clients: usize,
        #[arg(long)]
        requests: usize,
        task: String,
    },
}

fn ms(task: &Value, field: &str) -> Option<i64> {
    task[field].as_str().and_then(rfc3339::parse)
}

async fn one_task(client: &Client, definition: &str) -> anyhow::Result<(i64, i64)> {
    let body = json!({"taskDefinition": definition});
    let run: Value = client.json(Method::POST, "/v1/tasks", Some(&body)).await?;
    let id = run["tasks"][0]["taskId"]
        .as_str()
        .context("no task id")?
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let t: Value = client
            .json(
                Method::GET,
                &format!("/v1/tasks/{id}/wait?status=STOPPED&timeoutSeconds=60"),
                None,
            )
            .await?;
        if t["lastStatus"] == "STOPPED" {
            let created = ms(&t, "createdAt").context("createdAt")?;
            let started =
                ms(&t, "startedAt").with_context(|| format!("task {id} never started: {t}"))?;
            let stopped = ms(&t, "stoppedAt").context("stoppedAt")?;
            if t["containers"][0]["exitCode"] != 0 {
                bail!("task {id} failed: {t}");
            }
            return Ok((started - created, stopped - created));
        }
        if Instant::now() > deadline {
            bail!("task {id} did not stop within 600 s");
        }
    }
}

#[allow(clippy::too_many_arguments)] // one per flag of the command
async fn launch(
    client: Client,
    clients: usize,
    tasks: usize,
    cpu: u32,
    memory: u32,
    image: String,
    command: Vec<String>,
) -> anyhow::Result<()> {
    let def = json!({"family": "apibench", "cpu": cpu, "memory": memory,
        "containerDefinitions": [{"name": "main", "image": image, "command": command}]});
    let def: Value = client
        .json(Method::POST, "/v1/task-definitions", Some(&def))
        .await?;
    let definition = format!("apibench:{}", def["revision"]);
    let start = Instant::now();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..clients {
        let (client, definition, next) = (client.clone(), definition.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut failures = 0;
            while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < tasks {
                match one_task(&client, &definition).await {
                    Ok((running, stopped)) => {
                        println!("bench launch {clients} running {running} stopped {stopped}")
                    }
                    Err(e) => {
                        eprintln!("apibench: {e:#}");
                        failures += 1;
                    }
                }
            }
            failures
        }));
    }
    let mut failures = 0;
    for w in workers {
        failures += w.await?;
    }
    let secs = start.elapsed().as_secs_f64();
    println!("bench rate {clients} {:.3}", tasks as f64 / secs);
    println!("bench failures {clients} {failures}");
    Ok(())
}

async fn describe(
    client: Client,
    clients: usize,
    requests: usize,
    task: String,
) -> anyhow::Result<()> {
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..clients {
        let (client, task, next) = (client.clone(), task.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut lines = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < requests {
                let t = Instant::now();
                let ok = client
                    .json::<Value>(Method::GET, &format!("/v1/tasks/{task}"), None)
                    .await
                    .is_ok();
                lines.push(format!(
                    "bench describe {} {}",
                    t.elapsed().as_micros(),
                    if ok { "ok" } else { "failed" }
                ));
            }
            lines
        }));
    }
    for w in workers {
        for line in w.await? {
            println!("{line}");
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let client = Client {
        target: args.host.parse::<Target>()?,
        token: args.token,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match args.command {
            Command::Launch {
                clients,
                tasks,
                cpu,
                memory,
                image,
                command,
            } => launch(client, clients, tasks, cpu, memory, image, command).await,
            Command::Describe {
                clients,
                requests,
                task,
            } => describe(client, clients, requests, task).await,
        }
    })
}
