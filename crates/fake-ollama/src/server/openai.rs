//! The OpenAI-compatible routes under /v1/, translated to and from the native ones (follows
//! middleware/openai.go and openai/openai.go).

use super::native::{complete, embed, Shape};
use super::{unreachable_response, App};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use time::OffsetDateTime;

/// OpenAI's error shape (openai/openai.go NewError).
fn openai_err(status: StatusCode, message: &str) -> Response {
    let kind = match status {
        StatusCode::BAD_REQUEST => "invalid_request_error",
        StatusCode::NOT_FOUND => "not_found_error",
        _ => "api_error",
    };
    (status, axum::Json(json!({ "error": { "type": kind, "message": message } }))).into_response()
}

/// openai/openai.go ToChatCompletion / toChunk from one /api/chat line.
fn openai_chat_json(id: &str, line: &Value, chunk: bool) -> Value {
    let reason = line["done_reason"].as_str().filter(|r| !r.is_empty()).map(|r| json!(r)).unwrap_or(Value::Null);
    let content = line["message"]["content"].as_str().unwrap_or("");
    let created = OffsetDateTime::now_utc().unix_timestamp();
    if chunk {
        json!({ "id": id, "object": "chat.completion.chunk", "created": created, "model": line["model"], "system_fingerprint": "fp_ollama",
                "choices": [{ "index": 0, "delta": { "role": "assistant", "content": content }, "finish_reason": reason }] })
    } else {
        let (p, e) = (line["prompt_eval_count"].as_u64().unwrap_or(0), line["eval_count"].as_u64().unwrap_or(0));
        json!({ "id": id, "object": "chat.completion", "created": created, "model": line["model"], "system_fingerprint": "fp_ollama",
                "choices": [{ "index": 0, "message": { "role": "assistant", "content": content }, "finish_reason": reason }],
                "usage": { "prompt_tokens": p, "completion_tokens": e, "total_tokens": p + e } })
    }
}

/// POST /v1/chat/completions: middleware/openai.go ChatMiddleware turns the request into an
/// /api/chat one (max_tokens -> num_predict, sampling options kept), ChatWriter turns the answer
/// into a chat.completion, or, streamed, `data: <chunk>` events ending with `data: [DONE]`.
pub(super) async fn v1_chat(State(app): State<App>, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else { return openai_err(StatusCode::BAD_REQUEST, "invalid request") };
    let stream = req["stream"].as_bool().unwrap_or(false);
    let mut options = serde_json::Map::new();
    if let Some(n) = req["max_tokens"].as_i64() {
        options.insert("num_predict".into(), json!(n));
    }
    for k in ["temperature", "top_p", "seed", "stop", "frequency_penalty", "presence_penalty"] {
        if !req[k].is_null() {
            options.insert(k.into(), req[k].clone());
        }
    }
    let inner = json!({ "model": req["model"], "messages": req["messages"], "stream": stream, "options": options });
    let resp = complete(app, Bytes::from(inner.to_string()), Shape::Chat).await;
    let status = resp.status();
    let id = format!("chatcmpl-{}", OffsetDateTime::now_utc().nanosecond() % 999);
    if !status.is_success() {
        return openai_from_native_err(resp).await;
    }
    if !stream {
        let b = axum::body::to_bytes(resp.into_body(), 16 << 20).await.unwrap_or_default();
        let line: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
        return axum::Json(openai_chat_json(&id, &line, false)).into_response();
    }
    let include_usage = req["stream_options"]["include_usage"].as_bool().unwrap_or(false);
    sse(resp, id, include_usage, openai_chat_json, |id, line, usage| json!({ "id": id, "object": "chat.completion.chunk", "model": line["model"], "system_fingerprint": "fp_ollama", "choices": [], "usage": usage }))
}

fn openai_usage(line: &Value) -> Value {
    let (p, e) = (line["prompt_eval_count"].as_u64().unwrap_or(0), line["eval_count"].as_u64().unwrap_or(0));
    json!({ "prompt_tokens": p, "completion_tokens": e, "total_tokens": p + e })
}

