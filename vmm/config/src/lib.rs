//! The launch contract of a Skiff microVM: what a VM is made of ([`VmConfig`]), as the JSON file
//! `skiff-vmm --config FILE` reads, `skiff-jailer --vm-config FILE` relocates into a jail and the
//! task runner writes, and its validation (everything that can be checked without KVM).
//!
//! The JSON keys: `kernel`, `initrd`, `cmdline`, `vcpus`, `memory_mib`, `serial_out`
//! (`"stdout"`, `"none"` or a file), `serial_in`, `disks: [{"path", "read_only", "id"}]`, `rng`,
//! `nets: [{"tap", "mac"}]`, `vsock: {"cid", "uds"}`. Unknown keys are refused.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The kernel command line used when none is given.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 quiet";
/// vCPUs when none are given.
pub const DEFAULT_VCPUS: u8 = 1;
/// Memory when none is given.
pub const DEFAULT_MEMORY_MIB: u64 = 128;
/// Smallest guest accepted: the boot structures plus a 16 MiB-aligned kernel need this much.
pub const MIN_MEMORY_MIB: u64 = 32;
/// Largest guest accepted (1 TiB).
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// Most vCPUs a guest may have: limited by the MP table, which must fit in the EBDA.
pub const MAX_VCPUS: u8 = 32;
/// Most virtio devices a guest may have: each takes one IOAPIC interrupt line, pins 5 to 23
/// (the VMM's memory layout checks this against its IOAPIC at compile time).
pub const MAX_VIRTIO_DEVICES: usize = 19;
/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_TAP_NAME: usize = 15;
/// Longest Unix socket path (`sun_path` holds 108 bytes with the NUL).
const MAX_UDS_PATH: usize = 107;
/// What may be appended to the vsock socket's path for guest connections: `_<port>`.
const UDS_PORT_SUFFIX: usize = "_4294967295".len();

/// Where the guest's serial console goes. In JSON: `"stdout"`, `"none"` or a file path (a file
/// named `stdout` or `none` is written `./stdout`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SerialOutput {
    #[default]
    Stdout,
    File(PathBuf),
    None,
}

impl std::str::FromStr for SerialOutput {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "stdout" => SerialOutput::Stdout,
            "none" => SerialOutput::None,
            path => SerialOutput::File(PathBuf::from(path)),
        })
    }
}

impl Serialize for SerialOutput {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SerialOutput::Stdout => s.serialize_str("stdout"),
            SerialOutput::None => s.serialize_str("none"),
            SerialOutput::File(path) => {
                let text = path.to_str().ok_or_else(|| {
                    serde::ser::Error::custom(format!(
                        "serial output path {} is not UTF-8",
                        path.display()
                    ))
                })?;
                if text == "stdout" || text == "none" {
                    s.serialize_str(&format!("./{text}"))
                } else {
                    s.serialize_str(text)
                }
            }
        }
    }
}

impl<'de> Deserialize<'de> for SerialOutput {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let Ok(out) = s.parse();
        Ok(out)
    }
}

/// A disk: a host file the guest sees as a virtio block device (`/dev/vda`, `/dev/vdb`, ... in the
/// order given).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Host file (or block device) backing the disk.
    pub path: PathBuf,
    /// The guest may only read; the file is opened read-only.
    #[serde(default)]
    pub read_only: bool,
    /// What the guest reads as the disk's serial (`/sys/block/vdX/serial`), up to 20 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// A network interface: a host tap device the guest sees as a virtio-net device (`eth0`, `eth1`,
/// ... in the order given).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Name of the host tap device (it must exist, or the VMM must be allowed to create it).
    pub tap: String,
    /// The guest's MAC address; a locally administered one derived from the tap's name if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
}

/// A MAC address, written `aa:bb:cc:dd:ee:ff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MacAddr(pub [u8; 6]);

