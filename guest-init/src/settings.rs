//! guest-init's settings, read from the kernel command line (`skiff.<key>=<value>`).

use std::net::{IpAddr, Ipv4Addr};

use skiff_protocol::names::hostname_problem;

/// Errors in the settings.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingsError {
    #[error("skiff.exit={0:?} is not an exit status (0-255)")]
    ExitStatus(String),
    #[error("unknown setting skiff.{0}")]
    Unknown(String),
    #[error("skiff.mount={0:?}: expected DEVICE:PATH[:FSTYPE[:ro|rw]] with absolute paths")]
    Mount(String),
    #[error("skiff.run={0:?}: expected an absolute path")]
    Run(String),
    #[error("skiff.ip={value:?}: {reason} (expected IPv4 ADDRESS/PREFIX, e.g. 172.16.0.2/30)")]
    Ip { value: String, reason: &'static str },
    #[error("skiff.gw={value:?}: {reason} (expected an IPv4 address, e.g. 172.16.0.1)")]
    Gateway { value: String, reason: &'static str },
    #[error("skiff.gw={0} needs skiff.ip=ADDRESS/PREFIX on the same network")]
    GatewayWithoutIp(Ipv4Addr),
    #[error("skiff.gw={gateway} is not another host on the network of skiff.ip={ip}")]
    GatewayOffNetwork { gateway: Ipv4Addr, ip: Ipv4Cidr },
    #[error("skiff.mtu={0:?} is not an MTU (68-65535)")]
    Mtu(String),
    #[error(
        "skiff.hostname={value:?}: {reason} (expected 1-64 characters: dot-separated labels of \
         letters, digits and '-', not starting or ending with '-')"
    )]
    Hostname { value: String, reason: &'static str },
    #[error("skiff.dns={value:?}: {item:?} is not an IPv4 or IPv6 address")]
    Dns { value: String, item: String },
    #[error(
        "skiff.iface={0:?}: expected an interface name (1-15 characters, no '/', ':' or spaces)"
    )]
    Iface(String),
}

/// The smallest MTU an IPv4 interface may have (RFC 791).
const MIN_MTU: u32 = 68;
/// The largest MTU `skiff.mtu` accepts.
const MAX_MTU: u32 = 65535;
/// Linux's limit on an interface name, without the NUL (`IFNAMSIZ - 1`).
const MAX_IFACE_LEN: usize = 15;
/// The interface `skiff.ip`, `skiff.gw` and `skiff.mtu` apply to unless `skiff.iface` says.
pub const DEFAULT_IFACE: &str = "eth0";

/// An IPv4 address with its prefix length (`skiff.ip=ADDRESS/PREFIX`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Cidr {
    pub address: Ipv4Addr,
    /// 1-32.
    pub prefix_len: u8,
}

impl Ipv4Cidr {
    /// The network mask, e.g. 255.255.255.252 for /30.
    pub fn netmask(self) -> Ipv4Addr {
        let host_bits = 32u32.saturating_sub(u32::from(self.prefix_len));
        Ipv4Addr::from(u32::MAX.checked_shl(host_bits).unwrap_or(0))
    }

    /// Whether the network has a network and a broadcast address (prefixes up to /30; /31 is a
    /// point-to-point link and /32 a single host, RFC 3021).
    fn has_broadcast(self) -> bool {
        self.prefix_len <= 30
    }

    /// The network's broadcast address, for prefixes up to /30.
    pub fn broadcast(self) -> Option<Ipv4Addr> {
        self.has_broadcast()
            .then(|| Ipv4Addr::from(self.address.to_bits() | !self.netmask().to_bits()))
    }

    /// Whether `ip` is on this network and may be a host there: neither its network nor its
    /// broadcast address.
    pub fn has_host(self, ip: Ipv4Addr) -> bool {
        let mask = self.netmask().to_bits();
        let network = self.address.to_bits() & mask;
        if ip.to_bits() & mask != network {
            return false;
        }
        !self.has_broadcast() || (ip.to_bits() != network && Some(ip) != self.broadcast())
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.prefix_len)
    }
}

