//! The scheduler: runner reuse, loading, eviction, expiry and load failures (follows
//! server/sched.go).

use super::{err, forever_from, version_at_least, version_at_least_patch};
use crate::golang::{human_bytes2, Keep};
use crate::{Emulator, Runner, RunnerOptions};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::time::Instant;

pub(super) fn runner_options(v: &Value, spec: &crate::ModelSpec, cfg: &crate::Config) -> RunnerOptions {
    let o = v.get("options").cloned().unwrap_or(Value::Null);
    let u = |k: &str| o.get(k).and_then(Value::as_u64);
    let i = |k: &str| o.get(k).and_then(Value::as_i64);
    let requested_ctx = u("num_ctx").or(spec.num_ctx);
    RunnerOptions {
        // Model PARAMETER num_ctx beats OLLAMA_CONTEXT_LENGTH; a request option beats both; the
        // trained context caps it (server/sched.go effectiveContext).
        num_ctx: requested_ctx.unwrap_or(cfg.context_length).clamp(4, spec.context_length.max(4)),
        num_batch: u("num_batch").unwrap_or(512),
        num_gpu: i("num_gpu").unwrap_or(-1),
        main_gpu: if super::version_at_least(&cfg.profile.version, 0, 30) { i("main_gpu") } else { Some(i("main_gpu").unwrap_or(0)) },
        use_mmap: o.get("use_mmap").and_then(Value::as_bool),
        num_thread: i("num_thread").unwrap_or(0),
        num_ctx_auto: requested_ctx.is_none(),
        num_batch_auto: u("num_batch").is_none(),
    }
}

/// What a request gets from the scheduler.
pub(super) struct Acquired {
    pub(super) cold_load: Option<Duration>,
    pub(super) size: u64,
    pub(super) size_vram: u64,
}

/// Releases the runner when the request ends, even if the client went away mid-stream.
pub(super) struct Busy {
    pub(super) emu: Arc<Emulator>,
    pub(super) key: String,
}

impl Drop for Busy {
    fn drop(&mut self) {
        release(&self.emu, &self.key);
    }
}

/// A request finished (server/sched.go processCompleted): at refCount 0 a duration <= 0
/// unloads now; otherwise the timer starts and expiresAt becomes now + duration.
fn release(emu: &Emulator, key: &str) {
    let mut st = emu.lock();
    let Some(r) = st.loaded.get_mut(key) else { return };
    r.refcount = r.refcount.saturating_sub(1);
    if r.refcount > 0 {
        return;
    }
    let now = OffsetDateTime::now_utc();
    match r.keep {
        Keep::For(d) if d.is_zero() => {
            if let Some(r) = st.loaded.remove(key) {
                emu.note_unload(&mut st, &r.name, "keep_alive 0");
            }
        }
        Keep::Forever => {
            r.expires_at = Some(forever_from(now));
            r.timer = None;
        }
        Keep::For(d) => {
            r.expires_at = Some(now + d);
            r.timer = Some(Instant::now() + d);
        }
    }
}

/// sessionDuration as Go compares it in ByDurationAndName: uint64 of the nanoseconds, so a
/// pinned runner (math.MaxInt64) sorts after every finite one.
fn duration_rank(k: Keep) -> u64 {
    match k {
        Keep::Forever => i64::MAX as u64,
        Keep::For(d) => d.as_nanos().min(u64::MAX as u128) as u64,
    }
}

/// server/sched.go findRunnerToUnload: sorted by duration then model path, the first idle one,
/// else the first (busy) one, whose duration is then set to 0 so it unloads when done.
fn find_runner_to_unload(st: &crate::State) -> Option<String> {
    let mut list: Vec<(&String, &Runner)> = st.loaded.iter().collect();
    list.sort_by(|a, b| duration_rank(a.1.keep).cmp(&duration_rank(b.1.keep)).then_with(|| a.0.cmp(b.0)));
    list.iter().find(|(_, r)| r.refcount == 0).or(list.first()).map(|(k, _)| (*k).clone())
}

/// One pass of processPending under the lock: reuse, load, fail, or wait for an unload.
enum Step {
    Load((String, crate::ModelSpec, u64, u64)),
    Reuse(String, Acquired),
    Fail(Response),
    Wait,
}

