//! An order service whose `POST /orders` is safe to retry.
//!
//! ```text
//! cargo run --release --example orders -- [--addr HOST:PORT] [--store URL] [--work-ms N] [--lease-ms N]
//! ```
//!
//! Then create an order, and retry it with the same key: the second answer is the first
//! one replayed (`Idempotent-Replayed: true`), and no second order exists.
//!
//! ```text
//! curl -i localhost:3000/orders -H 'Idempotency-Key: 8e03978e' \
//!      -H 'Content-Type: application/json' -d '{"product": "book", "quantity": 1}'
//! curl localhost:3000/orders
//! ```

mod app;
mod cli;
#[path = "../common/store.rs"]
mod store;

use std::io::IsTerminal;
use std::process::ExitCode;

use idempotent_runtime::Idempotency;
use tracing_subscriber::EnvFilter;

use store::LocalCopies;

#[tokio::main]
async fn main() -> ExitCode {
    let options = match cli::parse(std::env::args().skip(1)) {
        Ok(cli::Command::Run(options)) => options,
        Ok(cli::Command::Help) => {
            println!("{}", cli::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("error: {err}\n\n{}", cli::USAGE);
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    match serve(options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(options: cli::Options) -> Result<(), String> {
    // Every process given the same store serves the same keys.
    let store = options
        .store
        .open("idempotent_orders", LocalCopies::Off)
        .await?;
    // A lease must outlast three store timeouts (the claim's answer, then two tries of
    // a renewal), so a short lease for a demonstration shortens the timeout with it.
    let store_timeout = Idempotency::DEFAULT_STORE_TIMEOUT.min(options.lease / 3);
    let idempotency = store
        .idempotency
        .clone()
        .with_lease(options.lease)
        .with_store_timeout(store_timeout);
    let orders = app::Orders::new(options.work);
    let router = app::router(orders.clone(), idempotency.clone());

    let listener = tokio::net::TcpListener::bind(&options.addr)
        .await
        .map_err(|err| format!("cannot listen on {}: {err}", options.addr))?;
    let addr = listener
        .local_addr()
        .map_err(|err| format!("cannot read the listening address: {err}"))?;
    tracing::info!(
        store = %options.store,
        work_ms = options.work.as_millis() as u64,
        lease_ms = options.lease.as_millis() as u64,
        "orders service ready"
    );
    // On stdout, whatever the log filter, for scripts that wait for the service.
    println!("listening on http://{addr}");

    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|err| format!("server error: {err}"))?;
    // Orders whose clients went away are still being created: let them finish and be
    // recorded, so that those clients' retries get them.
    idempotency.drain().await;
    tracing::info!(
        created = orders.list().len(),
        executions = orders.executions(),
        "orders service stopped"
    );
    Ok(())
}

/// Ctrl-C, or SIGTERM on Unix.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = terminate => {}
    }
}
