//! `plugd-start-stub`: a plugin's next process, prepared ahead of time by plugd (see
//! `plugd::os::stub`). Not meant to be run by hand: it waits for its order on stdin.

fn main() -> std::process::ExitCode {
    plugd::os::stub::run()
}
