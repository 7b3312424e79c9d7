//! A route-netlink connection bound to one network namespace, with the few
//! requests sandboxes need. Errors are returned raw; callers add the pod,
//! interface or route they were working on.

use std::fs::File;
use std::net::IpAddr;

use futures_util::TryStreamExt;
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressScope,
};
use netlink_packet_route::link::{LinkAttribute, LinkMessage, State};
use netlink_packet_route::route::RouteMessage;
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};

use crate::error::{Error, netlink_errno};
use crate::netns;

const ENODEV: i32 = nix::errno::Errno::ENODEV as i32;
const ENOENT: i32 = nix::errno::Errno::ENOENT as i32;
const ESRCH: i32 = nix::errno::Errno::ESRCH as i32;

/// A connection whose socket lives in one namespace; its I/O task runs on
/// tokio and stops when this is dropped.
pub(crate) struct Netlink {
    handle: Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Netlink {
    /// Opens a connection in the calling thread's namespace.
    pub fn here(what: &'static str) -> Result<Netlink, Error> {
        tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime { what })?;
        let (connection, handle, _) = rtnetlink::new_connection().map_err(|e| Error::Thread {
            context: "opening a netlink socket in the node network namespace".to_owned(),
            reason: e.to_string(),
        })?;
        Ok(Netlink {
            handle,
            task: tokio::spawn(connection),
        })
    }

    /// Opens a connection inside the namespace `ns`, after running `prepare`
    /// on the same thread (inside the namespace).
    pub async fn inside<F>(
        ns: &File,
        context: String,
        what: &'static str,
        prepare: F,
    ) -> Result<Netlink, Error>
    where
        F: FnOnce() -> Result<(), Error> + Send + 'static,
    {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime { what })?;
        let ctx = context.clone();
        let (connection, handle) = netns::in_netns(ns, context, move || {
            prepare()?;
            // The socket registers with tokio's reactor here but is bound to
            // this thread's namespace for good.
            let _entered = runtime.enter();
            rtnetlink::new_connection()
                .map(|(connection, handle, _)| (connection, handle))
                .map_err(|e| Error::Thread {
                    context: ctx,
                    reason: format!("cannot open a netlink socket: {e}"),
                })
        })
        .await?;
        Ok(Netlink {
            handle,
            task: tokio::spawn(connection),
        })
    }

    /// The link named `name`, if there is one.
    pub async fn link(&self, name: &str) -> Result<Option<LinkMessage>, rtnetlink::Error> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            Err(e) if matches!(netlink_errno(&e), Some(ENODEV | ENOENT)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether the link with this index is operationally up (carrier, and the
    /// kernel's link watcher has caught up).
    pub async fn is_oper_up(&self, index: u32) -> Result<bool, rtnetlink::Error> {
        let mut links = self.handle.link().get().match_index(index).execute();
        let Some(link) = links.try_next().await? else {
            return Ok(false);
        };
        Ok(link
            .attributes
            .iter()
            .any(|a| matches!(a, LinkAttribute::OperState(State::Up))))
    }

    /// Deletes a link; one that is already gone is fine.
    pub async fn del_link(&self, index: u32) -> Result<(), rtnetlink::Error> {
        match self.handle.link().del(index).execute().await {
            Err(e) if matches!(netlink_errno(&e), Some(ENODEV | ENOENT)) => Ok(()),
            other => other,
        }
    }

    pub async fn add_link(&self, message: LinkMessage) -> Result<(), rtnetlink::Error> {
        self.handle.link().add(message).execute().await
    }

    pub async fn set_link(&self, message: LinkMessage) -> Result<(), rtnetlink::Error> {
        self.handle.link().set(message).execute().await
    }

    /// Adds or refreshes an address. `nodad` makes an IPv6 address usable at
    /// once instead of after duplicate address detection.
    pub async fn replace_address(
        &self,
        index: u32,
        ip: IpAddr,
        prefix: u8,
        scope: AddressScope,
        nodad: bool,
    ) -> Result<(), rtnetlink::Error> {
        let mut request = self.handle.address().add(index, ip, prefix).replace();
        let message = request.message_mut();
        message.header.scope = scope;
        if nodad {
            message.header.flags |= AddressHeaderFlags::Nodad;
            message
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        request.execute().await
    }

    /// Adds a route or replaces the one with the same destination.
    pub async fn replace_route(&self, route: RouteMessage) -> Result<(), rtnetlink::Error> {
        self.handle.route().add(route).replace().execute().await
    }

    /// Deletes a route; one that is already gone is fine.
    pub async fn del_route(&self, route: RouteMessage) -> Result<(), rtnetlink::Error> {
        match self.handle.route().del(route).execute().await {
            Err(e) if matches!(netlink_errno(&e), Some(ESRCH | ENOENT)) => Ok(()),
            other => other,
        }
    }

    /// Every route of one family, all tables.
    pub async fn routes(&self, version: IpVersion) -> Result<Vec<RouteMessage>, rtnetlink::Error> {
        let query = match version {
            IpVersion::V4 => RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
            IpVersion::V6 => RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
        };
        self.handle.route().get(query).execute().try_collect().await
    }
}

/// The alias of a link, if it has one.
pub(crate) fn alias(link: &LinkMessage) -> Option<&str> {
    link.attributes
        .iter()
        .find_map(|attribute| match attribute {
            LinkAttribute::IfAlias(alias) => Some(alias.as_str()),
            _ => None,
        })
}
