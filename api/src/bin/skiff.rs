//! `skiff`: the command line of skiffd, with Docker's habits.
//!
//! ```text
//! skiff run busybox:latest -- echo hello      # prints hello, exits with the container's code
//! skiff run -d --cpu 512 --memory 1024 -e K=V app:1
//! skiff ps [-a] | skiff logs [-f] TASK | skiff stop TASK | skiff describe TASK
//! skiff taskdef register FILE.json | skiff taskdef ls | skiff taskdef describe FAMILY[:REV]
//! skiff images pull REF | skiff images ls | skiff images rm NAME
//! skiff capacity
//! ```
//!
//! skiffd's address: `--host`, else `SKIFF_HOST`, else the config file's `host`, else
//! `unix:///run/skiff/skiffd.sock`; the token likewise (`--token`, `SKIFF_TOKEN`, `token`).
//! `--json` prints the API's JSON instead of tables.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use api::client::{encode, Client, ClientError, Target};
use clap::{Parser, Subcommand};
use comfy_table::{presets::NOTHING, Table};
use hyper::Method;
use serde_json::{json, Value};

/// Exit status when the task could not be run at all (as `docker run`).
const RUN_FAILED: i32 = 125;

#[derive(Debug, Parser)]
#[command(
    name = "skiff",
    version,
    about = "Run tasks in microVMs on a skiffd host"
)]
struct Args {
    /// skiffd's address: unix:///PATH or http://HOST:PORT [env: SKIFF_HOST].
    #[arg(long, global = true)]
    host: Option<String>,
    /// The bearer token [env: SKIFF_TOKEN].
    #[arg(long, global = true)]
    token: Option<String>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs IMAGE in its own microVM (registering a task definition for it, or reusing one).
    Run(RunArgs),
    /// Lists running tasks (all with -a).
    Ps {
        #[arg(short = 'a', long)]
        all: bool,
    },
    /// Prints a task's output.
    Logs {
        task: String,
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Stops a task (SIGTERM, SIGKILL after its stop timeout).
    Stop {
        task: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Shows a task and its events.
    Describe { task: String },
    /// Waits until a task reached STATUS (STOPPED: prints its exit code and exits with it).
    Wait {
        task: String,
        #[arg(long, default_value = "STOPPED")]
        status: String,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
    /// Task definitions.
    #[command(subcommand)]
    Taskdef(Taskdef),
    /// The host's images.
    #[command(subcommand)]
    Images(Images),
    /// The host's capacity: total, used, free.
    Capacity,
}

#[derive(Debug, Subcommand)]
enum Taskdef {
    /// Registers the task definition in FILE (JSON, as ECS's).
    Register { file: PathBuf },
    /// Lists the active task definitions.
    Ls,
    /// Shows FAMILY or FAMILY:REVISION.
    Describe { reference: String },
}

#[derive(Debug, Subcommand)]
enum Images {
    /// Pulls REF (HOST[:PORT]/REPOSITORY[:TAG]) into the host's store.
    Pull {
        reference: String,
        /// Named registry credentials of skiffd's configuration.
        #[arg(long)]
        credentials: Option<String>,
    },
    Ls,
    Rm {
        name: String,
    },
}

/// `~/.config/skiff/config.toml`: `host` and `token`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    host: Option<String>,
    token: Option<String>,
}

fn client(args: &Args) -> anyhow::Result<Client> {
    let file = std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".config/skiff/config.toml"))
        .filter(|p| p.is_file())
        .map(|p| -> anyhow::Result<FileConfig> {
            let text = std::fs::read_to_string(&p)?;
            toml::from_str(&text).with_context(|| format!("{}", p.display()))
        })
        .transpose()?
        .unwrap_or_default();
    let host = args
        .host
        .clone()
        .or_else(|| std::env::var("SKIFF_HOST").ok())
        .or(file.host)
        .unwrap_or_else(|| format!("unix://{}", api::config::DEFAULT_SOCKET));
    let token = args
        .token
        .clone()
        .or_else(|| std::env::var("SKIFF_TOKEN").ok())
        .or(file.token);
    Ok(Client {
        target: host.parse::<Target>()?,
        token,
    })
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut t = Table::new();
    t.load_preset(NOTHING).set_header(headers.to_vec());
    for row in rows {
        t.add_row(row);
    }
    println!("{t}");
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// A full task id, from a prefix of one (as `docker` takes).
async fn resolve(c: &Client, task: &str) -> anyhow::Result<String> {
    if task.len() == 32 {
        return Ok(task.to_owned());
    }
    let mut matches = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let mut path = "/v1/tasks?maxResults=100".to_owned();
        if let Some(t) = &next {
            path.push_str(&format!("&nextToken={}", encode(t)));
        }
        let page: Value = c.json(Method::GET, &path, None).await?;
        for t in page["tasks"].as_array().into_iter().flatten() {
            if let Some(id) = t["taskId"].as_str().filter(|id| id.starts_with(task)) {
                matches.push(id.to_owned());
            }
        }
        match page["nextToken"].as_str() {
            Some(t) => next = Some(t.to_owned()),
            None => break,
        }
    }
    match matches.len() {
        1 => Ok(matches.remove(0)),
        0 => bail!("no task {task}"),
        n => bail!("{task} matches {n} tasks: give more of the id"),
    }
}

