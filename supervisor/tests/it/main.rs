//! Integration tests: each starts the real `plugd` binary on port 0 in a temporary directory,
//! with real plugin processes, and talks to it over real sockets.

mod admin;
mod cluster;
mod failures;
mod fuzz_corpus;
mod harness;
mod hooks;
mod hostile;
mod layers;
mod lifecycle;
mod limits;
mod operator;
mod pg;
mod proxy;
mod releases;
mod settings;
mod shutdown;
mod store;
mod streams;
mod systemd;
