//! `jetson-llmd doctor`: every host check that decides whether the model can stay warm on the
//! GPU, each PASS/WARN/FAIL with one line of why and one of what to do.

use crate::host::probe::Probes;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Verdict {
    Pass,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Check {
    pub name: &'static str,
    pub verdict: Verdict,
    pub reason: String,
    /// What to do (empty when nothing).
    pub fix: String,
}

/// What doctor knows besides the host files.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// Ollama's version, when its API answered.
    pub ollama_version: Option<String>,
    /// OLLAMA_HOST's client address is loopback (or an unspecified bind reached on loopback).
    pub ollama_bound_to_lan: bool,
    /// The configured model's measured footprint (fit table), bytes.
    pub model_footprint: Option<u64>,
    pub model: Option<String>,
    /// config.toml's temperature_warn_c (None: its default, 85).
    pub temperature_warn_c: Option<u32>,
}

/// Ollama below this has known CVEs (CVE-2024-37032 fixed 0.1.34, CVE-2026-7482 fixed 0.17.1).
pub const VERSION_FLOOR: (u64, u64, u64) = (0, 17, 1);

fn check(name: &'static str, verdict: Verdict, reason: impl Into<String>, fix: impl Into<String>) -> Check {
    Check { name, verdict, reason: reason.into(), fix: fix.into() }
}

fn version(v: &str) -> Option<(u64, u64, u64)> {
    let mut it = v.trim_start_matches('v').split(['.', '-']).map(|p| p.parse::<u64>());
    Some((it.next()?.ok()?, it.next()?.ok()?, it.next().and_then(Result::ok).unwrap_or(0)))
}

