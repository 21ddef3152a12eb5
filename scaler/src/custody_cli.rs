//! `zerospot dispatcher`, `zerospot submit` and `zerospot converse`: thin wiring of zerospot-custody.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chrono::Utc;
use zerospot_core::request::{ChatMessage, Input, Request};
use zerospot_custody::client::{submit, wait_for_reply};
use zerospot_custody::queue::SdkQueue;
use zerospot_custody::reply::ReplyKind;
use zerospot_effects::ScalerConfig;

use crate::Failure;

/// Options of `zerospot dispatcher`.
#[derive(Debug, clap::Args)]
pub(crate) struct DispatcherArgs {
    /// The configuration file (models with their queues and endpoints; the `dispatcher` section).
    #[arg(long, env = "ZEROSPOT_CONFIG", value_name = "FILE")]
    config: PathBuf,
    /// Address of /metrics and /healthz.
    #[arg(long, env = "ZEROSPOT_LISTEN", default_value = "0.0.0.0:9091")]
    listen: SocketAddr,
    /// This replica's name in Events.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Log format: json (default) or text.
    #[arg(long, env = "ZEROSPOT_LOG_FORMAT", default_value = "json")]
    log_format: String,
    /// Run without Kubernetes: each model's `endpoint` (required) offers `concurrency` slots and is
    /// taken as ready; no wake-ups, no Node annotations. For a single GPU box whose model servers
    /// listen at fixed addresses.
    #[arg(long, env = "ZEROSPOT_NO_CLUSTER")]
    no_cluster: bool,
}

/// Options of `zerospot submit`.
#[derive(Debug, clap::Args)]
pub(crate) struct SubmitArgs {
    /// The model's request queue URL (or give --config and the model's queue is looked up).
    #[arg(long, env = "ZEROSPOT_QUEUE_URL")]
    queue_url: Option<String>,
    /// A configuration file to find the model's queue in.
    #[arg(long, env = "ZEROSPOT_CONFIG")]
    config: Option<PathBuf>,
    /// The queue the reply goes to (it must be in the dispatcher's allow-list).
    #[arg(long, env = "ZEROSPOT_REPLY_QUEUE")]
    reply_queue: String,
    /// Model name.
    #[arg(long)]
    model: String,
    /// The prompt (Ollama /api/generate); or use --message.
    #[arg(long, conflicts_with = "message")]
    prompt: Option<String>,
    /// A chat message as ROLE:TEXT (repeatable; Ollama /api/chat).
    #[arg(long)]
    message: Vec<String>,
    /// Model options as a JSON object, passed through unchanged.
    #[arg(long)]
    options: Option<String>,
    /// Stream the reply as it is generated.
    #[arg(long)]
    stream: bool,
    /// Give up (with a timeout reply) after this many seconds.
    #[arg(long, default_value_t = 900)]
    deadline_s: i64,
    /// Only put the request on the queue; do not wait for the reply.
    #[arg(long)]
    no_wait: bool,
    /// Request id (default: a fresh one).
    #[arg(long)]
    id: Option<String>,
}

/// Options of `zerospot converse`.
#[derive(Debug, clap::Args)]
pub(crate) struct ConverseArgs {
    /// The configuration file (to find each model's queue).
    #[arg(long, env = "ZEROSPOT_CONFIG")]
    config: PathBuf,
    /// The two models, A,B.
    #[arg(long, value_delimiter = ',', required = true)]
    models: Vec<String>,
    /// Turns (one reply each).
    #[arg(long, default_value_t = 4)]
    turns: u32,
    /// What they talk about.
    #[arg(long, default_value = "why the sky is blue")]
    topic: String,
    /// The reply queue.
    #[arg(long, env = "ZEROSPOT_REPLY_QUEUE")]
    reply_queue: String,
    /// Model options (JSON object) for every turn, e.g. {"num_predict":64}.
    #[arg(long)]
    options: Option<String>,
    /// Seconds each turn may take.
    #[arg(long, default_value_t = 900)]
    deadline_s: i64,
}

fn fresh_id() -> String {
    format!(
        "req-{}-{}",
        Utc::now().timestamp_millis(),
        std::process::id()
    )
}

