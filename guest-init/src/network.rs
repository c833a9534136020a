//! Networking from the settings: the loopback interface always comes up; an interface (eth0 by
//! default) gets its MTU, IPv4 address, link state and default route only when a setting asks,
//! over rtnetlink; then the hostname, /etc/hostname, /etc/hosts and /etc/resolv.conf.

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use crate::netlink::{self, Netlink, NetlinkError};
use crate::settings::{Ipv4Cidr, NetworkSettings};

/// Errors configuring the network, each naming its step.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error(transparent)]
    Open(NetlinkError),
    #[error("cannot find interface {iface}: {source}")]
    NoInterface {
        iface: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot bring {iface} up: {source}")]
    Up {
        iface: String,
        #[source]
        source: NetlinkError,
    },
    #[error("cannot set the MTU of {iface} to {mtu}: {source}")]
    Mtu {
        iface: String,
        mtu: u32,
        #[source]
        source: NetlinkError,
    },
    #[error("cannot add {address} to {iface}: {source}")]
    Address {
        address: Ipv4Cidr,
        iface: String,
        #[source]
        source: NetlinkError,
    },
    #[error("cannot add the default route via {gateway} on {iface}: {source}")]
    Route {
        gateway: Ipv4Addr,
        iface: String,
        #[source]
        source: NetlinkError,
    },
    #[error("cannot set the hostname to {hostname}: {source}")]
    Hostname {
        hostname: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
}

const LOOPBACK: &str = "lo";
/// What the hostname maps to in /etc/hosts when the guest has no address of its own (Debian's
/// convention).
const HOSTNAME_FALLBACK: Ipv4Addr = Ipv4Addr::new(127, 0, 1, 1);

/// Brings `lo` up, then configures what `settings` ask for: the interface's MTU, address, link
/// state and default route (in that order; nothing if no interface setting is given), the
/// hostname with /etc/hostname and /etc/hosts, and /etc/resolv.conf.
pub fn configure(settings: &NetworkSettings) -> Result<(), NetworkError> {
    let mut netlink = Netlink::open().map_err(NetworkError::Open)?;
    bring_up(&mut netlink, LOOPBACK, index_of(LOOPBACK)?)?;
    if settings.configures_iface() {
        configure_iface(&mut netlink, settings)?;
    }
    if let Some(hostname) = &settings.hostname {
        set_hostname(hostname)?;
    }
    write_files(Path::new("/"), settings)
}

/// One line on what was configured, e.g. `eth0 172.16.0.2/30 mtu 1500 gw 172.16.0.1`, or `None`
/// if the interface is left alone.
pub fn summary(settings: &NetworkSettings) -> Option<String> {
    if !settings.configures_iface() {
        return None;
    }
    let mut line = settings.iface().to_owned();
    if let Some(address) = settings.address {
        line.push_str(&format!(" {address}"));
    }
    if let Some(mtu) = settings.mtu {
        line.push_str(&format!(" mtu {mtu}"));
    }
    if let Some(gateway) = settings.gateway {
        line.push_str(&format!(" gw {gateway}"));
    }
    Some(line)
}

fn index_of(iface: &str) -> Result<u32, NetworkError> {
    netlink::link_index(iface).map_err(|source| NetworkError::NoInterface {
        iface: iface.to_owned(),
        source,
    })
}

fn bring_up(netlink: &mut Netlink, iface: &str, index: u32) -> Result<(), NetworkError> {
    netlink
        .set_link_up(index)
        .map_err(|source| NetworkError::Up {
            iface: iface.to_owned(),
            source,
        })
}

fn configure_iface(netlink: &mut Netlink, settings: &NetworkSettings) -> Result<(), NetworkError> {
    let iface = settings.iface();
    let index = index_of(iface)?;
    if let Some(mtu) = settings.mtu {
        netlink
            .set_mtu(index, mtu)
            .map_err(|source| NetworkError::Mtu {
                iface: iface.to_owned(),
                mtu,
                source,
            })?;
    }
    if let Some(address) = settings.address {
        netlink
            .add_ipv4_address(
                index,
                address.address,
                address.prefix_len,
                address.broadcast(),
            )
            .map_err(|source| NetworkError::Address {
                address,
                iface: iface.to_owned(),
                source,
            })?;
    }
    // Up before the route: the kernel refuses a route through a link that is down.
    bring_up(netlink, iface, index)?;
    if let Some(gateway) = settings.gateway {
        netlink
            .add_default_route(index, gateway)
            .map_err(|source| NetworkError::Route {
                gateway,
                iface: iface.to_owned(),
                source,
            })?;
    }
    Ok(())
}

/// sethostname(2).
fn set_hostname(hostname: &str) -> Result<(), NetworkError> {
    // SAFETY: the pointer and length describe `hostname`'s bytes, which outlive the call; the
    // kernel only reads them.
    let rc = unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(NetworkError::Hostname {
            hostname: hostname.to_owned(),
            source: io::Error::last_os_error(),
        })
    }
}