/// The checks, in the order a person would fix things.
pub fn checks(p: &Probes, c: &Context) -> Vec<Check> {
    use Verdict::*;
    let mut out = Vec::new();
    out.push(match &p.board {
        Some(b) if b.contains("Orin") => check("board", Pass, b.clone(), ""),
        Some(b) => check("board", Warn, format!("{b}: not an Orin; jetson-llmd is made for the Orin Nano 8 GB"), ""),
        None => check("board", Warn, "no /proc/device-tree/model: not a Jetson", "run this on the Jetson"),
    });
    out.push(match p.l4t_release {
        Some(36) => check("jetpack", Pass, format!("L4T R36{} (JetPack 6)", p.l4t_revision.as_deref().map(|r| format!(".{r}")).unwrap_or_default()), ""),
        Some(35) => check("jetpack", Warn, "L4T R35 (JetPack 5): Ollama uses its jetpack5 libraries; this tool targets JetPack 6", "upgrade to JetPack 6 when you can"),
        Some(r) if r >= 38 => check("jetpack", Fail, format!("L4T R{r}: Ollama maps it to cuda_v13, not the JetPack 6 libraries this tool checks for"), "use JetPack 6 (L4T R36)"),
        Some(r) => check("jetpack", Fail, format!("L4T R{r}: too old for Ollama's Jetson builds"), "upgrade to JetPack 6"),
        None => check("jetpack", Warn, "no /etc/nv_tegra_release", "run this on the Jetson"),
    });
    out.push(match (p.ollama_bin, p.ollama_jetpack6_libs) {
        (true, true) => check("ollama-libs", Pass, "/usr/local/bin/ollama and lib/ollama/cuda_jetpack6 are installed", ""),
        (true, false) => check("ollama-libs", Fail, "lib/ollama/cuda_jetpack6 is missing: Ollama will run on the CPU while looking healthy", "install Ollama's ollama-linux-arm64-jetpack6.tar.zst into /usr/local"),
        (false, _) => check("ollama-libs", Fail, "/usr/local/bin/ollama is missing", "install Ollama's arm64 and jetpack6 tarballs into /usr/local"),
    });
    let cma = p.cmdline.as_deref().is_some_and(|c| c.split_whitespace().any(|w| w.starts_with("cma=")));
    out.push(match (&p.cmdline, cma) {
        (_, true) => check("cma", Fail, "the kernel command line sets cma=: it breaks CUDA on Jetson", "remove cma= from /boot/extlinux/extlinux.conf and reboot"),
        (Some(_), false) => check("cma", Pass, "no cma= on the kernel command line", ""),
        (None, false) => check("cma", Warn, "no /proc/cmdline to read", ""),
    });
    let emmc: Vec<&str> = p.swaps.iter().filter(|s| s.on_emmc).map(|s| s.device.as_str()).collect();
    out.push(if !emmc.is_empty() {
        check("swap", Warn, format!("swap on eMMC ({}): once a model spills into it, 17 tok/s become under 2", emmc.join(", ")), "prefer zram or NVMe swap, and a model that fits")
    } else if !p.swaps_known {
        check("swap", Warn, "no data: /proc/swaps cannot be read", "")
    } else if p.swaps.is_empty() {
        check("swap", Warn, "no swap: a model that does not fit is killed instead of slowed", "add zram (or NVMe) swap as a safety net")
    } else {
        check("swap", Pass, format!("swap on {}", p.swaps.iter().map(|s| s.device.as_str()).collect::<Vec<_>>().join(", ")), "")
    });
    use crate::ollama::fit::gib;
    out.push(match (p.memory.mem_total_kb, p.memory.mem_available_kb, c.model_footprint) {
        (Some(t), _, Some(f)) if f > t * 1024 => check("headroom", Fail, format!("{} needs {} (measured) of {} in all", c.model.as_deref().unwrap_or("the model"), gib(f), gib(t * 1024)), "use a smaller model or num_ctx"),
        (_, Some(a), _) if a < 1 << 20 => check("headroom", Warn, format!("only {} available", gib(a * 1024)), "stop other memory users (a desktop session, containers)"),
        (_, Some(a), f) => check("headroom", Pass, format!("{} available{}", gib(a * 1024), f.map(|f| format!("; the model takes {} (measured)", gib(f))).unwrap_or_default()), ""),
        _ => check("headroom", Warn, "no /proc/meminfo", ""),
    });
    let warn_at = f64::from(c.temperature_warn_c.unwrap_or(85));
    let hottest = p.thermal.iter().filter_map(|(zone, t)| t.map(|t| (zone.as_str(), t))).fold(None, |m: Option<(&str, f64)>, (z, t)| if m.is_none_or(|(_, mt)| t > mt) { Some((z, t)) } else { m });
    out.push(match hottest {
        Some((zone, t)) if t >= warn_at => check("thermal", Warn, format!("{zone} at {t:.1} C (warning at {warn_at:.0} C): the board throttles, and tokens/s drop"), "check the fan and its airflow; a lower power mode (nvpmodel) runs cooler"),
        Some((zone, t)) => check("thermal", Pass, format!("hottest zone {zone} at {t:.1} C"), ""),
        None => check("thermal", Warn, "no data: no thermal zone gives a temperature", ""),
    });
    out.push(if c.ollama_bound_to_lan {
        check(
            "ollama-host",
            Warn,
            "OLLAMA_HOST serves the LAN: any client there can evict or reload the model",
            "keep Ollama on 127.0.0.1 and let the guard serve the LAN: [guard] enabled = true, listen = \"0.0.0.0:11434\" (sudo jetson-llmd install sets this up)",
        )
    } else {
        check("ollama-host", Pass, "Ollama on loopback", "")
    });
    out.push(match c.ollama_version.as_deref().map(|v| (v, version(v))) {
        Some((v, Some(n))) if n < VERSION_FLOOR => check("ollama-version", Fail, format!("Ollama {v} has known security holes (fixed in 0.17.1)"), "upgrade Ollama"),
        Some((v, _)) => check("ollama-version", Pass, format!("Ollama {v}"), ""),
        None => check("ollama-version", Warn, "Ollama's API did not answer", "sudo systemctl start jetson-llmd"),
    });
    out.push(match (&p.power_mode, p.clocks_pinned()) {
        (Some(m), pinned) => check(
            "power-mode",
            Pass,
            format!(
                "nvpmodel mode {m}{}",
                match pinned {
                    Some(true) => ", clocks pinned (jetson_clocks)",
                    Some(false) => ", clocks not pinned (sudo jetson_clocks for steadier tok/s)",
                    None => "",
                }
            ),
            "",
        ),
        (None, _) => check("power-mode", Warn, "no nvpmodel status: power mode unknown", "sudo nvpmodel -q"),
    });
    // 624.75 MHz is the Orin Nano's GPU cap without the Super device tree and firmware.
    out.push(match p.gpu_max_freq_hz {
        Some(f) if f <= 624_750_000 && p.board.as_deref().is_some_and(|b| b.contains("Super")) => check("gpu-clock", Warn, format!("GPU capped at {:.2} MHz on a Super board", f as f64 / 1e6), "flash the Super device tree and JetPack 6.2 firmware"),
        Some(f) => check("gpu-clock", Pass, format!("GPU max {:.2} MHz", f as f64 / 1e6), ""),
        None => check("gpu-clock", Warn, "no GPU devfreq (17000000.gpu)", ""),
    });
    out.push(match (p.units_installed, p.unit_enabled) {
        (true, true) => check("units", Pass, "jetson-llmd.service installed and enabled", ""),
        (true, false) => check("units", Warn, "jetson-llmd.service is installed but not enabled: nothing warms the model after a reboot", "sudo systemctl enable jetson-llmd"),
        (false, _) => check("units", Fail, "jetson-llmd.service is not installed", "sudo jetson-llmd install (it writes the units and enables jetson-llmd.service)"),
    });
    out
}

