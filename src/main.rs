//! The `sidecache` command: `sidecache [--config FILE]` runs, `sidecache check` validates,
//! `sidecache demo` runs with an example backend and prints what to try.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sidecache::app::App;
use sidecache::config::{Config, LogFormat};
use sidecache::demo::Demo;

#[derive(Parser)]
#[command(
    name = "sidecache",
    version,
    about = "A sidecar caching proxy for Kubernetes."
)]
struct Cli {
    /// Config file (TOML). Without it, the embedded default (config/sidecache.toml) runs.
    #[arg(long, short, global = true, env = "SIDECACHE_CONFIG")]
    config: Option<PathBuf>,
    /// Log format: `human` or `json` (overrides `[log] format` and SIDECACHE_LOG_FORMAT).
    #[arg(long, global = true, value_parser = ["human", "json"])]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run,
    /// Validate the config, print every problem, and exit non-zero if there is any.
    Check,
    /// Run the proxy with an example backend on the upstream address, and print requests to try.
    Demo,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let source = cli.config.as_ref().map_or_else(
        || "the embedded default config".to_string(),
        |p| p.display().to_string(),
    );
    let mut config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("sidecache: {source}: {errors}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Check) = cli.command {
        println!(
            "{source}: OK ({} route(s), upstream {})",
            config.routes.len(),
            config.upstream.url
        );
        if !config.warnings.is_empty() {
            println!("{} warning(s):", config.warnings.len());
            for w in &config.warnings {
                println!("  - {w}");
            }
        }
        return ExitCode::SUCCESS;
    }
    match cli.log_format.as_deref() {
        Some("json") => config.log.format = LogFormat::Json,
        Some(_) => config.log.format = LogFormat::Human,
        None => {}
    }
    sidecache::telemetry::init(&config.log);
    let runtime = if config.runtime.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.runtime.worker_threads)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("sidecache: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Command::Demo) = cli.command {
        return runtime.block_on(demo(config));
    }
    runtime.block_on(async {
        let app = App::build(config);
        let app = match cli.config {
            Some(path) => app.reload_from(path),
            None => app,
        };
        match app.start().await {
            Ok(running) => {
                running.run_until_signal().await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sidecache: cannot listen: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

/// `sidecache demo`: no config reload (the demo is for trying, not for running).
async fn demo(config: Config) -> ExitCode {
    match Demo::start(config).await {
        Ok(demo) => {
            println!("{}", demo.script());
            demo.running.run_until_signal().await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("sidecache demo: cannot listen: {e}");
            ExitCode::FAILURE
        }
    }
}