/// A streamed native answer as OpenAI server-sent events: `data: <chunk>` per line, then the
/// usage chunk when asked for, then `data: [DONE]` (middleware/openai.go ChatWriter and
/// CompleteWriter writeResponse).
fn sse(resp: Response, id: String, include_usage: bool, chunk: fn(&str, &Value, bool) -> Value, usage_chunk: fn(&str, &Value, Value) -> Value) -> Response {
    let lines = futures_util::StreamExt::flat_map(resp.into_body().into_data_stream(), |c| {
        let c = c.unwrap_or_default();
        futures_util::stream::iter(c.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(|l| serde_json::from_slice::<Value>(l).unwrap_or(Value::Null)).collect::<Vec<_>>())
    });
    let events = futures_util::StreamExt::flat_map(lines, move |line| {
        let mut out = vec![format!("data: {}\n\n", chunk(&id, &line, true))];
        if line["done"] == true {
            if include_usage {
                out.push(format!("data: {}\n\n", usage_chunk(&id, &line, openai_usage(&line))));
            }
            out.push("data: [DONE]\n\n".into());
        }
        futures_util::stream::iter(out.into_iter().map(|s| Ok::<Bytes, std::io::Error>(Bytes::from(s))))
    });
    Response::builder().status(200).header("content-type", "text/event-stream").body(Body::from_stream(events)).unwrap_or_else(|_| unreachable_response())
}

/// openai/openai.go ToCompletion / ToCompleteChunk from one /api/generate line.
fn openai_completion_json(id: &str, line: &Value, chunk: bool) -> Value {
    let reason = line["done_reason"].as_str().filter(|r| !r.is_empty()).map(|r| json!(r)).unwrap_or(Value::Null);
    let mut v = json!({ "id": id, "object": "text_completion", "created": OffsetDateTime::now_utc().unix_timestamp(), "model": line["model"],
        "system_fingerprint": "fp_ollama", "choices": [{ "text": line["response"].as_str().unwrap_or(""), "index": 0, "finish_reason": reason }] });
    if !chunk {
        v["usage"] = openai_usage(line);
    }
    v
}

/// Copies the native error's message into OpenAI's error shape (middleware/openai.go
/// BaseWriter.writeError).
async fn openai_from_native_err(resp: Response) -> Response {
    let status = resp.status();
    let b = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap_or_default();
    let msg = serde_json::from_slice::<Value>(&b).ok().and_then(|v| v["error"].as_str().map(str::to_string)).unwrap_or_default();
    openai_err(status, &msg)
}

/// POST /v1/completions: middleware/openai.go CompletionsMiddleware and
/// openai.FromCompleteRequest turn it into an /api/generate request (max_tokens ->
/// num_predict; temperature and top_p default to 1.0; stop as a list), CompleteWriter turns the
/// answer into a text_completion, or streamed events ending with `data: [DONE]`.
pub(super) async fn v1_completions(State(app): State<App>, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else { return openai_err(StatusCode::BAD_REQUEST, "invalid request") };
    let stream = req["stream"].as_bool().unwrap_or(false);
    let mut options = serde_json::Map::new();
    match &req["stop"] {
        Value::String(s) => {
            options.insert("stop".into(), json!([s]));
        }
        Value::Array(a) => {
            if a.iter().any(|x| !x.is_string()) {
                return openai_err(StatusCode::BAD_REQUEST, "invalid type for 'stop' field");
            }
            options.insert("stop".into(), json!(a));
        }
        _ => {}
    }
    if let Some(n) = req["max_tokens"].as_i64() {
        options.insert("num_predict".into(), json!(n));
    }
    options.insert("temperature".into(), if req["temperature"].is_number() { req["temperature"].clone() } else { json!(1.0) });
    if req["seed"].is_number() {
        options.insert("seed".into(), req["seed"].clone());
    }
    options.insert("frequency_penalty".into(), if req["frequency_penalty"].is_number() { req["frequency_penalty"].clone() } else { json!(0.0) });
    options.insert("presence_penalty".into(), if req["presence_penalty"].is_number() { req["presence_penalty"].clone() } else { json!(0.0) });
    let top_p = req["top_p"].as_f64().filter(|p| *p != 0.0).unwrap_or(1.0);
    options.insert("top_p".into(), json!(top_p));
    let inner = json!({ "model": req["model"], "prompt": req["prompt"].as_str().unwrap_or(""), "stream": stream, "options": options });
    let resp = complete(app, Bytes::from(inner.to_string()), Shape::Generate).await;
    if !resp.status().is_success() {
        return openai_from_native_err(resp).await;
    }
    let id = format!("cmpl-{}", OffsetDateTime::now_utc().nanosecond() % 999);
    if !stream {
        let b = axum::body::to_bytes(resp.into_body(), 16 << 20).await.unwrap_or_default();
        let line: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
        return axum::Json(openai_completion_json(&id, &line, false)).into_response();
    }
    let include_usage = req["stream_options"]["include_usage"].as_bool().unwrap_or(false);
    sse(resp, id, include_usage, openai_completion_json, |id, line, usage| {
        json!({ "id": id, "object": "text_completion", "created": OffsetDateTime::now_utc().unix_timestamp(), "model": line["model"],
                "system_fingerprint": "fp_ollama", "choices": [], "usage": usage })
    })
}

