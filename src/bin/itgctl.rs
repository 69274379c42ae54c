//! `itgctl`: publishes events and watches replies, for demos, tests and operators. See `itgctl --help`.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = itg::ctl::Args::parse();
    match itg::ctl::run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("itgctl: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
