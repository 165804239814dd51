//! The `plugd` binary: all logic lives in the library; this only hands over the exit code.

/// mimalloc instead of the system allocator: allocation and freeing were a quarter of plugd's
/// instructions per proxied request under glibc's malloc (see `bench/instructions.sh`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    plugd::cli::main()
}
