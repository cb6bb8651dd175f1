//! GPU verdict from Ollama's server log.
//!
//! Ollama logs GPU discovery once per start as an slog/logfmt line `msg="inference compute"`
//! (discover/types.go LogDetails since v0.12.4: `library=CUDA compute=8.7 name=CUDA0
//! description=Orin libdirs=ollama,cuda_jetpack6 ... type=iGPU`; before: `library=cuda
//! variant=jetpack6 compute=8.7 ... name=Orin`). On CPU fallback it logs the same message with
//! `library=cpu`. We read the lines of the latest start only, accept plain lines, journalctl's
//! short prefix, `-o cat`, and `-o json` lines (MESSAGE field).

use std::collections::BTreeMap;

/// Splits a logfmt line into key/value pairs (Go's %q quoting for values with spaces).
pub fn logfmt(line: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let b = line.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && b[i] == b' ' {
            i += 1;
        }
        let ks = i;
        while i < b.len() && b[i] != b'=' && b[i] != b' ' {
            i += 1;
        }
        if i >= b.len() || b[i] != b'=' {
            continue;
        }
        let key = &line[ks..i];
        i += 1;
        let mut val = String::new();
        if i < b.len() && b[i] == b'"' {
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' && i + 1 < b.len() {
                    i += 1;
                }
                let ch = line[i..].chars().next().unwrap_or(' ');
                val.push(ch);
                i += ch.len_utf8();
            }
            i += 1;
        } else {
            let vs = i;
            while i < b.len() && b[i] != b' ' {
                i += 1;
            }
            val.push_str(&line[vs..i]);
        }
        if !key.is_empty() {
            out.insert(key.to_string(), val);
        }
    }
    out
}

/// One log line as Ollama wrote it, with any journal framing removed.
pub fn unframe(line: &str) -> String {
    let line = line.trim_end_matches(['\r', '\n']);
    if line.starts_with('{') {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
            if let Some(m) = v.get("MESSAGE") {
                return match m {
                    serde_json::Value::String(s) => s.clone(),
                    // journald stores non-UTF-8 messages as byte arrays.
                    serde_json::Value::Array(a) => String::from_utf8_lossy(&a.iter().filter_map(|x| x.as_u64().map(|n| n as u8)).collect::<Vec<_>>()).into_owned(),
                    _ => String::new(),
                };
            }
        }
    }
    // journalctl short: "Nov 23 21:40:29 host ollama[1234]: time=..." (also short-iso/-precise).
    if let Some(pos) = line.find("]: ") {
        let head = &line[..pos];
        if head.contains('[') && !head.contains("msg=") && !head.contains("time=") {
            return line[pos + 3..].to_string();
        }
    }
    line.to_string()
}

use crate::conf::ExpectedCompute;
pub use crate::records::gpu::GpuReport;
use crate::text::clean as sanitize;

/// What the host itself says, beside Ollama's log, for the cause of a CPU fallback.
#[derive(Debug, Clone, Default)]
pub struct HostFacts<'a> {
    /// /proc/cmdline (for `cma=`).
    pub cmdline: Option<&'a str>,
    /// Whether Ollama's JetPack 6 libraries (lib/ollama/cuda_jetpack6) are on disk; None: not
    /// looked at.
    pub jetpack6_libs: Option<bool>,
}

/// Whether the JetPack 6 libraries sit where Ollama looks for them: lib/ollama beside the
/// directory of its executable (ml.LibOllamaPath). None when the executable is not there
/// (nothing to say about its libraries).
pub fn jetpack6_libs(root: &std::path::Path, ollama_bin: &std::path::Path) -> Option<bool> {
    let bin = crate::host::rooted(root, ollama_bin);
    if std::fs::symlink_metadata(&bin).is_err() {
        return None;
    }
    let libs = bin.parent()?.join("../lib/ollama/cuda_jetpack6");
    Some(std::fs::read_dir(libs).is_ok_and(|mut d| d.next().is_some()))
}

/// Reads log lines (oldest first) and decides. `cmdline` is /proc/cmdline when known.
pub fn analyze<S: AsRef<str>>(lines: &[S], expected: &ExpectedCompute, cmdline: Option<&str>) -> GpuReport {
    analyze_on(lines, expected, &HostFacts { cmdline, jetpack6_libs: None })
}

