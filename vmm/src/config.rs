//! What a microVM is made of: the configuration types and their validation come from the launch
//! contract crate (`skiff-vm-config`, re-exported here); this module adds the `skiff-vmm`
//! command-line flags and how they are merged over a `--config` file.

use std::path::PathBuf;

pub use skiff_vm_config::*;

/// The configuration flags of `skiff-vmm`: a JSON file, and flags that override its values
/// (repeatable ones are appended to the file's).
#[derive(Debug, Default, clap::Args)]
pub struct VmFlags {
    /// JSON configuration file; flags given on the command line override its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Uncompressed ELF kernel (vmlinux).
    #[arg(long, value_name = "VMLINUX")]
    pub kernel: Option<PathBuf>,
    /// Initial ramdisk (newc cpio).
    #[arg(long, value_name = "CPIO")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line [default: "console=ttyS0 reboot=k panic=-1 quiet"].
    #[arg(long)]
    pub cmdline: Option<String>,
    /// Number of vCPUs [default: 1].
    #[arg(long)]
    pub vcpus: Option<u8>,
    /// Guest memory in MiB [default: 128].
    #[arg(long)]
    pub memory_mib: Option<u64>,
    /// Serial console output: stdout, none, or a file path [default: stdout].
    #[arg(long, value_name = "stdout|none|FILE")]
    pub serial_out: Option<SerialOutput>,
    /// Forward standard input to the guest's serial console.
    #[arg(long)]
    pub serial_in: bool,
    /// A disk: path=FILE[,ro=true|false][,id=ID] (repeatable; the guest sees vda, vdb, ...).
    #[arg(long = "disk", value_name = "path=FILE[,ro=BOOL][,id=ID]", value_parser = parse_disk)]
    pub disks: Vec<DiskConfig>,
    /// Give the guest a virtio entropy device.
    #[arg(long)]
    pub rng: bool,
    /// A network interface backed by a host tap: tap=NAME[,mac=MAC] (repeatable; eth0, eth1, ...).
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC]", value_parser = parse_net)]
    pub nets: Vec<NetConfig>,
    /// A vsock device: the guest's cid and the Unix socket the host connects to (host-initiated
    /// connections send "CONNECT <port>\n"; guest connections to port P go to <uds>_P).
    #[arg(long, value_name = "cid=N,uds=PATH", value_parser = parse_vsock)]
    pub vsock: Option<VsockConfig>,
}

impl VmFlags {
    /// The configuration: the `--config` file (if any) with the flags applied over it.
    pub fn into_config(self) -> Result<VmConfig, ConfigError> {
        let mut config = match &self.config {
            Some(path) => VmConfig::from_file(path)?,
            None => VmConfig::with_kernel(PathBuf::new()),
        };
        if let Some(kernel) = self.kernel {
            config.kernel = kernel;
        }
        if self.initrd.is_some() {
            config.initrd = self.initrd;
        }
        if let Some(cmdline) = self.cmdline {
            config.cmdline = cmdline;
        }
        if let Some(vcpus) = self.vcpus {
            config.vcpus = vcpus;
        }
        if let Some(memory_mib) = self.memory_mib {
            config.memory_mib = memory_mib;
        }
        if let Some(serial_out) = self.serial_out {
            config.serial_out = serial_out;
        }
        config.serial_in |= self.serial_in;
        config.disks.extend(self.disks);
        config.rng |= self.rng;
        config.nets.extend(self.nets);
        if self.vsock.is_some() {
            config.vsock = self.vsock;
        }
        Ok(config)
    }
}

/// Parses `--disk path=FILE[,ro=true|false][,id=ID]`.
pub fn parse_disk(s: &str) -> Result<DiskConfig, String> {
    let mut disk = DiskConfig {
        path: PathBuf::new(),
        read_only: false,
        id: None,
    };
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("path", v)) => disk.path = PathBuf::from(v),
            Some(("ro", "true")) => disk.read_only = true,
            Some(("ro", "false")) => disk.read_only = false,
            Some(("id", v)) => disk.id = Some(v.to_owned()),
            _ => {
                return Err(format!(
                    "{part:?} in {s:?}: expected path=FILE[,ro=true|false][,id=ID]"
                ))
            }
        }
    }
    if disk.path.as_os_str().is_empty() {
        return Err(format!("{s:?}: path=FILE is required"));
    }
    Ok(disk)
}