/// Prints the task's log (following it), in the streams it came on.
async fn print_logs(c: &Client, id: &str, follow: bool) -> Result<(), ClientError> {
    let path = format!(
        "/v1/tasks/{id}/logs{}",
        if follow { "?follow=true" } else { "" }
    );
    c.lines(&path, |entry| {
        let message = entry["message"].as_str().unwrap_or("");
        let newline = if entry["partial"].as_bool().unwrap_or(false) {
            ""
        } else {
            "\n"
        };
        if entry["stream"] == "stderr" {
            let _ = write!(std::io::stderr(), "{message}{newline}");
        } else {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "{message}{newline}");
            let _ = out.flush();
        }
    })
    .await
}

/// A family name from an image reference: `registry:5000/team/app:1` → `app`.
fn family_for(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    let name = last.split([':', '@']).next().unwrap_or(last);
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if clean.is_empty() {
        "task".into()
    } else {
        clean
    }
}

/// What `skiff run` is asked.
#[derive(Debug, clap::Args)]
struct RunArgs {
    image: String,
    /// CPU units (1024 = one vCPU).
    #[arg(long, default_value_t = 256)]
    cpu: u32,
    /// Memory in MiB.
    #[arg(long, default_value_t = 512)]
    memory: u32,
    /// An environment variable, KEY=VALUE (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// The task definition family (default: from the image's name).
    #[arg(long)]
    name: Option<String>,
    /// Print the task id and return instead of following the task.
    #[arg(short = 'd', long)]
    detach: bool,
    /// Seconds between SIGTERM and SIGKILL when the task is stopped (2-120).
    #[arg(long)]
    stop_timeout: Option<u32>,
    /// A capability beyond Docker's defaults, e.g. NET_ADMIN, or ALL (repeatable).
    #[arg(long, value_name = "CAP")]
    cap_add: Vec<String>,
    /// A capability taken away, or ALL (repeatable).
    #[arg(long, value_name = "CAP")]
    cap_drop: Vec<String>,
    /// A resource limit, NAME=SOFT[:HARD], e.g. nofile=1024:4096 (repeatable).
    #[arg(long, value_name = "NAME=SOFT[:HARD]", value_parser = api::executor::privileges::parse_ulimit)]
    ulimit: Vec<api::executor::privileges::UlimitSetting>,
    /// no-new-privileges=false lets setuid programs and file capabilities work (on by default).
    #[arg(long, value_name = "no-new-privileges[=BOOL]")]
    security_opt: Vec<String>,
    /// Run the program under an init process that forwards signals and reaps orphans;
    /// otherwise the program is PID 1 of the container.
    #[arg(long)]
    init: bool,
    /// The command (replaces the image's Cmd).
    #[arg(last = true)]
    command: Vec<String>,
}

