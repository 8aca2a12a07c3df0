//! Reporter election among the worker VMs of one Envoy: a lease in Envoy shared data
//! (`meshtune.reporter.lease`) updated with compare-and-swap. The holder reports for the whole
//! Envoy; when it stops renewing (its VM was destroyed or reloaded), another worker takes over
//! after the lease expires and continues the report sequence stored in the lease.
//!
//! Protocol, run by every worker VM on every tick:
//! * lease held by me and not expired → renew it (CAS on the version read); success = leader;
//! * lease held by another and not expired → follower (a leader is alive: queue windows);
//! * lease missing, undecodable or expired → claim it (CAS on the version read, unconditional
//!   when missing) and become a *candidate*: a candidate leads only after a later renewal
//!   succeeds, so two workers that both created a missing lease never both lead.

/// Shared-data key of the lease.
pub const LEASE_KEY: &str = "meshtune.reporter.lease";
/// Encoded size: holder, expiry, sequence, dropped reports (u64 LE each).
pub const LEASE_LEN: usize = 32;

/// The lease value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Id of the worker VM holding it.
    pub holder: u64,
    /// Unix ms after which another worker may claim it.
    pub expires_unix_ms: u64,
    /// Last Report sequence the holder may have sent (a successor starts above it).
    pub sequence: u64,
    /// The holder's cumulative `dropped_reports`.
    pub dropped_reports: u64,
}

