use super::*;

fn board(model: &str, ready: bool) -> Board {
    Board { model: Some(model.into()), ready, stage: if ready { "ready".into() } else { "preloading".into() }, metrics: Some("0.0.0.0:9464".into()), ..Default::default() }
}

fn b(s: &str) -> BoardArg {
    BoardArg::parse(s).expect("valid")
}

#[test]
fn boards_are_name_equals_url() {
    let a = b("orin1=http://orin1.lan:11434");
    assert_eq!((a.name.as_str(), a.base().as_str(), a.host().as_str()), ("orin1", "http://orin1.lan:11434", "orin1.lan"));
    assert_eq!(b("v6=http://[fd00::5]:11434").host(), "[fd00::5]");
    for bad in ["orin1", "=http://x:1", "a b=http://x:1", "x=orin1:11434", "x=ftp://x/", "x=http://x:1/api", "x=http://x:1/?q=1"] {
        let e = BoardArg::parse(bad).expect_err(bad).to_string();
        assert!(e.starts_with("--board"), "{bad}: {e}");
    }
    assert!(matches!(distinct(&[b("a=http://x:1"), b("a=http://y:1")]), Err(FleetError::Twice(_))));
}

#[test]
fn litellm_groups_boards_by_the_model_they_pin() {
    let boards = vec![(b("orin1=http://orin1:11434"), board("gemma4:e2b-8k", true)), (b("orin2=http://orin2:11434"), board("gemma3:4b", false)), (b("orin3=http://orin3:11434"), board("gemma4:e2b-8k", true))];
    let y = litellm(&boards, &LiteLlmOptions::default());
    insta::assert_snapshot!(y);
    let y = litellm(&boards[..1], &LiteLlmOptions::default());
    assert!(!y.contains("fallbacks"), "one model: nothing to fall back to\n{y}");
}

#[test]
fn names_cannot_become_yaml() {
    // A hostile board could say any model name; names and URLs are quoted scalars.
    let mut hostile = board("x", true);
    hostile.model = Some("evil\"\n- model_name: x".into());
    let y = litellm(&[(b("a=http://a:1"), hostile)], &LiteLlmOptions::default());
    assert!(y.contains(r#"model_name: "evil\"\n- model_name: x""#), "{y}");
    assert_eq!(y.lines().filter(|l| l.trim_start().starts_with("- model_name")).count(), 1, "{y}");
}

#[test]
fn board_text_in_comments_stays_one_comment_line() {
    // U+2028 and U+2029 end a line for YAML parsers (PyYAML, go-yaml), though not for us.
    let mut b = board("gemma4:e2b-8k", false);
    b.stage = "x\u{2028}general_settings:\u{2029}  master_key: sk-evil\u{85}y".into();
    let y = litellm(&[(BoardArg::parse("a=http://a:1").expect("ok"), b)], &LiteLlmOptions::default());
    let line = y.lines().find(|l| l.contains("not ready")).expect("comment");
    assert!(line.chars().all(|c| c == ' ' || c.is_ascii_graphic()), "{line:?}");
    assert_eq!(y.lines().filter(|l| l.starts_with("general_settings:")).count(), 1, "{y}");
    assert!(!y.lines().any(|l| l.trim_start().starts_with("master_key")), "{y}");
}

#[test]
fn prometheus_uses_each_boards_metrics_port() {
    let mut other = board("gemma3:4b", true);
    other.metrics = Some("0.0.0.0:9500".into());
    let boards = vec![(b("orin1=http://orin1:11434"), board("gemma4:e2b-8k", true)), (b("orin2=http://orin2:11434"), other)];
    insta::assert_snapshot!(prometheus(&boards, 9464, 15));
}

#[test]
fn keyed_boards_get_the_key_from_litellms_environment_never_in_the_file() {
    let boards = vec![(b("orin1=http://orin1.lan:11434"), board("gemma4:e2b-8k", true))];
    let y = litellm(&boards, &LiteLlmOptions { key_env: Some("JETSON_LLMD_KEY".into()), ..Default::default() });
    assert!(y.contains("      api_key: \"os.environ/JETSON_LLMD_KEY\"\n"), "{y}");
    assert!(y.contains("# The boards ask for a client key: start LiteLLM with JETSON_LLMD_KEY set"), "{y}");
    assert!(!litellm(&boards, &LiteLlmOptions::default()).contains("api_key"));
}
