//! Getting the two tarballs onto the machine and proving they are the release's: downloaded
//! (resumable `.partial` files keyed by the expected hash) or given as local files; in both
//! cases the sha256 of the whole file is checked against `sha256sum.txt` before anything is
//! extracted.

use super::archive::Compression;
use super::release::{self, Version};
use sha2::{Digest, Sha256};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Ollama's arm64 tarballs are 1-2 GB; anything far bigger is not one.
pub const MAX_TARBALL: u64 = 6 << 30;
const MAX_SUMS: u64 = 1 << 20;
const CONNECT: Duration = Duration::from_secs(20);
/// A download that receives nothing for this long is cut (and resumes on the next run).
const STALL: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: {detail}; check the network (or install offline with --tarball, --jetpack-tarball and --sha256sums)")]
    Http { url: String, detail: String },
    #[error("{}: {source}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: crate::host::fs::ReadError,
    },
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: sha256 {actual} does not match {expected} from sha256sum.txt for {asset}; nothing was installed and the current install is untouched", .path.display())]
    Mismatch { path: PathBuf, asset: String, expected: String, actual: String },
    #[error("sha256sum.txt has no line for {asset}; is this the right release (or the right --sha256sums)?")]
    NoSum { asset: String },
    #[error("{}: neither zstd nor gzip; expected an Ollama release tarball", .path.display())]
    Format { path: PathBuf },
    #[error("{what} is larger than {} MiB; refusing it", .limit >> 20)]
    TooLarge { what: String, limit: u64 },
}

/// A tarball, verified.
#[derive(Debug, Clone)]
pub struct Verified {
    pub asset: String,
    pub path: PathBuf,
    pub sha256: String,
    pub compression: Compression,
    /// Where it came from, for install.json and `status`.
    pub origin: String,
}

/// Where the tarballs come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// `<base>/v<version>/<asset>`; base is GitHub's releases unless `--mirror`.
    Release { base: String, version: Version },
    /// Offline: the two files and the release's sha256sum.txt.
    Local { base: PathBuf, jetpack: PathBuf, sums: PathBuf },
}

fn sniff(path: &Path) -> Result<Compression, FetchError> {
    use std::io::Read;
    let mut magic = [0u8; 4];
    let mut f = std::fs::File::open(path).map_err(|e| FetchError::Io { path: path.into(), source: e })?;
    let n = f.read(&mut magic).map_err(|e| FetchError::Io { path: path.into(), source: e })?;
    match &magic[..n] {
        [0x28, 0xb5, 0x2f, 0xfd] => Ok(Compression::Zstd),
        [0x1f, 0x8b, ..] => Ok(Compression::Gzip),
        _ => Err(FetchError::Format { path: path.into() }),
    }
}

/// sha256 of a regular file, streamed, off the runtime.
pub async fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let io = |e| FetchError::Io { path: p.clone(), source: e };
        let mut f = std::fs::File::open(&p).map_err(io)?;
        let m = f.metadata().map_err(io)?;
        if !m.is_file() {
            return Err(FetchError::Io { path: p.clone(), source: std::io::Error::other("not a regular file") });
        }
        if m.len() > MAX_TARBALL {
            return Err(FetchError::TooLarge { what: p.display().to_string(), limit: MAX_TARBALL });
        }
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(io)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(hex(&h.finalize()))
    })
    .await
    .map_err(|e| FetchError::Io { path: path.into(), source: std::io::Error::other(e) })?
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn sha256_bytes(b: &[u8]) -> String {
    hex(&Sha256::digest(b))
}

type Body = http_body_util::Empty<hyper::body::Bytes>;

/// A small HTTPS client: ring as the rustls provider, the system's CA certificates, redirects
/// followed (GitHub sends release assets to its object store), a deadline on every step.
struct Http {
    client: hyper_util::client::legacy::Client<hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>, Body>,
}

