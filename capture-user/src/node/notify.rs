//! Telling a supervisor that the recorder is attached and recording: a log line, and
//! `READY=1` on `$NOTIFY_SOCKET` (systemd's `Type=notify`, or anything speaking it,
//! such as the demo and the tests). No outside tool is needed to see readiness.

/// The log line every recording command prints once its programs are attached.
pub(crate) const READY_LINE: &str = "recording";

/// Says the recorder is ready: the log line, and sd_notify where a socket is given.
pub fn ready(what: &str) {
    ready_saying(&format!("{READY_LINE}: {what}"));
}

/// Logs `line`, then tells the service manager (if any) we are ready.
pub fn ready_saying(line: &str) {
    tracing::info!("{line}");
    if std::env::var_os("NOTIFY_SOCKET").is_some()
        && let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready])
    {
        tracing::warn!("could not tell the service manager we are ready: {e}");
    }
}