/// The human rendering: one line per check, the fix under it.
pub fn render(checks: &[Check]) -> String {
    let mut o = String::new();
    for c in checks {
        let v = match c.verdict {
            Verdict::Pass => "PASS",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        };
        o.push_str(&format!("{v}  {:<15} {}\n", c.name, crate::text::clean(&c.reason)));
        if !c.fix.is_empty() && c.verdict != Verdict::Pass {
            o.push_str(&format!("      {:<15} -> {}\n", "", crate::text::clean(&c.fix)));
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::probe::gather;

    fn write(root: &std::path::Path, path: &str, text: &str) {
        let p = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, text).expect("w");
    }

    #[tokio::test]
    async fn a_healthy_and_a_broken_board() {
        let ok = tempfile::tempdir().expect("tmp");
        let r = ok.path();
        write(r, "/proc/device-tree/model", "NVIDIA Jetson Orin Nano Developer Kit\0");
        write(r, "/etc/nv_tegra_release", "# R36 (release), REVISION: 4.7, GCID: 42132812, BOARD: generic, EABI: aarch64\n");
        write(r, "/proc/cmdline", "root=/dev/mmcblk0p1 rw rootwait console=ttyTCU0\n");
        write(r, "/proc/meminfo", "MemTotal: 7800000 kB\nMemAvailable: 5200000 kB\nCmaTotal: 262144 kB\nCmaFree: 200000 kB\n");
        write(r, "/proc/swaps", "Filename Type Size Used Priority\n/dev/zram0 partition 1900000 0 5\n");
        write(r, "/sys/class/thermal/thermal_zone0/type", "cpu-thermal\n");
        write(r, "/sys/class/thermal/thermal_zone0/temp", "51218\n");
        write(r, "/sys/class/thermal/thermal_zone1/type", "gpu-thermal\n");
        write(r, "/sys/class/thermal/thermal_zone1/temp", "-256000\n");
        write(r, "/sys/class/devfreq/17000000.gpu/max_freq", "1020000000\n");
        write(r, "/var/lib/nvpmodel/status", "pmode:0002 fmode:quiet\n");
        write(r, "/usr/local/bin/ollama", "");
        write(r, "/usr/local/lib/ollama/cuda_jetpack6/libggml-cuda.so", "");
        write(r, "/etc/systemd/system/jetson-llmd.service", "");
        write(r, "/etc/systemd/system/multi-user.target.wants/jetson-llmd.service", "");
        let p = gather(r).await;
        assert_eq!(p.thermal, vec![("cpu-thermal".to_string(), Some(51.218)), ("gpu-thermal".to_string(), None)]);
        let c = Context { ollama_version: Some("0.30.6".into()), model_footprint: Some(3_865_470_566), model: Some("gemma4:e2b-8k".into()), ..Default::default() };
        let good = checks(&p, &c);
        assert!(good.iter().all(|c| c.verdict == Verdict::Pass), "{good:#?}");
        insta::assert_snapshot!("healthy", render(&good));

        let bad = tempfile::tempdir().expect("tmp");
        let r = bad.path();
        write(r, "/proc/device-tree/model", "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super\0");
        write(r, "/etc/nv_tegra_release", "# R38 (release), REVISION: 2.0\n");
        write(r, "/proc/cmdline", "root=/dev/mmcblk0p1 cma=800M\n");
        write(r, "/proc/meminfo", "MemTotal: 7800000 kB\nMemAvailable: 700000 kB\n");
        write(r, "/proc/swaps", "Filename Type Size Used Priority\n/dev/mmcblk0p15 partition 3900000 1200 -2\n");
        write(r, "/sys/class/devfreq/17000000.gpu/max_freq", "624750000\n");
        write(r, "/usr/local/bin/ollama", "");
        write(r, "/etc/systemd/system/jetson-llmd.service", "");
        let p = gather(r).await;
        let c = Context { ollama_version: Some("0.16.3".into()), ollama_bound_to_lan: true, ..Default::default() };
        let broken = checks(&p, &c);
        assert!(broken.iter().any(|c| c.verdict == Verdict::Fail));
        insta::assert_snapshot!("broken", render(&broken));
    }

    #[tokio::test]
    async fn a_hot_board_is_a_warning() {
        let d = tempfile::tempdir().expect("tmp");
        write(d.path(), "/sys/class/thermal/thermal_zone0/type", "cpu-thermal\n");
        write(d.path(), "/sys/class/thermal/thermal_zone0/temp", "61000\n");
        write(d.path(), "/sys/class/thermal/thermal_zone1/type", "gpu-thermal\n");
        write(d.path(), "/sys/class/thermal/thermal_zone1/temp", "93000\n");
        let p = gather(d.path()).await;
        let out = checks(&p, &Context::default());
        let t = out.iter().find(|c| c.name == "thermal").expect("thermal check");
        assert_eq!(t.verdict, Verdict::Warn, "{t:?}");
        assert!(t.reason.starts_with("gpu-thermal at 93.0 C"), "{t:?}");
        let cool = checks(&p, &Context { temperature_warn_c: Some(95), ..Default::default() });
        assert_eq!(cool.iter().find(|c| c.name == "thermal").map(|c| c.verdict), Some(Verdict::Pass));
    }

    #[tokio::test]
    async fn missing_proc_swaps_is_no_data_and_missing_units_point_at_install() {
        let d = tempfile::tempdir().expect("tmp");
        let p = gather(d.path()).await;
        let out = checks(&p, &Context::default());
        let swap = out.iter().find(|c| c.name == "swap").expect("swap check");
        assert!(swap.reason.starts_with("no data"), "{swap:?}");
        let units = out.iter().find(|c| c.name == "units").expect("units check");
        assert!(units.fix.contains("jetson-llmd install"), "{units:?}");
    }

    #[test]
    fn versions() {
        assert_eq!(version("0.30.6"), Some((0, 30, 6)));
        assert_eq!(version("0.33.0-rc2"), Some((0, 33, 0)));
        assert!(version("0.17.0").expect("v") < VERSION_FLOOR);
        assert_eq!(version("garbage"), None);
    }
}