impl Http {
    fn new() -> Result<Http, FetchError> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .map_err(|e| FetchError::Http { url: String::new(), detail: format!("no CA certificates on this system ({e}); install ca-certificates") })?
            .https_or_http()
            .enable_http1()
            .build();
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https);
        Ok(Http { client })
    }

    /// GET with an optional `Range: bytes=N-`; returns the final response after redirects.
    async fn get(&self, url: &str, from: Option<u64>) -> Result<hyper::Response<hyper::body::Incoming>, FetchError> {
        let mut url = url.to_string();
        for _ in 0..8 {
            let mut req = hyper::Request::get(&url).header("user-agent", concat!("jetson-llmd/", env!("CARGO_PKG_VERSION")));
            if let Some(n) = from.filter(|n| *n > 0) {
                req = req.header("range", format!("bytes={n}-"));
            }
            let req = req.body(Body::new()).map_err(|e| http(&url, e))?;
            let resp = tokio::time::timeout(CONNECT + STALL, self.client.request(req)).await.map_err(|_| http(&url, "no answer"))?.map_err(|e| http(&url, e))?;
            if resp.status().is_redirection() {
                let loc = resp.headers().get("location").and_then(|l| l.to_str().ok()).ok_or_else(|| http(&url, "redirect without a location"))?;
                let next = url::Url::parse(&url).and_then(|u| u.join(loc)).map_err(|e| http(&url, e))?;
                if next.scheme() != "https" && next.scheme() != "http" {
                    return Err(http(&url, "redirect to a non-HTTP URL"));
                }
                url = next.to_string();
                continue;
            }
            return Ok(resp);
        }
        Err(http(&url, "too many redirects"))
    }
}

/// The next chunk of a body, or None at its end; a body silent for [`STALL`] is cut.
async fn next_chunk(body: &mut hyper::body::Incoming, url: &str) -> Result<Option<hyper::body::Bytes>, FetchError> {
    use http_body_util::BodyExt;
    loop {
        match tokio::time::timeout(STALL, body.frame()).await.map_err(|_| http(url, format!("nothing received for {} s; run again to resume", STALL.as_secs())))? {
            None => return Ok(None),
            Some(Err(e)) => return Err(http(url, format!("{e}; run again to resume"))),
            Some(Ok(f)) => {
                if let Ok(d) = f.into_data() {
                    return Ok(Some(d));
                }
            }
        }
    }
}

fn content_length(resp: &hyper::Response<hyper::body::Incoming>) -> Option<u64> {
    resp.headers().get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok())
}

fn http(url: &str, e: impl std::fmt::Display) -> FetchError {
    FetchError::Http { url: url.to_string(), detail: crate::text::clip(&crate::text::clean(&e.to_string()), 300) }
}

/// The checksum list: downloaded (capped) or read from a local file (capped, regular).
pub async fn sums(source: &Source) -> Result<Vec<(String, String)>, FetchError> {
    let text = match source {
        Source::Local { sums, .. } => crate::host::fs::read_text(sums, MAX_SUMS).await.map_err(|e| FetchError::Read { path: sums.clone(), source: e })?,
        Source::Release { base, version } => {
            let url = version.url(base, release::SUMS);
            let resp = Http::new()?.get(&url, None).await?;
            if !resp.status().is_success() {
                return Err(http(&url, format!("HTTP {} (no such release?)", resp.status())));
            }
            let mut body = Vec::new();
            let mut incoming = resp.into_body();
            while let Some(chunk) = next_chunk(&mut incoming, &url).await? {
                body.extend_from_slice(&chunk);
                if body.len() as u64 > MAX_SUMS {
                    return Err(FetchError::TooLarge { what: url, limit: MAX_SUMS });
                }
            }
            String::from_utf8_lossy(&body).into_owned()
        }
    };
    Ok(release::parse_sums(&text))
}

/// Progress: a bar on a terminal, a line per 10% otherwise (the journal, CI logs).
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    what: String,
    total: Option<u64>,
    last_decile: u64,
}