impl Lease {
    pub fn encode(&self) -> [u8; LEASE_LEN] {
        let mut out = [0u8; LEASE_LEN];
        for (i, v) in [
            self.holder,
            self.expires_unix_ms,
            self.sequence,
            self.dropped_reports,
        ]
        .into_iter()
        .enumerate()
        {
            out[i * 8..(i + 1) * 8].copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Option<Lease> {
        if bytes.len() != LEASE_LEN {
            return None;
        }
        let word = |i: usize| -> Option<u64> {
            Some(u64::from_le_bytes(
                bytes.get(i * 8..(i + 1) * 8)?.try_into().ok()?,
            ))
        };
        Some(Lease {
            holder: word(0)?,
            expires_unix_ms: word(1)?,
            sequence: word(2)?,
            dropped_reports: word(3)?,
        })
    }
}

/// A compare-and-swap byte cell (Envoy shared data, or memory in tests).
pub trait LeaseCell {
    /// Current bytes and version; `None` if the key does not exist.
    fn load(&self) -> Option<(Vec<u8>, u32)>;
    /// Stores `bytes` if the version is still `version` (`None`: unconditionally); false on
    /// mismatch or error.
    fn store(&mut self, bytes: &[u8], version: Option<u32>) -> bool;
}

/// What one election step made of this worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Holds the lease (just renewed): report for the Envoy. `resume` is the lease's state
    /// (the sequence and dropped count a new leader continues from).
    Leader { resume: Lease },
    /// Claimed an expired or missing lease; leads after its next successful renewal.
    Candidate,
    /// Another worker holds a valid lease (`true`) or the claim failed (`false`: no leader
    /// known to be alive).
    Follower { leader_alive: bool },
}

/// One election step for worker `me` at `now_ms`. `progress` is the leader's current
/// (sequence, dropped_reports), written into the lease on renewal.
pub fn step(
    cell: &mut impl LeaseCell,
    me: u64,
    now_ms: u64,
    ttl_ms: u64,
    progress: Option<(u64, u64)>,
) -> Role {
    let (lease, version) = match cell.load() {
        Some((bytes, v)) => (Lease::decode(&bytes), Some(v)),
        None => (None, None),
    };
    let expires_unix_ms = now_ms.saturating_add(ttl_ms);
    match lease {
        Some(l) if l.expires_unix_ms > now_ms && l.holder == me => {
            let (sequence, dropped_reports) = progress.unwrap_or((l.sequence, l.dropped_reports));
            let renewed = Lease {
                holder: me,
                expires_unix_ms,
                sequence: sequence.max(l.sequence),
                dropped_reports: dropped_reports.max(l.dropped_reports),
            };
            if cell.store(&renewed.encode(), version) {
                Role::Leader { resume: l }
            } else {
                Role::Follower {
                    leader_alive: false,
                }
            }
        }
        Some(l) if l.expires_unix_ms > now_ms => Role::Follower { leader_alive: true },
        old => {
            let claim = Lease {
                holder: me,
                expires_unix_ms,
                sequence: old.map_or(0, |l| l.sequence),
                dropped_reports: old.map_or(0, |l| l.dropped_reports),
            };
            if cell.store(&claim.encode(), version) {
                Role::Candidate
            } else {
                Role::Follower {
                    leader_alive: false,
                }
            }
        }
    }
}

/// Hands the lease back (the holder's root context is going away: a new plugin configuration
/// replaces it): marks it expired, keeping the sequence and dropped count for the successor,
/// so another worker claims it at its next step instead of after the TTL. Only the holder's
/// lease is touched; false if `me` does not hold it or the CAS lost a race.
pub fn release(cell: &mut impl LeaseCell, me: u64, progress: Option<(u64, u64)>) -> bool {
    let Some((bytes, version)) = cell.load() else {
        return false;
    };
    let Some(l) = Lease::decode(&bytes) else {
        return false;
    };
    if l.holder != me {
        return false;
    }
    let (sequence, dropped_reports) = progress.unwrap_or((l.sequence, l.dropped_reports));
    let released = Lease {
        holder: me,
        expires_unix_ms: 0,
        sequence: sequence.max(l.sequence),
        dropped_reports: dropped_reports.max(l.dropped_reports),
    };
    cell.store(&released.encode(), Some(version))
}

/// A worker id from values that differ between the VMs of one Envoy (configure time in ns,
/// root context id, VM id): FNV-1a, never 0.
pub fn worker_id(configure_ns: u64, context_id: u32, vm: &str) -> u64 {
    let bytes = configure_ns
        .to_le_bytes()
        .into_iter()
        .chain(context_id.to_le_bytes())
        .chain(vm.bytes());
    crate::hash::fnv1a(bytes).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Envoy's shared-data semantics: a missing key is created whatever the version; an
    /// existing one needs a matching version (or none); every write bumps the version.
    #[derive(Default)]
    struct Shared {
        value: Option<(Vec<u8>, u32)>,
        next: u32,
    }

    impl LeaseCell for Shared {
        fn load(&self) -> Option<(Vec<u8>, u32)> {
            self.value.clone()
        }
        fn store(&mut self, bytes: &[u8], version: Option<u32>) -> bool {
            if let (Some((_, cur)), Some(v)) = (&self.value, version) {
                if *cur != v {
                    return false;
                }
            }
            self.next += 1;
            self.value = Some((bytes.to_vec(), self.next));
            true
        }
    }

    const TTL: u64 = 2000;

    #[test]
    fn lease_round_trips_and_rejects_garbage() {
        let l = Lease {
            holder: 7,
            expires_unix_ms: 1234,
            sequence: 99,
            dropped_reports: 3,
        };
        assert_eq!(Lease::decode(&l.encode()), Some(l));
        assert_eq!(Lease::decode(&[1, 2, 3]), None);
    }

    #[test]
    fn one_leader_among_racing_workers() {
        let mut s = Shared::default();
        // Both see no lease and both create it (no version to compare): both candidates.
        let snapshot = s.load();
        assert_eq!(snapshot, None);
        assert_eq!(step(&mut s, 1, 0, TTL, None), Role::Candidate);
        s.value = None; // replay the race: worker 2 also saw the key missing
        assert_eq!(step(&mut s, 2, 0, TTL, None), Role::Candidate);
        // Whoever wrote last holds it; the other is a follower from now on.
        let mut leaders = 0;
        for me in [1, 2] {
            match step(&mut s, me, 100, TTL, None) {
                Role::Leader { .. } => leaders += 1,
                Role::Follower { leader_alive } => assert!(leader_alive),
                Role::Candidate => panic!("candidate twice"),
            }
        }
        assert_eq!(leaders, 1);
        // Renewals keep the same leader.
        for t in (200..5000).step_by(250) {
            assert!(matches!(
                step(&mut s, 2, t, TTL, Some((t, 0))),
                Role::Leader { .. }
            ));
            assert_eq!(
                step(&mut s, 1, t, TTL, None),
                Role::Follower { leader_alive: true }
            );
        }
    }

    #[test]
    fn another_worker_takes_over_with_the_sequence() {
        let mut s = Shared::default();
        assert_eq!(step(&mut s, 1, 0, TTL, None), Role::Candidate);
        assert!(matches!(
            step(&mut s, 1, 250, TTL, None),
            Role::Leader { .. }
        ));
        assert!(matches!(
            step(&mut s, 1, 500, TTL, Some((41, 2))),
            Role::Leader { .. }
        ));
        // Worker 1 stops. Until the lease expires worker 2 follows.
        assert_eq!(
            step(&mut s, 2, 2499, TTL, None),
            Role::Follower { leader_alive: true }
        );
        assert_eq!(step(&mut s, 2, 2500, TTL, None), Role::Candidate);
        match step(&mut s, 2, 2750, TTL, None) {
            Role::Leader { resume } => {
                assert_eq!((resume.sequence, resume.dropped_reports), (41, 2));
            }
            r => panic!("expected leader, got {r:?}"),
        }
        // The old leader comes back: it is a follower, not a second leader.
        assert_eq!(
            step(&mut s, 1, 2800, TTL, Some((50, 2))),
            Role::Follower { leader_alive: true }
        );
    }

    #[test]
    fn a_released_lease_is_taken_over_at_once_with_the_sequence() {
        let mut s = Shared::default();
        assert_eq!(step(&mut s, 1, 0, TTL, None), Role::Candidate);
        assert!(matches!(
            step(&mut s, 1, 250, TTL, Some((7, 1))),
            Role::Leader { .. }
        ));
        assert!(!release(&mut s, 2, None), "only the holder releases");
        assert_eq!(
            step(&mut s, 2, 300, TTL, None),
            Role::Follower { leader_alive: true }
        );
        assert!(release(&mut s, 1, Some((9, 1))));
        // Long before the TTL would have run out, worker 2 claims and leads from sequence 9.
        assert_eq!(step(&mut s, 2, 310, TTL, None), Role::Candidate);
        match step(&mut s, 2, 320, TTL, None) {
            Role::Leader { resume } => {
                assert_eq!((resume.sequence, resume.dropped_reports), (9, 1))
            }
            r => panic!("expected leader, got {r:?}"),
        }
        assert!(!release(&mut Shared::default(), 1, None), "no lease");
    }

    #[test]
    fn a_lost_race_on_renewal_or_claim_is_a_follower() {
        struct Refuse(Option<(Vec<u8>, u32)>);
        impl LeaseCell for Refuse {
            fn load(&self) -> Option<(Vec<u8>, u32)> {
                self.0.clone()
            }
            fn store(&mut self, _: &[u8], _: Option<u32>) -> bool {
                false
            }
        }
        let mine = Lease {
            holder: 1,
            expires_unix_ms: 10_000,
            sequence: 0,
            dropped_reports: 0,
        };
        let mut c = Refuse(Some((mine.encode().to_vec(), 1)));
        assert_eq!(
            step(&mut c, 1, 0, TTL, None),
            Role::Follower {
                leader_alive: false
            }
        );
        let mut garbage = Refuse(Some((vec![1, 2], 3)));
        assert_eq!(
            step(&mut garbage, 1, 0, TTL, None),
            Role::Follower {
                leader_alive: false
            }
        );
    }

    #[test]
    fn worker_ids_differ_and_are_never_zero() {
        assert_ne!(worker_id(1, 1, ""), worker_id(2, 1, ""));
        assert_ne!(worker_id(1, 1, ""), worker_id(1, 2, ""));
        assert_ne!(worker_id(0, 0, ""), 0);
    }
}
