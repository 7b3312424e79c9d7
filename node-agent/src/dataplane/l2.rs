//! Layer-2 announcement of LoadBalancer IPs: the addresses this node answers
//! ARP requests and neighbour solicitations for on its external device
//! (`L2_ANNOUNCE4_V1` / `L2_ANNOUNCE6_V1`), and the device's MAC address the
//! answers carry (`L2_DEVICE_V1`). The services sync decides which node
//! announces an address (see `services::desired::announcer`).

use std::net::IpAddr;

use aya::maps::{Array, HashMap as BpfHashMap, MapData, MapError};
use shoal_ebpf_common::{L2_ANNOUNCE4, L2_ANNOUNCE6, L2_DEVICE, L2Device};

use super::{Dataplane, Error};

/// The MAC address and ifindex of `device` in this network namespace.
pub fn device_link(device: &str) -> Result<L2Device, Error> {
    let addrs = nix::ifaddrs::getifaddrs()
        .map_err(|e| Error::Nodeport(format!("listing interface addresses: {e}")))?;
    for ifa in addrs {
        if ifa.interface_name != device {
            continue;
        }
        let Some(link) = ifa.address.as_ref().and_then(|a| a.as_link_addr()) else {
            continue;
        };
        let Some(mac) = link.addr() else { continue };
        return Ok(L2Device {
            mac,
            pad: [0; 2],
            ifindex: u32::try_from(link.ifindex()).unwrap_or(0),
        });
    }
    Err(Error::Nodeport(format!(
        "device {device} has no link-layer address; LoadBalancer IPs cannot be announced on it"
    )))
}

fn gone(e: &MapError) -> bool {
    matches!(e, MapError::SyscallError(s) if s.io_error.kind() == std::io::ErrorKind::NotFound)
        || matches!(e, MapError::KeyNotFound)
}

impl Dataplane {
    /// Writes the external device's identity, which the answers carry.
    pub(super) fn set_l2_device(&mut self, device: &str) -> Result<(), Error> {
        let link = device_link(device)?;
        let name = L2_DEVICE;
        let mut map: Array<&mut MapData, L2Device> = self
            .ebpf
            .map_mut(name)
            .ok_or(Error::MissingMap(name))?
            .try_into()
            .map_err(|source| Error::Map { name, source })?;
        map.set(0, link, 0)
            .map_err(|source| Error::Map { name, source })
    }

    /// Starts (`on`) or stops answering ARP / NDP for `address`.
    /// Idempotent.
    pub fn set_announced(&mut self, address: IpAddr, on: bool) -> Result<(), Error> {
        match address {
            IpAddr::V4(a) => self.announce(L2_ANNOUNCE4, u32::from_ne_bytes(a.octets()), on),
            IpAddr::V6(a) => self.announce(L2_ANNOUNCE6, a.octets(), on),
        }
    }

    fn announce<K: aya::Pod>(&mut self, name: &'static str, key: K, on: bool) -> Result<(), Error> {
        let mut map: BpfHashMap<&mut MapData, K, u8> = self
            .ebpf
            .map_mut(name)
            .ok_or(Error::MissingMap(name))?
            .try_into()
            .map_err(|source| Error::Map { name, source })?;
        let result = if on {
            map.insert(key, 1, 0)
        } else {
            map.remove(&key)
        };
        match result {
            // Withdrawing what is not there is done.
            Err(e) if on || !gone(&e) => Err(Error::Map { name, source: e }),
            _ => Ok(()),
        }
    }

    /// The addresses announced now (pinned maps survive an agent restart).
    pub fn announced(&self) -> Vec<IpAddr> {
        let mut out = Vec::new();
        if let Some(Ok(map)) = self
            .ebpf
            .map(L2_ANNOUNCE4)
            .map(BpfHashMap::<&MapData, u32, u8>::try_from)
        {
            out.extend(
                map.keys()
                    .filter_map(Result::ok)
                    .map(|k| IpAddr::from(k.to_ne_bytes())),
            );
        }
        if let Some(Ok(map)) = self
            .ebpf
            .map(L2_ANNOUNCE6)
            .map(BpfHashMap::<&MapData, [u8; 16], u8>::try_from)
        {
            out.extend(map.keys().filter_map(Result::ok).map(IpAddr::from));
        }
        out
    }
}