/// The same, with what the host says (the cause of a CPU fallback, and what it rests on).
pub fn analyze_on<S: AsRef<str>>(lines: &[S], expected: &ExpectedCompute, host: &HostFacts<'_>) -> GpuReport {
    let cmdline = host.cmdline;
    let expected_compute = &expected.to_string();
    let lines: Vec<String> = lines.iter().map(|l| unframe(l.as_ref())).collect();
    // Only the latest start counts: an older start's discovery says nothing about now.
    let start = lines.iter().rposition(|l| l.contains("msg=\"server config\"")).or_else(|| lines.iter().rposition(|l| l.contains("msg=\"Listening on "))).unwrap_or(0);
    let lines = &lines[start..];
    let mut r = GpuReport { expected_compute: expected_compute.to_string(), ..Default::default() };
    let mut cuda_init_failure: Option<String> = None;
    let mut igpu_dropped = false;
    // discover/runner.go bootstrapDevicesWithMetalRetry (v0.30+, INFO): discovery itself failed,
    // with the captured error in `detail`.
    let mut discovery_failed: Option<String> = None;
    // The generic CUDA v12 build, tried when cuda_jetpack6 is absent (v0.31.2+), was not
    // compiled for compute 8.7 (its arch list has no 87): INFO "skipping CUDA device".
    let mut arch_skipped: Option<String> = None;
    // discover/cuda_compat.go (v0.30.11+ for the 550 floor): CUDA devices under a driver older
    // than the CUDA runtime in use needs are dropped, with this line; Orin on JetPack 6.2
    // reports driver 540.
    let mut driver_too_old: Option<(String, String)> = None;
    let mut best: Option<BTreeMap<String, String>> = None;
    for l in lines {
        if let Some(p) = l.find("(version ") {
            if l.contains("Listening on") {
                r.ollama_version = l[p + 9..].split(')').next().map(|v| crate::text::clip(v, 64));
            }
        }
        if let Some(p) = l.find("failed to initialize CUDA") {
            // Clipped: it lands in the verdict, STATUS= and status (the line can be 16 KiB).
            cuda_init_failure = Some(crate::text::clip(l[p..].trim_end_matches('"'), 300));
        }
        if l.contains("dropping integrated GPU") {
            igpu_dropped = true;
        }
        if l.contains("msg=\"failure during llama-server GPU discovery\"") {
            let kv = logfmt(l);
            discovery_failed = Some(sanitize(&crate::text::clip(kv.get("detail").or(kv.get("error")).map(String::as_str).unwrap_or("no detail"), 200)));
        }
        if l.contains("skipping CUDA device") && l.contains("compute capability not in compiled architectures") {
            let kv = logfmt(l);
            arch_skipped = Some(format!("compute {} is not among {}", crate::text::clip(kv.get("cc").map(String::as_str).unwrap_or("?"), 10), crate::text::clip(kv.get("libDirs").map(String::as_str).unwrap_or("the generic CUDA build"), 60)));
        }
        if l.contains("msg=\"NVIDIA driver too old\"") {
            let kv = logfmt(l);
            let get = |k: &str| kv.get(k).map(|v| crate::text::clip(v, 40)).unwrap_or_else(|| "?".into());
            driver_too_old = Some((get("driver"), get("required_driver")));
        }
        if let Some(p) = l.find("offloaded ") {
            let rest = &l[p + 10..];
            if let Some((nm, _)) = rest.split_once(" layers to GPU") {
                if let Some((n, m)) = nm.split_once('/') {
                    if let (Ok(n), Ok(m)) = (n.trim().parse(), m.trim().parse()) {
                        r.offloaded = Some((n, m));
                    }
                }
            }
        }
        if ollama_client::looks_like_oom(l) && !l.contains("msg=\"inference compute\"") {
            r.oom = true;
            r.oom_line = Some(sanitize(l).chars().take(300).collect());
        }
        if l.contains("msg=\"inference compute\"") || l.contains("msg=inference compute") {
            let kv = logfmt(l);
            let is_gpu = kv.get("library").is_some_and(|v| !v.eq_ignore_ascii_case("cpu"));
            let best_is_gpu = best.as_ref().and_then(|b| b.get("library")).is_some_and(|v| !v.eq_ignore_ascii_case("cpu"));
            // A GPU line wins over a CPU line (Ollama also lists the CPU next to the GPU).
            if is_gpu || !best_is_gpu {
                best = Some(kv);
            }
        }
    }
    let Some(kv) = best else {
        if let Some(c) = cuda_init_failure {
            r.cpu_fallback_reason = Some(cuda_reason(&c, cmdline));
        }
        return r;
    };
    r.discovered = true;
    // Values come from a log line: cleaned and capped before they reach anyone.
    let get = |k: &str| kv.get(k).filter(|v| !v.is_empty()).map(|v| crate::text::clip(v, 200));
    r.library = get("library");
    r.compute = get("compute");
    r.name = get("name");
    r.description = get("description");
    r.libdirs = get("libdirs").or_else(|| get("variant").map(|v| format!("cuda_{v}")));
    r.driver = get("driver");
    r.total = get("total");
    r.available = get("available");
    r.log_format = Some(if kv.contains_key("description") || kv.contains_key("libdirs") { "current" } else { "legacy" }.into());
    let is_cuda = r.library.as_deref().is_some_and(|l| l.eq_ignore_ascii_case("cuda"));
    let compute_ok = r.compute.as_deref() == Some(expected_compute);
    r.gpu = is_cuda && compute_ok;
    if expected.is_cpu() {
        // A host without a GPU (CI, tests): whatever Ollama found is what it will use, and the
        // CPU is expected. No reason to report; a GPU found anyway is fine too.
        r.as_expected = true;
        return r;
    }
    r.as_expected = r.gpu;
    if !r.gpu {
        let libs_missing = host.jetpack6_libs == Some(false);
        let (reason, evidence) = if let Some(c) = cuda_init_failure {
            (cuda_reason(&c, cmdline), format!("log: {}", crate::text::clip(&c, 160)))
        } else if let Some(d) = &discovery_failed {
            (format!("Ollama's GPU discovery failed ({d}); check the JetPack/L4T driver install (nvidia-l4t-cuda) and that the ollama user is in the video and render groups"), "log: failure during llama-server GPU discovery".to_string())
        } else if let Some((driver, required)) = &driver_too_old {
            // discover/cuda_compat.go filterOldCUDADriver runs only on the generic cuda_v12
            // build, which an Orin reaches only when cuda_jetpack6 is absent (v0.31.2+
            // fallback): the fix is the JetPack 6 libraries, not a newer driver.
            (
                format!(
                    "Ollama{} dropped the GPU on its generic CUDA v12 libraries: they need NVIDIA driver {required}, this board's is {driver} (JetPack 6.2 ships 540). An Orin should run on the JetPack 6 libraries (cuda_jetpack6), which the driver floor does not apply to{}: install Ollama together with its JetPack 6 tarball (sudo jetson-llmd install)",
                    r.ollama_version.as_deref().map(|v| format!(" {v}")).unwrap_or_default(),
                    if libs_missing { "; they are missing on disk" } else { "" }
                ),
                "log: NVIDIA driver too old".to_string(),
            )
        } else if let Some(why) = &arch_skipped {
            (
                format!("Ollama tried its generic CUDA libraries, which were not built for this GPU ({why}): the JetPack 6 libraries (cuda_jetpack6) are missing; install Ollama together with its JetPack 6 tarball (sudo jetson-llmd install)"),
                "log: skipping CUDA device (compute capability not in compiled architectures)".to_string(),
            )
        } else if igpu_dropped {
            // discover/runner.go filterIntegratedGPUs keeps CUDA iGPUs by default: this only
            // happens with OLLAMA_IGPU_ENABLE set to a false value.
            ("Ollama dropped the integrated GPU because OLLAMA_IGPU_ENABLE is set to a false value in its environment: remove it (or set OLLAMA_IGPU_ENABLE=1) in ollama.service's environment".into(), "log: dropping integrated GPU".to_string())
        } else if is_cuda {
            (
                format!(
                    "Ollama found a CUDA device with compute {} but {} was expected: the CUDA libraries in use ({}) were not built for Orin; install Ollama together with its JetPack 6 tarball (ollama-linux-arm64-jetpack6.tar.zst)",
                    r.compute.as_deref().unwrap_or("?"),
                    expected_compute,
                    r.libdirs.as_deref().unwrap_or("unknown")
                ),
                "log: the inference compute line".to_string(),
            )
        } else if r.library.as_deref().is_some_and(|l| !l.eq_ignore_ascii_case("cpu")) {
            (format!("Ollama picked the {} library, not CUDA", r.library.as_deref().unwrap_or("?")), "log: the inference compute line".to_string())
        } else if cmdline.is_some_and(has_cma) {
            ("no CUDA GPU was discovered and the kernel command line sets cma=: remove it (the JetPack 6 libraries do not need it and it breaks CUDA)".into(), "/proc/cmdline: cma=".to_string())
        } else if libs_missing {
            (
                "no CUDA GPU was discovered: Ollama's JetPack 6 libraries (lib/ollama/cuda_jetpack6) are missing on disk; install Ollama together with its JetPack 6 tarball (sudo jetson-llmd install)".into(),
                "disk: /usr/local/lib/ollama/cuda_jetpack6 is missing".to_string(),
            )
        } else {
            // Ollama 0.30+ discards its discovery subprocess's output below trace level
            // (discover/llama_server.go llamaServerDiscoveryOutput): the cause is not in the log.
            (
                format!(
                    "no CUDA GPU was discovered and Ollama's log at its default level does not say why{}; to see it: sudo systemctl edit ollama (Environment=OLLAMA_DEBUG=2), restart it, then jetson-llmd gpu-check",
                    if host.jetpack6_libs == Some(true) { " (its JetPack 6 libraries are on disk)" } else { "; the usual cause is missing JetPack 6 libraries (lib/ollama/cuda_jetpack6)" }
                ),
                "none: Ollama hides discovery's own output below OLLAMA_DEBUG=2".to_string(),
            )
        };
        r.cpu_fallback_reason = Some(reason);
        r.evidence = Some(evidence);
    }
    // v0.31.2+ falls back to the generic CUDA build when lib/ollama/cuda_jetpack6 is absent
    // (discover: "fall back to standard CUDA when the JetPack runner is absent"); libdirs in
    // the discovery line says which one loaded. On an Orin that is a board on the wrong
    // libraries, even when the GPU is found.
    if r.gpu && *expected == ExpectedCompute::ORIN && r.libdirs.as_deref().is_some_and(|l| !l.contains("cuda_jetpack6")) {
        r.warning = Some(format!("the GPU runs on Ollama's {} libraries, not the JetPack 6 ones (cuda_jetpack6): install Ollama together with its JetPack 6 tarball (sudo jetson-llmd install)", r.libdirs.as_deref().unwrap_or("?")));
    }
    if r.gpu && r.offloaded.is_some_and(|(n, _)| n == 0) {
        r.cpu_fallback_reason = Some("the GPU was found but the last load offloaded 0 layers to it".into());
    }
    r
}

