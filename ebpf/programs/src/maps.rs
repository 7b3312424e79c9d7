//! The maps, pinned by name under the node's bpffs directory so the
//! datapath keeps its state while the agent restarts. Sizes here are
//! defaults; the agent may override them at load.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use shoal_ebpf_common::{CT_ENTRIES, Ct4Key, Ct4Value, Ct6Key, Ct6Value, NodeportConfig};
use shoal_ebpf_common::{L2_ANNOUNCE_ENTRIES, L2Device};
use shoal_ebpf_common::{
    LB_AFFINITY_ENTRIES, LB_AFFINITY_MATCH_ENTRIES, Lb4Backend, Lb4Key, Lb6Backend, Lb6Key,
    LbAffinityKey, LbAffinityMatchKey, LbAffinityValue, LbService, SOCK_REVNAT_ENTRIES,
    Sock4RevnatKey, Sock4RevnatValue, Sock6RevnatKey, Sock6RevnatValue, Verdict,
};

const LB_SERVICE_ENTRIES: u32 = 65_536;
const LB_BACKEND_ENTRIES: u32 = 65_536;

#[map(name = "LB4_SERVICES_V1")]
pub static LB4_SERVICES: HashMap<Lb4Key, LbService> = HashMap::pinned(LB_SERVICE_ENTRIES, 0);

#[map(name = "LB6_SERVICES_V1")]
pub static LB6_SERVICES: HashMap<Lb6Key, LbService> = HashMap::pinned(LB_SERVICE_ENTRIES, 0);

#[map(name = "LB4_BACKENDS_V1")]
pub static LB4_BACKENDS: HashMap<u32, Lb4Backend> = HashMap::pinned(LB_BACKEND_ENTRIES, 0);

#[map(name = "LB6_BACKENDS_V1")]
pub static LB6_BACKENDS: HashMap<u32, Lb6Backend> = HashMap::pinned(LB_BACKEND_ENTRIES, 0);

#[map(name = "SOCK4_REVNAT_V1")]
pub static SOCK4_REVNAT: LruHashMap<Sock4RevnatKey, Sock4RevnatValue> =
    LruHashMap::pinned(SOCK_REVNAT_ENTRIES, 0);

#[map(name = "SOCK6_REVNAT_V1")]
pub static SOCK6_REVNAT: LruHashMap<Sock6RevnatKey, Sock6RevnatValue> =
    LruHashMap::pinned(SOCK_REVNAT_ENTRIES, 0);

#[map(name = "LB4_AFFINITY_V1")]
pub static LB4_AFFINITY: LruHashMap<LbAffinityKey, LbAffinityValue> =
    LruHashMap::pinned(LB_AFFINITY_ENTRIES, 0);

#[map(name = "LB6_AFFINITY_V1")]
pub static LB6_AFFINITY: LruHashMap<LbAffinityKey, LbAffinityValue> =
    LruHashMap::pinned(LB_AFFINITY_ENTRIES, 0);

#[map(name = "LB4_AFFINITY_MATCH_V1")]
pub static LB4_AFFINITY_MATCH: HashMap<LbAffinityMatchKey, u32> =
    HashMap::pinned(LB_AFFINITY_MATCH_ENTRIES, 0);

#[map(name = "LB6_AFFINITY_MATCH_V1")]
pub static LB6_AFFINITY_MATCH: HashMap<LbAffinityMatchKey, u32> =
    HashMap::pinned(LB_AFFINITY_MATCH_ENTRIES, 0);

#[map(name = "CT4_V1")]
pub static CT4: LruHashMap<Ct4Key, Ct4Value> = LruHashMap::pinned(CT_ENTRIES, 0);

#[map(name = "CT6_V1")]
pub static CT6: LruHashMap<Ct6Key, Ct6Value> = LruHashMap::pinned(CT_ENTRIES, 0);

#[map(name = "NODEPORT_CONFIG_V1")]
pub static NODEPORT: Array<NodeportConfig> = Array::pinned(1, 0);

#[map(name = "L2_ANNOUNCE4_V1")]
pub static L2_ANNOUNCE4: HashMap<u32, u8> = HashMap::pinned(L2_ANNOUNCE_ENTRIES, 0);

#[map(name = "L2_ANNOUNCE6_V1")]
pub static L2_ANNOUNCE6: HashMap<[u8; 16], u8> = HashMap::pinned(L2_ANNOUNCE_ENTRIES, 0);

#[map(name = "L2_DEVICE_V1")]
pub static L2_DEVICE: Array<L2Device> = Array::pinned(1, 0);

#[map(name = "SHOAL_VERDICTS")]
pub static VERDICTS: PerCpuArray<u64> = PerCpuArray::pinned(Verdict::COUNT, 0);

/// Counts one verdict on this CPU.
#[inline(always)]
pub fn count(verdict: Verdict) {
    if let Some(counter) = VERDICTS.get_ptr_mut(verdict as u32) {
        // SAFETY: a per-CPU slot, written only by this CPU with preemption off.
        unsafe { *counter += 1 };
    }
}
