//! The supervisor's watch on the board (the seed's jtop/tegrastats routine, automated): swap-ins
//! (the eMMC cliff), MemAvailable under the reserve, temperatures past a threshold, and the
//! Super board's capped GPU clock. Each condition is a warning once per episode: said when it
//! starts, said again when it clears, shown in `status` while it lasts.

use crate::host::probe::Probes;
use std::collections::BTreeMap;

/// Thresholds (config.toml).
#[derive(Debug, Clone)]
pub struct Limits {
    pub reserve_bytes: u64,
    pub temperature_c: f64,
}

/// What is wrong now, keyed by condition, with words.
pub fn conditions(prev: Option<&Probes>, now: &Probes, limits: &Limits) -> BTreeMap<&'static str, String> {
    let mut c = BTreeMap::new();
    if let (Some(a), Some(b)) = (prev.and_then(|p| p.pswpin), now.pswpin) {
        if b > a {
            c.insert("swap-in", format!("{} pages swapped in since the last sample: generation slows from ~17 to under 2 tok/s when the model spills to eMMC swap; use a smaller model or num_ctx", b - a));
        }
    }
    if let Some(a) = now.memory.mem_available_kb {
        if a * 1024 < limits.reserve_bytes {
            c.insert("memory", format!("MemAvailable {} MiB is under the reserve of {} MiB", a / 1024, limits.reserve_bytes >> 20));
        }
    }
    let hot: Vec<String> = now.thermal.iter().filter_map(|(n, t)| t.filter(|t| *t >= limits.temperature_c).map(|t| format!("{n} {t:.1} C"))).collect();
    if !hot.is_empty() {
        c.insert("temperature", format!("{} at or above {:.0} C: the board throttles; check the fan and airflow", hot.join(", "), limits.temperature_c));
    }
    if now.gpu_max_freq_hz.is_some_and(|f| f <= 624_750_000) && now.board.as_deref().is_some_and(|b| b.contains("Super")) {
        c.insert("gpu-clock", "the GPU is capped at 624.75 MHz on a Super board: flash the Super device tree and JetPack 6.2 firmware".into());
    }
    c
}

/// After a reload of the same model: has memory become more fragmented than after the load
/// before? The seed's lesson is that unload/reload cycles leave GPU memory unallocatable until
/// drop_caches or a reboot; a shrinking largest free block or CmaFree is the early sign.
pub fn fragmentation(after_previous_load: &Probes, after_this_load: &Probes) -> Option<String> {
    let mut why = Vec::new();
    if let (Some(a), Some(b)) = (after_previous_load.largest_free_block_kb, after_this_load.largest_free_block_kb) {
        if b * 2 <= a {
            why.push(format!("the largest free block shrank from {} to {} kB", a, b));
        }
    }
    if let (Some(a), Some(b)) = (after_previous_load.memory.cma_free_kb, after_this_load.memory.cma_free_kb) {
        if a > 0 && b * 10 < a * 9 {
            why.push(format!("CmaFree fell from {} to {} MiB", a / 1024, b / 1024));
        }
    }
    (!why.is_empty()).then(|| format!("after reloading the model, {}: memory is fragmenting; if loads start failing, reboot", why.join(" and ")))
}

/// Keeps the episodes: returns the warnings that started and the conditions that cleared.
#[derive(Debug, Default)]
pub struct Episodes {
    active: BTreeMap<&'static str, String>,
}

impl Episodes {
    pub fn update(&mut self, now: BTreeMap<&'static str, String>) -> (Vec<String>, Vec<&'static str>) {
        let started: Vec<String> = now.iter().filter(|(k, _)| !self.active.contains_key(*k)).map(|(_, v)| v.clone()).collect();
        let cleared: Vec<&'static str> = self.active.keys().filter(|k| !now.contains_key(*k)).copied().collect();
        self.active = now;
        (started, cleared)
    }

    /// The warnings that hold now, for `status`.
    pub fn current(&self) -> impl Iterator<Item = &String> {
        self.active.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragmentation_after_a_reload() {
        let p = |lfb: u64, cma_free: u64| Probes { largest_free_block_kb: Some(lfb), memory: crate::host::memory::meminfo(&format!("CmaTotal: 262144 kB\nCmaFree: {cma_free} kB\n")), ..Default::default() };
        assert_eq!(fragmentation(&p(4096, 200_000), &p(4096, 198_000)), None, "noise is not a warning");
        let w = fragmentation(&p(4096, 200_000), &p(1024, 150_000)).expect("warns");
        assert!(w.contains("4096 to 1024 kB") && w.contains("CmaFree fell from 195 to 146 MiB"), "{w}");
        assert_eq!(fragmentation(&Probes::default(), &p(4, 0)), None, "no reading before: no guess");
    }

    #[test]
    fn each_condition_once_per_episode() {
        let limits = Limits { reserve_bytes: 512 << 20, temperature_c: 85.0 };
        let p = |swap: u64, avail_kb: u64, temp: Option<f64>| Probes { pswpin: Some(swap), memory: crate::host::memory::meminfo(&format!("MemAvailable: {avail_kb} kB\n")), thermal: vec![("gpu-thermal".into(), temp)], ..Default::default() };
        let mut e = Episodes::default();
        let (s, c) = e.update(conditions(None, &p(100, 4_000_000, Some(50.0)), &limits));
        assert!(s.is_empty() && c.is_empty());
        let (s, _) = e.update(conditions(Some(&p(100, 4_000_000, Some(50.0))), &p(150, 400_000, Some(90.0)), &limits));
        assert_eq!(s.len(), 3, "{s:?}");
        assert!(s.iter().any(|w| w.starts_with("50 pages swapped in")));
        let (s, c) = e.update(conditions(Some(&p(150, 400_000, Some(90.0))), &p(160, 400_000, None), &limits));
        assert!(s.is_empty(), "already said: {s:?}");
        assert_eq!(c, ["temperature"], "an offline sensor is not hot");
        let (_, c) = e.update(conditions(Some(&p(160, 400_000, None)), &p(160, 4_000_000, None), &limits));
        assert_eq!(c, ["memory", "swap-in"]);
        assert_eq!(e.current().count(), 0);
    }
}
