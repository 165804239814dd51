//! The `plugd` binary: all logic lives in the library; this only hands over the exit code.

fn main() -> std::process::ExitCode {
    plugd::cli::main()
}
