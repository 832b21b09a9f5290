//! protocol 6.1 and 8.3: the run-time switches of state sharing (`allow_state_sharing`,
//! `state_sharing_priority`) and the signal that wakes the donor loop when they change.

use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy)]
struct Switches {
    allow: bool,
    priority: f64,
}

/// Whether this peer shares its state now, with which priority; shared (via `Arc`) by the
/// averager's API, the donor loop and the `rpc_download_state` handler.
///
/// Every change that alters what the DHT should say wakes the donor loop: `allow` changing,
/// `priority` changing while sharing, and [`StateSharing::notify_updated`] after each all-reduce
/// update (protocol 6.1).
#[derive(Debug)]
pub(crate) struct StateSharing {
    client_mode: bool,
    switches: Mutex<Switches>,
    /// Bumped on every wake-up; a `watch` rather than a `Notify` so that a change made while the
    /// loop is busy storing is not lost, and so that several watchers each see it.
    wake: watch::Sender<u64>,
}

impl StateSharing {
    /// The switches of a peer that accepts connections (not a CLIENT).
    ///
    /// # Errors
    /// [`Error::Config`] when `priority` is not finite.
    pub(crate) fn new(allow: bool, priority: f64) -> Result<Self> {
        check_finite(priority)?;
        Ok(Self::build(false, allow, priority))
    }

    /// The switches of a CLIENT: sharing is off, the priority is 0, and neither can change
    /// (protocol 6.1: a CLIENT cannot serve downloads).
    pub(crate) fn client() -> Self {
        Self::build(true, false, 0.0)
    }

    fn build(client_mode: bool, allow: bool, priority: f64) -> Self {
        StateSharing {
            client_mode,
            switches: Mutex::new(Switches { allow, priority }),
            wake: watch::channel(0).0,
        }
    }

    #[cfg(test)]
    /// Whether these are a CLIENT's switches.
    pub(crate) fn is_client(&self) -> bool {
        self.client_mode
    }

    /// Whether this peer lets others download its state now.
    pub(crate) fn allow_state_sharing(&self) -> bool {
        self.lock().allow
    }

    /// Turns state sharing on or off; the donor loop then declares this peer (or writes `nil` over
    /// its record) at once.
    ///
    /// # Errors
    /// [`Error::Config`] when a CLIENT asks to share.
    pub(crate) fn set_allow_state_sharing(&self, allow: bool) -> Result<()> {
        if allow && self.client_mode {
            return Err(Error::Config("a CLIENT cannot share its state (it accepts no connections)".into()));
        }
        let changed = {
            let mut switches = self.lock();
            std::mem::replace(&mut switches.allow, allow) != allow
        };
        if changed {
            self.wake();
        }
        Ok(())
    }

    /// This peer's donor priority (higher is preferred by downloaders).
    pub(crate) fn state_sharing_priority(&self) -> f64 {
        self.lock().priority
    }

    /// Sets the donor priority; while sharing, the donor loop re-declares at once.
    ///
    /// # Errors
    /// [`Error::Config`] when `priority` is not finite, or is nonzero on a CLIENT.
    pub(crate) fn set_state_sharing_priority(&self, priority: f64) -> Result<()> {
        check_finite(priority)?;
        if self.client_mode && priority != 0.0 {
            return Err(Error::Config("a CLIENT cannot have a state_sharing_priority".into()));
        }
        let wake = {
            let mut switches = self.lock();
            let changed = switches.priority.to_bits() != priority.to_bits();
            switches.priority = priority;
            changed && switches.allow
        };
        if wake {
            self.wake();
        }
        Ok(())
    }

    /// Called after every all-reduce update: the donor loop refreshes its record, as hivemind does.
    pub(crate) fn notify_updated(&self) {
        self.wake();
    }

    /// What the donor record should say now: `Some(priority)` while sharing, `None` (`nil`) when not.
    /// Read under one lock, so the pair is never torn.
    pub(crate) fn declaration(&self) -> Option<f64> {
        let switches = self.lock();
        switches.allow.then_some(switches.priority)
    }

    /// A receiver that sees every wake-up from now on.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }

    fn wake(&self) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn lock(&self) -> MutexGuard<'_, Switches> {
        // Two plain fields assigned one at a time: a poisoned lock still holds valid values.
        self.switches.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn check_finite(priority: f64) -> Result<()> {
    if priority.is_finite() {
        Ok(())
    } else {
        Err(Error::Config(format!("state_sharing_priority must be finite, got {priority}")))
    }
}
