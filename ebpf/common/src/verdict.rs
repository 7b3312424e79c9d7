//! Verdict codes: every outcome of a program, good or bad, has a reason and
//! a per-CPU counter in `SHOAL_VERDICTS`, indexed by the code.

/// Pinned name of the per-CPU verdict counter array.
pub const VERDICTS: &str = "SHOAL_VERDICTS";

/// Why a program returned what it returned. The discriminant is the index
/// into `SHOAL_VERDICTS`. Append only; never renumber.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A service address was translated to a backend.
    LbTranslated = 0,
    /// The service has no backend: the connect or send is refused.
    DropNoBackend = 1,
    /// The frontend named a backend slot that is missing.
    DropSlotMissing = 2,
    /// A backend slot named a backend id that is missing.
    DropBackendMissing = 3,
    /// The reverse-NAT entry could not be stored; the socket still goes to
    /// the backend but getpeername/recvmsg show the backend address.
    RevnatStoreFailed = 4,
    /// recvmsg/getpeername restored the service address.
    RevnatRestored = 5,
}

impl Verdict {
    /// How many verdict codes exist (the counter array's size).
    pub const COUNT: u32 = 6;

    /// Every verdict, in index order.
    pub const ALL: [Verdict; Self::COUNT as usize] = [
        Verdict::LbTranslated,
        Verdict::DropNoBackend,
        Verdict::DropSlotMissing,
        Verdict::DropBackendMissing,
        Verdict::RevnatStoreFailed,
        Verdict::RevnatRestored,
    ];

    /// The metric label for this verdict.
    pub const fn name(self) -> &'static str {
        match self {
            Verdict::LbTranslated => "lb_translated",
            Verdict::DropNoBackend => "drop_no_backend",
            Verdict::DropSlotMissing => "drop_slot_missing",
            Verdict::DropBackendMissing => "drop_backend_missing",
            Verdict::RevnatStoreFailed => "revnat_store_failed",
            Verdict::RevnatRestored => "revnat_restored",
        }
    }
}

const _: () = {
    let mut i = 0;
    while i < Verdict::ALL.len() {
        assert!(Verdict::ALL[i] as u32 == i as u32);
        i += 1;
    }
};
