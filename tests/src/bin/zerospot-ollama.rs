//! Starts a real Ollama (from `bash tests/bed/setup-ollama.sh`) for a person or another process to use,
//! prints how to reach it, and keeps it up until Ctrl-C or SIGTERM.
//!
//! Usage: `zerospot-ollama [--load] [NAME=SYSTEM ...]` (default: one model `gemma3` with no SYSTEM
//! prompt). `--load` loads every model before printing, so its runner is up.

use tokio::signal::unix::{SignalKind, signal};
use zerospot_testbed::ollama::{Ollama, OllamaOptions};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    zerospot_testbed::init_tracing();
    let mut load = false;
    let mut models: Vec<(String, String)> = Vec::new();
    for arg in std::env::args().skip(1) {
        if arg == "--load" {
            load = true;
        } else {
            let (name, system) = arg.split_once('=').unwrap_or((arg.as_str(), ""));
            models.push((name.to_owned(), system.to_owned()));
        }
    }
    if models.is_empty() {
        models.push(("gemma3".to_owned(), String::new()));
    }
    let pairs: Vec<(&str, &str)> = models
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_str()))
        .collect();
    let ollama = Ollama::start_with(OllamaOptions::new(&pairs)).await?;
    if load {
        for (name, _) in &models {
            let took = ollama.load(name).await?;
            println!("# loaded {name} in {:.2} s", took.as_secs_f64());
        }
    }
    println!(
        "# ollama ready in {:.1} s",
        ollama.start_time().as_secs_f64()
    );
    println!("export OLLAMA_HOST={}", ollama.endpoint());
    if let Some(dir) = ollama.dir() {
        println!("# dir {}", dir.display());
    }
    let pids: Vec<String> = ollama.processes().iter().map(u32::to_string).collect();
    println!("# processes {}", pids.join(" "));
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    println!("# stopping ollama");
    drop(ollama);
    Ok(())
}
