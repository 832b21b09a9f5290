//! protocol 4.6: the part reducer, the async bookkeeping that turns the parts of one span, sent by
//! several senders concurrently, into one reduced part each, whatever the [`Reducer`].
//!
//! Parts are reduced strictly in order. A submission for part `k` waits until `k` is the current
//! part, is added to the current [`PartAccumulator`], and then waits for part `k` to complete.
//! With the **\[averager\]** fixes of protocol 4.6 and 11.4:
//!
//! - **contributions are counted, not arrivals**: a sender that is banned while its submission of
//!   part `k` is still waiting is not expected for part `k`, so part `k` cannot stall on it;
//! - a banned sender still counts for the parts it already contributed to;
//! - a part nobody contributed to completes with whatever the accumulator says for an empty
//!   input (for the weighted mean, [`PartOutcome::KeepLocal`]).
//!
//! The state sits behind a std mutex that is never held across an await; waiters are woken by a
//! `watch` channel bumped whenever a part completes, a sender is banned or the reducer finishes
//! (a contribution that does not complete its part wakes nobody, since nobody waits on it).
//! The reducer's arithmetic ([`PartAccumulator::add`] and `finish`) runs under that mutex, on the
//! submitting task: it is synchronous and bounded by the part size, and running it elsewhere would
//! let a later contribution overtake an earlier one.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

use self::state::{Claim, Ended, Slot, State};
use crate::error::{Error, Result};
use crate::reduce::{PartAccumulator, PartOutcome, PartSpec, Reducer};
use crate::tensor::{DType, TensorView};

/// Reduces the parts of one span sent by `num_senders` senders (protocol 4.6).
///
/// Shared through an [`Arc`] by the handlers of every incoming `rpc_aggregate_part` stream and by
/// the local sender; each calls [`accumulate`](Self::accumulate) once per part it sends.
pub struct PartReducer {
    reducer: Arc<dyn Reducer>,
    parts: Vec<(usize, DType)>,
    num_senders: usize,
    state: Mutex<State>,
    changed: watch::Sender<()>,
}

impl PartReducer {
    /// A reducer for parts shaped `(len, dtype)`, in order, each sent by up to `num_senders`
    /// senders (indices `0..num_senders`).
    ///
    /// # Behavior
    /// With no parts the reducer is finished at once; with no senders every part completes at
    /// once with the reducer's outcome for an empty input.
    ///
    /// # Errors
    /// The reducer's error when it cannot begin the first part (for example, an unsupported dtype).
    pub fn new(
        reducer: Arc<dyn Reducer>,
        parts: impl IntoIterator<Item = (usize, DType)>,
        num_senders: usize,
    ) -> Result<Self> {
        let parts: Vec<(usize, DType)> = parts.into_iter().collect();
        let mut state = State {
            ended: None,
            current: 0,
            accumulator: None,
            contributed: vec![false; num_senders],
            num_contributed: 0,
            expected: num_senders,
            abandoned: 0,
            banned: vec![false; num_senders],
            num_banned: 0,
            results: HashMap::new(),
            received: 0,
        };
        if parts.is_empty() {
            state.ended = Some(Ended::Completed);
        }
        let (changed, _) = watch::channel(());
        let this = PartReducer { reducer, parts, num_senders, state: Mutex::new(state), changed };
        {
            let mut st = this.lock();
            if st.ended.is_none() {
                st.accumulator = Some(this.begin(0, num_senders)?);
                this.complete_ready(&mut st);
            }
        }
        Ok(this)
    }

    /// Number of parts this reducer reduces.
    pub fn num_parts(&self) -> usize {
        self.parts.len()
    }

    /// Number of senders (valid sender indices are `0..num_senders`).
    pub fn num_senders(&self) -> usize {
        self.num_senders
    }

    /// Whether the reducer stopped taking parts: every part completed, or it was finished early.
    pub fn is_finished(&self) -> bool {
        self.lock().ended.is_some()
    }

    /// Whether `sender` has been banned (out-of-range senders are not).
    pub fn is_banned(&self, sender: usize) -> bool {
        self.lock().banned.get(sender).copied().unwrap_or(false)
    }

    /// The fraction of the `num_parts * num_senders` possible contributions that were accumulated,
    /// in `[0, 1]` (1 when nothing was expected); protocol 4.6 logs it when the reducer finishes.
    pub fn received_fraction(&self) -> f64 {
        let received = self.lock().received;
        fraction(received, self.parts.len().saturating_mul(self.num_senders))
    }

