//! The Grafana dashboard against a real Prometheus (`--ignored`; scripts/test runs it with
//! PROMETHEUS_BIN from Debian's prometheus package): a board (`supervise --launcher process`
//! with fake-ollama, the guard with classes, the board's /proc and /sys files under --root) is
//! scraped with the config `jetson-llmd fleet prometheus` writes, and every query of every
//! panel in etc/grafana/jetson-llmd-dashboard.json must return data.

mod common;

use common::procs::{free_port, supervise, Proc};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn write(root: &Path, path: &str, text: &str) {
    let p = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
    std::fs::write(p, text).expect("write");
}

async fn until(what: &str, secs: u64, mut f: impl AsyncFnMut() -> bool) {
    let t = Instant::now();
    while !f().await {
        assert!(t.elapsed() < Duration::from_secs(secs), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a Prometheus server: PROMETHEUS_BIN (scripts/test installs Debian's prometheus)"]
async fn every_dashboard_panel_returns_data_from_a_real_prometheus() {
    let prometheus = std::env::var_os("PROMETHEUS_BIN").map(PathBuf::from).filter(|p| p.exists()).expect("PROMETHEUS_BIN: the prometheus server");
    let root = tempfile::tempdir().expect("tmp");
    let r = root.path();
    let (ollama, guard, metrics) = (free_port(), free_port(), free_port());
    // The board's files, as an Orin Nano has them.
    write(r, "/etc/ollama/model.conf", "OLLAMA_MODEL=gemma4:e2b-8k\n");
    write(r, "/proc/sys/vm/drop_caches", "");
    write(r, "/proc/meminfo", "MemTotal: 7800000 kB\nMemAvailable: 2100000 kB\nSwapTotal: 3900000 kB\nSwapFree: 3800000 kB\nCmaTotal: 262144 kB\nCmaFree: 200000 kB\n");
    write(r, "/proc/vmstat", "pswpin 12\npswpout 40\n");
    write(r, "/sys/class/thermal/thermal_zone0/type", "cpu-thermal\n");
    write(r, "/sys/class/thermal/thermal_zone0/temp", "48500\n");
    write(r, "/sys/class/thermal/thermal_zone1/type", "gpu-thermal\n");
    write(r, "/sys/class/thermal/thermal_zone1/temp", "51250\n");
    write(r, "/sys/class/devfreq/17000000.gpu/device/load", "870\n");
    write(r, "/sys/class/devfreq/17000000.gpu/cur_freq", "1020000000\n");
    write(r, "/sys/class/devfreq/17000000.gpu/max_freq", "1020000000\n");
    write(r, "/etc/jetson-llmd/config.toml", &format!("metrics_listen = \"127.0.0.1:{metrics}\"\n[guard]\nenabled = true\nlisten = \"127.0.0.1:{guard}\"\nclass_header = \"X-Client-Class\"\n[[guard.class]]\nname = \"chat\"\npriority = 10\n"));
    let _board = supervise(r, &format!("127.0.0.1:{ollama}"), None);
    let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(30)).build().expect("client");
    let healthz = format!("http://127.0.0.1:{guard}/healthz");
    until("the board warm", 120, async || http.get(&healthz).send().await.is_ok_and(|r| r.status() == 200)).await;

    // Prometheus with the scrape config the fleet command writes (scraping every second).
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("prometheus.yml");
    let out = Command::new(env!("CARGO_BIN_EXE_jetson-llmd")).args(["fleet", "prometheus", "--interval", "1", "-o"]).arg(&cfg).args(["--board", &format!("orin1=http://127.0.0.1:{guard}")]).output().expect("fleet prometheus");
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let port = free_port();
    let _prom = Proc(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("prometheus.log")).expect("log"))
            .spawn()
            .expect("start prometheus"),
    );
    let query = |expr: String| {
        let (http, url) = (http.clone(), format!("http://127.0.0.1:{port}/api/v1/query"));
        async move {
            let mut u = url::Url::parse(&url).expect("url");
            u.query_pairs_mut().append_pair("query", &expr);
            let Ok(r) = http.get(u).send().await else { return Value::Null };
            r.json::<Value>().await.unwrap_or(Value::Null)
        }
    };
    until("Prometheus scraping the board", 120, async || query("up{job=\"jetson-llmd\",board=\"orin1\"} == 1".into()).await["data"]["result"].as_array().is_some_and(|a| !a.is_empty())).await;
    // Traffic through the guard between scrapes, so that rates have something to say.
    for i in 0..8 {
        let class = if i % 2 == 0 { "chat" } else { "default" };
        let r = http.post(format!("http://127.0.0.1:{guard}/api/generate")).header("x-client-class", class).json(&json!({"model": "gemma4:e2b-8k", "prompt": "hi", "stream": false})).send().await.expect("send");
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../etc/grafana/jetson-llmd-dashboard.json")).expect("dashboard")).expect("JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "a dashboard of the board");
    let mut empty = Vec::new();
    for p in panels {
        for t in p["targets"].as_array().expect("targets") {
            // Grafana's variables as a dashboard with "All" boards and a short range sets them.
            let expr = t["expr"].as_str().expect("expr").replace("$board", ".*").replace("$__rate_interval", "15s");
            let v = query(expr.clone()).await;
            let ok = v["status"] == "success" && v["data"]["result"].as_array().is_some_and(|a| !a.is_empty());
            if !ok {
                empty.push(format!("{}: {expr}: {v}", p["title"]));
            }
        }
    }
    assert!(empty.is_empty(), "panels without data:\n{}", empty.join("\n"));
}
