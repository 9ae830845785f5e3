//! The `baler` binary. See the `baler_cli` crate for what it does.

use std::process::ExitCode;
use std::time::Duration;

use baler_cli::cli::{Cli, Command};
use baler_cli::summary::EXIT_SETUP;
use clap::{CommandFactory, Parser};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "baler", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Command::Ingest(args) => (args, false),
        Command::Work(args) => (args, true),
    };
    let (args, work) = args;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("baler: error: cannot start the tokio runtime: {e}");
            return ExitCode::from(EXIT_SETUP);
        }
    };
    let json = args.json;
    if work {
        let code = match runtime.block_on(baler_cli::queue::work(args)) {
            Ok(report) => {
                if json {
                    println!("{}", report.to_json());
                } else {
                    print!("{}", report.to_text());
                }
                0
            }
            Err(e) => {
                eprintln!("baler: error: {e}");
                EXIT_SETUP
            }
        };
        runtime.shutdown_timeout(Duration::from_millis(100));
        return ExitCode::from(code);
    }
    let ran = runtime.block_on(async move {
        if let Some(url) = args.queue.clone() {
            baler_cli::queue::produce(args, &url).await
        } else {
            baler_cli::ingest::run(args).await
        }
    });
    let code = match ran {
        Ok(summary) => {
            if json {
                println!("{}", summary.to_json());
            } else {
                print!("{}", summary.to_text());
            }
            summary.exit_code()
        }
        Err(e) => {
            eprintln!("baler: error: {e}");
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "error": e.to_string(), "exit_code": EXIT_SETUP })
                );
            }
            EXIT_SETUP
        }
    };
    // Do not wait for a write that is still running after a forced stop
    // (the summary said so); its records are in the replay file.
    runtime.shutdown_timeout(Duration::from_millis(100));
    ExitCode::from(code)
}
