//! The model servers the dispatcher's tests talk to, checked through reqwest (rustls), the HTTP client a
//! dispatcher would use: the stand-in (a test double for fault injection) answers as Ollama does, and a
//! real Ollama with the real Gemma 3 270M model answers with generated text under two model names.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::OnceCell;
use zerospot_testbed::eventually;
use zerospot_testbed::model_server::{
    RUNNER_TERMINATED, SERVER_BUSY, StandIn, StandInOptions, reply_tokens,
};
use zerospot_testbed::ollama::{Ollama, OllamaOptions};

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()
        .unwrap()
}

/// POSTs `body` as JSON; the future owns what it needs, so it can be spawned.
fn post(url: String, body: &Value) -> impl Future<Output = reqwest::Response> + Send + 'static {
    let body = body.to_string();
    async move {
        client()
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap()
    }
}

async fn get_json(url: String) -> Value {
    let response = client().get(url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json_value().await
}

trait JsonBody {
    async fn json_value(self) -> Value;
}

impl JsonBody for reqwest::Response {
    async fn json_value(self) -> Value {
        let bytes = self.bytes().await.unwrap();
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&bytes)))
    }
}

/// The NDJSON objects of a streamed Ollama reply.
async fn ndjson(response: reqwest::Response) -> Vec<Value> {
    assert_eq!(
        response.headers()["content-type"],
        "application/x-ndjson",
        "Ollama streams NDJSON"
    );
    let text = response.text().await.unwrap();
    assert!(text.ends_with('\n'), "every object ends its line: {text:?}");
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The `data:` payloads of a server-sent event stream.
async fn sse(response: reqwest::Response) -> Vec<String> {
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    assert!(text.ends_with("\n\n"), "{text:?}");
    text.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.strip_prefix("data: ")
                .unwrap_or_else(|| panic!("not a data event: {e:?}"))
                .to_owned()
        })
        .collect()
}

fn content_of(chunks: &[Value], field: &str) -> String {
    chunks
        .iter()
        .map(|c| c.pointer(field).and_then(Value::as_str).unwrap_or_default())
        .collect()
}

fn chat(model: &str, prompt: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": prompt}]})
}

fn with(mut body: Value, key: &str, value: Value) -> Value {
    body[key] = value;
    body
}

// ---------------------------------------------------------------------------------------------------
// The stand-in
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn the_stand_in_streams_api_chat_as_ndjson_by_default_with_ollamas_fields() {
    let server = StandIn::start(StandInOptions::new(["llama3"]).tokens_per_reply(5))
        .await
        .unwrap();
    let response = post(
        format!("{}/api/chat", server.endpoint()),
        &chat("llama3", "why is the sky blue"),
    )
    .await;
    assert_eq!(response.status(), 200);
    let chunks = ndjson(response).await;
    assert_eq!(chunks.len(), 6, "5 tokens and the final object: {chunks:?}");
    for chunk in &chunks[..5] {
        assert_eq!(chunk["model"], "llama3");
        assert_eq!(chunk["message"]["role"], "assistant");
        assert_eq!(chunk["done"], false);
        assert!(chunk["created_at"].as_str().unwrap().ends_with('Z'));
        assert!(chunk.get("done_reason").is_none());
    }
    assert_eq!(
        content_of(&chunks, "/message/content"),
        "why is the sky blue"
    );
    let last = &chunks[5];
    assert_eq!(last["done"], true);
    assert_eq!(last["done_reason"], "stop");
    assert_eq!(last["message"]["content"], "");
    assert_eq!(last["eval_count"], 5);
    assert_eq!(last["prompt_eval_count"], 5);
    for metric in ["total_duration", "load_duration", "eval_duration"] {
        assert!(last[metric].as_u64().unwrap() > 0, "{metric}: {last}");
    }
}

