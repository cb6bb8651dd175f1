//! The log lines `ollama serve` prints at start: the server config and GPU discovery (follows
//! server/routes.go Serve and discover/types.go LogDetails).

use super::{version_at_least, version_at_least_patch};
use crate::golang::human_bytes2;
use crate::{CpuReason, Emulator, LogFormat};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// The lines `ollama serve` prints at start (server/routes.go Serve, discover/).
pub(super) fn startup_log(emu: &Arc<Emulator>, addr: SocketAddr) {
    let c = &emu.config;
    emu.log(
        "INFO",
        "routes.go:1544",
        "server config",
        &format!(
            "env=\"map[OLLAMA_CONTEXT_LENGTH:{} OLLAMA_HOST:http://{} OLLAMA_KEEP_ALIVE:{} OLLAMA_MAX_LOADED_MODELS:{} OLLAMA_NUM_PARALLEL:{}]\"",
            // envconfig.ContextLength: 0 (unset) means "pick by VRAM" since v0.12; the dump shows 0.
            c.context_length_env,
            addr,
            c.default_keep_alive.go_string(),
            c.max_loaded,
            c.num_parallel
        ),
    );
    emu.log("INFO", "routes.go:1597", &format!("Listening on {addr} (version {})", c.profile.version), "");
}

/// How long GPU discovery takes on the board before `time_scale`.
pub(super) const DISCOVERY_TIME: Duration = Duration::from_millis(1500);

/// discover/types.go LogDetails (v0.30.6): one `inference compute` line per device, with
/// `filter_id` right after `id` (an empty value prints as `filter_id=""`; since v0.30 the id is
/// the device index), or one CPU line, without filter_id, when there is none.
pub(super) fn discovery_log(emu: &Emulator) {
    let c = &emu.config;
    let total = human_bytes2(c.profile.total_memory);
    let gpu = c.profile.gpu.as_ref().filter(|_| c.cpu_only.is_none());
    emu.log("INFO", "runner.go:67", "discovering available GPUs...", "");
    match (gpu, c.log_format) {
        (Some(g), LogFormat::Current) => emu.log(
            "INFO",
            "types.go:60",
            "inference compute",
            &format!(
                "id={} filter_id=\"\" library=CUDA compute={} name={} description={} libdirs={} driver={} pci_id={} type={} total=\"{}\" available=\"{}\"",
                if version_at_least(&c.profile.version, 0, 30) { "0" } else { g.id.as_str() },
                g.compute,
                g.name,
                g.description,
                g.libdirs,
                g.driver,
                g.pci_id,
                g.kind,
                total,
                human_bytes2(c.profile.gpu_available)
            ),
        ),
        (Some(g), LogFormat::Legacy) => emu.log(
            "INFO",
            "types.go:107",
            "inference compute",
            &format!("id={} library=cuda variant=jetpack6 compute={} driver={} name={} total=\"{}\" available=\"{}\"", g.id, g.compute, g.driver, g.description, total, human_bytes2(c.profile.gpu_available)),
        ),
        (None, fmt) => {
            // v0.30+ discards the discovery subprocess's output unless the log level is trace
            // (discover/llama_server.go llamaServerDiscoveryOutput; OLLAMA_DEBUG=2): at the
            // default level the cause of a CPU fallback is not in the log at all.
            if c.cpu_only == Some(CpuReason::CudaInit) && (!version_at_least(&c.profile.version, 0, 30) || c.debug_level >= 2) {
                emu.raw_log("ggml_cuda_init: failed to initialize CUDA: system has unsupported display driver / cuda driver combination".into());
            }
            // v0.31.2+ without cuda_jetpack6 tries the generic CUDA builds (discover/runner.go
            // GPUDevices); cuda_v12's architectures have no 87, so it skips the Orin, at INFO.
            if c.cpu_only == Some(CpuReason::MissingLibs) && version_at_least_patch(&c.profile.version, 0, 31, 2) && fmt == LogFormat::Current {
                if let Some(g) = c.profile.gpu.as_ref() {
                    emu.log(
                        "INFO",
                        "runner.go:210",
                        "skipping CUDA device — compute capability not in compiled architectures",
                        &format!("device={} cc={} archs=\"50-virtual;52-virtual;60;61;70;75;80;86;89;90;90a;120\" libDirs=cuda_v12", g.description, g.compute),
                    );
                }
            }
            if fmt == LogFormat::Legacy {
                emu.log("INFO", "gpu.go:377", "no compatible GPUs were discovered", "");
                emu.log("INFO", "types.go:130", "inference compute", &format!("id=0 library=cpu variant=\"\" compute=\"\" driver=0.0 name=\"\" total=\"{total}\" available=\"{}\"", human_bytes2(c.profile.system_available)));
            } else {
                emu.log(
                    "INFO",
                    "types.go:60",
                    "inference compute",
                    &format!("id=cpu library=cpu compute=\"\" name=cpu description=cpu libdirs=ollama driver=\"\" pci_id=\"\" type=\"\" total=\"{total}\" available=\"{}\"", human_bytes2(c.profile.system_available)),
                );
            }
        }
    }
}