/// Parses `--net tap=NAME[,mac=aa:bb:cc:dd:ee:ff]`.
pub fn parse_net(s: &str) -> Result<NetConfig, String> {
    let mut net = NetConfig {
        tap: String::new(),
        mac: None,
    };
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("tap", v)) => net.tap = v.to_owned(),
            Some(("mac", v)) => net.mac = Some(v.parse()?),
            _ => return Err(format!("{part:?} in {s:?}: expected tap=NAME[,mac=MAC]")),
        }
    }
    if net.tap.is_empty() {
        return Err(format!("{s:?}: tap=NAME is required"));
    }
    Ok(net)
}

/// Parses `--vsock cid=N,uds=PATH`.
pub fn parse_vsock(s: &str) -> Result<VsockConfig, String> {
    let mut cid = None;
    let mut uds = None;
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("cid", v)) => {
                cid = Some(
                    v.parse()
                        .map_err(|_| format!("cid={v:?} is not a number"))?,
                )
            }
            Some(("uds", v)) => uds = Some(PathBuf::from(v)),
            _ => return Err(format!("{part:?} in {s:?}: expected cid=N,uds=PATH")),
        }
    }
    match (cid, uds) {
        (Some(cid), Some(uds)) => Ok(VsockConfig { cid, uds }),
        _ => Err(format!("{s:?}: both cid=N and uds=PATH are required")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_specs_parse_and_bad_ones_are_named() {
        let d = parse_disk("path=/img/a.ext4,ro=true,id=layers").unwrap();
        assert_eq!(d.path, PathBuf::from("/img/a.ext4"));
        assert!(d.read_only);
        assert_eq!(d.id.as_deref(), Some("layers"));
        let d = parse_disk("path=/x").unwrap();
        assert!(!d.read_only && d.id.is_none());
        assert!(parse_disk("ro=true")
            .unwrap_err()
            .contains("path=FILE is required"));
        assert!(parse_disk("path=/x,ro=yes")
            .unwrap_err()
            .contains("\"ro=yes\""));
    }

    #[test]
    fn net_and_vsock_specs_parse_and_bad_ones_are_named() {
        let n = parse_net("tap=tap0,mac=06:00:ac:10:00:02").unwrap();
        assert_eq!(n.tap, "tap0");
        assert_eq!(n.mac.unwrap().to_string(), "06:00:ac:10:00:02");
        assert!(parse_net("mac=06:00:00:00:00:01")
            .unwrap_err()
            .contains("tap=NAME is required"));
        assert!(parse_net("tap=t,mac=01:00:5e:00:00:01")
            .unwrap_err()
            .contains("multicast"));

        let v = parse_vsock("cid=3,uds=/tmp/v.sock").unwrap();
        assert_eq!((v.cid, v.uds.to_str().unwrap()), (3, "/tmp/v.sock"));
        assert!(parse_vsock("cid=x,uds=/a").unwrap_err().contains("cid"));
        assert!(parse_vsock("cid=3").unwrap_err().contains("required"));
    }

    #[test]
    fn flags_override_the_file_and_add_to_its_lists() {
        let dir = std::env::temp_dir().join(format!("skiff-flags-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("vm.json");
        let mut base = VmConfig::with_kernel("/k".into());
        base.vcpus = 2;
        base.disks.push(parse_disk("path=/a").unwrap());
        base.vsock = Some(parse_vsock("cid=3,uds=/v").unwrap());
        std::fs::write(&file, base.to_json().unwrap()).unwrap();
        let flags = VmFlags {
            config: Some(file),
            memory_mib: Some(64),
            serial_out: Some(SerialOutput::None),
            disks: vec![parse_disk("path=/b,ro=true").unwrap()],
            ..VmFlags::default()
        };
        let c = flags.into_config().unwrap();
        assert_eq!(c.kernel, PathBuf::from("/k"));
        assert_eq!((c.vcpus, c.memory_mib), (2, 64));
        assert_eq!(c.serial_out, SerialOutput::None);
        assert_eq!(c.disks.len(), 2);
        assert!(c.disks[1].read_only);
        assert_eq!(c.vsock, base.vsock);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
