//! What the host says about itself, read under `--root` with bounded reads. Every reading that
//! does not exist on this machine is None ("n/a"), never a guess.

use super::fs::{self, cap};
use super::memory::{meminfo, MemoryInfo};
use super::rooted;
use serde::Serialize;
use std::path::Path;

#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Probes {
    // (jetson_clocks pins the GPU clock by raising min_freq to max_freq: see clocks_pinned.)
    /// /proc/device-tree/model, e.g. "NVIDIA Jetson Orin Nano Developer Kit".
    pub board: Option<String>,
    /// L4T major release from /etc/nv_tegra_release (36 = JetPack 6).
    pub l4t_release: Option<u32>,
    pub l4t_revision: Option<String>,
    pub cmdline: Option<String>,
    pub memory: MemoryInfo,
    /// Active swap devices (/proc/swaps): (device, on eMMC).
    pub swaps: Vec<Swap>,
    /// /proc/swaps could be read (empty `swaps` then means no swap, not no data).
    pub swaps_known: bool,
    /// Thermal zones by type, in degrees C; None where the sensor gives no data.
    pub thermal: Vec<(String, Option<f64>)>,
    /// GPU load in per-mille (devfreq of 17000000.gpu).
    pub gpu_load_permille: Option<u32>,
    pub gpu_cur_freq_hz: Option<u64>,
    pub gpu_max_freq_hz: Option<u64>,
    pub gpu_min_freq_hz: Option<u64>,
    /// nvpmodel's power mode id, from its status file.
    pub power_mode: Option<String>,
    /// /proc/vmstat pswpin: pages swapped in since boot.
    pub pswpin: Option<u64>,
    /// The largest free block in kB (/proc/buddyinfo, tegrastats' "lfb"); 4 KiB pages assumed,
    /// as JetPack's kernels use.
    pub largest_free_block_kb: Option<u64>,
    /// lib/ollama/cuda_jetpack6 present under /usr/local.
    pub ollama_jetpack6_libs: bool,
    pub ollama_bin: bool,
    pub units_installed: bool,
    pub unit_enabled: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Swap {
    pub device: String,
    pub size_kb: u64,
    pub used_kb: u64,
    /// On the board's eMMC (mmcblk): the seed's cliff.
    pub on_emmc: bool,
}

fn text(root: &Path, path: &str) -> Option<String> {
    fs::read_capped_blocking(&rooted(root, Path::new(path)), cap::PROC).ok().map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn exists(root: &Path, path: &str) -> bool {
    std::fs::symlink_metadata(rooted(root, Path::new(path))).is_ok()
}

/// `# R36 (release), REVISION: 4.7, ...` -> (36, "4.7").
pub fn l4t(text: &str) -> Option<(u32, Option<String>)> {
    let first = text.lines().next()?;
    let r = first.split_whitespace().find_map(|w| w.strip_prefix('R').and_then(|n| n.parse::<u32>().ok()))?;
    let rev = first.split("REVISION:").nth(1).and_then(|s| s.split(',').next()).map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
    Some((r, rev))
}

/// /proc/buddyinfo: `Node 0, zone Normal c0 c1 ... c10`, free blocks of 2^order pages; the
/// largest order with a free block, over all zones, in kB.
pub fn largest_free_block_kb(text: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| {
            let counts = l.split_once("zone")?.1.split_whitespace().skip(1);
            counts.enumerate().filter(|(_, c)| c.parse::<u64>().is_ok_and(|n| n > 0)).map(|(order, _)| 4u64 << order.min(30)).max()
        })
        .max()
}

/// /proc/swaps lines after the header.
pub fn swaps(text: &str) -> Vec<Swap> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (device, size, used) = (f.first()?, f.get(2)?.parse().ok()?, f.get(3)?.parse().ok()?);
            Some(Swap { device: crate::text::clip(device, 100), size_kb: size, used_kb: used, on_emmc: device.contains("mmcblk") })
        })
        .collect()
}

impl Probes {
    /// jetson_clocks has pinned the GPU clock (devfreq min_freq raised to max_freq).
    pub fn clocks_pinned(&self) -> Option<bool> {
        Some(self.gpu_min_freq_hz? == self.gpu_max_freq_hz?)
    }
}

/// `pswpin N` from /proc/vmstat.
pub fn pswpin(text: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix("pswpin ")?.trim().parse().ok())
}

/// A thermal `temp` file: millidegrees; empty, invalid or -256 C is no data.
pub fn temperature(text: &str) -> Option<f64> {
    let m: i64 = text.trim().parse().ok()?;
    let c = m as f64 / 1000.0;
    (c > -200.0 && c < 200.0).then_some(c)
}