    /// Adds `sender`'s part `part_index` with `weight`, and returns the reduced part once every
    /// expected sender contributed.
    ///
    /// # Behavior
    /// Waits until `part_index` is the part being reduced, adds the contribution, then waits for
    /// the part to complete; the contribution is added on the first poll when the part is already
    /// current. Parts may be submitted concurrently and in any order; each waits for its turn.
    /// If the returned future is dropped after contributing, the contribution still counts.
    ///
    /// # Errors
    /// - [`Error::Reducer`] for a sender or part index out of range, a part that sender already
    ///   submitted (or one that was already reduced), a banned sender (also when it is banned while
    ///   waiting for its turn), and once every part was reduced;
    /// - [`Error::Reducer`] for a part whose length or dtype differs from the spec, or whose weight
    ///   is not finite and `>= 0`, or that the reducer refuses: the sender is then banned, so the
    ///   others are not left waiting for it;
    /// - [`Error::Cancelled`] when [`finish`](Self::finish) is called before the part completes;
    /// - the reducer's error when it fails to reduce this part or to begin an earlier one.
    pub async fn accumulate(
        &self,
        sender: usize,
        part_index: usize,
        part: &TensorView<'_>,
        weight: f64,
    ) -> Result<Arc<PartOutcome>> {
        // Subscribe before the first look at the state, so no wake-up can fall in between.
        let rx = self.changed.subscribe();
        self.check(sender, part_index, (part.numel(), part.dtype()), weight)?;
        self.contribute(sender, part_index, rx, |acc| acc.add(sender, part, weight)).await
    }

    /// The checks every contribution passes before it waits for its turn; a part of the wrong
    /// shape or weight bans its sender (see [`accumulate`](Self::accumulate)).
    fn check(
        &self,
        sender: usize,
        part_index: usize,
        (numel, got): (usize, DType),
        weight: f64,
    ) -> Result<()> {
        if sender >= self.num_senders {
            return Err(Error::Reducer(format!(
                "sender {sender} is out of range: there are {} senders",
                self.num_senders
            )));
        }
        let Some(&(len, dtype)) = self.parts.get(part_index) else {
            return Err(Error::Reducer(format!(
                "part {part_index} is out of range: there are {} parts",
                self.parts.len()
            )));
        };
        if numel != len || got != dtype {
            let reason = format!(
                "sender {sender}: part {part_index} has {numel} x {got} where {len} x {dtype} was expected"
            );
            self.refuse(sender, &reason);
            return Err(Error::Reducer(reason));
        }
        if !weight.is_finite() || weight < 0.0 {
            let reason =
                format!("sender {sender}: part {part_index} has weight {weight}, not a finite number >= 0");
            self.refuse(sender, &reason);
            return Err(Error::Reducer(reason));
        }
        Ok(())
    }

    /// Adds one contribution through `add` once `part_index` is the current part, then waits for
    /// that part's result: the part of [`accumulate`](Self::accumulate) after its checks. `rx`
    /// was subscribed before the caller's first look at the state.
    async fn contribute(
        &self,
        sender: usize,
        part_index: usize,
        mut rx: watch::Receiver<()>,
        mut add: impl FnMut(&mut dyn PartAccumulator) -> Result<()>,
    ) -> Result<Arc<PartOutcome>> {
        loop {
            let advanced = {
                let mut st = self.lock();
                if let Some(ended) = &st.ended {
                    return Err(ended.error());
                }
                if st.banned[sender] {
                    return Err(Error::Reducer(format!("sender {sender} is banned")));
                }
                if part_index < st.current {
                    return Err(Error::Reducer(format!(
                        "sender {sender}: part {part_index} came after it was reduced"
                    )));
                }
                if part_index == st.current {
                    if st.contributed[sender] {
                        return Err(Error::Reducer(format!(
                            "sender {sender} submitted part {part_index} twice"
                        )));
                    }
                    let added = match st.accumulator.as_mut() {
                        Some(acc) => add(acc.as_mut()),
                        None => Err(Error::Internal("no accumulator for the current part".into())),
                    };
                    if let Err(e) = added {
                        self.ban(&mut st, sender);
                        drop(st);
                        self.notify();
                        return Err(e);
                    }
                    st.contributed[sender] = true;
                    st.num_contributed += 1;
                    st.received += 1;
                    Some(self.complete_ready(&mut st))
                } else {
                    None
                }
            };
            match advanced {
                Some(advanced) => {
                    if advanced {
                        self.notify();
                    }
                    break;
                }
                None => Self::wait(&mut rx).await?,
            }
        }

        // From here on the contribution counts; the claim keeps the result's bookkeeping right even
        // if this future is dropped before taking it.
        let mut claim = Claim { reducer: self, part: part_index, claimed: false };
        loop {
            {
                let mut st = self.lock();
                if let Some(outcome) = st.claim(part_index) {
                    claim.claimed = true;
                    return outcome;
                }
                if let Some(ended) = &st.ended {
                    return Err(ended.error());
                }
            }
            Self::wait(&mut rx).await?;
        }
    }

    /// Bans `sender` (protocol 4.7): it is no longer expected for any part it has not contributed to.
    ///
    /// # Behavior
    /// Parts it already contributed to keep its contribution, and it still gets their results;
    /// its submissions that are waiting for their turn end with an error. If the current part was
    /// only waiting for this sender, it completes now. Banning twice, or banning an out-of-range
    /// sender, does nothing.
    pub fn sender_failed(&self, sender: usize) {
        if sender >= self.num_senders {
            tracing::debug!(sender, num_senders = self.num_senders, "ignoring a ban of an unknown sender");
            return;
        }
        let changed = {
            let mut st = self.lock();
            self.ban(&mut st, sender)
        };
        if changed {
            self.notify();
        }
    }