fn has_cma(cmdline: &str) -> bool {
    cmdline.split_whitespace().any(|w| w.starts_with("cma="))
}

fn cuda_reason(line: &str, cmdline: Option<&str>) -> String {
    let hint = if cmdline.is_some_and(has_cma) {
        "the kernel command line sets cma=, which breaks CUDA initialisation on Jetson: remove it and reboot"
    } else {
        "check the JetPack/L4T driver install (nvidia-l4t-cuda) and that the ollama user is in the video and render groups"
    };
    format!("CUDA failed to initialise ({line}); {hint}")
}

#[cfg(test)]
mod tests {
    use super::*;
    const ORIN: &ExpectedCompute = &ExpectedCompute::ORIN;

    const NEW: &str = r#"time=2026-05-01T10:00:02.100+02:00 level=INFO source=types.go:60 msg="inference compute" id=GPU-2f6a filter_id="" library=CUDA compute=8.7 name=CUDA0 description=Orin libdirs=ollama,cuda_jetpack6 driver=12.6 pci_id=0000:00:00.0 type=iGPU total="7.4 GiB" available="5.1 GiB""#;
    const OLD: &str =
        r#"time=2024-09-13T09:19:01.543+02:00 level=INFO source=types.go:107 msg="inference compute" id=GPU-5fd13bbd-9d4e-5a47-8d0c-b7a2d5e4f3a1 library=cuda variant=jetpack6 compute=8.7 driver=12.2 name=Orin total="61.4 GiB" available="51.6 GiB""#;
    const CPU: &str = r#"time=2026-05-01T10:00:02.100+02:00 level=INFO source=types.go:60 msg="inference compute" id=cpu library=cpu compute="" name=cpu description=cpu libdirs=ollama driver="" pci_id="" type="" total="7.4 GiB" available="5.6 GiB""#;