/// One sample of the board, read in one blocking task: a dozen small /proc and /sys files,
/// one thread hop for all of them instead of one each (the monitor samples every 10 s for as
/// long as the board runs).
pub async fn gather(root: &Path) -> Probes {
    let r = root.to_path_buf();
    tokio::task::spawn_blocking(move || gather_blocking(&r)).await.unwrap_or_default()
}

fn gather_blocking(root: &Path) -> Probes {
    let mut p = Probes {
        board: text(root, "/proc/device-tree/model").map(|t| crate::text::clip(t.trim_end_matches('\0').trim(), 200)).filter(|t| !t.is_empty()),
        cmdline: text(root, "/proc/cmdline").map(|t| crate::text::clip(t.trim(), 4000)),
        memory: text(root, "/proc/meminfo").map(|t| meminfo(&t)).unwrap_or_default(),

        ollama_jetpack6_libs: exists(root, "/usr/local/lib/ollama/cuda_jetpack6"),
        ollama_bin: exists(root, "/usr/local/bin/ollama"),
        units_installed: exists(root, "/etc/systemd/system/jetson-llmd.service"),
        unit_enabled: exists(root, "/etc/systemd/system/multi-user.target.wants/jetson-llmd.service"),
        ..Default::default()
    };
    // Read once: an empty list then means no swap, a missing file no data.
    if let Some(t) = text(root, "/proc/swaps") {
        p.swaps = swaps(&t);
        p.swaps_known = true;
    }
    p.pswpin = text(root, "/proc/vmstat").as_deref().and_then(pswpin);
    p.largest_free_block_kb = text(root, "/proc/buddyinfo").as_deref().and_then(largest_free_block_kb);
    if let Some((r, rev)) = text(root, "/etc/nv_tegra_release").as_deref().and_then(l4t) {
        p.l4t_release = Some(r);
        p.l4t_revision = rev;
    }
    for i in 0..32 {
        let Some(kind) = text(root, &format!("/sys/class/thermal/thermal_zone{i}/type")) else { break };
        let t = text(root, &format!("/sys/class/thermal/thermal_zone{i}/temp")).as_deref().and_then(temperature);
        p.thermal.push((crate::text::clip(kind.trim(), 40), t));
    }
    let gpu = "/sys/class/devfreq/17000000.gpu";
    p.gpu_load_permille = text(root, &format!("{gpu}/device/load")).and_then(|t| t.trim().parse().ok());
    p.gpu_cur_freq_hz = text(root, &format!("{gpu}/cur_freq")).and_then(|t| t.trim().parse().ok());
    p.gpu_max_freq_hz = text(root, &format!("{gpu}/max_freq")).and_then(|t| t.trim().parse().ok());
    p.gpu_min_freq_hz = text(root, &format!("{gpu}/min_freq")).and_then(|t| t.trim().parse().ok());
    // nvpmodel keeps its state as e.g. "pmode:0000 fmode:normal".
    p.power_mode = text(root, "/var/lib/nvpmodel/status").and_then(|t| t.split_whitespace().find_map(|w| w.strip_prefix("pmode:").map(|m| crate::text::clip(m, 20))));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers_take_odd_input_without_guessing() {
        assert_eq!(l4t("# R36 (release), REVISION: 4.7, GCID: 42132812, BOARD: generic, EABI: aarch64\n"), Some((36, Some("4.7".into()))));
        assert_eq!(l4t("# R35 (release)\n"), Some((35, None)));
        assert_eq!(l4t("garbage"), None);
        let buddy = "Node 0, zone      DMA      3      2      1      0      0      1      0      0      0      0      0\nNode 0, zone   Normal    120     45      9      3      0      0      0      0      0      0      0\n";
        assert_eq!(largest_free_block_kb(buddy), Some(128), "order 5 in DMA: 32 pages of 4 KiB");
        assert_eq!(largest_free_block_kb("Node 0, zone Normal 0 0 0\n"), None);
        assert_eq!(largest_free_block_kb(""), None);
        assert_eq!(largest_free_block_kb("garbage\nNode 0, zone Normal x y\n"), None);
        assert_eq!(l4t(""), None);
        let s = swaps("Filename Type Size Used Priority\n/dev/mmcblk0p15 partition 3900000 1200 -2\n/dev/zram0 partition 1900000 0 5\n");
        assert_eq!(s.len(), 2);
        assert!(s[0].on_emmc && !s[1].on_emmc);
        assert_eq!(s[0].used_kb, 1200);
        assert_eq!(temperature("51218\n"), Some(51.218));
        assert_eq!(temperature("-256000"), None, "offline sensor");
        assert_eq!(temperature(""), None);
        assert_eq!(temperature("N/A"), None);
        assert_eq!(pswpin("pgpgin 5\npswpin 1234\npswpout 9\n"), Some(1234));
        assert_eq!(pswpin("pgpgin 5\n"), None);
    }
}