fn queue_for(
    config: Option<&PathBuf>,
    explicit: Option<&String>,
    model: &str,
) -> Result<String, Failure> {
    if let Some(url) = explicit {
        return Ok(url.clone());
    }
    let Some(path) = config else {
        return Err(Failure::input(anyhow::anyhow!(
            "give --queue-url or --config"
        )));
    };
    let config = ScalerConfig::load(path)
        .map_err(|e| Failure::input(anyhow::anyhow!("{}: {e}", path.display())))?;
    config
        .models
        .iter()
        .find(|m| m.name == model)
        .and_then(|m| m.queue_url.clone())
        .ok_or_else(|| {
            Failure::input(anyhow::anyhow!(
                "model {model:?} has no queue_url in {}",
                path.display()
            ))
        })
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    Ok(tokio::runtime::Runtime::new().map_err(anyhow::Error::from)?)
}

pub(crate) fn dispatcher(args: DispatcherArgs) -> Result<(), Failure> {
    let config = ScalerConfig::load(&args.config)
        .map_err(|e| Failure::input(anyhow::anyhow!("{}: {e}", args.config.display())))?;
    crate::run_scaler::init_logs(&args.log_format);
    let identity = args.identity.unwrap_or_else(|| {
        std::env::var("HOSTNAME")
            .unwrap_or_else(|_| format!("zerospot-dispatcher-{}", std::process::id()))
    });
    if args.no_cluster {
        return runtime()?.block_on(async move {
            let aws = aws_config::load_from_env().await;
            zerospot_custody::service::run_without_cluster(
                config,
                &aws,
                args.listen,
                crate::run_scaler::shutdown_signal(),
            )
            .await
            .map_err(|e| match e {
                zerospot_custody::service::ServiceError::Config(_) => {
                    Failure::input(anyhow::Error::from(e))
                }
                e => Failure::from(anyhow::Error::from(e)),
            })
        });
    }
    runtime()?.block_on(async move {
        let kube_config = kube::Config::infer().await.map_err(|e| {
            anyhow::anyhow!("no Kubernetes configuration (KUBECONFIG or in-cluster): {e}")
        })?;
        let aws = aws_config::load_from_env().await;
        zerospot_custody::service::run(
            config,
            kube_config,
            &aws,
            args.listen,
            identity,
            crate::run_scaler::shutdown_signal(),
        )
        .await
        .map_err(anyhow::Error::from)
    })?;
    Ok(())
}

fn build_request(
    model: &str,
    input: Input,
    options: Option<&str>,
    stream: bool,
    reply_to: &str,
    deadline_s: i64,
    id: String,
) -> Result<Request, Failure> {
    let options = match options {
        Some(o) => Some(zerospot_core::request::RawOptions::from_json(o).map_err(Failure::input)?),
        None => None,
    };
    let request = Request {
        version: zerospot_core::request::CURRENT_VERSION,
        id,
        model: model.to_owned(),
        input,
        options,
        stream,
        reply_to: Some(reply_to.to_owned()),
        deadline: Some(Utc::now() + chrono::Duration::seconds(deadline_s.max(1))),
        attempt: 0,
    };
    // What the dispatcher will read must be valid.
    Request::parse(&request.to_body(), Utc::now()).map_err(Failure::input)?;
    Ok(request)
}