impl Progress {
    fn new(what: &str, total: Option<u64>, done: u64, quiet: bool) -> Progress {
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new(total.unwrap_or(0));
            if let Ok(style) = indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}") {
                b.set_style(style.progress_chars("=> "));
            }
            b.set_message(what.to_string());
            b.set_position(done);
            b
        });
        if bar.is_none() && !quiet {
            eprintln!("downloading {what}{}", total.map(|t| format!(" ({} MiB)", t >> 20)).unwrap_or_default());
        }
        Progress { bar, what: what.to_string(), total, last_decile: 0 }
    }

    fn set(&mut self, done: u64) {
        if let Some(b) = &self.bar {
            b.set_position(done);
        } else if let Some(t) = self.total.filter(|t| *t > 0) {
            let d = done * 10 / t;
            if d > self.last_decile {
                self.last_decile = d;
                eprintln!("  {}: {}% ({} of {} MiB)", self.what, d * 10, done >> 20, t >> 20);
            }
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

/// Downloads `url` into `cache/<expected>.partial`, resuming what an earlier run left, then
/// verifies and renames it to `cache/<expected>`. A verified file already there is reused.
async fn download(url: &str, asset: &str, expected: &str, cache: &Path, quiet: bool) -> Result<PathBuf, FetchError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |e| FetchError::Io { path, source: e }
    };
    tokio::fs::create_dir_all(cache).await.map_err(io(cache))?;
    let done = cache.join(format!("{expected}-{asset}"));
    if tokio::fs::symlink_metadata(&done).await.map(|m| m.is_file()).unwrap_or(false) {
        if sha256_file(&done).await? == expected {
            return Ok(done);
        }
        let _ = tokio::fs::remove_file(&done).await;
    }
    let partial = cache.join(format!("{expected}.partial"));
    let have = match tokio::fs::symlink_metadata(&partial).await {
        Ok(m) if m.is_file() => m.len(),
        Ok(_) => {
            let _ = tokio::fs::remove_file(&partial).await;
            0
        }
        Err(_) => 0,
    };
    let resp = Http::new()?.get(url, Some(have)).await?;
    let status = resp.status();
    let resumed = status == hyper::StatusCode::PARTIAL_CONTENT && have > 0;
    if !status.is_success() && status != hyper::StatusCode::RANGE_NOT_SATISFIABLE {
        return Err(http(url, format!("HTTP {status}")));
    }
    let mut start = if resumed { have } else { 0 };
    // 416: the partial file is already whole (or wrong); verify below, restart if wrong.
    if status == hyper::StatusCode::RANGE_NOT_SATISFIABLE {
        start = have;
    }
    let total = content_length(&resp).map(|n| n + start);
    if total.is_some_and(|t| t > MAX_TARBALL) {
        return Err(FetchError::TooLarge { what: url.to_string(), limit: MAX_TARBALL });
    }
    if status != hyper::StatusCode::RANGE_NOT_SATISFIABLE {
        let mut f = tokio::fs::OpenOptions::new().create(true).write(true).append(resumed).truncate(!resumed).open(&partial).await.map_err(io(&partial))?;
        if resumed && !quiet {
            eprintln!("resuming {asset} at {} MiB", have >> 20);
        }
        let mut progress = Progress::new(asset, total, start, quiet);
        let mut n = start;
        let mut incoming = resp.into_body();
        while let Some(chunk) = next_chunk(&mut incoming, url).await? {
            n += chunk.len() as u64;
            if n > MAX_TARBALL {
                return Err(FetchError::TooLarge { what: url.to_string(), limit: MAX_TARBALL });
            }
            f.write_all(&chunk).await.map_err(io(&partial))?;
            progress.set(n);
        }
        f.sync_all().await.map_err(io(&partial))?;
        progress.finish();
    }
    let actual = sha256_file(&partial).await?;
    if actual != expected {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(FetchError::Mismatch { path: partial, asset: asset.to_string(), expected: expected.to_string(), actual });
    }
    tokio::fs::rename(&partial, &done).await.map_err(io(&done))?;
    Ok(done)
}

/// Both tarballs, verified. `cache` holds downloads (under the target root).
pub async fn obtain(source: &Source, cache: &Path, quiet: bool) -> Result<(Verified, Verified), FetchError> {
    let sums = sums(source).await?;
    let mut out = Vec::new();
    match source {
        Source::Release { base, version } => {
            for asset in [version.base_asset(), version.jetpack_asset()] {
                let expected = release::sum_for(&sums, &asset).ok_or_else(|| FetchError::NoSum { asset: asset.clone() })?.to_string();
                let url = version.url(base, &asset);
                let path = download(&url, &asset, &expected, cache, quiet).await?;
                let compression = sniff(&path)?;
                out.push(Verified { asset, path, sha256: expected, compression, origin: url });
            }
        }
        Source::Local { base, jetpack, .. } => {
            for path in [base, jetpack] {
                let asset = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let actual = sha256_file(path).await?;
                let expected = release::sum_for(&sums, &asset).ok_or_else(|| FetchError::NoSum { asset: asset.clone() })?.to_string();
                if actual != expected {
                    // A local file is the user's: reported, never deleted.
                    return Err(FetchError::Mismatch { path: path.clone(), asset, expected, actual });
                }
                let compression = sniff(path)?;
                out.push(Verified { asset, path: path.clone(), sha256: actual, compression, origin: path.display().to_string() });
            }
        }
    }
    let jetpack = out.pop().ok_or_else(|| FetchError::NoSum { asset: "jetpack".into() })?;
    let base = out.pop().ok_or_else(|| FetchError::NoSum { asset: "base".into() })?;
    Ok((base, jetpack))
}