    #[test]
    fn logfmt_handles_quotes() {
        let kv = logfmt(NEW);
        assert_eq!(kv["msg"], "inference compute");
        assert_eq!(kv["total"], "7.4 GiB");
        assert_eq!(kv["filter_id"], "");
        assert_eq!(kv["libdirs"], "ollama,cuda_jetpack6");
        let kv = logfmt(r#"msg="a \"quoted\" word" k=v"#);
        assert_eq!(kv["msg"], "a \"quoted\" word");
    }

    #[test]
    fn current_format_gpu() {
        let r = analyze(&[NEW], ORIN, None);
        assert!(r.gpu && r.discovered);
        assert_eq!(r.description.as_deref(), Some("Orin"));
        assert_eq!(r.log_format.as_deref(), Some("current"));
        assert!(r.summary().contains("Orin compute 8.7"));
    }

    #[test]
    fn legacy_format_gpu_behind_journal_prefix() {
        let line = format!("Sep 13 09:19:01 orin ollama[1234]: {OLD}");
        let r = analyze(&[line], ORIN, None);
        assert!(r.gpu);
        assert_eq!(r.log_format.as_deref(), Some("legacy"));
        assert_eq!(r.libdirs.as_deref(), Some("cuda_jetpack6"));
    }

    #[test]
    fn journal_json_lines() {
        let j = serde_json::json!({ "MESSAGE": NEW, "_SYSTEMD_UNIT": "ollama.service" }).to_string();
        assert!(analyze(&[j], ORIN, None).gpu);
    }

    #[test]
    fn cpu_fallback_reasons() {
        let r = analyze(&[CPU], ORIN, None);
        assert!(!r.gpu && r.discovered);
        assert!(r.cpu_fallback_reason.as_deref().expect("reason").contains("cuda_jetpack6"));
        let r = analyze(&[CPU], ORIN, Some("console=ttyTCU0 cma=4096M root=/dev/mmcblk0p1"));
        assert!(r.cpu_fallback_reason.as_deref().expect("reason").contains("cma="));
        let r = analyze(&["ggml_cuda_init: failed to initialize CUDA: unknown error", CPU], ORIN, None);
        assert!(r.cpu_fallback_reason.as_deref().expect("reason").starts_with("CUDA failed to initialise"));
        let wrong = NEW.replace("compute=8.7", "compute=5.0").replace("cuda_jetpack6", "cuda_v12");
        let r = analyze(&[wrong], ORIN, None);
        assert!(!r.gpu);
        assert!(r.cpu_fallback_reason.as_deref().expect("reason").contains("cuda_v12"));
    }

    #[test]
    fn cpu_expected_on_hosts_without_a_gpu() {
        // Ollama v0.24.0 on an x86 host without a GPU (discover/types.go LogDetails, CPU branch).
        let cpu024 = r#"time=2026-11-29T22:40:01.000Z level=INFO source=types.go:60 msg="inference compute" id=cpu library=cpu compute="" name=cpu description=cpu libdirs=ollama driver="" pci_id="" type="" total="23.4 GiB" available="21.0 GiB""#;
        let r = analyze(&[cpu024], &ExpectedCompute::Cpu, None);
        assert!(r.discovered && r.as_expected && !r.gpu);
        assert_eq!(r.cpu_fallback_reason, None);
        assert!(r.summary().contains("as expected_compute = \"cpu\" asks"), "{}", r.summary());
        assert_eq!(r.expected_compute, "cpu");
        // The same line on an Orin is the seed's silent CPU fallback.
        let r = analyze(&[cpu024], ORIN, None);
        assert!(r.discovered && !r.as_expected && r.cpu_fallback_reason.is_some());
        // Nothing discovered yet is never "as expected", whatever is expected.
        let r = analyze(&["msg=\"server config\""], &ExpectedCompute::Cpu, None);
        assert!(!r.discovered && !r.as_expected);
        assert!(analyze(&[NEW], ORIN, None).as_expected);
    }

    /// Lines as v0.31-v0.34 write them (discover/cuda_compat.go, discover/types.go LogDetails).
    #[test]
    fn driver_floor_and_generic_libraries() {
        let floor = r#"time=2026-09-20T10:00:01.000+02:00 level=WARN source=cuda_compat.go:65 msg="NVIDIA driver too old" device=Orin compute=8.7 driver=540 required_driver="550 or newer""#;
        let listen = r#"time=2026-09-20T10:00:00.001+02:00 level=INFO source=routes.go:1597 msg="Listening on 127.0.0.1:11434 (version 0.34.1)""#;
        let r = analyze(&[listen, floor, CPU], ORIN, None);
        assert!(r.discovered && !r.gpu && !r.as_expected);
        let why = r.cpu_fallback_reason.expect("reason");
        assert!(why.contains("driver 550 or newer") && why.contains("is 540") && why.contains("0.34.1") && why.contains("cuda_jetpack6"), "{why}");
        assert!(!why.contains("--version 0.30.10"), "the floor only applies to the generic cuda_v12 build: the fix is the JetPack 6 libraries, not an older Ollama: {why}");
        assert_eq!(r.evidence.as_deref(), Some("log: NVIDIA driver too old"));
        let generic = NEW.replace("libdirs=ollama,cuda_jetpack6", "libdirs=ollama,cuda_v12");
        let r = analyze(&[generic.as_str()], ORIN, None);
        assert!(r.gpu && r.as_expected, "the GPU is found");
        assert!(r.warning.as_deref().is_some_and(|w| w.contains("cuda_v12") && w.contains("cuda_jetpack6")), "{:?}", r.warning);
        assert!(r.summary().contains("warning:"), "{}", r.summary());
        assert_eq!(analyze(&[NEW], ORIN, None).warning, None);
    }

    /// A CPU fallback on 0.30+ at Ollama's default log level: discovery's own output is
    /// discarded (discover/llama_server.go llamaServerDiscoveryOutput), so the cause comes from
    /// the lines Ollama does write at INFO, or from the disk, and says which.
    #[test]
    fn cpu_fallback_causes_rest_on_evidence() {
        let host = |libs| HostFacts { cmdline: None, jetpack6_libs: libs };
        // v0.31.2+ without cuda_jetpack6: the generic CUDA v12 build skips the Orin
        // (discover/runner.go; its arch list has no 87).
        let skip = r#"time=2026-09-20T10:00:01.000+02:00 level=INFO source=runner.go:210 msg="skipping CUDA device — compute capability not in compiled architectures" device=Orin cc=8.7 archs="50-virtual;52-virtual;60;61;70;75;80;86;89;90;90a;120" libDirs=cuda_v12"#;
        let r = analyze_on(&[skip, CPU], ORIN, &host(Some(false)));
        assert!(r.cpu_fallback_reason.as_deref().is_some_and(|w| w.contains("compute 8.7 is not among cuda_v12") && w.contains("JetPack 6 tarball")), "{r:?}");
        assert!(r.evidence.as_deref().is_some_and(|e| e.starts_with("log: skipping CUDA device")), "{r:?}");
        // discover/runner.go bootstrapDevicesWithMetalRetry: discovery itself failed.
        let failed = r#"time=2026-09-20T10:00:01.000+02:00 level=INFO source=runner.go:120 msg="failure during llama-server GPU discovery" OLLAMA_LIBRARY_PATH="[/usr/local/lib/ollama /usr/local/lib/ollama/cuda_jetpack6]" extra_envs=map[] error="exit status 1" detail="CUDA error: no CUDA-capable device is detected""#;
        let r = analyze_on(&[failed, CPU], ORIN, &host(Some(true)));
        assert!(r.cpu_fallback_reason.as_deref().is_some_and(|w| w.contains("no CUDA-capable device")), "{r:?}");
        // CUDA iGPUs are kept by default (filterIntegratedGPUs): only a false OLLAMA_IGPU_ENABLE drops one.
        let dropped = r#"time=2026-09-20T10:00:01.000+02:00 level=INFO source=runner.go:300 msg="dropping integrated GPU; to enable, set OLLAMA_IGPU_ENABLE=1" id=GPU-2f6a library=CUDA compute=8.7 name=CUDA0 description=Orin pci_id=0000:00:00.0"#;
        let r = analyze_on(&[dropped, CPU], ORIN, &host(Some(true)));
        assert!(r.cpu_fallback_reason.as_deref().is_some_and(|w| w.contains("OLLAMA_IGPU_ENABLE is set to a false value")), "{r:?}");
        // Nothing in the log: the disk says the libraries are missing...
        let r = analyze_on(&[CPU], ORIN, &host(Some(false)));
        assert!(r.cpu_fallback_reason.as_deref().is_some_and(|w| w.contains("missing on disk")), "{r:?}");
        assert_eq!(r.evidence.as_deref(), Some("disk: /usr/local/lib/ollama/cuda_jetpack6 is missing"));
        // ... or they are there, and the cause is not in the log at this level: said so, with the way to see it.
        let r = analyze_on(&[CPU], ORIN, &host(Some(true)));
        let why = r.cpu_fallback_reason.expect("reason");
        assert!(why.contains("does not say why") && why.contains("OLLAMA_DEBUG=2") && why.contains("libraries are on disk"), "{why}");
        assert!(r.evidence.as_deref().is_some_and(|e| e.starts_with("none:")));
        // On the GPU: no cause, no evidence.
        assert_eq!(analyze_on(&[NEW], ORIN, &host(Some(true))).evidence, None);
    }

    #[test]
    fn only_the_latest_start_counts() {
        let start = r#"time=2026-05-01T10:00:00.000+02:00 level=INFO source=routes.go:1544 msg="server config" env="map[]""#;
        let listen = r#"time=2026-05-01T10:00:00.001+02:00 level=INFO source=routes.go:1597 msg="Listening on 127.0.0.1:11434 (version 0.30.6)""#;
        let r = analyze(&[start, listen, NEW, start, listen, CPU], ORIN, None);
        assert!(!r.gpu, "the second start fell back to CPU");
        assert_eq!(r.ollama_version.as_deref(), Some("0.30.6"));
        let r = analyze(&[start, listen, CPU, start, listen], ORIN, None);
        assert!(!r.discovered, "discovery of the current start has not happened yet");
    }

    /// Found by the ollama_log fuzz target: a `failed to initialize CUDA` line of any length went
    /// whole into the verdict (and STATUS=, status); now clipped like every other value.
    #[test]
    fn a_huge_cuda_failure_line_is_clipped_in_the_verdict() {
        let line = format!("ggml_cuda_init: failed to initialize CUDA: {}", "x".repeat(20_000));
        let r = analyze(&[line.as_str(), CPU], ORIN, None);
        assert!(r.cpu_fallback_reason.as_deref().is_some_and(|w| w.chars().count() < 1000 && w.contains("[truncated]")), "{:?}", r.cpu_fallback_reason.map(|w| w.len()));
    }

    #[test]
    fn oom_and_offload() {
        let r = analyze(&[NEW, "load_tensors: offloaded 37/37 layers to GPU", "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 180.00 MiB on device 0: cudaMalloc failed: out of memory"], ORIN, None);
        assert!(r.gpu && r.oom);
        assert_eq!(r.offloaded, Some((37, 37)));
    }

    proptest::proptest! {
        #[test]
        fn hostile_lines_never_panic(lines in proptest::collection::vec("(\\PC|[=\" \\\\\u{1b}\r\t\\[]){0,120}", 0..8)) {
            let mut ls = lines.clone();
            ls.push(format!("msg=\"inference compute\" {}", lines.first().cloned().unwrap_or_default()));
            let r = analyze(&ls, ORIN, Some("cma=x"));
            proptest::prop_assert!(!r.gpu || r.compute.as_deref() == Some("8.7"));
            for l in &ls {
                let _ = logfmt(l);
                let clean = !sanitize(l).contains('\u{1b}');
                proptest::prop_assert!(clean, "escape left in {:?}", l);
            }
        }
    }

    #[test]
    fn sanitize_strips_escapes() {
        assert_eq!(sanitize("a\u{1b}[31mred\u{1b}[0m\u{7}b"), "aredb");
    }
}
