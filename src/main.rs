//! The `vdr` command line: parses arguments, runs one command, and turns its outcome into
//! an exit code.
//!
//! What it is for: argument parsing (clap), progress bars (indicatif), human or `--json`
//! output, exit codes. What it is not for: format logic, which lives in `vdr-formats`;
//! this crate only calls its public API.
//!
//! Exit codes: 0 ok; 1 problems found (check found errors or leaks, compare found a
//! difference, convert filled unreadable ranges with zeros); 2 usage or input error. Errors
//! print `vdr: <message>` on stderr.

mod cli;
mod commands;
mod interrupt;
mod output;
mod progress;
mod walk;

use clap::Parser;

use crate::cli::Cli;

fn main() {
    restore_default_sigpipe();
    let cli = Cli::parse();
    let code = match commands::run(cli.command) {
        Ok(status) => status.exit_code(),
        Err(err) => {
            eprintln!("vdr: {err}");
            2
        }
    };
    std::process::exit(code);
}

/// Lets `vdr map IMAGE | head` end quietly the way Unix tools do, instead of failing on a
/// write to a closed pipe: Rust ignores SIGPIPE by default, which would turn every
/// truncated listing into an error message.
fn restore_default_sigpipe() {
    // SAFETY: called once at start-up before any thread exists; setting the disposition of
    // SIGPIPE to the default has no memory-safety effect, it only changes what the kernel
    // does on a write to a closed pipe.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
