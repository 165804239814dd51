//! The benchmark's baseline: the hello example's handler served in-process by axum, on TCP (the
//! limit plugd is measured against) or on a Unix socket (behind nginx, what users run instead).
//!
//! Usage: `plugd-bench --tcp 127.0.0.1:9001` or `plugd-bench --unix /path/to/socket`.

use axum::routing::get;
use axum::Router;

fn app() -> Router {
    // Same path and body as `GET /plugins/hello/hello` through plugd.
    Router::new().route("/plugins/hello/hello", get(|| async { "hello, world\n" }))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["--tcp", addr] => {
            let listener = tokio::net::TcpListener::bind(addr).await?;
            println!("listening on {}", listener.local_addr()?);
            axum::serve(listener, app()).await
        }
        ["--unix", path] => {
            let _ = std::fs::remove_file(path);
            let listener = tokio::net::UnixListener::bind(path)?;
            println!("listening on {path}");
            axum::serve(listener, app()).await
        }
        _ => {
            eprintln!("usage: plugd-bench --tcp ADDR | --unix PATH");
            std::process::exit(2);
        }
    }
}