/// POST /v1/embeddings: middleware/openai.go EmbeddingsMiddleware (encoding_format float or
/// base64, input "" means [""], a missing or empty input is refused) in front of EmbedHandler;
/// EmbedWriter and openai.ToEmbeddingList shape the answer (base64: little-endian float32).
pub(super) async fn v1_embeddings(State(app): State<App>, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else { return openai_err(StatusCode::BAD_REQUEST, "invalid request") };
    let format = req["encoding_format"].as_str().unwrap_or("").to_string();
    if !format.is_empty() && !format.eq_ignore_ascii_case("float") && !format.eq_ignore_ascii_case("base64") {
        return openai_err(StatusCode::BAD_REQUEST, &format!("Invalid value for 'encoding_format' = {format}. Supported values: ['float', 'base64']."));
    }
    let input = match &req["input"] {
        Value::String(s) if s.is_empty() => json!([""]),
        Value::Null => return openai_err(StatusCode::BAD_REQUEST, "invalid input"),
        Value::Array(a) if a.is_empty() => return openai_err(StatusCode::BAD_REQUEST, "invalid input"),
        other => other.clone(),
    };
    let inner = json!({ "model": req["model"], "input": input });
    let resp = embed(State(app), Bytes::from(inner.to_string())).await;
    if !resp.status().is_success() {
        return openai_from_native_err(resp).await;
    }
    let b = axum::body::to_bytes(resp.into_body(), 16 << 20).await.unwrap_or_default();
    let native: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
    let data: Vec<Value> = native["embeddings"]
        .as_array()
        .map(|es| {
            es.iter()
                .enumerate()
                .map(|(i, e)| {
                    let floats: Vec<f32> = e.as_array().map(|a| a.iter().map(|x| x.as_f64().unwrap_or(0.0) as f32).collect()).unwrap_or_default();
                    let embedding = if format.eq_ignore_ascii_case("base64") {
                        use base64::Engine;
                        json!(base64::engine::general_purpose::STANDARD.encode(floats.iter().flat_map(|f| f.to_le_bytes()).collect::<Vec<u8>>()))
                    } else {
                        json!(floats)
                    };
                    json!({ "object": "embedding", "embedding": embedding, "index": i })
                })
                .collect()
        })
        .unwrap_or_default();
    let tokens = native["prompt_eval_count"].as_u64().unwrap_or(0);
    axum::Json(json!({ "object": "list", "data": data, "model": req["model"], "usage": { "prompt_tokens": tokens, "total_tokens": tokens } })).into_response()
}

/// GET /v1/models (middleware/openai.go ListMiddleware, openai.ToListCompletion).
pub(super) async fn v1_models(State(app): State<App>) -> Response {
    let st = app.emu.lock();
    let data: Vec<Value> = st.local.iter().map(|(name, m)| json!({ "id": name, "object": "model", "created": m.modified_at.unix_timestamp(), "owned_by": "library" })).collect();
    axum::Json(json!({ "object": "list", "data": data })).into_response()
}
