//! Release tarballs in Ollama's layout, built by the tests (raw tar headers, so that hostile
//! names can be written too), and a sha256 helper.
#![allow(dead_code)]

pub mod container;
pub mod procs;

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub enum E<'a> {
    File(&'a str, &'a [u8], u32),
    Dir(&'a str),
    Link(&'a str, &'a str),
    Hard(&'a str, &'a str),
    Fifo(&'a str),
    Char(&'a str),
}

/// A tar archive with raw names (tar::Builder would refuse the hostile ones).
pub fn tar_bytes(entries: &[E]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = tar::Header::new_gnu();
        let (name, data, kind, mode, link): (&str, &[u8], tar::EntryType, u32, &str) = match e {
            E::File(n, d, m) => (n, d, tar::EntryType::Regular, *m, ""),
            E::Dir(n) => (n, b"", tar::EntryType::Directory, 0o755, ""),
            E::Link(n, t) => (n, b"", tar::EntryType::Symlink, 0o777, t),
            E::Hard(n, t) => (n, b"", tar::EntryType::Link, 0o644, t),
            E::Fifo(n) => (n, b"", tar::EntryType::Fifo, 0o644, ""),
            E::Char(n) => (n, b"", tar::EntryType::Char, 0o644, ""),
        };
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

pub fn zstd(raw: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(raw, ruzstd::encoding::CompressionLevel::Fastest)
}

pub fn sha(b: &[u8]) -> String {
    Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

/// A release: the two tarballs and sha256sum.txt in `dir`.
pub struct Release {
    pub base: PathBuf,
    pub jetpack: PathBuf,
    pub sums: PathBuf,
}

pub fn release(dir: &Path, base: &[E], jetpack: &[E]) -> Release {
    std::fs::create_dir_all(dir).expect("mkdir");
    let b = zstd(&tar_bytes(base));
    let j = zstd(&tar_bytes(jetpack));
    let r = Release { base: dir.join("ollama-linux-arm64.tar.zst"), jetpack: dir.join("ollama-linux-arm64-jetpack6.tar.zst"), sums: dir.join("sha256sum.txt") };
    std::fs::write(&r.base, &b).expect("w");
    std::fs::write(&r.jetpack, &j).expect("w");
    std::fs::write(&r.sums, format!("{}  ./ollama-linux-arm64.tar.zst\n{}  ./ollama-linux-arm64-jetpack6.tar.zst\n{}  ./ollama-darwin.tgz\n", sha(&b), sha(&j), "0".repeat(64))).expect("w");
    r
}

/// A release whose bin/ollama is fake-ollama (built beside jetson-llmd); `knobs` go into
/// lib/ollama/fake-ollama.env (FAKE_OLLAMA_VERSION=..., FAKE_OLLAMA_NO_GPU=...).
pub fn fake_release(dir: &Path, knobs: &str) -> Release {
    let fake = std::fs::read(Path::new(env!("CARGO_BIN_EXE_jetson-llmd")).with_file_name("fake-ollama")).expect("build fake-ollama first (cargo build --workspace --bins)");
    let base = vec![
        E::Dir("./"),
        E::Dir("./bin/"),
        E::File("./bin/ollama", &fake, 0o755),
        E::Dir("./lib/"),
        E::Dir("./lib/ollama/"),
        E::File("./lib/ollama/fake-ollama.env", knobs.as_bytes(), 0o644),
        E::File("./lib/ollama/libggml-base.so.0.0.0", b"ggml", 0o644),
        E::Link("./lib/ollama/libggml-base.so.0", "libggml-base.so.0.0.0"),
    ];
    let jp = vec![E::Dir("./lib/ollama/cuda_jetpack6/"), E::File("./lib/ollama/cuda_jetpack6/libggml-cuda.so", b"cuda", 0o644)];
    release(dir, &base, &jp)
}