#[tokio::test]
async fn the_stand_in_answers_api_chat_with_one_object_when_not_streaming_and_honours_num_predict()
{
    let server = StandIn::start(StandInOptions::new(["llama3"]).tokens_per_reply(6))
        .await
        .unwrap();
    let response = post(
        format!("{}/api/chat", server.endpoint()),
        &with(chat("llama3:latest", "one two"), "stream", json!(false)),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    let reply = response.json_value().await;
    assert_eq!(reply["model"], "llama3:latest", "the name as asked");
    assert_eq!(reply["message"]["content"], "one two one two one two");
    assert_eq!(reply["message"]["content"], server.reply_to("one two"));
    assert_eq!(reply["done"], true);
    assert_eq!(reply["done_reason"], "stop");

    let mut limited = with(chat("llama3", "one two"), "stream", json!(false));
    limited["options"] = json!({"num_predict": 3});
    let reply = post(format!("{}/api/chat", server.endpoint()), &limited)
        .await
        .json_value()
        .await;
    assert_eq!(reply["message"]["content"], "one two one");
    assert_eq!(reply["done_reason"], "length");
    assert_eq!(reply["eval_count"], 3);
}

#[tokio::test]
async fn the_stand_in_answers_api_generate_streaming_and_not() {
    let server = StandIn::start(StandInOptions::new(["gemma3"]).tokens_per_reply(3))
        .await
        .unwrap();
    let url = format!("{}/api/generate", server.endpoint());
    let chunks = ndjson(
        post(
            url.clone(),
            &json!({"model": "gemma3", "prompt": "hi there"}),
        )
        .await,
    )
    .await;
    assert_eq!(chunks.len(), 4);
    assert_eq!(content_of(&chunks, "/response"), "hi there hi");
    assert!(chunks[..3].iter().all(|c| c["done"] == false));
    assert_eq!(chunks[3]["done"], true);
    assert_eq!(chunks[3]["done_reason"], "stop");
    assert!(chunks[3]["context"].is_array());

    let reply = post(
        url,
        &json!({"model": "gemma3", "prompt": "hi there", "stream": false}),
    )
    .await
    .json_value()
    .await;
    assert_eq!(reply["response"], "hi there hi");
    assert_eq!(reply["done"], true);
    assert_eq!(reply["eval_count"], 3);
}

#[tokio::test]
async fn the_stand_in_answers_openai_chat_completions_as_sse_ending_in_done_and_as_one_completion()
{
    let server = StandIn::start(StandInOptions::new(["gemma3"]).tokens_per_reply(4))
        .await
        .unwrap();
    let url = format!("{}/v1/chat/completions", server.endpoint());
    let mut body = with(chat("gemma3", "a b"), "stream", json!(true));
    body["stream_options"] = json!({"include_usage": true});
    let events = sse(post(url.clone(), &body).await).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(
        chunks.len(),
        6,
        "4 tokens, the finish chunk, the usage chunk"
    );
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["model"], "gemma3");
        assert_eq!(chunk["system_fingerprint"], "fp_ollama");
        assert!(chunk["id"].as_str().unwrap().starts_with("chatcmpl-"));
    }
    assert_eq!(content_of(&chunks, "/choices/0/delta/content"), "a b a b");
    assert!(
        chunks[..4]
            .iter()
            .all(|c| c["choices"][0]["finish_reason"].is_null())
    );
    assert_eq!(chunks[4]["choices"][0]["finish_reason"], "stop");
    assert_eq!(chunks[5]["choices"], json!([]));
    assert_eq!(
        chunks[5]["usage"],
        json!({"prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6})
    );

    // Without `stream` the OpenAI API does not stream.
    let response = post(url, &chat("gemma3", "a b")).await;
    assert_eq!(response.status(), 200);
    let completion = response.json_value().await;
    assert_eq!(completion["object"], "chat.completion");
    assert_eq!(completion["choices"][0]["message"]["role"], "assistant");
    assert_eq!(completion["choices"][0]["message"]["content"], "a b a b");
    assert_eq!(completion["choices"][0]["finish_reason"], "stop");
    assert_eq!(completion["usage"]["completion_tokens"], 4);
}

#[tokio::test]
async fn the_stand_in_lists_served_models_in_tags_and_loaded_ones_in_ps() {
    let server = StandIn::start(StandInOptions::new(["alpha", "beta"]))
        .await
        .unwrap();
    let base = server.endpoint().to_owned();
    let tags = get_json(format!("{base}/api/tags")).await;
    let names: Vec<&str> = tags["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["alpha:latest", "beta:latest"]);
    assert_eq!(
        get_json(format!("{base}/api/ps")).await["models"],
        json!([])
    );

    // Ollama's model-load call: /api/generate without a prompt.
    let loaded = post(format!("{base}/api/generate"), &json!({"model": "beta"}))
        .await
        .json_value()
        .await;
    assert_eq!(loaded["done"], true);
    assert_eq!(loaded["done_reason"], "load");
    assert_eq!(loaded["response"], "");
    let ps = get_json(format!("{base}/api/ps")).await;
    assert_eq!(ps["models"].as_array().unwrap().len(), 1, "{ps}");
    assert_eq!(ps["models"][0]["name"], "beta:latest");

    let show = post(format!("{base}/api/show"), &json!({"model": "alpha"})).await;
    assert_eq!(show.status(), 200);
    assert_eq!(
        show.json_value().await["capabilities"],
        json!(["completion"])
    );
    let models = get_json(format!("{base}/v1/models")).await;
    assert_eq!(models["data"][1]["id"], "beta:latest");
    let root = client().get(format!("{base}/")).send().await.unwrap();
    assert_eq!(root.text().await.unwrap(), "Ollama is running");
}

#[tokio::test]
async fn an_unknown_or_missing_model_is_answered_with_ollamas_error_json() {
    let server = StandIn::start(StandInOptions::new(["known"]))
        .await
        .unwrap();
    let base = server.endpoint().to_owned();
    let response = post(format!("{base}/api/chat"), &chat("nope", "hi")).await;
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.json_value().await,
        json!({"error": "model 'nope' not found"})
    );
    let response = post(format!("{base}/api/generate"), &json!({"prompt": "hi"})).await;
    assert_eq!(response.status(), 400);
    assert_eq!(
        response.json_value().await,
        json!({"error": "model is required"})
    );
    let response = post(format!("{base}/v1/chat/completions"), &chat("nope", "hi")).await;
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.json_value().await,
        json!({"error": {"message": "model 'nope' not found", "type": "api_error", "param": null, "code": null}})
    );
    let response = post(format!("{base}/api/show"), &json!({"model": "nope"})).await;
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn the_first_request_blocks_while_the_model_loads_and_reports_the_wait_as_load_duration() {
    let load = Duration::from_millis(700);
    let server = StandIn::start(StandInOptions::new(["slow"]).load_time(load))
        .await
        .unwrap();
    let url = format!("{}/api/chat", server.endpoint());
    let body = with(chat("slow", "hello"), "stream", json!(false));

    // Two requests arrive during one load: both wait for it, neither gets an error.
    let started = Instant::now();
    let (a, b) = tokio::join!(post(url.clone(), &body), post(url.clone(), &body));
    let took = started.elapsed();
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    assert!(
        took >= load,
        "answered after {took:?}, before the load ended"
    );
    let a = a.json_value().await;
    assert!(a["load_duration"].as_u64().unwrap() >= 700_000_000, "{a}");
    assert_eq!(server.load_count(), 1, "one load for both");

    // Loaded: the next answer does not wait.
    let started = Instant::now();
    let c = post(url.clone(), &body).await.json_value().await;
    assert!(started.elapsed() < load / 2, "{:?}", started.elapsed());
    assert!(c["load_duration"].as_u64().unwrap() < 100_000_000, "{c}");

    // Unloaded (keep-alive expired, pod restarted): it loads again.
    server.unload();
    let started = Instant::now();
    assert_eq!(post(url, &body).await.status(), 200);
    assert!(started.elapsed() >= load);
    assert_eq!(server.load_count(), 2);
}

#[tokio::test]
async fn streamed_tokens_arrive_one_token_latency_apart_not_all_at_the_end() {
    let latency = Duration::from_millis(120);
    let server = StandIn::start(
        StandInOptions::new(["m"])
            .tokens_per_reply(5)
            .token_latency(latency),
    )
    .await
    .unwrap();
    let started = Instant::now();
    let response = post(format!("{}/api/chat", server.endpoint()), &chat("m", "x")).await;
    let mut arrivals = Vec::new();
    let mut stream = response.bytes_stream();
    let mut buffer = Vec::new();
    while let Some(bytes) = stream.next().await {
        buffer.extend_from_slice(&bytes.unwrap());
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let object: Value = serde_json::from_slice(&line).unwrap();
            arrivals.push((started.elapsed(), object["done"] == true));
        }
    }
    assert_eq!(arrivals.len(), 6);
    assert!(arrivals[5].1, "the last object is done");
    let (first, last) = (arrivals[0].0, arrivals[5].0);
    assert!(first >= latency, "first token after one latency: {first:?}");
    assert!(
        last - first >= latency * 3,
        "tokens were not streamed as generated: {arrivals:?}"
    );
}

