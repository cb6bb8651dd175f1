//! The configs, as text. YAML is written by hand, every scalar from outside (board names, model
//! names, URLs) as a JSON string, which YAML reads as a double-quoted scalar: a name can never
//! become YAML structure.

use super::BoardArg;
use crate::guard::Board;

fn q(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Text from a board for a `#` comment: printable ASCII only, one line, clipped. YAML parsers
/// take U+2028/U+2029 and other breaks as line ends, which would end the comment.
pub fn comment(s: &str) -> String {
    let t: String = s.chars().map(|c| if c == ' ' || c.is_ascii_graphic() { c } else { '?' }).collect();
    crate::text::clip(&t, 200)
}

/// How LiteLLM routes between boards.
#[derive(Debug, Clone)]
pub struct LiteLlmOptions {
    /// Retries of a failed request (LiteLLM picks another board of the same model).
    pub retries: u32,
    /// Each model group falls back to the others when every board pinning it failed.
    pub fallbacks: bool,
    /// Seconds a failing board is left out (LiteLLM cooldown_time).
    pub cooldown_s: u32,
    /// Seconds between LiteLLM's health checks of each board (a one-token request through the
    /// guard); a board that failed its last check is left out of routing.
    pub health_interval_s: u32,
    /// The boards ask clients for a key (`[guard] keys_file`): each deployment gets
    /// `api_key: "os.environ/<this>"`, which LiteLLM reads from its own environment and sends as
    /// `Authorization: Bearer` (ollama_chat). The key itself is never written into the file.
    pub key_env: Option<String>,
}

impl Default for LiteLlmOptions {
    fn default() -> Self {
        LiteLlmOptions { retries: 3, fallbacks: true, cooldown_s: 30, health_interval_s: 15, key_env: None }
    }
}

/// The models pinned, in the order the boards were given, each with its boards.
fn groups(boards: &[(BoardArg, Board)]) -> Vec<(&str, Vec<&(BoardArg, Board)>)> {
    let mut out: Vec<(&str, Vec<&(BoardArg, Board)>)> = Vec::new();
    for b in boards {
        let Some(m) = b.1.model.as_deref() else { continue };
        match out.iter_mut().find(|(g, _)| *g == m) {
            Some((_, v)) => v.push(b),
            None => out.push((m, vec![b])),
        }
    }
    out
}

/// A LiteLLM proxy config (`litellm --config FILE`): one model_name per pinned model, the boards
/// that pin it as its deployments (balanced), retries, cooldowns and fallbacks. Requests go to a
/// board's guard (Ollama's API, `ollama_chat/`), never to a board for a model it does not pin.
pub fn litellm(boards: &[(BoardArg, Board)], o: &LiteLlmOptions) -> String {
    let g = groups(boards);
    let mut y = String::new();
    y.push_str(&format!("# LiteLLM proxy config written by `jetson-llmd fleet litellm` (jetson-llmd {}) from {} boards.\n", env!("CARGO_PKG_VERSION"), boards.len()));
    y.push_str("# One model_name per model a board pins; boards pinning the same model share its requests.\n");
    y.push_str("# A board that is not warm answers 503 with Retry-After: LiteLLM retries another board and\n");
    y.push_str("# leaves that one out for cooldown_time. A board that is down refuses connections, which\n");
    y.push_str("# LiteLLM does not cool down: its health checks (a one-token chat every health_check_interval)\n");
    y.push_str("# leave it out of routing instead. Write this again when a board switches models.\n");
    if let Some(env) = &o.key_env {
        y.push_str(&format!("# The boards ask for a client key: start LiteLLM with {} set to it (not written here).\n", comment(env)));
    }
    y.push_str("model_list:\n");
    for (model, bs) in &g {
        for (arg, board) in bs {
            y.push_str(&format!("  - model_name: {}\n", q(model)));
            y.push_str("    litellm_params:\n");
            y.push_str(&format!("      model: {}\n", q(&format!("ollama_chat/{model}"))));
            y.push_str(&format!("      api_base: {}\n", q(&arg.base())));
            if let Some(env) = &o.key_env {
                y.push_str(&format!("      api_key: {}\n", q(&format!("os.environ/{env}"))));
            }
            y.push_str("    model_info:\n");
            y.push_str(&format!("      id: {}\n", q(&arg.name)));
            if !board.ready {
                y.push_str(&format!("      # not ready when this was written: {}\n", comment(&board.stage)));
            }
        }
    }
    y.push_str("router_settings:\n");
    y.push_str("  routing_strategy: \"simple-shuffle\"\n");
    y.push_str("  enable_health_check_routing: true\n");
    y.push_str(&format!("  num_retries: {}\n", o.retries));
    y.push_str("  allowed_fails: 1\n");
    y.push_str(&format!("  cooldown_time: {}\n", o.cooldown_s));
    // A generation on an Orin Nano can take minutes, and a board may be loading its model.
    y.push_str("  timeout: 600\n");
    if o.fallbacks && g.len() > 1 {
        y.push_str("  fallbacks:\n");
        for (model, _) in &g {
            let others: Vec<String> = g.iter().filter(|(m, _)| m != model).map(|(m, _)| q(m)).collect();
            y.push_str(&format!("    - {}: [{}]\n", q(model), others.join(", ")));
        }
    }
    y.push_str("litellm_settings:\n");
    y.push_str("  request_timeout: 600\n");
    y.push_str("  drop_params: true\n");
    y.push_str("general_settings:\n");
    y.push_str("  background_health_checks: true\n");
    y.push_str(&format!("  health_check_interval: {}\n", o.health_interval_s));
    y
}

/// A Prometheus scrape config for the boards' /metrics (the supervisor's `metrics_listen`):
/// each board's own metrics port when it says one, else `port`; each target labelled with its
/// board.
pub fn prometheus(boards: &[(BoardArg, Board)], port: u16, interval_s: u32) -> String {
    let mut y = String::new();
    y.push_str(&format!("# Prometheus scrape config written by `jetson-llmd fleet prometheus` (jetson-llmd {}) for {} boards.\n", env!("CARGO_PKG_VERSION"), boards.len()));
    y.push_str("# Each board serves /metrics on metrics_listen (config.toml): set metrics_listen = \"0.0.0.0:9464\"\n");
    y.push_str("# there for this host to reach it. Alert rules: etc/prometheus/jetson-llmd-rules.yml.\n");
    y.push_str("scrape_configs:\n");
    y.push_str("  - job_name: \"jetson-llmd\"\n");
    y.push_str(&format!("    scrape_interval: {interval_s}s\n"));
    y.push_str("    metrics_path: \"/metrics\"\n");
    y.push_str("    static_configs:\n");
    for (arg, board) in boards {
        let p = board.metrics.as_deref().and_then(|m| m.parse::<std::net::SocketAddr>().ok()).map_or(port, |a| a.port());
        y.push_str(&format!("      - targets: [{}]\n", q(&format!("{}:{p}", arg.host()))));
        y.push_str("        labels:\n");
        y.push_str(&format!("          board: {}\n", q(&arg.name)));
    }
    y
}
