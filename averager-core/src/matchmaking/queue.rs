//! protocol 3.3: the queue of potential leaders, best first.
//!
//! Priority is `(expiration, endpoint bytes)`, smaller is better (**\[averager\]** raw bytes both
//! in the queue and in the comparison with oneself). A tried `(peer, expiration)` pair leaves the
//! queue; a peer that re-declares with a new expiration becomes eligible again.
//!
//! **\[averager\]** a tried pair also becomes eligible again after [`RETRY_AFTER`]. In protocol 3.3
//! it stays tried for the whole search, which strands peers: Y asks X while X briefly follows a
//! leader whose group then fills without it; X is free again, but Y never asks it again, and X,
//! ranking itself above Y, waits for followers too; neither re-declares before the deadline, and
//! both fail (the "elasticity" weakness of protocol 11.10, scenario 9).

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use tokio::time::Instant;

use crate::time::DhtTime;

/// How long a tried candidate stays out of the queue.
pub(crate) const RETRY_AFTER: Duration = Duration::from_millis(250);

/// A candidate leader: its declared expiration and endpoint.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Candidate {
    pub(crate) expiration: DhtTime,
    pub(crate) endpoint: String,
}

/// `(expiration, endpoint)` as a totally ordered key.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Key(u64, Vec<u8>);

fn key(expiration: DhtTime, endpoint: &str) -> Key {
    // Expirations are finite and positive here, so their bit patterns order like the numbers.
    Key(expiration.max(0.0).to_bits(), endpoint.as_bytes().to_vec())
}

/// Whether `(a_exp, a)` is a strictly better leader than `(b_exp, b)`.
pub(crate) fn better(a_exp: DhtTime, a: &str, b_exp: DhtTime, b: &str) -> bool {
    a_exp.total_cmp(&b_exp).then_with(|| a.as_bytes().cmp(b.as_bytes())).is_lt()
}

/// The candidates seen in the DHT, minus oneself and the pairs already tried.
#[derive(Debug, Default)]
pub(crate) struct LeaderQueue {
    queue: BTreeSet<(Key, String)>,
    /// Tried pairs, with when they become eligible again.
    tried: HashMap<Key, Instant>,
    /// No leader better than this can appear unseen (protocol 3.3, refresh step 2).
    pub(crate) max_assured_time: DhtTime,
}

impl LeaderQueue {
    /// Replaces the content with `declared` (protocol 3.3, refresh steps 2 and 3).
    pub(crate) fn refresh(
        &mut self,
        declared: Vec<(String, DhtTime)>,
        me: &str,
        now: DhtTime,
        min_matchmaking_time: f64,
    ) {
        self.max_assured_time = self.max_assured_time.max(now + min_matchmaking_time - 3.0);
        self.queue.clear();
        let clock = Instant::now();
        self.tried.retain(|_, eligible_at| *eligible_at > clock);
        for (endpoint, expiration) in declared {
            if endpoint == me || expiration <= now {
                continue;
            }
            let k = key(expiration, &endpoint);
            if self.tried.contains_key(&k) {
                continue;
            }
            self.max_assured_time = self.max_assured_time.max(expiration - 3.0);
            self.queue.insert((k, endpoint));
        }
    }

    /// The best candidate whose declaration is still live.
    pub(crate) fn head(&mut self, now: DhtTime) -> Option<Candidate> {
        while let Some((k, endpoint)) = self.queue.first() {
            let expiration = f64::from_bits(k.0);
            if expiration > now {
                return Some(Candidate { expiration, endpoint: endpoint.clone() });
            }
            self.queue.pop_first();
        }
        None
    }

    /// Removes the head and remembers it as tried.
    pub(crate) fn pop(&mut self) -> Option<Candidate> {
        let (k, endpoint) = self.queue.pop_first()?;
        let expiration = f64::from_bits(k.0);
        self.tried.insert(k, Instant::now() + RETRY_AFTER);
        Some(Candidate { expiration, endpoint })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_tried_candidate_comes_back_after_the_retry_delay() {
        let mut q = LeaderQueue::default();
        let declared = vec![("a".to_string(), 1010.0)];
        q.refresh(declared.clone(), "me", 1000.0, 5.0);
        assert_eq!(q.pop().unwrap().endpoint, "a");
        q.refresh(declared.clone(), "me", 1000.0, 5.0);
        assert!(q.head(1000.0).is_none());
        tokio::time::advance(RETRY_AFTER).await;
        q.refresh(declared, "me", 1000.0, 5.0);
        assert_eq!(q.head(1000.0).unwrap().endpoint, "a");
    }

    #[tokio::test(start_paused = true)]
    async fn best_first_without_self_expired_or_tried() {
        let mut q = LeaderQueue::default();
        let now = 1000.0;
        let declared = vec![
            ("b".to_string(), 1010.0),
            ("a".to_string(), 1010.0),
            ("me".to_string(), 1001.0),
            ("old".to_string(), 999.0),
            ("c".to_string(), 1005.0),
        ];
        q.refresh(declared.clone(), "me", now, 5.0);
        assert_eq!(q.head(now).unwrap().endpoint, "c");
        assert_eq!(q.pop().unwrap().endpoint, "c");
        assert_eq!(q.pop().unwrap().endpoint, "a");
        // Tried pairs do not come back; a re-declaration with a new expiration does.
        let mut again = declared;
        again.push(("c".to_string(), 1005.0));
        again.push(("a".to_string(), 1020.0));
        q.refresh(again, "me", now, 5.0);
        let order: Vec<String> = std::iter::from_fn(|| q.pop().map(|c| c.endpoint)).collect();
        assert_eq!(order, ["b", "a"]);
        assert_eq!(q.max_assured_time, 1017.0);
        assert!(better(1.0, "z", 2.0, "a") && better(1.0, "a", 1.0, "b") && !better(1.0, "b", 1.0, "b"));
    }
}
