//! Waiting for the user to stop the program: Ctrl+C, or SIGTERM from a service manager.

/// Resolves on Ctrl+C (SIGINT) or, on Unix, SIGTERM.
pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    () = ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => ctrl_c().await,
        }
    }
    #[cfg(not(unix))]
    ctrl_c().await;
}

/// Resolves on Ctrl+C; never, if the handler cannot be installed (rather than stopping at once).
pub(crate) async fn ctrl_c() {
    if let Err(e) = tokio::signal::ctrl_c().await {
        tracing::warn!(error = %e, "cannot listen for Ctrl+C");
        std::future::pending::<()>().await;
    }
}