async fn run(c: &Client, json_out: bool, args: RunArgs) -> anyhow::Result<i32> {
    let RunArgs {
        image,
        cpu,
        memory,
        env,
        name,
        detach,
        stop_timeout,
        cap_add,
        cap_drop,
        ulimit,
        security_opt,
        init,
        command,
    } = args;
    let family = name.unwrap_or_else(|| family_for(&image));
    let environment: Vec<Value> = env
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => Ok(json!({"name": k, "value": v})),
            None => bail!("-e {kv:?}: expected KEY=VALUE"),
        })
        .collect::<anyhow::Result<_>>()?;
    // Reuse the family's latest revision when it runs the same image at the same size.
    let existing: Option<Value> = match c
        .json(
            Method::GET,
            &format!("/v1/task-definitions/{}", encode(&family)),
            None,
        )
        .await
    {
        Ok(def) => Some(def),
        Err(ClientError::Api { status: 404, .. }) => None,
        Err(e) => return Err(e.into()),
    };
    let mut container = json!({"name": "main", "image": image});
    if let Some(t) = stop_timeout {
        container["stopTimeout"] = json!(t);
    }
    let mut capabilities = serde_json::Map::new();
    for (key, list) in [("add", cap_add), ("drop", cap_drop)] {
        if !list.is_empty() {
            capabilities.insert(key.into(), json!(list));
        }
    }
    let mut linux_parameters = serde_json::Map::new();
    if !capabilities.is_empty() {
        linux_parameters.insert("capabilities".into(), Value::Object(capabilities));
    }
    if init {
        linux_parameters.insert("initProcessEnabled".into(), json!(true));
    }
    if !linux_parameters.is_empty() {
        container["linuxParameters"] = Value::Object(linux_parameters);
    }
    if !ulimit.is_empty() {
        container["ulimits"] = ulimit
            .iter()
            .map(|u| json!({"name": u.name, "softLimit": u.soft, "hardLimit": u.hard}))
            .collect();
    }
    if !security_opt.is_empty() {
        container["dockerSecurityOptions"] = json!(security_opt);
    }
    let same = existing.as_ref().filter(|d| {
        d["cpu"] == cpu
            && d["memory"] == memory
            && [
                "image",
                "stopTimeout",
                "linuxParameters",
                "ulimits",
                "dockerSecurityOptions",
            ]
            .iter()
            .all(|key| d["containerDefinitions"][0][key] == container[key])
    });
    let definition = match same {
        Some(d) => format!("{}:{}", family, d["revision"]),
        None => {
            let body = json!({"family": family, "cpu": cpu, "memory": memory,
                "containerDefinitions": [container]});
            let d: Value = c
                .json(Method::POST, "/v1/task-definitions", Some(&body))
                .await?;
            format!("{}:{}", family, d["revision"])
        }
    };
    let mut overrides = json!({"name": "main", "environment": environment});
    if !command.is_empty() {
        overrides["command"] = json!(command);
    }
    let body =
        json!({"taskDefinition": definition, "overrides": {"containerOverrides": [overrides]}});
    let answer: Value = c.json(Method::POST, "/v1/tasks", Some(&body)).await?;
    let task = &answer["tasks"][0];
    let id = task["taskId"]
        .as_str()
        .context("skiffd returned no task id")?
        .to_owned();
    if detach {
        if json_out {
            print_json(task)
        } else {
            println!("{id}")
        }
        return Ok(0);
    }
    // Ctrl-C stops the task (once); the logs and the end are still shown.
    let stopper = c.clone();
    let stop_id = id.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("skiff: stopping task {stop_id}");
            let _ = stopper
                .json::<Value>(
                    Method::POST,
                    &format!("/v1/tasks/{stop_id}/stop"),
                    Some(&json!({"reason": "stopped from skiff run (Ctrl-C)"})),
                )
                .await;
        }
    });
    print_logs(c, &id, true).await?;
    let done: Value = loop {
        let t: Value = c
            .json(
                Method::GET,
                &format!("/v1/tasks/{id}/wait?status=STOPPED&timeoutSeconds=60"),
                None,
            )
            .await?;
        if t["lastStatus"] == "STOPPED" {
            break t;
        }
    };
    if json_out {
        print_json(&done);
    }
    let code = done["containers"][0]["exitCode"].as_i64();
    match code {
        Some(code) if done["stopCode"] != "TaskFailedToStart" => {
            Ok(i32::try_from(code).unwrap_or(RUN_FAILED))
        }
        _ => {
            eprintln!(
                "skiff: task {id} did not run: {}",
                done["stoppedReason"].as_str().unwrap_or("no reason given")
            );
            Ok(RUN_FAILED)
        }
    }
}

