//! `skiff-image`: the host's image store from the command line — pull an image from a registry,
//! import an OCI image layout or a `docker save` archive, list, inspect, remove, build an image's
//! disk for guests, and collect unreferenced blobs.

use std::io::BufRead;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use images::image_disk::ensure;
use images::store::archive::import_archive;
use images::store::oci::{image_config, import_layout};
use images::store::registry::{pull, Credentials, PullOptions, Reference};
use images::store::Store;

#[derive(Debug, Parser)]
#[command(name = "skiff-image", version)]
struct Args {
    /// The store's data directory.
    #[arg(long, default_value = "/var/lib/skiff/images")]
    store: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Pulls REF (`HOST[:PORT]/REPOSITORY[:TAG][@sha256:…]`) from its registry, over HTTPS unless
    /// told otherwise; blobs already stored are not downloaded again.
    Pull {
        reference: String,
        /// The image's name in the store (default: REF in full, `:latest` when it has no tag).
        #[arg(long)]
        name: Option<String>,
        /// Plain HTTP instead of HTTPS.
        #[arg(long, conflicts_with = "ca_file")]
        plain_http: bool,
        /// A PEM file of CA certificates to trust besides the built-in roots.
        #[arg(long, value_name = "PEM")]
        ca_file: Option<PathBuf>,
        /// The user name for the registry (or its token service).
        #[arg(long, requires = "password_stdin")]
        username: Option<String>,
        /// Reads the password from the first line of standard input.
        #[arg(long, requires = "username")]
        password_stdin: bool,
        /// A host besides the registry's whose token service may receive the credentials
        /// (HTTPS only; repeat for more).
        #[arg(long = "token-host", value_name = "HOST[:PORT]")]
        token_hosts: Vec<String>,
    },
    /// Imports the OCI image layout in DIR as NAME (every blob checked against its digest).
    Import { dir: PathBuf, name: String },
    /// Imports a `docker save` archive (as NAME, or under the first tag it carries).
    ImportArchive {
        archive: PathBuf,
        name: Option<String>,
    },
    /// Lists the images.
    List,
    /// Shows an image: manifest, config, layers and what it runs.
    Inspect { name: String },
    /// Forgets an image (its blobs go at the next gc unless another image uses them).
    Remove { name: String },
    /// Deletes blobs no image references.
    Gc,
    /// Prints the path of the image's disk for guests (config and layers), building it once.
    Disk { name: String },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let store = Store::open(&args.store)?;
    match args.command {
        Command::Pull {
            reference,
            name,
            plain_http,
            ca_file,
            username,
            password_stdin,
            token_hosts,
        } => {
            let reference: Reference = reference.parse()?;
            let credentials = match (username, password_stdin) {
                (Some(username), true) => {
                    let mut password = String::new();
                    std::io::stdin().lock().read_line(&mut password)?;
                    let password = password.trim_end_matches(['\n', '\r']).to_owned();
                    Some(Credentials { username, password })
                }
                _ => None,
            };
            let options = PullOptions {
                plain_http,
                ca_file,
                credentials,
                token_hosts,
            };
            let name = name.unwrap_or_else(|| reference.to_string());
            let (record, report) = pull(&store, &reference, &name, &options)?;
            println!(
                "{name} {} ({} layers)",
                record.manifest,
                record.layers.len()
            );
            println!("{report}");
        }
        Command::Import { dir, name } => {
            let record = import_layout(&store, &dir, &name)?;
            println!(
                "{name} {} ({} layers)",
                record.manifest,
                record.layers.len()
            );
        }
        Command::ImportArchive { archive, name } => {
            let (name, record) = import_archive(&store, &archive, name.as_deref())?;
            println!(
                "{name} {} ({} layers)",
                record.manifest,
                record.layers.len()
            );
        }
        Command::List => {
            for (name, record) in store.list()? {
                let size: u64 = record.layers.iter().map(|l| l.size).sum();
                println!("{name}\t{}\t{size} bytes of layers", record.manifest);
            }
        }
        Command::Inspect { name } => {
            let record = store.get(&name)?;
            let config = image_config(&store, &record)?;
            let run = config.config.unwrap_or_default();
            println!("name: {name}");
            println!("manifest: {}", record.manifest);
            println!("config: {}", record.config);
            println!("platform: {}/{}", config.os, config.architecture);
            println!("entrypoint: {:?}", run.entrypoint.unwrap_or_default());
            println!("cmd: {:?}", run.cmd.unwrap_or_default());
            println!("env: {:?}", run.env.unwrap_or_default());
            println!("working dir: {}", run.working_dir.unwrap_or_default());
            println!("user: {}", run.user.unwrap_or_default());
            for layer in &record.layers {
                println!(
                    "layer: {} {} {} bytes",
                    layer.digest, layer.media_type, layer.size
                );
            }
        }
        Command::Remove { name } => {
            store.remove(&name)?;
            println!("removed {name}");
        }
        Command::Disk { name } => {
            let record = store.get(&name)?;
            println!("{}", ensure(&store, &args.store, &record)?.display());
        }
        Command::Gc => {
            let report = store.gc()?;
            println!("removed {} blobs, {} bytes", report.blobs, report.bytes);
        }
    }
    Ok(())
}