fn schedule(emu: &Arc<Emulator>, name: &str, opts: &RunnerOptions, keep: Option<Keep>) -> Step {
    let cfg = &emu.config;
    let mut st = emu.lock();
    emu.check_drop_caches(&mut st);
    let Some(spec) = st.local.get(name).map(|m| m.spec.clone()) else {
        return Step::Fail(err(StatusCode::NOT_FOUND, format!("model \"{name}\" not found, try pulling it first")));
    };
    let key = spec.blob.clone();
    let size = spec.size_at(opts.num_ctx);
    // A runner whose process died (SIGKILLed by the OOM killer) is still listed until a request
    // touches it; that request notices and reloads (llm/llama_server.go: "llama-server process
    // no longer running"; server/sched.go needsReload's Ping fails).
    let dead = st.loaded.get(&key).and_then(|r| r.process.as_ref()).and_then(|p| p.exited());
    if let Some(status) = dead {
        use std::os::unix::process::ExitStatusExt;
        let how = match status.signal() {
            Some(sig) => format!("sys={sig}"),
            None => format!("code={}", status.code().unwrap_or(-1)),
        };
        emu.log("WARN", "llama_server.go:1280", &format!("{} process no longer running", runner_word(&cfg.profile.version)), &how);
        if let Some(r) = st.loaded.remove(&key) {
            emu.note_unload(&mut st, &r.name, "runner process died");
        }
    }
    let victim = if let Some(r) = st.loaded.get_mut(&key) {
        if !r.options.needs_reload(opts, spec.context_length) {
            // useLoadedRunner: the timer stops; a request that carries keep_alive replaces
            // the duration. The runner keeps the name it was loaded under (PsHandler).
            r.refcount += 1;
            r.timer = None;
            if let Some(k) = keep {
                r.keep = k;
            }
            return Step::Reuse(key, Acquired { cold_load: None, size: r.size, size_vram: r.size_vram });
        }
        Some(key.clone())
    } else {
        let used_sys: u64 = st.loaded.values().map(|r| r.size).sum();
        let over_count = st.loaded.len() >= cfg.effective_max_loaded();
        // A second model must fit beside the others (load with requireFull); the first one
        // is always tried (v0.30+: llama-server fits what it can).
        let over_mem = !st.loaded.is_empty() && used_sys + size > cfg.profile.system_available;
        if over_count || over_mem {
            find_runner_to_unload(&st)
        } else {
            None
        }
    };
    let Some(victim) = victim else {
        let gpu_ok = cfg.profile.gpu.is_some() && cfg.cpu_only.is_none() && opts.num_gpu != 0;
        let gpu_used: u64 = st.loaded.values().map(|r| r.size_vram).sum();
        let gpu_free = cfg.profile.gpu_available.saturating_sub(gpu_used);
        // Layer-wise split: whole layers go to the GPU while they fit.
        let size_vram = if !gpu_ok {
            0
        } else if size <= gpu_free {
            size
        } else {
            let per_layer = size / (spec.layers as u64 + 1);
            (gpu_free / per_layer.max(1)) * per_layer
        };
        return Step::Load((key, spec, size, size_vram));
    };
    // Trigger the expiration: duration 0, unloaded now if idle, else when its request ends;
    // this request waits for the unload (processPending waits on unloadedCh).
    let why = if victim == key { "runner options changed" } else { "evicted to make room" };
    if emu.expire(&mut st, &victim, why) && victim == key {
        st.counters.reloads_for_options += 1;
    }
    Step::Wait
}

