use super::*;

fn file(payload: &[u8]) -> Vec<u8> {
    let mut f = encode(payload);
    let sha = checksum(&f);
    f.extend_from_slice(&sha);
    f
}

#[test]
fn files_have_the_length_etcdctl_accepts() {
    for n in [0, 1, 496, 497, 4096, 100_000] {
        let f = file(&vec![7u8; n]);
        // etcdctl's hasChecksum: size % 512 == sha256.Size.
        assert_eq!(f.len() % 512, 32, "payload of {n} bytes");
    }
}

#[test]
fn payload_round_trips() {
    let payload: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(decode(&file(&payload)), Ok(payload.as_slice()));
    assert_eq!(decode(&file(b"")), Ok(&b""[..]));
}

#[test]
fn corrupt_truncated_and_foreign_files_are_refused() {
    let mut f = file(b"hello");
    f[20] ^= 1;
    assert_eq!(decode(&f), Err(SnapshotFileError::Checksum));
    let f = file(b"hello");
    assert_eq!(
        decode(&f[..f.len() - 1]),
        Err(SnapshotFileError::Truncated { len: f.len() - 1 })
    );
    assert_eq!(decode(b"bolt db bytes"), Err(SnapshotFileError::NotShoal));
}
