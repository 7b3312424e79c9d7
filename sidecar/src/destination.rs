//! Where an outbound connection goes: through mTLS to the destination's
//! sidecar, or straight through when the destination is not meshed. A
//! static table for now; service discovery will fill it later.

use std::collections::HashMap;
use std::net::SocketAddr;

use shoal_ca::SpiffeId;

/// How to reach one original destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// mTLS to the sidecar at `connect`, which must present `identity`
    /// when one is known (any SPIFFE ID of the trust domain otherwise).
    Meshed {
        /// The destination sidecar's inbound address.
        connect: SocketAddr,
        /// The identity the destination must prove.
        identity: Option<SpiffeId>,
    },
    /// Plaintext to the destination itself (an unmeshed workload).
    Passthrough,
}

/// The outbound routing table.
#[derive(Debug, Clone)]
pub struct Destinations {
    /// The port of every sidecar's inbound listener.
    pub inbound_port: u16,
    /// Destinations routed otherwise than by default.
    pub routes: HashMap<SocketAddr, Route>,
    /// Whether destinations not in `routes` are meshed (at their address
    /// with `inbound_port`) or passed through.
    pub mesh_by_default: bool,
}

impl Destinations {
    /// Every destination meshed at its own address's `inbound_port`.
    pub fn new(inbound_port: u16) -> Self {
        Self {
            inbound_port,
            routes: HashMap::new(),
            mesh_by_default: true,
        }
    }

    /// The route to `dst`.
    pub fn route(&self, dst: SocketAddr) -> Route {
        match self.routes.get(&dst) {
            Some(route) => route.clone(),
            None if self.mesh_by_default => Route::Meshed {
                connect: SocketAddr::new(dst.ip(), self.inbound_port),
                identity: None,
            },
            None => Route::Passthrough,
        }
    }

    /// Parses `DST=CONNECT[,SPIFFE-ID]` (a meshed route) or
    /// `DST=passthrough`, as the command line takes them.
    pub fn parse_route(text: &str) -> Result<(SocketAddr, Route), String> {
        let (dst, target) = text.split_once('=').ok_or_else(|| {
            format!("route {text:?}: expected DST=CONNECT[,SPIFFE-ID] or DST=passthrough")
        })?;
        let dst: SocketAddr = dst
            .parse()
            .map_err(|e| format!("route {text:?}: destination {dst:?}: {e}"))?;
        if target == "passthrough" {
            return Ok((dst, Route::Passthrough));
        }
        let (connect, identity) = match target.split_once(',') {
            Some((connect, id)) => (
                connect,
                Some(
                    id.parse::<SpiffeId>()
                        .map_err(|e| format!("route {text:?}: {e}"))?,
                ),
            ),
            None => (target, None),
        };
        let connect = connect
            .parse()
            .map_err(|e| format!("route {text:?}: sidecar address {connect:?}: {e}"))?;
        Ok((dst, Route::Meshed { connect, identity }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_and_default_to_the_destination_s_inbound_port() -> Result<(), String> {
        let mut table = Destinations::new(15006);
        let (dst, route) = Destinations::parse_route(
            "10.96.0.7:80=10.244.1.5:15006,spiffe://cluster.local/ns/shop/sa/web",
        )?;
        table.routes.insert(dst, route);
        let (dst, route) = Destinations::parse_route("10.0.0.9:5432=passthrough")?;
        table.routes.insert(dst, route);
        let addr = |s: &str| s.parse::<SocketAddr>().map_err(|e| e.to_string());
        assert_eq!(
            table.route(addr("10.96.0.7:80")?),
            Route::Meshed {
                connect: addr("10.244.1.5:15006")?,
                identity: Some(SpiffeId::new("cluster.local", "shop", "web")),
            }
        );
        assert_eq!(table.route(addr("10.0.0.9:5432")?), Route::Passthrough);
        assert_eq!(
            table.route(addr("10.244.2.8:8080")?),
            Route::Meshed {
                connect: addr("10.244.2.8:15006")?,
                identity: None
            }
        );
        table.mesh_by_default = false;
        assert_eq!(table.route(addr("10.244.2.8:8080")?), Route::Passthrough);
        assert!(Destinations::parse_route("10.0.0.1:80").is_err());
        assert!(Destinations::parse_route("10.0.0.1:80=10.0.0.2:15006,spiffe://x/y").is_err());
        Ok(())
    }
}
