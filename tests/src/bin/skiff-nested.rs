//! `skiff-nested`: boots the nested test host with the given files and runs a script in it;
//! prints the host's console and exits with the script's status. Used by the benchmark scripts.

use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use skiff_tests::nested::NestedHost;

#[derive(Debug, Parser)]
#[command(name = "skiff-nested")]
struct Args {
    /// A host file to copy in, as HOST_PATH=NESTED_PATH (repeatable).
    #[arg(long = "file", value_name = "HOST=NESTED")]
    files: Vec<String>,
    /// A dynamically linked host binary to copy in with its libraries, as HOST_PATH=NESTED_PATH.
    #[arg(long = "binary", value_name = "HOST=NESTED")]
    binaries: Vec<String>,
    /// Memory of the nested host in MiB.
    #[arg(long, default_value_t = 2048)]
    memory_mib: u32,
    /// Seconds the whole run may take.
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
    /// Extra parameters for the nested host's kernel command line (e.g. `kvm.tdp_mmu=0`).
    #[arg(long, value_name = "PARAMS")]
    append: Option<String>,
    /// The script to run (`-` for standard input).
    script: PathBuf,
}

fn split(spec: &str) -> anyhow::Result<(PathBuf, &str)> {
    let (host, nested) = spec
        .split_once('=')
        .with_context(|| format!("{spec:?}: expected HOST_PATH=NESTED_PATH"))?;
    Ok((PathBuf::from(host), nested))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut script = String::new();
    if args.script.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut script)?;
    } else {
        script = std::fs::read_to_string(&args.script)
            .with_context(|| format!("reading {}", args.script.display()))?;
    }
    let mut host = NestedHost::new()?;
    host.memory_mib(args.memory_mib)
        .timeout(Duration::from_secs(args.timeout));
    if let Some(params) = &args.append {
        host.append(params);
    }
    for spec in &args.files {
        let (src, dst) = split(spec)?;
        host.file(dst, &src)?;
    }
    for spec in &args.binaries {
        let (src, dst) = split(spec)?;
        host.binary(dst, &src)?;
    }
    let run = host.run(&script)?;
    print!("{}", run.console);
    eprintln!(
        "skiff-nested: script exited {} after {:.1} s",
        run.status,
        run.elapsed.as_secs_f64()
    );
    std::process::exit(run.status)
}
