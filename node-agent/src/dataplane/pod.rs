//! Flow observability on pod interfaces: attaches `from_container` /
//! `to_container` to each pod's host-side veth (tc ingress = packets leaving
//! the pod, tc egress = packets entering it) through TCX links pinned next
//! to the maps (`TC_FROM_CONTAINER_<veth>`, `TC_TO_CONTAINER_<veth>`), so a
//! restarted agent swaps its programs into the same links without a gap,
//! and hands the flow event ring buffer to the agent's flow reader.

use std::{collections::BTreeSet, fs};

use aya::maps::{MapData, RingBuf};

use super::{
    Dataplane, Error,
    nodeport::{TcDirection, attach_pinned, remove_pin},
};

/// The tc programs on each pod's host-side veth: (program, direction, pin
/// prefix).
pub const POD_PROGRAMS: [(&str, TcDirection, &str); 2] = [
    ("from_container", TcDirection::Ingress, "TC_FROM_CONTAINER_"),
    ("to_container", TcDirection::Egress, "TC_TO_CONTAINER_"),
];

impl Dataplane {
    /// Loads the pod programs (once) without attaching them
    /// (`BPF_PROG_TEST_RUN` tests stop here).
    pub fn load_pod_programs(&mut self) -> Result<(), Error> {
        for (program, _, _) in POD_PROGRAMS {
            let prog = self.classifier(program)?;
            if prog.fd().is_err() {
                prog.load().map_err(|source| Error::Program {
                    name: program,
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// Attaches the flow programs to the pod veth `veth` (both directions).
    /// Idempotent: links pinned by an earlier agent get this agent's
    /// programs atomically.
    pub fn attach_pod(&mut self, veth: &str) -> Result<(), Error> {
        self.load_pod_programs()?;
        for (program, direction, pin) in POD_PROGRAMS {
            let pin = self.config.pin_dir.join(format!("{pin}{veth}"));
            let prog = self.classifier(program)?;
            attach_pinned(prog, program, veth, direction, &pin)?;
        }
        tracing::debug!(veth, "flow programs attached to the pod veth");
        Ok(())
    }

    /// Removes the pinned links of pod veths that are gone (the kernel
    /// detached them with their device); returns the veths pruned.
    pub fn prune_pod_links(&self, live: &BTreeSet<String>) -> Result<Vec<String>, Error> {
        let dir = &self.config.pin_dir;
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(Error::Nodeport(format!(
                    "listing the pins in {}: {e}",
                    dir.display()
                )));
            }
        };
        let mut pruned = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(veth) = POD_PROGRAMS
                .iter()
                .find_map(|(_, _, prefix)| name.strip_prefix(prefix))
            else {
                continue;
            };
            if !live.contains(veth) {
                remove_pin(&entry.path())?;
                pruned.push(veth.to_owned());
            }
        }
        Ok(pruned)
    }

    /// Takes the flow event ring buffer (once: the reader owns it).
    pub fn take_flow_events(&mut self) -> Result<RingBuf<MapData>, Error> {
        let name = shoal_ebpf_common::flow::FLOW_EVENTS;
        self.ebpf
            .take_map(name)
            .ok_or(Error::MissingMap(name))?
            .try_into()
            .map_err(|source| Error::Map { name, source })
    }
}