/// Why an IPv4 address cannot be a host's own address or gateway, if it cannot.
fn not_unicast(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
        Some("not a unicast address")
    } else {
        None
    }
}

impl std::str::FromStr for Ipv4Cidr {
    type Err = SettingsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| SettingsError::Ip {
            value: s.to_owned(),
            reason,
        };
        let (address, prefix) = s.split_once('/').ok_or_else(|| bad("no /PREFIX"))?;
        let address: Ipv4Addr = address.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix_len = prefix
            .parse::<u8>()
            .ok()
            .filter(|p| (1..=32).contains(p) && !prefix.starts_with('+'))
            .ok_or_else(|| bad("the prefix length is not 1-32"))?;
        if let Some(reason) = not_unicast(address) {
            return Err(bad(reason));
        }
        let cidr = Ipv4Cidr {
            address,
            prefix_len,
        };
        if !cidr.has_host(address) {
            return Err(bad("the network or broadcast address of its network"));
        }
        Ok(cidr)
    }
}

/// Networking (`skiff.ip`, `skiff.gw`, `skiff.mtu`, `skiff.iface`, `skiff.hostname`,
/// `skiff.dns`). The loopback interface is brought up whatever these say.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NetworkSettings {
    /// The interface to configure (`skiff.iface`); [`DEFAULT_IFACE`] if not given.
    pub iface: Option<String>,
    /// Its IPv4 address (`skiff.ip=ADDRESS/PREFIX`).
    pub address: Option<Ipv4Cidr>,
    /// The default gateway (`skiff.gw`), a host on `address`'s network.
    pub gateway: Option<Ipv4Addr>,
    /// Its MTU (`skiff.mtu`, 68-65535).
    pub mtu: Option<u32>,
    /// The hostname (`skiff.hostname`).
    pub hostname: Option<String>,
    /// Name servers for /etc/resolv.conf, in order (`skiff.dns`, repeatable, comma-separated).
    pub dns: Vec<IpAddr>,
}

impl NetworkSettings {
    /// The interface `address`, `gateway` and `mtu` apply to.
    pub fn iface(&self) -> &str {
        self.iface.as_deref().unwrap_or(DEFAULT_IFACE)
    }

    /// Whether the interface is to be configured and brought up (any of `skiff.iface`,
    /// `skiff.ip`, `skiff.gw`, `skiff.mtu` given); otherwise it is left alone.
    pub fn configures_iface(&self) -> bool {
        self.iface.is_some()
            || self.address.is_some()
            || self.gateway.is_some()
            || self.mtu.is_some()
    }

    /// Checks the settings that depend on each other.
    fn validate(&self) -> Result<(), SettingsError> {
        match (self.gateway, self.address) {
            (Some(gateway), None) => Err(SettingsError::GatewayWithoutIp(gateway)),
            (Some(gateway), Some(ip)) if !ip.has_host(gateway) || gateway == ip.address => {
                Err(SettingsError::GatewayOffNetwork { gateway, ip })
            }
            _ => Ok(()),
        }
    }
}

fn parse_gateway(value: &str) -> Result<Ipv4Addr, SettingsError> {
    let bad = |reason| SettingsError::Gateway {
        value: value.to_owned(),
        reason,
    };
    let gateway: Ipv4Addr = value.parse().map_err(|_| bad("not an IPv4 address"))?;
    match not_unicast(gateway) {
        Some(reason) => Err(bad(reason)),
        None => Ok(gateway),
    }
}

fn parse_mtu(value: &str) -> Result<u32, SettingsError> {
    value
        .parse::<u32>()
        .ok()
        .filter(|mtu| (MIN_MTU..=MAX_MTU).contains(mtu) && !value.starts_with('+'))
        .ok_or_else(|| SettingsError::Mtu(value.to_owned()))
}

fn parse_hostname(value: &str) -> Result<String, SettingsError> {
    match hostname_problem(value) {
        Some(reason) => Err(SettingsError::Hostname {
            value: value.to_owned(),
            reason,
        }),
        None => Ok(value.to_owned()),
    }
}