impl std::str::FromStr for MacAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().filter(|p| p.len() == 2);
            *byte = part
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"))?;
        }
        if parts.next().is_some() {
            return Err(format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"));
        }
        if mac[0] & 1 != 0 {
            return Err(format!("{s:?} is a multicast address"));
        }
        Ok(MacAddr(mac))
    }
}

impl std::fmt::Display for MacAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl MacAddr {
    /// A locally administered unicast address derived from `seed` (stable for a given tap name).
    pub fn derived(seed: &str) -> Self {
        // FNV-1a: small, stable across releases (unlike std's hasher).
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in seed.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let b = h.to_le_bytes();
        MacAddr([0x06, b[0], b[1], b[2], b[3], b[4]])
    }
}

/// The vsock device: guest CID and the host Unix socket of the hybrid model (host connections
/// arrive on `uds`; guest connections to host port P go to `<uds>_P`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    pub cid: u32,
    /// Path of the Unix socket the VMM listens on.
    pub uds: PathBuf,
}

/// A microVM's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Uncompressed ELF kernel (`vmlinux`).
    pub kernel: PathBuf,
    /// Initial ramdisk (newc cpio), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[serde(default = "default_cmdline")]
    pub cmdline: String,
    /// Number of vCPUs.
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    /// Guest memory in MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u64,
    /// Where the serial console goes: `stdout`, `none` or a file path.
    #[serde(default)]
    pub serial_out: SerialOutput,
    /// Forward the VMM's standard input to the guest's serial console.
    #[serde(default)]
    pub serial_in: bool,
    /// Disks, in the order the guest sees them.
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// Give the guest a virtio entropy device.
    #[serde(default)]
    pub rng: bool,
    /// Network interfaces, in the order the guest sees them.
    #[serde(default)]
    pub nets: Vec<NetConfig>,
    /// The host<->guest socket device, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockConfig>,
}

fn default_cmdline() -> String {
    DEFAULT_CMDLINE.to_owned()
}
fn default_vcpus() -> u8 {
    DEFAULT_VCPUS
}
fn default_memory_mib() -> u64 {
    DEFAULT_MEMORY_MIB
}

