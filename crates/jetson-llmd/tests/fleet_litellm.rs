//! Three boards behind a real LiteLLM proxy (`--ignored`; scripts/test runs it with LITELLM_BIN
//! from PyPI's litellm[proxy]): each board is `jetson-llmd supervise --launcher process` with the
//! guard on and fake-ollama as its Ollama; two pin gemma4:e2b-8k, one pins gemma3:4b. The proxy
//! is configured by `jetson-llmd fleet litellm`, nothing by hand. Requests reach the boards that
//! pin their model, no board is asked for a model it does not pin (the guards count it), and a
//! board that goes down is routed around. Each board runs in a network namespace of its own
//! (its own address, Ollama's usual ports, reached over a veth pair as a board on a LAN) when
//! the machine allows it (root and iproute2), on loopback ports otherwise. A second test gives a
//! board API keys: `fleet litellm --key` writes a config in which LiteLLM sends the key from
//! its environment.

mod common;

use common::procs::{free_port, supervise, Proc};
use serde_json::{json, Value};
use sha2::Digest;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

struct Board {
    name: &'static str,
    /// host:port of its guard and of its /metrics, as seen from here.
    guard: String,
    metrics: String,
    proc: Option<Proc>,
    _root: tempfile::TempDir,
    _ns: Option<Netns>,
}

/// Board `i` pinning `model`: in its own network namespace when it can have one.
fn board(name: &'static str, model: &str, i: u32) -> Board {
    board_in(name, model, Netns::try_new(i), None)
}

/// A board pinning `model`, in `ns` (else on loopback ports); `keys`, when given, are the lines
/// of its guard's keys_file.
fn board_in(name: &'static str, model: &str, ns: Option<Netns>, keys: Option<&str>) -> Board {
    let root = tempfile::tempdir().expect("tmp");
    let r = root.path();
    for d in ["etc/ollama", "etc/jetson-llmd", "proc/sys/vm"] {
        std::fs::create_dir_all(r.join(d)).expect("mkdir");
    }
    let (ollama, guard, metrics) = match &ns {
        Some(n) => ("127.0.0.1:11435".to_string(), format!("{}:11434", n.board), format!("{}:9464", n.board)),
        None => (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port())),
    };
    std::fs::write(r.join("etc/ollama/model.conf"), format!("OLLAMA_MODEL={model}\n")).expect("w");
    std::fs::write(r.join("proc/sys/vm/drop_caches"), "").expect("w");
    let mut config = format!("metrics_listen = \"{metrics}\"\n[guard]\nenabled = true\nlisten = \"{guard}\"\n");
    if let Some(keys) = keys {
        let file = r.join("etc/jetson-llmd/guard-keys");
        std::fs::write(&file, keys).expect("w");
        config.push_str(&format!("keys_file = \"{}\"\n", file.display()));
    }
    std::fs::write(r.join("etc/jetson-llmd/config.toml"), config).expect("w");
    let proc = supervise(r, &ollama, ns.as_ref().map(|n| n.name.as_str()));
    Board { name, guard, metrics, proc: Some(proc), _root: root, _ns: ns }
}

/// The LiteLLM proxy on `cfg`, its log in `dir`, JETSON_LLMD_KEY set to `key` when given;
/// returned once it says it is alive, with its port.
async fn litellm_proxy(bin: &Path, cfg: &Path, dir: &Path, key: Option<&str>, http: &reqwest::Client) -> (Proc, u16) {
    let port = free_port();
    let log = std::fs::File::create(dir.join("litellm.log")).expect("log");
    let mut cmd = Command::new(bin);
    cmd.arg("--config").arg(cfg).args(["--host", "127.0.0.1", "--port", &port.to_string()]).env("LITELLM_LOCAL_MODEL_COST_MAP", "True").env("NO_PROXY", "*").env_remove("JETSON_LLMD_KEY").stdout(log.try_clone().expect("log")).stderr(log);
    if let Some(k) = key {
        cmd.env("JETSON_LLMD_KEY", k);
    }
    let proxy = Proc(cmd.spawn().expect("start litellm"));
    let live = format!("http://127.0.0.1:{port}/health/liveliness");
    wait_until("the LiteLLM proxy", 180, async || http.get(&live).send().await.is_ok_and(|r| r.status() == 200)).await;
    (proxy, port)
}