/// The scheduler's part of a request (server/sched.go processPending, load, useLoadedRunner).
pub(super) async fn acquire(emu: &Arc<Emulator>, name: &str, opts: RunnerOptions, keep: Option<Keep>) -> Result<(String, Acquired), Response> {
    // One pending request at a time, and it blocks the others until it has a runner.
    let _one_load_at_a_time = emu.load_lock.lock().await;
    let cfg = &emu.config;
    let (key, spec, size, size_vram) = loop {
        match schedule(emu, name, &opts, keep) {
            Step::Load(x) => break x,
            Step::Reuse(key, acq) => return Ok((key, acq)),
            Step::Fail(r) => return Err(r),
            Step::Wait => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    // Before v0.30 the scheduler refused a model larger than system memory up front
    // (llm/memory.go + llm/server.go); v0.30's llama-server runner has no such check.
    if !version_at_least(&cfg.profile.version, 0, 30) && size > cfg.profile.system_available {
        let msg = format!("model requires more system memory ({}) than is available ({})", human_bytes2(size), human_bytes2(cfg.profile.system_available));
        emu.log("WARN", "server.go:1020", "model request too large for system", &format!("requested=\"{}\" available=\"{}\"", human_bytes2(size), human_bytes2(cfg.profile.system_available)));
        return Err(err(StatusCode::INTERNAL_SERVER_ERROR, msg));
    }
    // llm/llama_server.go appendLoadModeArgs (v0.32.6+; --direct-io from v0.32.2): a CUDA iGPU
    // on Linux loads with direct I/O, bypassing the page cache.
    let dio = size_vram > 0 && version_at_least_patch(&cfg.profile.version, 0, 32, 6) && cfg.profile.gpu.as_ref().is_some_and(|g| g.kind == "iGPU");
    let blob = format!("/usr/share/ollama/.ollama/models/blobs/sha256-{key}");
    let port = 40213;
    let args: Vec<String> = if version_at_least(&cfg.profile.version, 0, 34) {
        // v0.34.4:llm/llama_server.go startLlamaServer, as the real one was seen to run on a CPU
        // host (docs/compatibility.md): -ngl only for an explicit num_gpu, -t only for num_thread.
        let mut a: Vec<String> = [
            "--model",
            &blob,
            "--port",
            &port.to_string(),
            "--host",
            "127.0.0.1",
            "--no-webui",
            "--offline",
            "-c",
            &opts.num_ctx.to_string(),
            "-np",
            "1",
            "--log-verbosity",
            "4",
            "--no-log-prefix",
            "--no-log-timestamps",
            "--load-mode",
            if dio { "dio" } else { "none" },
            "--flash-attn",
            "auto",
            "-b",
            &opts.num_batch.to_string(),
            "-ub",
            &opts.num_batch.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if opts.num_gpu >= 0 {
            a.extend(["-ngl".to_string(), opts.num_gpu.to_string()]);
        }
        if opts.num_thread > 0 {
            a.extend(["-t".to_string(), opts.num_thread.to_string()]);
        }
        a.extend(["--context-shift", "--keep", "4"].map(String::from));
        a
    } else if version_at_least(&cfg.profile.version, 0, 30) {
        let mut a: Vec<String> = ["--model", &blob, "--ctx-size", &opts.num_ctx.to_string(), "--batch-size", &opts.num_batch.to_string(), "--n-gpu-layers", &(if size_vram == 0 { 0 } else { spec.layers + 1 }).to_string(), "--port", &port.to_string()]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if dio {
            a.extend(["--load-mode".to_string(), "dio".to_string()]);
        }
        a
    } else {
        // Before v0.30 the runner is Ollama itself (llm/server.go NewLlamaServer: `ollama runner`).
        ["runner", "--model", &blob, "--port", &port.to_string()].iter().map(|s| s.to_string()).collect()
    };
    let program = if version_at_least(&cfg.profile.version, 0, 30) { "/usr/local/lib/ollama/llama-server" } else { "/usr/local/bin/ollama" };
    emu.log("INFO", "llama_server.go:412", "starting llama-server", &format!("cmd=\"{program} {}\"", args.join(" ")));
    if size > cfg.profile.system_available {
        // It loads, mmap'ed and paged: the seed's llama3.1:8b "loads, partly, and swaps".
        emu.log("INFO", "sched.go:613", "system memory", &format!("total=\"{}\" free=\"{}\" free_swap=\"3.7 GiB\"", human_bytes2(cfg.profile.total_memory), human_bytes2(cfg.profile.system_available)));
    }
    let fragmented = emu.lock().fragmented;
    if fragmented {
        return Err(load_out_of_memory(emu, name, &opts));
    }
    let load = spec.load_time;
    tokio::time::sleep(cfg.scaled(load)).await;
    let per_layer = size / (spec.layers as u64 + 1);
    let gpu_layers = if size_vram >= size { spec.layers + 1 } else { (size_vram / per_layer.max(1)) as u32 };
    emu.raw_log(format!("load_tensors: offloaded {}/{} layers to GPU", gpu_layers, spec.layers + 1));
    emu.log("INFO", "server.go:1288", &format!("{} started in {:.2} seconds", runner_word(&cfg.profile.version), load.as_secs_f64()), "");
    let mut st = emu.lock();
    st.counters.loads += 1;
    *st.counters.loads_by_model.entry(name.to_string()).or_default() += 1;
    // The runner as a process of its own, when the emulator runs them: started once the load
    // is done (a failed load leaves none behind).
    let process = match &cfg.runner_exe {
        Some(exe) => match crate::RunnerProcess::start(exe, &args) {
            Ok(p) => Some(Arc::new(p)),
            Err(e) => {
                drop(st);
                emu.log("ERROR", "llama_server.go:436", "error starting runner", &format!("error={:?}", e.to_string()));
                return Err(err(StatusCode::INTERNAL_SERVER_ERROR, format!("error starting {}: {e}", runner_word(&cfg.profile.version))));
            }
        },
        None => None,
    };
    st.loaded.insert(key.clone(), Runner { name: name.to_string(), spec, size, size_vram, options: opts, keep: keep.unwrap_or(cfg.default_keep_alive), expires_at: None, timer: None, refcount: 1, process });
    if cfg.fragile_memory {
        emu.write_memory_state(crate::MemState::Loaded);
    }
    Ok((key, Acquired { cold_load: Some(load), size, size_vram }))
}

/// Unallocatable memory (the board, not Ollama): the allocation fails inside llama-server, which
/// exits with status 1; Ollama logs `msg="Load failed"` and retries once (server/sched.go load,
/// v0.30.6): with a smaller automatic context when num_ctx was automatic
/// (reduceAutoNumCtxForLoadOOM), else after evicting every other model when there are any, else
/// not at all. The error carries the runner's captured lines (llm/status.go StatusWriter,
/// llm/llama_server.go WaitUntilRunning: `process has terminated: exit status N: <lines>`).
fn load_out_of_memory(emu: &Emulator, name: &str, opts: &RunnerOptions) -> Response {
    let cfg = &emu.config;
    let mut st = emu.lock();
    st.counters.oom_failures += 1;
    let captured = "cudaMalloc failed: out of memory\nalloc_tensor_range: failed to allocate CUDA0 buffer of size 188743680";
    let text = if version_at_least(&cfg.profile.version, 0, 30) { format!("{}: exit status 1: {captured}", terminated_prefix(&cfg.profile.version)) } else { format!("{}: cudaMalloc failed: out of memory", terminated_prefix(&cfg.profile.version)) };
    let model_path = format!("/usr/share/ollama/.ollama/models/blobs/sha256-{}", st.key_of(name).unwrap_or_default());
    let others = !st.loaded.is_empty();
    // server/sched.go nextLowerAutoNumCtx (v0.30.0+): an automatic context steps down only from
    // above 32768 to 32768, or from above 4096 to 4096; the Orin's automatic 4096 never does.
    let lower = |n: u64| match n {
        n if n > 32768 => Some(32768),
        n if n > 4096 => Some(4096),
        _ => None,
    };
    let retry = if let Some(new) = lower(opts.num_ctx).filter(|_| opts.num_ctx_auto) {
        Some(("llama-server load failed; reducing automatic context and retrying once", format!("model={model_path} old_num_ctx={} new_num_ctx={new}", opts.num_ctx)))
    } else if others {
        Some(("llama-server load failed; evicting all other models and retrying once", format!("model={model_path}")))
    } else {
        None
    };
    let attempts = if retry.is_some() { 2 } else { 1 };
    for attempt in 0..attempts {
        emu.raw_log("ggml_backend_cuda_buffer_type_alloc_buffer: allocating 180.00 MiB on device 0: cudaMalloc failed: out of memory".into());
        emu.raw_log("alloc_tensor_range: failed to allocate CUDA0 buffer of size 188743680".into());
        emu.raw_log("NvMapMemAllocInternalTagged: 1075072515 error 12".into());
        emu.log("INFO", "sched.go:641", "Load failed", &format!("model={model_path} error={text:?}"));
        if attempt == 0 {
            if let Some((msg, attrs)) = &retry {
                emu.log("WARN", "sched.go:652", msg, &format!("{attrs} error={text:?}"));
                if others && !opts.num_ctx_auto {
                    let keys: Vec<String> = st.loaded.iter().filter(|(_, r)| r.refcount == 0).map(|(k, _)| k.clone()).collect();
                    for k in keys {
                        if let Some(r) = st.loaded.remove(&k) {
                            emu.note_unload(&mut st, &r.name, "evicted for OOM retry");
                        }
                    }
                }
            }
        }
    }
    err(StatusCode::INTERNAL_SERVER_ERROR, text)
}

/// Ollama 0.30 switched from its own runner to llama.cpp's llama-server; the words changed too.
fn runner_word(version: &str) -> &'static str {
    if version_at_least(version, 0, 30) {
        "llama-server"
    } else {
        "llama runner"
    }
}

fn terminated_prefix(version: &str) -> String {
    format!("{} process has terminated", runner_word(version))
}