pub(crate) fn submit_cmd(args: SubmitArgs) -> Result<(), Failure> {
    let queue_url = queue_for(args.config.as_ref(), args.queue_url.as_ref(), &args.model)?;
    let input = match (&args.prompt, args.message.is_empty()) {
        (Some(p), true) => Input::Prompt(p.clone()),
        (None, false) => {
            let mut messages = Vec::new();
            for m in &args.message {
                let (role, content) = m.split_once(':').ok_or_else(|| {
                    Failure::input(anyhow::anyhow!(
                        "--message {m:?}: write ROLE:TEXT, e.g. user:hello"
                    ))
                })?;
                messages.push(ChatMessage {
                    role: role.trim().to_owned(),
                    content: content.to_owned(),
                });
            }
            Input::Chat(messages)
        }
        _ => {
            return Err(Failure::input(anyhow::anyhow!(
                "give --prompt or one or more --message ROLE:TEXT"
            )));
        }
    };
    let request = build_request(
        &args.model,
        input,
        args.options.as_deref(),
        args.stream,
        &args.reply_queue,
        args.deadline_s,
        args.id.clone().unwrap_or_else(fresh_id),
    )?;
    runtime()?.block_on(async move {
        let aws = aws_config::load_from_env().await;
        let queue = SdkQueue::new(&aws);
        let message_id = submit(&queue, &queue_url, &request)
            .await
            .map_err(anyhow::Error::from)?;
        eprintln!(
            "zerospot: request {} queued (message {message_id})",
            request.id
        );
        if args.no_wait {
            println!("{}", request.id);
            return Ok(());
        }
        let within = Duration::from_secs(u64::try_from(args.deadline_s).unwrap_or(900) + 30);
        let reply = wait_for_reply(&queue, &args.reply_queue, &request.id, within, |piece| {
            print!("{piece}");
            let _ = std::io::stdout().flush();
        })
        .await
        .map_err(anyhow::Error::from)?;
        finish(&reply, args.stream)
    })?;
    Ok(())
}

fn finish(reply: &zerospot_custody::reply::Reply, streamed: bool) -> Result<(), anyhow::Error> {
    match reply.kind {
        ReplyKind::Final => {
            if streamed {
                println!();
            } else {
                println!("{}", reply.content);
            }
            if let Some(t) = &reply.timings {
                eprintln!(
                    "zerospot: queued {:.1}s (waiting for capacity {:.1}s), first token {:.2}s, total {:.1}s, attempt {}",
                    t.queued_s, t.waiting_for_capacity_s, t.first_token_s, t.total_s, t.attempt
                );
            }
            Ok(())
        }
        kind => Err(anyhow::anyhow!(
            "{}: {}",
            kind.as_str(),
            reply.error.clone().unwrap_or_default()
        )),
    }
}

pub(crate) fn converse(args: ConverseArgs) -> Result<(), Failure> {
    let (a, b) = match args.models.as_slice() {
        [a, b] => (a.clone(), b.clone()),
        _ => {
            return Err(Failure::input(anyhow::anyhow!(
                "--models takes two names, A,B"
            )));
        }
    };
    let queues = [
        queue_for(Some(&args.config), None, &a)?,
        queue_for(Some(&args.config), None, &b)?,
    ];
    runtime()?.block_on(async move {
        let aws = aws_config::load_from_env().await;
        let queue = SdkQueue::new(&aws);
        // The dialogue so far, as each speaker sees it: its own lines as assistant, the other's as user.
        let mut lines: Vec<(usize, String)> = Vec::new();
        let opening = format!("Let's talk about {}. What do you think?", args.topic);
        println!("[topic] {}", args.topic);
        for turn in 0..args.turns {
            let speaker = usize::try_from(turn % 2).unwrap_or(0);
            let name = if speaker == 0 { &a } else { &b };
            let mut messages = vec![ChatMessage {
                role: "system".into(),
                content: format!("You are {name}, in a friendly conversation about {}. Answer in two or three sentences.", args.topic),
            }];
            if lines.is_empty() {
                messages.push(ChatMessage { role: "user".into(), content: opening.clone() });
            }
            for (who, text) in &lines {
                let role = if *who == speaker { "assistant" } else { "user" };
                messages.push(ChatMessage { role: role.into(), content: text.clone() });
            }
            let request = build_request(
                name,
                Input::Chat(messages),
                args.options.as_deref(),
                true,
                &args.reply_queue,
                args.deadline_s,
                format!("{}-turn{turn}", fresh_id()),
            )?;
            submit(&queue, &queues[speaker], &request).await.map_err(anyhow::Error::from)?;
            print!("[{name}] ");
            let _ = std::io::stdout().flush();
            let within = Duration::from_secs(u64::try_from(args.deadline_s).unwrap_or(900) + 30);
            let reply = wait_for_reply(&queue, &args.reply_queue, &request.id, within, |piece| {
                print!("{piece}");
                let _ = std::io::stdout().flush();
            })
            .await
            .map_err(anyhow::Error::from)?;
            finish(&reply, true)?;
            lines.push((speaker, reply.content.clone()));
        }
        Ok::<(), Failure>(())
    })?;
    Ok(())
}
