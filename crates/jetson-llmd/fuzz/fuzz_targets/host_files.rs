//! /proc and /sys files and /etc/nv_tegra_release as the board's probes read them: never a
//! panic, whatever a kernel (or a fixture) writes.
#![no_main]
use jetson_llmd::host::probe;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = probe::l4t(&text);
    let _ = probe::swaps(&text);
    let _ = probe::largest_free_block_kb(&text);
    let _ = probe::pswpin(&text);
    let _ = probe::temperature(&text);
    let _ = jetson_llmd::host::memory::meminfo(&text);
});