/// Appends the comma-separated addresses of one `skiff.dns` to `servers`.
fn parse_dns(value: &str, servers: &mut Vec<IpAddr>) -> Result<(), SettingsError> {
    for item in value.split(',') {
        let server = item.parse().map_err(|_| SettingsError::Dns {
            value: value.to_owned(),
            item: item.to_owned(),
        })?;
        servers.push(server);
    }
    Ok(())
}

/// An interface name as Linux accepts it (`dev_valid_name`).
fn parse_iface(value: &str) -> Result<String, SettingsError> {
    let valid = !value.is_empty()
        && value.len() <= MAX_IFACE_LEN
        && value != "."
        && value != ".."
        && !value
            .chars()
            .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace());
    if valid {
        Ok(value.to_owned())
    } else {
        Err(SettingsError::Iface(value.to_owned()))
    }
}

/// A filesystem to mount (`skiff.mount=DEVICE:PATH[:FSTYPE[:ro|rw]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub device: String,
    pub path: String,
    pub fstype: String,
    pub read_only: bool,
}

impl std::str::FromStr for MountSpec {
    type Err = SettingsError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || SettingsError::Mount(s.to_owned());
        let parts: Vec<&str> = s.split(':').collect();
        let (device, path) = match parts.as_slice() {
            [d, p, ..] if d.starts_with('/') && p.starts_with('/') => (*d, *p),
            _ => return Err(bad()),
        };
        let fstype = parts
            .get(2)
            .copied()
            .filter(|f| !f.is_empty())
            .unwrap_or("ext4");
        let read_only = match parts.get(3).copied() {
            None | Some("rw") => false,
            Some("ro") => true,
            Some(_) => return Err(bad()),
        };
        if parts.len() > 4 || path.split('/').any(|c| c == "..") {
            return Err(bad());
        }
        Ok(MountSpec {
            device: device.to_owned(),
            path: path.to_owned(),
            fstype: fstype.to_owned(),
            read_only,
        })
    }
}

/// What guest-init was asked to do.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Exit status to report when done (`skiff.exit`), for testing the VMM's exit path.
    pub exit_status: u8,
    /// Panic on purpose (`skiff.panic`), for testing that a crashing init is reported.
    pub panic: bool,
    /// Filesystems to mount before running anything, in order (`skiff.mount`, repeatable).
    pub mounts: Vec<MountSpec>,
    /// Program to run; its exit status becomes the guest's (`skiff.run`).
    pub run: Option<String>,
    /// Networking, configured before `run` starts.
    pub network: NetworkSettings,
    /// Connect to the host over vsock and serve its requests until it is done (`skiff.control`),
    /// before `run`.
    pub control: bool,
}

/// Splits a command line into words; double quotes group words containing spaces.
fn words(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut word));
                    any = false;
                }
            }
            c => {
                word.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(word);
    }
    out
}