    /// Stops the reducer (protocol 4.7: cancelling or failing the round).
    ///
    /// # Behavior
    /// Every submission waiting for its turn or for an unfinished part, and every later
    /// submission, ends with an error ([`Error::Cancelled`], or [`Error::Reducer`] when every part
    /// had already been reduced). Results of parts that already completed can still be taken by
    /// their contributors. Calling it again does nothing.
    pub fn finish(&self) {
        let cancelled = {
            let mut st = self.lock();
            if st.ended.is_some() {
                false
            } else {
                st.ended = Some(Ended::Cancelled);
                st.accumulator = None;
                let received = st.received;
                drop(st);
                self.log_received("finished early", received);
                true
            }
        };
        if cancelled {
            self.notify();
        }
    }

    /// Waits until [`is_finished`](Self::is_finished) holds.
    pub async fn wait_finished(&self) {
        let mut rx = self.changed.subscribe();
        while !self.is_finished() {
            if Self::wait(&mut rx).await.is_err() {
                return;
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic inside a reducer plugin must not take every other sender down with it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn notify(&self) {
        self.changed.send_replace(());
    }

    async fn wait(rx: &mut watch::Receiver<()>) -> Result<()> {
        rx.changed().await.map_err(|_| Error::Internal("the part reducer was dropped".into()))
    }

    fn begin(&self, k: usize, expected: usize) -> Result<Box<dyn PartAccumulator>> {
        let (len, dtype) = self.parts[k];
        self.reducer.begin(&PartSpec { len, dtype, expected_senders: expected })
    }

    /// Bans a sender whose contribution was refused, waking whoever that unblocks.
    fn refuse(&self, sender: usize, reason: &str) {
        tracing::debug!(sender, reason, "banning a sender whose part was refused");
        self.sender_failed(sender);
    }

    /// Marks `sender` banned; returns whether anything changed that waiters must see.
    fn ban(&self, st: &mut State, sender: usize) -> bool {
        if st.banned[sender] {
            return false;
        }
        st.banned[sender] = true;
        st.num_banned += 1;
        if st.ended.is_none() && !st.contributed[sender] {
            st.expected = st.expected.saturating_sub(1);
            self.complete_ready(st);
        }
        true
    }

    /// Completes the current part while every expected sender has contributed, advancing (and
    /// finishing after the last part); returns whether any part completed.
    fn complete_ready(&self, st: &mut State) -> bool {
        let mut advanced = false;
        while st.ended.is_none() && st.num_contributed >= st.expected {
            advanced = true;
            let k = st.current;
            let outcome = match st.accumulator.take() {
                Some(acc) => acc.finish().map(Arc::new),
                None => Err(Error::Internal("no accumulator for the current part".into())),
            };
            if let Err(e) = &outcome {
                tracing::warn!(part = k, reducer = self.reducer.name(), "cannot reduce a part: {e}");
            }
            let unclaimed = st.num_contributed.saturating_sub(st.abandoned);
            if unclaimed > 0 {
                st.results.insert(k, Slot { outcome, unclaimed });
            }

            st.current = k + 1;
            st.contributed.iter_mut().for_each(|c| *c = false);
            st.num_contributed = 0;
            st.abandoned = 0;
            if st.current == self.parts.len() {
                st.ended = Some(Ended::Completed);
                self.log_received("done", st.received);
                break;
            }
            st.expected = self.num_senders - st.num_banned;
            match self.begin(st.current, st.expected) {
                Ok(acc) => st.accumulator = Some(acc),
                Err(e) => {
                    tracing::warn!(
                        part = st.current,
                        reducer = self.reducer.name(),
                        "cannot begin a part: {e}"
                    );
                    st.ended = Some(Ended::Failed(e));
                }
            }
        }
        advanced
    }

    fn log_received(&self, how: &str, received: usize) {
        let expected = self.parts.len().saturating_mul(self.num_senders);
        let percent = 100.0 * fraction(received, expected);
        if received < expected {
            tracing::info!("part reducer {how}: received {percent:.1}% of the expected parts");
        } else {
            tracing::debug!("part reducer {how}: received {percent:.1}% of the expected parts");
        }
    }
}

fn fraction(received: usize, expected: usize) -> f64 {
    if expected == 0 { 1.0 } else { received as f64 / expected as f64 }
}

impl fmt::Debug for PartReducer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.lock();
        f.debug_struct("PartReducer")
            .field("reducer", &self.reducer)
            .field("num_parts", &self.parts.len())
            .field("num_senders", &self.num_senders)
            .field("current", &st.current)
            .field("ended", &st.ended)
            .field("num_banned", &st.num_banned)
            .finish()
    }
}

mod encoded;
mod state;
#[cfg(test)]
mod tests;