/// Errors in a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {source}")]
    ParseFile {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write the configuration as JSON: {0}")]
    Serialize(#[source] serde_json::Error),
    #[error("no kernel given (--kernel, or \"kernel\" in the config file)")]
    NoKernel,
    #[error("kernel {0} does not exist or is not a regular file")]
    KernelMissing(PathBuf),
    #[error("initrd {0} does not exist or is not a regular file")]
    InitrdMissing(PathBuf),
    #[error("vCPU count must be between 1 and {MAX_VCPUS}, not {0}")]
    Vcpus(u8),
    #[error("disk {0} does not exist")]
    DiskMissing(PathBuf),
    #[error("a disk has an empty path")]
    DiskPath,
    #[error("{0} virtio devices requested; at most {MAX_VIRTIO_DEVICES} fit")]
    TooManyDevices(usize),
    #[error("tap name {0:?} must be 1 to 15 characters without '/', ':' or whitespace")]
    TapName(String),
    #[error("vsock cid {0} is reserved: the guest's cid must be 3 or more")]
    VsockCid(u32),
    #[error("vsock socket path {0} is too long for a Unix socket (with the _PORT suffix)")]
    VsockPath(PathBuf),
    #[error("the serial output file has an empty path")]
    SerialPath,
    #[error("memory must be between {MIN_MEMORY_MIB} MiB and {MAX_MEMORY_MIB} MiB, not {0} MiB")]
    Memory(u64),
}

impl VmConfig {
    /// A configuration with defaults for everything but the kernel.
    pub fn with_kernel(kernel: PathBuf) -> Self {
        Self {
            kernel,
            initrd: None,
            cmdline: default_cmdline(),
            vcpus: DEFAULT_VCPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
            serial_out: SerialOutput::default(),
            serial_in: false,
            disks: Vec::new(),
            rng: false,
            nets: Vec::new(),
            vsock: None,
        }
    }

    /// Reads a JSON configuration file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ConfigError::ParseFile {
            path: path.to_owned(),
            source,
        })
    }

    /// The configuration as the JSON [`VmConfig::from_file`] reads (fails only for paths that
    /// are not UTF-8).
    pub fn to_json(&self) -> Result<String, ConfigError> {
        serde_json::to_string_pretty(self).map_err(ConfigError::Serialize)
    }

    /// Checks everything that can be checked before touching KVM: the values, and that the
    /// kernel, initrd and disks exist.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.kernel.as_os_str().is_empty() {
            return Err(ConfigError::NoKernel);
        }
        if !self.kernel.is_file() {
            return Err(ConfigError::KernelMissing(self.kernel.clone()));
        }
        if let Some(initrd) = &self.initrd {
            if !initrd.is_file() {
                return Err(ConfigError::InitrdMissing(initrd.clone()));
            }
        }
        if let Some(disk) = self
            .disks
            .iter()
            .find(|d| !d.path.as_os_str().is_empty() && !d.path.exists())
        {
            return Err(ConfigError::DiskMissing(disk.path.clone()));
        }
        self.validate_values()
    }

    /// Checks the values alone, without looking at any file (for a configuration meant for
    /// another root, such as a jail's).
    pub fn validate_values(&self) -> Result<(), ConfigError> {
        if self.kernel.as_os_str().is_empty() {
            return Err(ConfigError::NoKernel);
        }
        if self.disks.iter().any(|d| d.path.as_os_str().is_empty()) {
            return Err(ConfigError::DiskPath);
        }
        if let SerialOutput::File(path) = &self.serial_out {
            if path.as_os_str().is_empty() {
                return Err(ConfigError::SerialPath);
            }
        }
        if let Some(net) = self.nets.iter().find(|n| !valid_tap_name(&n.tap)) {
            return Err(ConfigError::TapName(net.tap.clone()));
        }
        if let Some(vsock) = &self.vsock {
            if vsock.cid < 3 || vsock.cid == u32::MAX {
                return Err(ConfigError::VsockCid(vsock.cid));
            }
            let len = vsock.uds.as_os_str().len();
            if len == 0 || len + UDS_PORT_SUFFIX > MAX_UDS_PATH {
                return Err(ConfigError::VsockPath(vsock.uds.clone()));
            }
        }
        let devices = self.disks.len()
            + usize::from(self.rng)
            + self.nets.len()
            + usize::from(self.vsock.is_some());
        if devices > MAX_VIRTIO_DEVICES {
            return Err(ConfigError::TooManyDevices(devices));
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::Vcpus(self.vcpus));
        }
        if !(MIN_MEMORY_MIB..=MAX_MEMORY_MIB).contains(&self.memory_mib) {
            return Err(ConfigError::Memory(self.memory_mib));
        }
        Ok(())
    }
}