fn task_rows(tasks: &[Value]) -> Vec<Vec<String>> {
    tasks
        .iter()
        .map(|t| {
            vec![
                t["taskId"]
                    .as_str()
                    .unwrap_or("")
                    .chars()
                    .take(12)
                    .collect(),
                s(&t["taskDefinition"]),
                s(&t["containers"][0]["image"]),
                s(&t["lastStatus"]),
                s(&t["containers"][0]["exitCode"]),
                s(&t["createdAt"]),
            ]
        })
        .collect()
}

async fn dispatch(args: Args) -> anyhow::Result<i32> {
    let c = client(&args)?;
    let json_out = args.json;
    match args.command {
        Command::Run(args) => return run(&c, json_out, args).await,
        Command::Wait {
            task,
            status,
            timeout,
        } => {
            let id = resolve(&c, &task).await?;
            let deadline = std::time::Instant::now() + Duration::from_secs(timeout);
            let order = [
                "PROVISIONING",
                "PENDING",
                "ACTIVATING",
                "RUNNING",
                "DEACTIVATING",
                "STOPPING",
                "DEPROVISIONING",
                "STOPPED",
            ];
            let target = order
                .iter()
                .position(|s| *s == status)
                .with_context(|| format!("--status {status:?} is not a task status"))?;
            loop {
                let t: Value = c
                    .json(
                        Method::GET,
                        &format!("/v1/tasks/{id}/wait?status={status}&timeoutSeconds=30"),
                        None,
                    )
                    .await?;
                let at = order
                    .iter()
                    .position(|s| t["lastStatus"] == *s)
                    .unwrap_or(0);
                if at >= target {
                    if status != "STOPPED" {
                        println!("{}", s(&t["lastStatus"]));
                        return Ok(0);
                    }
                    let code = t["containers"][0]["exitCode"].as_i64();
                    println!("{}", code.map_or("-".to_owned(), |c| c.to_string()));
                    return Ok(code
                        .and_then(|c| i32::try_from(c).ok())
                        .unwrap_or(RUN_FAILED));
                }
                if std::time::Instant::now() >= deadline {
                    bail!("task {id} is {} after {timeout} s", s(&t["lastStatus"]));
                }
            }
        }
        Command::Ps { all } => {
            let mut tasks = Vec::new();
            let mut next: Option<String> = None;
            loop {
                let mut path = format!(
                    "/v1/tasks?maxResults=100{}",
                    if all { "" } else { "&desiredStatus=RUNNING" }
                );
                if let Some(t) = &next {
                    path.push_str(&format!("&nextToken={}", encode(t)));
                }
                let page: Value = c.json(Method::GET, &path, None).await?;
                tasks.extend(page["tasks"].as_array().cloned().unwrap_or_default());
                match page["nextToken"].as_str() {
                    Some(t) => next = Some(t.to_owned()),
                    None => break,
                }
            }
            if json_out {
                print_json(&Value::Array(tasks));
            } else {
                table(
                    &[
                        "TASK ID",
                        "DEFINITION",
                        "IMAGE",
                        "STATUS",
                        "EXIT",
                        "CREATED",
                    ],
                    task_rows(&tasks),
                );
            }
        }
        Command::Logs { task, follow } => {
            let id = resolve(&c, &task).await?;
            print_logs(&c, &id, follow).await?;
        }
        Command::Stop { task, reason } => {
            let id = resolve(&c, &task).await?;
            let body = json!({"reason": reason});
            let t: Value = c
                .json(Method::POST, &format!("/v1/tasks/{id}/stop"), Some(&body))
                .await?;
            if json_out {
                print_json(&t)
            } else {
                println!("{id}")
            }
        }
        Command::Describe { task } => {
            let id = resolve(&c, &task).await?;
            let mut t: Value = c
                .json(Method::GET, &format!("/v1/tasks/{id}"), None)
                .await?;
            let events: Value = c
                .json(Method::GET, &format!("/v1/tasks/{id}/events"), None)
                .await?;
            t["events"] = events["events"].clone();
            print_json(&t);
        }
        Command::Taskdef(Taskdef::Register { file }) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let body: Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", file.display()))?;
            let d: Value = c
                .json(Method::POST, "/v1/task-definitions", Some(&body))
                .await?;
            if json_out {
                print_json(&d)
            } else {
                println!("{}:{}", s(&d["family"]), d["revision"])
            }
        }
        Command::Taskdef(Taskdef::Ls) => {
            let page: Value = c
                .json(Method::GET, "/v1/task-definitions?maxResults=100", None)
                .await?;
            let defs = page["taskDefinitions"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if json_out {
                print_json(&Value::Array(defs));
            } else {
                let rows = defs
                    .iter()
                    .map(|d| {
                        vec![
                            format!("{}:{}", s(&d["family"]), d["revision"]),
                            s(&d["containerDefinitions"][0]["image"]),
                            s(&d["cpu"]),
                            s(&d["memory"]),
                            s(&d["status"]),
                        ]
                    })
                    .collect();
                table(&["DEFINITION", "IMAGE", "CPU", "MEMORY", "STATUS"], rows);
            }
        }
        Command::Taskdef(Taskdef::Describe { reference }) => {
            let d: Value = c
                .json(
                    Method::GET,
                    &format!("/v1/task-definitions/{}", encode(&reference)),
                    None,
                )
                .await?;
            print_json(&d);
        }
        Command::Images(Images::Pull {
            reference,
            credentials,
        }) => {
            let bar =
                indicatif::ProgressBar::new_spinner().with_message(format!("pulling {reference}"));
            bar.enable_steady_tick(Duration::from_millis(120));
            let body = json!({"image": reference, "credentialsParameter": credentials});
            let result: Result<Value, _> =
                c.json(Method::POST, "/v1/images/pull", Some(&body)).await;
            bar.finish_and_clear();
            let image = result?;
            if json_out {
                print_json(&image)
            } else {
                println!("{} {}", s(&image["name"]), s(&image["digest"]))
            }
        }
        Command::Images(Images::Ls) => {
            let list: Value = c.json(Method::GET, "/v1/images", None).await?;
            let images = list["images"].as_array().cloned().unwrap_or_default();
            if json_out {
                print_json(&Value::Array(images));
            } else {
                let rows = images
                    .iter()
                    .map(|i| {
                        vec![
                            s(&i["name"]),
                            s(&i["digest"]).chars().take(19).collect(),
                            format!("{:.1} MiB", i["size"].as_f64().unwrap_or(0.0) / 1048576.0),
                        ]
                    })
                    .collect();
                table(&["NAME", "DIGEST", "SIZE"], rows);
            }
        }
        Command::Images(Images::Rm { name }) => {
            c.call(Method::DELETE, &format!("/v1/images/{name}"), None)
                .await?;
            println!("{name}");
        }
        Command::Capacity => {
            let cap: Value = c.json(Method::GET, "/v1/capacity", None).await?;
            if json_out {
                print_json(&cap);
            } else {
                let row = |k: &str| vec![k.to_owned(), s(&cap[k]["cpu"]), s(&cap[k]["memory"])];
                table(
                    &["", "CPU UNITS", "MEMORY MIB"],
                    vec![row("total"), row("used"), row("free")],
                );
                println!("tasks: {}", s(&cap["tasks"]));
            }
        }
    }
    Ok(0)
}

fn main() {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("skiff: {e}");
            std::process::exit(RUN_FAILED)
        }
    };
    let code = runtime.block_on(dispatch(args)).unwrap_or_else(|e| {
        // One write: stderr is unbuffered, and eprintln! writes piece by piece, so messages of
        // clients sharing a file (`2>> log`) would interleave mid-line.
        let line = format!("skiff: {e:#}\n");
        let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
        RUN_FAILED
    });
    std::process::exit(code)
}
