//! `BPF_PROG_TEST_RUN` of a loaded program on a hand-built packet, for the
//! packet tests and the flows benchmark's generator. Hand-written: aya 0.14
//! runs test runs only for its own tracing programs (`SchedClassifier` has
//! none), so this calls the bpf(2) syscall with the `test` member of
//! `union bpf_attr`.

use std::os::fd::{AsRawFd, BorrowedFd};

/// The `test` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    pad: u32,
}

const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// One run of program `fd` on `packet`: its return code. The packet the
/// program leaves is not copied out.
pub fn test_run(fd: BorrowedFd<'_>, packet: &[u8]) -> std::io::Result<u32> {
    run_into(fd, packet, None).map(|(retval, _)| retval)
}

/// One run of program `fd` on `packet`: its return code and the packet as
/// the program left it.
pub fn test_run_output(fd: BorrowedFd<'_>, packet: &[u8]) -> std::io::Result<(u32, Vec<u8>)> {
    let mut out = vec![0u8; packet.len() + 256];
    let (retval, len) = run_into(fd, packet, Some(&mut out))?;
    out.truncate(len);
    Ok((retval, out))
}

/// Returns the return code and how many bytes were written to `out`.
fn run_into(
    fd: BorrowedFd<'_>,
    packet: &[u8],
    out: Option<&mut [u8]>,
) -> std::io::Result<(u32, usize)> {
    let (data_out, data_size_out) = match out {
        Some(out) => (out.as_mut_ptr() as u64, out.len() as u32),
        None => (0, 0),
    };
    let mut attr = TestAttr {
        prog_fd: fd.as_raw_fd() as u32,
        data_size_in: packet.len() as u32,
        data_size_out,
        data_in: packet.as_ptr() as u64,
        data_out,
        repeat: 1,
        ..TestAttr::default()
    };
    // SAFETY: `attr` is a valid bpf_attr prefix of the size passed; the
    // kernel reads `packet` and writes at most `data_size_out` bytes to
    // `data_out` (none when it is null), both alive for the call.
    #[expect(unsafe_code, reason = "the bpf(2) syscall has no safe wrapper here")]
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_TEST_RUN,
            &mut attr as *mut TestAttr,
            size_of::<TestAttr>(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((attr.retval, attr.data_size_out as usize))
}