#[tokio::test]
async fn the_next_n_requests_fail_with_http_500_and_then_the_server_answers_again() {
    let server = StandIn::start(StandInOptions::new(["m"])).await.unwrap();
    let base = server.endpoint().to_owned();
    server.fail_next(2);
    for _ in 0..2 {
        let response = post(format!("{base}/api/chat"), &chat("m", "hi")).await;
        assert_eq!(response.status(), 500);
        assert_eq!(
            response.json_value().await,
            json!({"error": RUNNER_TERMINATED})
        );
    }
    assert_eq!(
        post(format!("{base}/api/chat"), &chat("m", "hi"))
            .await
            .status(),
        200
    );

    server.fail_next_with(1, 503, "no slot");
    let response = post(format!("{base}/v1/chat/completions"), &chat("m", "hi")).await;
    assert_eq!(response.status(), 503);
    assert_eq!(
        response.json_value().await["error"],
        json!({"message": "no slot", "type": "api_error", "param": null, "code": null})
    );
    // Listing models is not a generation: never failed.
    server.fail_next(1);
    assert_eq!(
        client()
            .get(format!("{base}/api/tags"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        post(
            format!("{base}/api/generate"),
            &json!({"model": "m", "prompt": "x"})
        )
        .await
        .status(),
        500
    );
}

#[tokio::test]
async fn a_dropped_connection_cuts_the_stream_after_k_tokens_with_no_final_object() {
    let server = StandIn::start(StandInOptions::new(["m"]).tokens_per_reply(8))
        .await
        .unwrap();
    let base = server.endpoint().to_owned();
    server.drop_next(2, 3);

    // Streaming: three chunks arrive, then the body fails; nothing says done.
    let response = post(format!("{base}/api/chat"), &chat("m", "a b c d")).await;
    assert_eq!(response.status(), 200);
    let mut stream = response.bytes_stream();
    let mut received = Vec::new();
    let mut failed = None;
    while let Some(bytes) = stream.next().await {
        match bytes {
            Ok(bytes) => received.extend_from_slice(&bytes),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let error = failed.expect("the body ends in an error, not a clean end");
    assert!(error.is_body() || error.is_decode(), "{error:?}");
    let lines: Vec<Value> = received
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(content_of(&lines, "/message/content"), "a b c");
    assert!(lines.iter().all(|l| l["done"] == false));

    // Not streaming: no response at all.
    let error = client()
        .post(format!("{base}/api/chat"))
        .body(with(chat("m", "a"), "stream", json!(false)).to_string())
        .send()
        .await
        .expect_err("the connection closes without a response");
    assert!(!error.is_timeout(), "{error:?}");

    // Then it answers in full again.
    let chunks = ndjson(post(format!("{base}/api/chat"), &chat("m", "a b c d")).await).await;
    assert_eq!(chunks.last().unwrap()["done"], true);
}

#[tokio::test]
async fn an_openai_stream_can_be_cut_too_and_never_sends_done() {
    let server = StandIn::start(StandInOptions::new(["m"])).await.unwrap();
    server.drop_next(1, 2);
    let response = post(
        format!("{}/v1/chat/completions", server.endpoint()),
        &with(chat("m", "p q r"), "stream", json!(true)),
    )
    .await;
    let mut stream = response.bytes_stream();
    let mut text = Vec::new();
    let mut failed = false;
    while let Some(bytes) = stream.next().await {
        match bytes {
            Ok(bytes) => text.extend_from_slice(&bytes),
            Err(_) => failed = true,
        }
    }
    let text = String::from_utf8(text).unwrap();
    assert!(failed);
    assert_eq!(text.matches("data: ").count(), 2, "{text}");
    assert!(!text.contains("[DONE]"));
}

#[tokio::test]
async fn with_one_parallel_slot_requests_queue_and_generate_one_at_a_time() {
    let server = StandIn::start(
        StandInOptions::new(["m"])
            .tokens_per_reply(4)
            .token_latency(Duration::from_millis(50)),
    )
    .await
    .unwrap();
    let url = format!("{}/api/chat", server.endpoint());
    let body = with(chat("m", "x"), "stream", json!(false));
    let started = Instant::now();
    let answers = futures::future::join_all((0..3).map(|_| post(url.clone(), &body))).await;
    let took = started.elapsed();
    assert!(answers.iter().all(|a| a.status() == 200));
    assert_eq!(server.peak_concurrency(), 1);
    assert!(
        took >= Duration::from_millis(600),
        "queued one after another: {took:?}"
    );
}

#[tokio::test]
async fn with_three_parallel_slots_three_requests_generate_at_once() {
    let server = StandIn::start(
        StandInOptions::new(["m"])
            .tokens_per_reply(4)
            .token_latency(Duration::from_millis(100))
            .parallel(3),
    )
    .await
    .unwrap();
    let url = format!("{}/api/chat", server.endpoint());
    let body = with(chat("m", "x"), "stream", json!(false));
    let started = Instant::now();
    let answers = futures::future::join_all((0..3).map(|_| post(url.clone(), &body))).await;
    assert!(answers.iter().all(|a| a.status() == 200));
    assert_eq!(server.peak_concurrency(), 3);
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn beyond_the_queue_limit_a_request_is_refused_with_503_server_busy() {
    let server = StandIn::start(
        StandInOptions::new(["m"])
            .tokens_per_reply(10)
            .token_latency(Duration::from_millis(100))
            .max_queue(1),
    )
    .await
    .unwrap();
    let url = format!("{}/api/chat", server.endpoint());
    let body = with(chat("m", "x"), "stream", json!(false));
    let first = tokio::spawn(post(url.clone(), &body));
    eventually(
        "the first request to generate",
        Duration::from_secs(5),
        || async {
            (server.peak_concurrency() == 1)
                .then_some(())
                .ok_or("not yet")
        },
    )
    .await
    .unwrap();
    let second = tokio::spawn(post(url.clone(), &body));
    eventually(
        "the second request to wait",
        Duration::from_secs(5),
        || async { (server.waiting() == 1).then_some(()).ok_or("not yet") },
    )
    .await
    .unwrap();
    let third = post(url, &body).await;
    assert_eq!(third.status(), 503);
    assert_eq!(third.json_value().await, json!({"error": SERVER_BUSY}));
    assert_eq!(first.await.unwrap().status(), 200);
    assert_eq!(second.await.unwrap().status(), 200);
}

#[tokio::test]
async fn every_request_is_recorded_byte_for_byte_even_when_failed() {
    let server = StandIn::start(StandInOptions::new(["m"])).await.unwrap();
    // A number no f64 holds, as in issue 9: what the client sent must be what the model got.
    let body = r#"{"model":"m", "messages":[{"role":"user","content":"hi"}],
        "options":{"seed":7777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777777770.2},"stream":false}"#;
    server.fail_next(1);
    for expected in [500, 200] {
        let response = client()
            .post(format!("{}/api/chat?trace=1", server.endpoint()))
            .header("content-type", "application/json")
            .header("x-request-id", "r-1")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected);
    }
    let recorded = server.requests();
    assert_eq!(recorded.len(), 2);
    for request in &recorded {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/api/chat?trace=1");
        assert_eq!(request.body, body.as_bytes());
        assert_eq!(request.header("X-Request-Id"), Some("r-1"));
    }
    assert_eq!(recorded[0].json().unwrap()["model"], "m");
    assert_eq!(server.requests_to("/api/chat?trace=1").len(), 2);
}

#[test]
fn the_stand_in_reply_is_the_prompt_repeated_to_the_token_count() {
    assert_eq!(reply_tokens("to be", 3).concat(), "to be to");
}

// ---------------------------------------------------------------------------------------------------
// The real Ollama
// ---------------------------------------------------------------------------------------------------

const ALICE: &str = "You are Alice. Answer in one short sentence.";
const BOB: &str = "You are Bob, a pirate. Answer in one short sentence.";

/// One Ollama for this test binary, with two model names over the one GGUF; the guardian stops it
/// when the binary exits.
async fn ollama() -> &'static Ollama {
    static OLLAMA: OnceCell<Ollama> = OnceCell::const_new();
    OLLAMA
        .get_or_init(|| async {
            zerospot_testbed::init_tracing();
            let ollama = Ollama::start_with(
                OllamaOptions::new(&[("alice", ALICE), ("bob", BOB)]).num_parallel(2),
            )
            .await
            .unwrap();
            println!(
                "ollama up with 2 models in {:.2} s",
                ollama.start_time().as_secs_f64()
            );
            ollama
        })
        .await
}

/// Generation options that keep answers short (so the tests take seconds on 2 CPU cores) and
/// deterministic.
fn short() -> Value {
    json!({"num_predict": 24, "temperature": 0, "seed": 42})
}

#[tokio::test]
async fn two_model_names_over_one_gguf_each_answer_api_chat_with_real_text_under_their_system_prompt()
 {
    let ollama = ollama().await;
    for (model, system) in [("alice", ALICE), ("bob", BOB)] {
        let show = post(
            format!("{}/api/show", ollama.endpoint()),
            &json!({"model": model}),
        )
        .await
        .json_value()
        .await;
        assert_eq!(show["system"], system, "{model}'s Modelfile SYSTEM");
        assert_eq!(show["details"]["family"], "gemma3", "{show}");
        assert_eq!(show["details"]["quantization_level"], "Q4_K_M", "{show}");
        let parameters = show["parameters"].as_str().unwrap();
        assert!(
            parameters.contains("<end_of_turn>") && parameters.contains("num_thread"),
            "{parameters}"
        );

        // The SYSTEM prompt reaches the model: Ollama renders it into the prompt it evaluates.
        let rendered = post(
            format!("{}/api/chat", ollama.endpoint()),
            &json!({"model": model, "messages": [{"role": "user", "content": "Hi"}],
                    "stream": false, "_debug_render_only": true}),
        )
        .await
        .json_value()
        .await;
        assert_eq!(
            rendered["_debug_info"]["rendered_template"],
            format!(
                "<start_of_turn>user\n{system}<end_of_turn>\n<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
            ),
        );

        let mut body = with(
            chat(model, "Say hello to the crew."),
            "stream",
            json!(false),
        );
        body["options"] = short();
        let response = post(format!("{}/api/chat", ollama.endpoint()), &body).await;
        assert_eq!(response.status(), 200);
        let reply = response.json_value().await;
        println!("{model}: {:?}", reply["message"]["content"]);
        assert_eq!(reply["model"], model);
        assert_eq!(reply["done"], true);
        assert!(
            matches!(reply["done_reason"].as_str(), Some("stop" | "length")),
            "{reply}"
        );
        let content = reply["message"]["content"].as_str().unwrap();
        assert!(!content.trim().is_empty(), "{reply}");
        assert!(reply["eval_count"].as_u64().unwrap() > 0);
        assert!(reply["prompt_eval_count"].as_u64().unwrap() > 0);
    }
    let tags = get_json(format!("{}/api/tags", ollama.endpoint())).await;
    let mut names: Vec<&str> = tags["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["alice:latest", "bob:latest"]);
}

#[tokio::test]
async fn ollama_streams_api_chat_as_ndjson_token_by_token() {
    let ollama = ollama().await;
    let mut body = chat("bob", "Where is the treasure?");
    body["options"] = short();
    let chunks = ndjson(post(format!("{}/api/chat", ollama.endpoint()), &body).await).await;
    let (last, tokens) = chunks.split_last().unwrap();
    assert!(tokens.len() >= 2, "streamed in pieces: {chunks:?}");
    assert!(
        tokens
            .iter()
            .all(|c| c["done"] == false && c["model"] == "bob")
    );
    assert_eq!(last["done"], true);
    assert!(last["eval_count"].as_u64().unwrap() >= 2);
    assert!(last["total_duration"].as_u64().unwrap() > 0);
    let text = content_of(&chunks, "/message/content");
    println!("bob streamed: {text:?}");
    assert!(!text.trim().is_empty());
}

#[tokio::test]
async fn ollama_answers_api_generate_with_real_text() {
    let ollama = ollama().await;
    let response = post(
        format!("{}/api/generate", ollama.endpoint()),
        &json!({"model": "alice", "prompt": "The capital of France is", "stream": false, "options": short()}),
    )
    .await;
    assert_eq!(response.status(), 200);
    let reply = response.json_value().await;
    println!("alice generated: {:?}", reply["response"]);
    assert_eq!(reply["done"], true);
    assert!(
        !reply["response"].as_str().unwrap().trim().is_empty(),
        "{reply}"
    );
    assert!(reply["eval_count"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn ollama_answers_openai_chat_completions_streaming_and_not() {
    let ollama = ollama().await;
    let url = format!("{}/v1/chat/completions", ollama.endpoint());
    let mut body = chat("alice", "Name a colour.");
    body["max_tokens"] = json!(16);
    body["temperature"] = json!(0);
    let completion = post(url.clone(), &body).await.json_value().await;
    assert_eq!(completion["object"], "chat.completion");
    let content = completion["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    println!("alice (OpenAI API): {content:?}");
    assert!(!content.trim().is_empty(), "{completion}");
    assert!(completion["usage"]["completion_tokens"].as_u64().unwrap() > 0);

    body["stream"] = json!(true);
    let events = sse(post(url, &body).await).await;
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks.len() >= 2);
    assert!(
        chunks
            .iter()
            .all(|c| c["object"] == "chat.completion.chunk")
    );
    assert!(
        !content_of(&chunks, "/choices/0/delta/content")
            .trim()
            .is_empty()
    );
    assert!(!chunks.last().unwrap()["choices"][0]["finish_reason"].is_null());
}

#[tokio::test]
async fn a_fresh_ollama_loads_in_seconds_generates_and_leaves_no_process_or_folder_when_dropped() {
    zerospot_testbed::init_tracing();
    let ollama = Ollama::start(&[("gauge", "")]).await.unwrap();
    let load = ollama.load("gauge").await.unwrap();
    let processes = ollama.processes();
    assert!(
        processes.len() >= 2,
        "ollama serve and its model runner: {processes:?}"
    );
    let reply = post(
        format!("{}/api/generate", ollama.endpoint()),
        &json!({"model": "gauge", "prompt": "Once upon a time", "stream": false,
                "options": {"num_predict": 64, "temperature": 0}}),
    )
    .await
    .json_value()
    .await;
    let tokens = reply["eval_count"].as_f64().unwrap();
    let seconds = reply["eval_duration"].as_f64().unwrap() / 1e9;
    let prompt_rate = reply["prompt_eval_count"].as_f64().unwrap()
        / (reply["prompt_eval_duration"].as_f64().unwrap() / 1e9);
    println!(
        "ollama: start (serve + create) {:.2} s, model load {:.2} s, generation {tokens} tokens at {:.1} tokens/s, prompt {prompt_rate:.1} tokens/s",
        ollama.start_time().as_secs_f64(),
        load.as_secs_f64(),
        tokens / seconds
    );
    assert!(load < Duration::from_secs(60), "{load:?}");
    assert!(
        reply["done_reason"] == "length" && tokens == 64.0 || reply["done_reason"] == "stop",
        "{reply}"
    );
    assert!(
        !reply["response"].as_str().unwrap().trim().is_empty(),
        "{reply}"
    );

    let dir: PathBuf = ollama.dir().unwrap().to_owned();
    drop(ollama);
    let alive: Vec<u32> = processes.into_iter().filter(|p| alive(*p)).collect();
    assert!(alive.is_empty(), "still running: {alive:?}");
    assert!(!dir.exists(), "{} was not removed", dir.display());
}

#[tokio::test]
async fn a_killed_owner_leaves_no_ollama_or_model_runner_behind() {
    let mut owner = Command::new(env!("CARGO_BIN_EXE_zerospot-ollama"))
        .args(["--load", "victim=You are a test."])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(owner.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut dir = None;
        for line in stdout.lines().map_while(Result::ok) {
            if let Some(d) = line.strip_prefix("# dir ") {
                dir = Some(PathBuf::from(d));
            }
            if let Some(pids) = line.strip_prefix("# processes ") {
                let pids: Vec<u32> = pids.split(' ').map(|p| p.parse().unwrap()).collect();
                let _ = tx.send((dir.clone(), pids));
            }
        }
    });
    let (dir, pids) =
        tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(180)))
            .await
            .unwrap()
            .expect("the owner started Ollama and loaded the model");
    let dir = dir.expect("the owner printed its folder");
    assert!(pids.len() >= 2, "ollama serve and its runner: {pids:?}");
    assert!(pids.iter().all(|p| alive(*p)));

    owner.kill().unwrap();
    owner.wait().unwrap();
    eventually(
        "Ollama's processes to be stopped by the guardian",
        Duration::from_secs(15),
        || async {
            let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("still running: {left:?}"))
            }
        },
    )
    .await
    .unwrap();
    eventually(
        "Ollama's folder to be removed",
        Duration::from_secs(5),
        || async {
            if dir.exists() {
                Err("still there")
            } else {
                Ok(())
            }
        },
    )
    .await
    .unwrap();
}

/// Whether `pid` is a live process (not gone, not a zombie).
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}