/// /etc/hosts: localhost, and `hostname` (with its first label as an alias) at `address`, or at
/// 127.0.1.1 without one.
pub fn hosts_file(hostname: &str, address: Option<Ipv4Addr>) -> String {
    let mut names = hostname.to_owned();
    if let Some((short, _)) = hostname.split_once('.') {
        names.push(' ');
        names.push_str(short);
    }
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{}\t{names}\n",
        address.unwrap_or(HOSTNAME_FALLBACK)
    )
}

/// /etc/resolv.conf: one `nameserver` line per server, in order.
pub fn resolv_conf(servers: &[IpAddr]) -> String {
    servers
        .iter()
        .map(|server| format!("nameserver {server}\n"))
        .collect()
}

/// Writes the files under `root`/etc the settings ask for (creating the directory): /etc/hostname
/// and /etc/hosts with a hostname, /etc/resolv.conf with name servers. Files not asked for are
/// left alone.
fn write_files(root: &Path, settings: &NetworkSettings) -> Result<(), NetworkError> {
    let mut files = Vec::new();
    if let Some(hostname) = &settings.hostname {
        files.push(("hostname", format!("{hostname}\n")));
        let address = settings.address.map(|cidr| cidr.address);
        files.push(("hosts", hosts_file(hostname, address)));
    }
    if !settings.dns.is_empty() {
        files.push(("resolv.conf", resolv_conf(&settings.dns)));
    }
    if files.is_empty() {
        return Ok(());
    }
    let etc = root.join("etc");
    std::fs::create_dir_all(&etc).map_err(|source| NetworkError::Write {
        path: etc.display().to_string(),
        source,
    })?;
    for (name, contents) in files {
        let path = etc.join(name);
        replace_file(&etc, name, &contents).map_err(|source| NetworkError::Write {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

/// Replaces `dir/name` with a file holding `contents`: written beside it, then renamed over it,
/// so a symlink there (say, to a resolver's file) is replaced rather than followed.
fn replace_file(dir: &Path, name: &str, contents: &str) -> io::Result<()> {
    let temporary = dir.join(format!(".{name}.skiff-init"));
    std::fs::write(&temporary, contents)?;
    std::fs::rename(&temporary, dir.join(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::Settings;

    fn network(cmdline: &str) -> NetworkSettings {
        Settings::from_cmdline(cmdline).unwrap().network
    }

    #[test]
    fn summary_names_what_was_configured() {
        let full = network("skiff.ip=172.16.0.2/30 skiff.gw=172.16.0.1 skiff.mtu=1500");
        assert_eq!(
            summary(&full).as_deref(),
            Some("eth0 172.16.0.2/30 mtu 1500 gw 172.16.0.1")
        );
        assert_eq!(
            summary(&network("skiff.iface=eth1 skiff.ip=10.0.0.2/8")).as_deref(),
            Some("eth1 10.0.0.2/8")
        );
        assert_eq!(
            summary(&network("skiff.mtu=9000")).as_deref(),
            Some("eth0 mtu 9000")
        );
        assert_eq!(
            summary(&network("skiff.hostname=a skiff.dns=1.1.1.1")),
            None
        );
        assert_eq!(summary(&NetworkSettings::default()), None);
    }

    #[test]
    fn hosts_map_the_hostname() {
        assert_eq!(
            hosts_file("web", Some(Ipv4Addr::new(172, 16, 0, 2))),
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n\
             172.16.0.2\tweb\n"
        );
        assert!(hosts_file("web.example.com", None).ends_with("127.0.1.1\tweb.example.com web\n"));
    }

    #[test]
    fn resolv_conf_lists_the_servers_in_order() {
        let servers = network("skiff.dns=10.0.0.53,fd00::53 skiff.dns=1.1.1.1").dns;
        assert_eq!(
            resolv_conf(&servers),
            "nameserver 10.0.0.53\nnameserver fd00::53\nnameserver 1.1.1.1\n"
        );
    }

    /// A fresh, empty directory for one test.
    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("skiff-init-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn files_are_written_only_when_asked_for() {
        let root = scratch("files");
        write_files(&root, &network("skiff.mtu=1500")).unwrap();
        assert!(
            !root.join("etc").exists(),
            "nothing asked for, nothing written"
        );

        // /etc is created; a symlinked resolv.conf is replaced, not followed.
        let target = root.join("elsewhere");
        std::fs::write(&target, "old\n").unwrap();
        std::fs::create_dir(root.join("etc")).unwrap();
        std::os::unix::fs::symlink(&target, root.join("etc/resolv.conf")).unwrap();
        let settings = network("skiff.ip=172.16.0.2/30 skiff.hostname=guest skiff.dns=10.0.0.53");
        write_files(&root, &settings).unwrap();
        let read = |name: &str| std::fs::read_to_string(root.join("etc").join(name)).unwrap();
        assert_eq!(read("hostname"), "guest\n");
        assert!(read("hosts").ends_with("172.16.0.2\tguest\n"));
        assert_eq!(read("resolv.conf"), "nameserver 10.0.0.53\n");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "old\n");
        let leftovers = std::fs::read_dir(root.join("etc")).unwrap().count();
        assert_eq!(leftovers, 3, "no temporary files remain");

        // Only name servers: hosts and hostname are left alone.
        let root2 = scratch("files-dns");
        write_files(&root2, &network("skiff.dns=1.1.1.1")).unwrap();
        assert!(root2.join("etc/resolv.conf").exists());
        assert!(!root2.join("etc/hosts").exists());

        // A file where /etc should be: the error names the path.
        let root3 = scratch("files-blocked");
        std::fs::write(root3.join("etc"), "").unwrap();
        let e = write_files(&root3, &network("skiff.dns=1.1.1.1")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("cannot write {}/etc: ", root3.display())),
            "{e}"
        );
        for dir in [root, root2, root3] {
            std::fs::remove_dir_all(dir).unwrap();
        }
    }

    #[test]
    fn errors_name_the_step() {
        let address: Ipv4Cidr = "172.16.0.2/30".parse().unwrap();
        let e = NetworkError::Address {
            address,
            iface: "eth0".into(),
            source: NetlinkError::Refused {
                op: "RTM_NEWADDR",
                source: io::Error::from_raw_os_error(libc::EEXIST),
                message: None,
            },
        };
        assert_eq!(
            e.to_string(),
            "cannot add 172.16.0.2/30 to eth0: RTM_NEWADDR: File exists (os error 17)"
        );
        let e = index_of("skiffnosuchif0").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot find interface skiffnosuchif0: "),
            "{e}"
        );
    }
}