async fn wait_until(what: &str, secs: u64, mut f: impl AsyncFnMut() -> bool) {
    let t = Instant::now();
    while !f().await {
        assert!(t.elapsed() < Duration::from_secs(secs), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The guard's decisions on one board, by rule (none for a board that is down).
async fn decisions(http: &reqwest::Client, b: &Board) -> std::collections::BTreeMap<String, f64> {
    let Ok(r) = http.get(format!("http://{}/metrics", b.metrics)).send().await else { return Default::default() };
    let text = r.text().await.unwrap_or_default();
    text.lines().filter_map(|l| l.strip_prefix("jetson_llmd_guard_decisions{rule=\"")).filter_map(|l| l.split_once("\"} ")).map(|(rule, v)| (rule.to_string(), v.trim().parse().unwrap_or(0.0))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a LiteLLM proxy: LITELLM_BIN (scripts/test installs litellm[proxy] from PyPI)"]
async fn litellm_routes_each_model_to_the_boards_that_pin_it() {
    let litellm = std::env::var_os("LITELLM_BIN").map(PathBuf::from).filter(|p| p.exists()).expect("LITELLM_BIN: the litellm command (scripts/test installs it)");
    let mut boards = vec![board("orin1", "gemma4:e2b-8k", 1), board("orin2", "gemma3:4b", 2), board("orin3", "gemma4:e2b-8k", 3)];
    if boards[0]._ns.is_none() {
        eprintln!("network namespaces unavailable (not root, or no iproute2): the boards are on loopback ports");
    }
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(120)).build().expect("client");
    for b in &boards {
        let url = format!("http://{}/healthz", b.guard);
        wait_until(&format!("{} warm", b.name), 120, async || http.get(&url).send().await.is_ok_and(|r| r.status() == 200)).await;
    }
    // The proxy's config, from the boards themselves.
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("litellm.yaml");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jetson-llmd"));
    cmd.args(["fleet", "litellm", "--health-interval", "2", "-o"]).arg(&cfg);
    for b in &boards {
        cmd.arg("--board").arg(format!("{}=http://{}", b.name, b.guard));
    }
    let out = cmd.output().expect("fleet litellm");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let yaml = std::fs::read_to_string(&cfg).expect("written");
    assert_eq!(yaml.matches("model_name: \"gemma4:e2b-8k\"").count(), 2, "{yaml}");
    assert_eq!(yaml.matches("model_name: \"gemma3:4b\"").count(), 1, "{yaml}");

    // The scrape config for the same boards, checked by Prometheus' own tool when it is here.
    let prom = dir.path().join("prometheus.yml");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jetson-llmd"));
    cmd.args(["fleet", "prometheus", "-o"]).arg(&prom);
    for b in &boards {
        cmd.arg("--board").arg(format!("{}=http://{}", b.name, b.guard));
    }
    let out = cmd.output().expect("fleet prometheus");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&prom).expect("written");
    for b in &boards {
        assert!(text.contains(&format!("\"{}\"", b.metrics)), "each board's own metrics address: {text}");
    }
    if let Ok(check) = Command::new("promtool").arg("check").arg("config").arg(&prom).output() {
        assert!(check.status.success(), "promtool check config: {}{}\n{text}", String::from_utf8_lossy(&check.stdout), String::from_utf8_lossy(&check.stderr));
    }

    let (_proxy, port) = litellm_proxy(&litellm, &cfg, dir.path(), None, &http).await;
    let logs = || std::fs::read_to_string(dir.path().join("litellm.log")).unwrap_or_default();
    let chat = |model: &'static str| {
        let (http, url) = (http.clone(), format!("http://127.0.0.1:{port}/v1/chat/completions"));
        async move {
            let r = http.post(url).json(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})).send().await.expect("send");
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap_or(Value::Null);
            (status, v)
        }
    };
    for model in ["gemma4:e2b-8k", "gemma3:4b", "gemma4:e2b-8k", "gemma4:e2b-8k", "gemma3:4b", "gemma4:e2b-8k", "gemma4:e2b-8k", "gemma4:e2b-8k"] {
        let (status, v) = chat(model).await;
        assert_eq!(status, 200, "{model}: {v}\n{}", logs());
        assert!(v["choices"][0]["message"]["content"].as_str().is_some_and(|c| !c.is_empty()), "{v}");
    }
    let d: Vec<_> = futures_util::future::join_all(boards.iter().map(|b| decisions(&http, b))).await;
    let passed = |i: usize| d[i].get("passed").copied().unwrap_or(0.0) + d[i].get("reload-option-dropped").copied().unwrap_or(0.0) + d[i].get("keep-alive-removed").copied().unwrap_or(0.0);
    for (i, b) in boards.iter().enumerate() {
        assert_eq!(d[i].get("other-model").copied().unwrap_or(0.0), 0.0, "{} was asked for a model it does not pin: {:?}", b.name, d[i]);
    }
    assert!(passed(1) >= 2.0, "orin2 served the gemma3:4b requests: {d:?}");
    assert!(passed(0) + passed(2) >= 6.0, "orin1 and orin3 served the gemma4 requests: {d:?}");

    // orin1 goes down (its supervisor and guard stop): its model is still served, by orin3, once
    // LiteLLM's health check has seen it gone (a refused connection is not cooled down).
    boards[0].proc.take();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let d: Vec<_> = futures_util::future::join_all(boards.iter().map(|b| decisions(&http, b))).await;
    for _ in 0..5 {
        let (status, v) = chat("gemma4:e2b-8k").await;
        assert_eq!(status, 200, "routed around the board that is down: {v}\n{}", logs());
    }
    let after = decisions(&http, &boards[2]).await;
    let served = |m: &std::collections::BTreeMap<String, f64>| m.values().sum::<f64>();
    assert!(served(&after) >= served(&d[2]) + 5.0, "orin3 took orin1's share: before {:?}, after {after:?}", d[2]);
    assert_eq!(after.get("other-model").copied().unwrap_or(0.0), 0.0);
    // Not by falling back to another model: orin2 saw only its health checks.
    let orin2 = decisions(&http, &boards[1]).await;
    assert!(served(&orin2) <= served(&d[1]) + 4.0, "gemma4 requests fell back to orin2's gemma3: before {:?}, after {orin2:?}", d[1]);
}