impl Settings {
    /// Parses the `skiff.*` words of a kernel command line; other words are the kernel's.
    pub fn from_cmdline(cmdline: &str) -> Result<Self, SettingsError> {
        let mut settings = Settings::default();
        for word in words(cmdline) {
            let Some(setting) = word.strip_prefix("skiff.") else {
                continue;
            };
            let (key, value) = setting.split_once('=').unwrap_or((setting, ""));
            match key {
                "exit" => {
                    settings.exit_status = value
                        .parse()
                        .map_err(|_| SettingsError::ExitStatus(value.to_owned()))?
                }
                "panic" => settings.panic = true,
                "control" => settings.control = true,
                "mount" => settings.mounts.push(value.parse()?),
                "run" if value.starts_with('/') => settings.run = Some(value.to_owned()),
                "run" => return Err(SettingsError::Run(value.to_owned())),
                "ip" => settings.network.address = Some(value.parse()?),
                "gw" => settings.network.gateway = Some(parse_gateway(value)?),
                "mtu" => settings.network.mtu = Some(parse_mtu(value)?),
                "hostname" => settings.network.hostname = Some(parse_hostname(value)?),
                "dns" => parse_dns(value, &mut settings.network.dns)?,
                "iface" => settings.network.iface = Some(parse_iface(value)?),
                _ => return Err(SettingsError::Unknown(key.to_owned())),
            }
        }
        settings.network.validate()?;
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_skiff_settings_and_ignores_kernel_words() {
        let s = Settings::from_cmdline("console=ttyS0 reboot=k skiff.exit=7 quiet").unwrap();
        assert_eq!(s.exit_status, 7);
        assert!(!s.control);
        assert!(Settings::from_cmdline("skiff.control").unwrap().control);
        assert_eq!(
            Settings::from_cmdline("quiet").unwrap(),
            Settings::default()
        );
    }

    #[test]
    fn rejects_bad_values_and_unknown_keys() {
        assert_eq!(
            Settings::from_cmdline("skiff.exit=300"),
            Err(SettingsError::ExitStatus("300".into()))
        );
        assert_eq!(
            Settings::from_cmdline("skiff.exti=3"),
            Err(SettingsError::Unknown("exti".into()))
        );
    }

    #[test]
    fn mounts_and_run_are_parsed() {
        let s = Settings::from_cmdline(
            "skiff.mount=/dev/vda:/mnt/a skiff.mount=/dev/vdb:/data:ext4:ro skiff.run=/t.sh",
        )
        .unwrap();
        assert_eq!(s.mounts.len(), 2);
        assert_eq!(s.mounts[0].fstype, "ext4");
        assert!(!s.mounts[0].read_only);
        assert_eq!(
            (s.mounts[1].path.as_str(), s.mounts[1].read_only),
            ("/data", true)
        );
        assert_eq!(s.run.as_deref(), Some("/t.sh"));
        for bad in [
            "vda:/mnt",
            "/dev/vda",
            "/dev/vda:/mnt:ext4:maybe",
            "/dev/vda:/a/../b",
        ] {
            assert!(
                matches!(
                    Settings::from_cmdline(&format!("skiff.mount={bad}")),
                    Err(SettingsError::Mount(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            Settings::from_cmdline("skiff.run=t.sh"),
            Err(SettingsError::Run(_))
        ));
    }

    #[test]
    fn network_settings_are_parsed() {
        let s = Settings::from_cmdline(
            "console=ttyS0 skiff.ip=172.16.0.2/30 skiff.gw=172.16.0.1 skiff.mtu=1500 \
             skiff.hostname=web-1.example.com skiff.dns=1.1.1.1,2606:4700:4700::1111 \
             skiff.dns=8.8.8.8 skiff.iface=eth1",
        )
        .unwrap();
        let net = &s.network;
        assert_eq!(
            net.address,
            Some(Ipv4Cidr {
                address: Ipv4Addr::new(172, 16, 0, 2),
                prefix_len: 30
            })
        );
        assert_eq!(net.gateway, Some(Ipv4Addr::new(172, 16, 0, 1)));
        assert_eq!(net.mtu, Some(1500));
        assert_eq!(net.hostname.as_deref(), Some("web-1.example.com"));
        let dns: Vec<String> = net.dns.iter().map(ToString::to_string).collect();
        assert_eq!(dns, ["1.1.1.1", "2606:4700:4700::1111", "8.8.8.8"]);
        assert_eq!(net.iface(), "eth1");
        assert!(net.configures_iface());
    }

    #[test]
    fn network_defaults_leave_the_interface_alone() {
        let net = Settings::from_cmdline("skiff.exit=0").unwrap().network;
        assert_eq!(net, NetworkSettings::default());
        assert_eq!(net.iface(), "eth0");
        assert!(!net.configures_iface());
        // Hostname and name servers alone do not touch the interface.
        let net = Settings::from_cmdline("skiff.hostname=a skiff.dns=::1")
            .unwrap()
            .network;
        assert!(!net.configures_iface());
        for only in ["skiff.mtu=9000", "skiff.iface=eth0", "skiff.ip=10.0.0.2/24"] {
            assert!(
                Settings::from_cmdline(only)
                    .unwrap()
                    .network
                    .configures_iface(),
                "{only}"
            );
        }
    }

    #[test]
    fn cidr_arithmetic() {
        let cidr: Ipv4Cidr = "172.16.0.2/30".parse().unwrap();
        assert_eq!(cidr.to_string(), "172.16.0.2/30");
        assert_eq!(cidr.netmask(), Ipv4Addr::new(255, 255, 255, 252));
        assert_eq!(cidr.broadcast(), Some(Ipv4Addr::new(172, 16, 0, 3)));
        assert!(cidr.has_host(Ipv4Addr::new(172, 16, 0, 1)));
        for not_host in [[172, 16, 0, 0], [172, 16, 0, 3], [172, 16, 0, 5]] {
            assert!(!cidr.has_host(Ipv4Addr::from(not_host)), "{not_host:?}");
        }
        let p2p: Ipv4Cidr = "10.0.0.0/31".parse().unwrap();
        assert_eq!(p2p.broadcast(), None);
        assert!(p2p.has_host(Ipv4Addr::new(10, 0, 0, 1)));
        let host: Ipv4Cidr = "10.1.2.3/32".parse().unwrap();
        assert_eq!(host.netmask(), Ipv4Addr::new(255, 255, 255, 255));
        assert_eq!(host.broadcast(), None);
        let wide: Ipv4Cidr = "10.1.2.3/1".parse().unwrap();
        assert_eq!(wide.netmask(), Ipv4Addr::new(128, 0, 0, 0));
        // Out-of-range prefixes (not constructible by parsing) do not panic.
        let zero = Ipv4Cidr {
            prefix_len: 0,
            ..wide
        };
        assert_eq!(zero.netmask(), Ipv4Addr::UNSPECIFIED);
        let big = Ipv4Cidr {
            prefix_len: 200,
            ..wide
        };
        assert_eq!(big.netmask(), Ipv4Addr::BROADCAST);
    }

    fn error(cmdline: &str) -> String {
        match Settings::from_cmdline(cmdline) {
            Ok(s) => panic!("{cmdline} was accepted: {s:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn malformed_addresses_are_rejected_by_name() {
        for (bad, reason) in [
            ("172.16.0.2", "no /PREFIX"),
            ("172.16.0/30", "not an IPv4 address"),
            ("172.16.0.256/30", "not an IPv4 address"),
            ("fd00::2/64", "not an IPv4 address"),
            ("/30", "not an IPv4 address"),
            ("172.16.0.2/", "prefix length"),
            ("172.16.0.2/0", "prefix length"),
            ("172.16.0.2/33", "prefix length"),
            ("172.16.0.2/+30", "prefix length"),
            ("172.16.0.2/30/1", "prefix length"),
            ("0.0.0.0/8", "not a unicast address"),
            ("127.0.0.2/8", "not a unicast address"),
            ("224.0.0.1/24", "not a unicast address"),
            ("172.16.0.0/30", "network or broadcast"),
            ("172.16.0.3/30", "network or broadcast"),
        ] {
            let message = error(&format!("skiff.ip={bad}"));
            assert!(
                message.starts_with(&format!("skiff.ip=\"{bad}\": ")),
                "{message}"
            );
            assert!(message.contains(reason), "{bad}: {message}");
        }
        assert_eq!(
            error("skiff.ip"),
            "skiff.ip=\"\": no /PREFIX (expected IPv4 ADDRESS/PREFIX, e.g. 172.16.0.2/30)"
        );
        for bad in ["172.16.0", "172.16.0.1/30", "255.255.255.255", "::1", ""] {
            assert!(
                matches!(
                    Settings::from_cmdline(&format!("skiff.ip=172.16.0.2/30 skiff.gw={bad}")),
                    Err(SettingsError::Gateway { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn gateway_must_be_on_the_network() {
        assert_eq!(
            error("skiff.gw=172.16.0.1"),
            "skiff.gw=172.16.0.1 needs skiff.ip=ADDRESS/PREFIX on the same network"
        );
        for gw in ["172.16.0.2", "172.16.0.3", "172.16.0.0", "172.16.1.1"] {
            assert_eq!(
                error(&format!("skiff.ip=172.16.0.2/30 skiff.gw={gw}")),
                format!(
                    "skiff.gw={gw} is not another host on the network of skiff.ip=172.16.0.2/30"
                )
            );
        }
        assert!(Settings::from_cmdline("skiff.ip=10.0.0.0/31 skiff.gw=10.0.0.1").is_ok());
        assert!(Settings::from_cmdline("skiff.ip=10.0.0.2/32 skiff.gw=10.0.0.1").is_err());
        // Order on the command line does not matter.
        assert!(Settings::from_cmdline("skiff.gw=10.0.0.1 skiff.ip=10.0.0.2/8").is_ok());
    }

    #[test]
    fn mtu_is_bounded() {
        for good in [68, 1500, 9000, 65535] {
            let s = Settings::from_cmdline(&format!("skiff.mtu={good}")).unwrap();
            assert_eq!(s.network.mtu, Some(good));
        }
        for bad in ["67", "65536", "0", "-1", "+1500", "1500b", "", "4294967296"] {
            assert_eq!(
                Settings::from_cmdline(&format!("skiff.mtu={bad}")),
                Err(SettingsError::Mtu(bad.into())),
                "{bad}"
            );
        }
        assert_eq!(
            error("skiff.mtu=10"),
            "skiff.mtu=\"10\" is not an MTU (68-65535)"
        );
    }

    #[test]
    fn hostnames_are_validated() {
        let longest = format!("{}.{}", "a".repeat(62), "b"); // 64 characters
        for good in [
            "a",
            "skiff",
            "web-1",
            "0",
            "node1.example.com",
            "A-B.c",
            &longest,
        ] {
            let s = Settings::from_cmdline(&format!("skiff.hostname={good}")).unwrap();
            assert_eq!(s.network.hostname.as_deref(), Some(good));
        }
        let too_long = "a.".repeat(32) + "a";
        let long_label = "a".repeat(64);
        for (bad, reason) in [
            ("", "empty"),
            (too_long.as_str(), "longer than 64 characters"),
            (long_label.as_str(), "a label is longer than 63 characters"),
            ("-web", "starts or ends with '-'"),
            ("web-", "starts or ends with '-'"),
            ("a..b", "empty label"),
            (".a", "empty label"),
            ("a.", "empty label"),
            ("web_1", "a character other than"),
            ("wéb", "a character other than"),
            ("a/b", "a character other than"),
        ] {
            let message = error(&format!("skiff.hostname={bad}"));
            assert!(
                message.starts_with(&format!("skiff.hostname={bad:?}: ")),
                "{message}"
            );
            assert!(message.contains(reason), "{bad}: {message}");
        }
    }

    #[test]
    fn dns_servers_are_validated() {
        let s = Settings::from_cmdline("skiff.dns=10.0.0.1 skiff.dns=fd00::53,10.0.0.2").unwrap();
        assert_eq!(s.network.dns.len(), 3);
        for (bad, item) in [
            ("", ""),
            ("1.1.1.1,", ""),
            (",1.1.1.1", ""),
            ("1.1.1.1,,8.8.8.8", ""),
            ("1.1.1.1 ", "1.1.1.1 "),
            ("dns.example.com", "dns.example.com"),
            ("1.1.1.1:53", "1.1.1.1:53"),
            ("fe80::1%eth0", "fe80::1%eth0"),
        ] {
            assert_eq!(
                Settings::from_cmdline(&format!("\"skiff.dns={bad}\"")),
                Err(SettingsError::Dns {
                    value: bad.into(),
                    item: item.into()
                }),
                "{bad}"
            );
        }
        assert_eq!(
            error("skiff.dns=1.1.1.1,x"),
            "skiff.dns=\"1.1.1.1,x\": \"x\" is not an IPv4 or IPv6 address"
        );
    }

    #[test]
    fn interface_names_are_validated() {
        for good in ["eth0", "enp0s3", "a", "veth-skiff.100", "fifteen-chars-x"] {
            let s = Settings::from_cmdline(&format!("skiff.iface={good}")).unwrap();
            assert_eq!(s.network.iface(), good);
        }
        for bad in ["", ".", "..", "sixteen-chars-xy", "eth0:1", "a/b", "a b"] {
            assert_eq!(
                Settings::from_cmdline(&format!("\"skiff.iface={bad}\"")),
                Err(SettingsError::Iface(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn quotes_group_words() {
        assert_eq!(words(r#"a "b c" d"#), vec!["a", "b c", "d"]);
        assert_eq!(words(r#"x="" y"#), vec!["x=", "y"]);
    }
}