/// Whether Linux would accept `name` as an interface name.
fn valid_tap_name(name: &str) -> bool {
    (1..=MAX_TAP_NAME).contains(&name.len())
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn existing_kernel() -> VmConfig {
        // Any regular file passes the existence check.
        VmConfig::with_kernel(PathBuf::from("/proc/self/exe").canonicalize().unwrap())
    }

    fn everything() -> VmConfig {
        let exe = PathBuf::from("/proc/self/exe").canonicalize().unwrap();
        VmConfig {
            kernel: exe.clone(),
            initrd: Some(exe.clone()),
            cmdline: "console=ttyS0 skiff.control".into(),
            vcpus: 2,
            memory_mib: 256,
            serial_out: SerialOutput::File("/run/t/console.log".into()),
            serial_in: true,
            disks: vec![
                DiskConfig {
                    path: exe.clone(),
                    read_only: true,
                    id: Some("image".into()),
                },
                DiskConfig {
                    path: exe,
                    read_only: false,
                    id: None,
                },
            ],
            rng: true,
            nets: vec![
                NetConfig {
                    tap: "tap0".into(),
                    mac: Some("06:00:ac:10:00:02".parse().unwrap()),
                },
                NetConfig {
                    tap: "tap1".into(),
                    mac: None,
                },
            ],
            vsock: Some(VsockConfig {
                cid: 3,
                uds: "/run/t/v.sock".into(),
            }),
        }
    }

    #[test]
    fn defaults_are_valid() {
        existing_kernel().validate().unwrap();
    }

    #[test]
    fn a_configuration_survives_the_round_trip_through_json() {
        for config in [everything(), existing_kernel()] {
            let json = config.to_json().unwrap();
            let back: VmConfig = serde_json::from_str(&json).unwrap();
            assert_eq!(back, config, "{json}");
            back.validate().unwrap();
        }
        // Serial output to files named like the keywords stays a file.
        for name in ["stdout", "none"] {
            let mut c = existing_kernel();
            c.serial_out = SerialOutput::File(name.into());
            let back: VmConfig = serde_json::from_str(&c.to_json().unwrap()).unwrap();
            assert_eq!(
                back.serial_out,
                SerialOutput::File(format!("./{name}").into())
            );
        }
        for keyword in [SerialOutput::Stdout, SerialOutput::None] {
            let mut c = existing_kernel();
            c.serial_out = keyword.clone();
            let back: VmConfig = serde_json::from_str(&c.to_json().unwrap()).unwrap();
            assert_eq!(back.serial_out, keyword);
        }
    }

    #[test]
    fn the_documented_json_keys_are_read() {
        let c: VmConfig = serde_json::from_str(
            r#"{"kernel": "/k", "initrd": "/i", "cmdline": "quiet", "vcpus": 2,
                "memory_mib": 64, "serial_out": "/s.log", "serial_in": true,
                "disks": [{"path": "/d", "read_only": true, "id": "x"}], "rng": true,
                "nets": [{"tap": "tap0", "mac": "06:00:00:00:00:01"}],
                "vsock": {"cid": 3, "uds": "/v.sock"}}"#,
        )
        .unwrap();
        assert_eq!(c.kernel, Path::new("/k"));
        assert_eq!(c.serial_out, SerialOutput::File("/s.log".into()));
        assert_eq!(c.disks[0].id.as_deref(), Some("x"));
        assert_eq!(c.nets[0].mac.unwrap().to_string(), "06:00:00:00:00:01");
        assert_eq!(c.vsock.as_ref().unwrap().uds, Path::new("/v.sock"));
        c.validate_values().unwrap();
        for unknown in [
            r#"{"kernel": "/k", "disks": [{"path": "/d", "ro": true}]}"#,
            r#"{"kernel": "/k", "nets": [{"tap": "t", "ip": "1.2.3.4"}]}"#,
            r#"{"kernel": "/k", "vsock": {"cid": 3, "uds": "/v", "port": 1}}"#,
        ] {
            let err = serde_json::from_str::<VmConfig>(unknown).unwrap_err();
            assert!(err.to_string().contains("unknown field"), "{err}");
        }
        let err = serde_json::from_str::<VmConfig>(
            r#"{"kernel": "/k", "nets": [{"tap": "t", "mac": "01:00:00:00:00:00"}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("multicast"), "{err}");
    }

    #[test]
    fn rejects_bad_counts_and_sizes_with_the_value_named() {
        let mut c = existing_kernel();
        c.vcpus = 0;
        assert_eq!(
            c.validate().unwrap_err().to_string(),
            "vCPU count must be between 1 and 32, not 0"
        );
        c.vcpus = 33;
        assert!(matches!(c.validate(), Err(ConfigError::Vcpus(33))));
        c.vcpus = 2;
        c.memory_mib = 4;
        assert!(c.validate().unwrap_err().to_string().contains("not 4 MiB"));
        c.memory_mib = MAX_MEMORY_MIB + 1;
        assert!(matches!(c.validate(), Err(ConfigError::Memory(_))));
        let mut c = existing_kernel();
        c.disks = vec![
            DiskConfig {
                path: "/proc/self/exe".into(),
                read_only: false,
                id: None,
            };
            MAX_VIRTIO_DEVICES
        ];
        c.validate().unwrap();
        c.rng = true;
        assert!(matches!(c.validate(), Err(ConfigError::TooManyDevices(_))));
    }

    #[test]
    fn rejects_missing_files_but_values_alone_do_not_look() {
        let c = VmConfig::with_kernel(PathBuf::from("/nonexistent/vmlinux"));
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("/nonexistent/vmlinux"));
        c.validate_values().unwrap();
        let mut c = existing_kernel();
        c.initrd = Some(PathBuf::from("/nonexistent/initrd"));
        assert!(matches!(c.validate(), Err(ConfigError::InitrdMissing(_))));
        let mut c = existing_kernel();
        c.disks.push(DiskConfig {
            path: "/nonexistent/disk".into(),
            read_only: false,
            id: None,
        });
        assert!(matches!(c.validate(), Err(ConfigError::DiskMissing(_))));
        c.disks[0].path = PathBuf::new();
        assert!(matches!(c.validate(), Err(ConfigError::DiskPath)));
        let mut c = existing_kernel();
        c.serial_out = SerialOutput::File(PathBuf::new());
        assert!(matches!(c.validate(), Err(ConfigError::SerialPath)));
        assert!(matches!(
            VmConfig::with_kernel(PathBuf::new()).validate_values(),
            Err(ConfigError::NoKernel)
        ));
    }

    #[test]
    fn net_and_vsock_values_are_checked() {
        for bad in [
            "06:00:00:00:00",
            "06:00:00:00:00:00:00",
            "zz:00:00:00:00:00",
            "6:0:0:0:0:0",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
        assert!("01:00:5e:00:00:01"
            .parse::<MacAddr>()
            .unwrap_err()
            .contains("multicast"));
        assert_eq!(MacAddr::derived("tap0"), MacAddr::derived("tap0"));
        assert_ne!(MacAddr::derived("tap0"), MacAddr::derived("tap1"));
        assert_eq!(MacAddr::derived("tap0").0[0], 0x06);

        let mut c = existing_kernel();
        c.nets.push(NetConfig {
            tap: "a/b".into(),
            mac: None,
        });
        assert!(matches!(c.validate(), Err(ConfigError::TapName(_))));
        c.nets[0].tap = "x".repeat(16);
        assert!(matches!(c.validate(), Err(ConfigError::TapName(_))));
        c.nets[0].tap = "tap0".into();
        c.vsock = Some(VsockConfig {
            cid: 2,
            uds: "/tmp/v".into(),
        });
        assert!(matches!(c.validate(), Err(ConfigError::VsockCid(2))));
        c.vsock = Some(VsockConfig {
            cid: 3,
            uds: PathBuf::from("/".repeat(100)),
        });
        assert!(matches!(c.validate(), Err(ConfigError::VsockPath(_))));
        c.vsock = Some(VsockConfig {
            cid: 3,
            uds: "/tmp/v".into(),
        });
        c.validate().unwrap();
    }

    #[test]
    fn parses_json_with_defaults_and_rejects_unknown_fields() {
        let c: VmConfig =
            serde_json::from_str(r#"{"kernel": "/k", "vcpus": 2, "serial_out": "none"}"#).unwrap();
        assert_eq!(c.vcpus, 2);
        assert_eq!(c.memory_mib, DEFAULT_MEMORY_MIB);
        assert_eq!(c.serial_out, SerialOutput::None);
        assert_eq!(c.cmdline, DEFAULT_CMDLINE);
        let err = serde_json::from_str::<VmConfig>(r#"{"kernel": "/k", "vcpu": 2}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `vcpu`"), "{err}");
    }
}