/// A network namespace joined to this one by a veth pair (10.213.N.1 here, `board` = .2 in
/// there), as two machines on a LAN. Removed on drop (with it, both ends of the pair).
struct Netns {
    name: String,
    board: String,
}

impl Netns {
    /// Namespace `i` of this test process, or None where the machine does not allow one.
    fn try_new(i: u32) -> Option<Netns> {
        let id = std::process::id() % 100_000;
        let (name, a, b) = (format!("llmdk{id}n{i}"), format!("vk{id}{i}a"), format!("vk{id}{i}b"));
        let net = (id % 40) * 6 + i;
        let (host, board) = (format!("10.213.{net}.1"), format!("10.213.{net}.2"));
        let ip = |args: &str| Command::new("ip").args(args.split_whitespace()).output().is_ok_and(|o| o.status.success());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        if !ip(&format!("netns add {name}")) {
            return None;
        }
        let n = Netns { name: name.clone(), board: board.clone() };
        let ok = ip(&format!("link add {a} type veth peer name {b}"))
            && ip(&format!("link set {b} netns {name}"))
            && ip(&format!("addr add {host}/30 dev {a}"))
            && ip(&format!("link set {a} up"))
            && ip(&format!("-n {name} addr add {board}/30 dev {b}"))
            && ip(&format!("-n {name} link set {b} up"))
            && ip(&format!("-n {name} link set lo up"));
        ok.then_some(n)
    }

    fn new(i: u32) -> Netns {
        Netns::try_new(i).expect("a network namespace with a veth pair (needs root and iproute2)")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace deletes its end of the pair, and with it ours.
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a LiteLLM proxy (LITELLM_BIN), root and iproute2 (a network namespace)"]
async fn litellm_reaches_a_board_that_asks_for_keys_with_the_key_from_its_environment() {
    let litellm = std::env::var_os("LITELLM_BIN").map(PathBuf::from).filter(|p| p.exists()).expect("LITELLM_BIN: the litellm command (scripts/test installs it)");
    let key = "sk-board-test-0123456789";
    let digest: String = sha2::Sha256::digest(key.as_bytes()).iter().map(|x| format!("{x:02x}")).collect();
    let board = board_in("orin1", "gemma4:e2b-8k", Some(Netns::new(4)), Some(&format!("litellm client sha256:{digest}\n")));
    let guard = &board.guard;
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(120)).build().expect("client");
    let base = format!("http://{guard}");
    wait_until("the board warm", 120, async || http.get(format!("{base}/healthz")).send().await.is_ok_and(|r| r.status() == 200)).await;
    // From this side of the "LAN" the board asks for a key: without one, 401.
    let r = http.post(format!("{base}/v1/chat/completions")).json(&json!({"model": "gemma4:e2b-8k", "messages": [{"role": "user", "content": "hi"}]})).send().await.expect("send");
    assert_eq!(r.status(), 401);

    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("litellm.yaml");
    let fleet = |with_key: bool| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_jetson-llmd"));
        c.args(["fleet", "litellm", "--health-interval", "2", "--board", &format!("orin1={base}"), "-o"]).arg(&cfg).env_remove("JETSON_LLMD_KEY");
        if with_key {
            c.env("JETSON_LLMD_KEY", key);
        }
        c.output().expect("fleet litellm")
    };
    let o = fleet(false);
    assert_eq!(o.status.code(), Some(1), "a board that asks for a key refuses to say what it pins without one: {}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--key or JETSON_LLMD_KEY"), "{}", String::from_utf8_lossy(&o.stderr));
    let o = fleet(true);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let yaml = std::fs::read_to_string(&cfg).expect("written");
    assert!(yaml.contains("api_key: \"os.environ/JETSON_LLMD_KEY\"") && !yaml.contains(key), "the key is referenced, never written: {yaml}");

    let (_proxy, port) = litellm_proxy(&litellm, &cfg, dir.path(), Some(key), &http).await;
    for _ in 0..3 {
        let r = http.post(format!("http://127.0.0.1:{port}/v1/chat/completions")).json(&json!({"model": "gemma4:e2b-8k", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})).send().await.expect("send");
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 200, "through LiteLLM with the key: {v}\n{}", std::fs::read_to_string(dir.path().join("litellm.log")).unwrap_or_default());
        assert!(v["choices"][0]["message"]["content"].as_str().is_some_and(|c| !c.is_empty()), "{v}");
    }
}
