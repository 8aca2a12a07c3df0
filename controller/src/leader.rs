//! Leader election with a `coordination.k8s.io/v1` Lease, so that of several controller
//! replicas exactly one writes to the mesh.
//!
//! Every [`DEFAULT_RETRY_PERIOD`] each replica reads the Lease and acts on [`plan`]:
//! - no Lease → create it naming itself (a 409 means another replica was faster);
//! - held by itself → renew (`renewTime` = now);
//! - held by another replica whose `renewTime + leaseDurationSeconds` has passed, or by nobody
//!   → take it over (`leaseTransitions` + 1);
//! - held by another replica that renewed in time → follow.
//!
//! Renewals and take-overs are replaces carrying the `resourceVersion` read, so of two
//! replicas racing for a Lease the API server lets one win (409 Conflict for the other). A
//! leader that cannot renew (API errors) keeps leading only until [`DEFAULT_RENEW_DEADLINE`]
//! after its last renewal — shorter than the lease duration, so it has stopped before anyone
//! may take over; one that sees another holder, or loses a race, stops at once. On shutdown
//! the leader releases the Lease (no holder, 1 s duration) so a successor starts at once.
//! Expiry is judged with the local clock against the holder's `renewTime`: replica clocks must
//! agree to well within `lease duration − renew deadline` (NTP is enough).
//!
//! [`Leadership`] is what the rest of the controller reads: the decision loop decides and
//! writes only while it leads, and `/readyz` is 503 on followers, so the report Service sends
//! the filters' reports to the leader alone.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, PostParams};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

/// Default Lease name (in the controller's namespace).
/// Kubernetes API access of leader election (in the controller's namespace), as (API group,
/// resource, verbs): `get_opt`, `create` and `replace` (HTTP PUT, verb `update`) of the Lease.
/// Collected by [`crate::rbac`].
pub const KUBE_ACCESS: &[(&str, &str, &[&str])] = &[(
    "coordination.k8s.io",
    "leases",
    &["get", "create", "update"],
)];

pub const DEFAULT_LEASE_NAME: &str = "meshtune-controller";
/// Default lease duration: how long after its last renewal a holder counts as alive.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// Default renew deadline: a leader that could not renew for this long stops leading (must be
/// below the lease duration).
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// Default time between two reads/renewals of the Lease.
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);

/// Settings of the election.
#[derive(Debug, Clone, PartialEq)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaseConfig {
    /// The defaults for `identity` in `namespace`.
    pub fn new(namespace: &str, identity: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            name: DEFAULT_LEASE_NAME.to_string(),
            identity: identity.to_string(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
        }
    }

    /// Checks the timings: renew deadline below the lease duration, retry period below the
    /// renew deadline, all non-zero; and a non-empty identity.
    pub fn validate(&self) -> Result<(), LeaseError> {
        let bad = |reason: String| Err(LeaseError::Config(reason));
        if self.identity.is_empty() {
            return bad("empty identity (set --leader-elect-identity or POD_NAME)".into());
        }
        if self.retry_period.is_zero() || self.retry_period >= self.renew_deadline {
            return bad(format!(
                "retry period {:?} must be > 0 and below the renew deadline {:?}",
                self.retry_period, self.renew_deadline
            ));
        }
        if self.renew_deadline >= self.lease_duration {
            return bad(format!(
                "renew deadline {:?} must be below the lease duration {:?}",
                self.renew_deadline, self.lease_duration
            ));
        }
        Ok(())
    }
}

/// Errors of the election.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("leader election: {0}")]
    Config(String),
    #[error("{what} Lease {namespace}/{name}: {source}")]
    Kube {
        what: &'static str,
        namespace: String,
        name: String,
        /// Boxed: `kube::Error` is large and this error is returned on every round.
        #[source]
        source: Box<kube::Error>,
    },
}

/// What a replica does with the Lease it read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// No Lease: create it.
    Create,
    /// This replica holds it: renew.
    Renew,
    /// Nobody holds it, or the holder's lease expired: take it over.
    TakeOver,
    /// Another replica holds it and renewed in time.
    Follow { holder: String },
}

/// Decides what `identity` does with `lease` (None: absent) at `now`. Pure.
pub fn plan(
    lease: Option<&LeaseSpec>,
    identity: &str,
    now: Timestamp,
    default_duration: Duration,
) -> Plan {
    let Some(spec) = lease else {
        return Plan::Create;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() {
        return Plan::TakeOver;
    }
    if holder == identity {
        return Plan::Renew;
    }
    let duration = spec
        .lease_duration_seconds
        .filter(|s| *s > 0)
        .map(|s| SignedDuration::from_secs(s as i64))
        .unwrap_or_else(|| SignedDuration::try_from(default_duration).unwrap_or_default());
    let expired = match spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) {
        Some(t) => t.0.checked_add(duration).is_ok_and(|end| end <= now),
        None => true,
    };
    if expired {
        Plan::TakeOver
    } else {
        Plan::Follow {
            holder: holder.to_string(),
        }
    }
}

/// `action` (delete, restore) and `result` (ok, failed) of an undone object.
#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct UndoLabels {
    pub action: String,
    pub result: String,
}

/// Leadership and lifecycle metrics: `meshtune_leader`, `meshtune_leader_transitions_total`,
/// `meshtune_recovered_destinations`, `meshtune_undone_objects_total{action,result}`.
#[derive(Debug, Clone, Default)]
pub struct LeaderMetrics {
    pub leader: Gauge,
    pub transitions: Counter,
    /// Destinations whose knobs in force were recovered from objects at the last leadership.
    pub recovered: Gauge,
    /// Objects undone (observe mode, rollbacks to Istio defaults are counted by the sink's
    /// push results).
    pub undone: prometheus_client::metrics::family::Family<UndoLabels, Counter>,
}

impl LeaderMetrics {
    /// Creates the metrics and registers them into `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "meshtune_leader",
            "1 while this replica holds the leader Lease (only the leader decides and writes)",
            m.leader.clone(),
        );
        registry.register(
            "meshtune_leader_transitions",
            "Times this replica became leader or stopped leading",
            m.transitions.clone(),
        );
        registry.register(
            "meshtune_recovered_destinations",
            "Destinations whose knobs in force were read back from meshtune's objects when this replica last became leader",
            m.recovered.clone(),
        );
        registry.register(
            "meshtune_undone_objects",
            "Istio objects meshtune undid on becoming leader in observe mode (delete owned, restore co-managed), by result",
            m.undone.clone(),
        );
        m
    }
}

/// Whether this replica leads, as the decision loop and `/readyz` read it.
#[derive(Debug, Clone)]
pub struct Leadership {
    rx: watch::Receiver<bool>,
    /// The sender of [`Leadership::always`] (kept so the value stays readable).
    _fixed: Option<std::sync::Arc<watch::Sender<bool>>>,
}

impl Leadership {
    /// A replica that always leads (no election: one replica).
    pub fn always() -> Self {
        let (tx, rx) = watch::channel(true);
        Self {
            rx,
            _fixed: Some(std::sync::Arc::new(tx)),
        }
    }

    /// A leadership driven by `tx` (the election, or a test).
    pub fn channel() -> (watch::Sender<bool>, Self) {
        let (tx, rx) = watch::channel(false);
        (tx, Self { rx, _fixed: None })
    }

    pub fn is_leader(&self) -> bool {
        *self.rx.borrow()
    }

    /// Waits until this replica leads (returns at once if it does). Never returns if the
    /// election has stopped without leading.
    pub async fn until_leader(&mut self) {
        if self.rx.wait_for(|v| *v).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Waits until this replica stops leading.
    pub async fn until_follower(&mut self) {
        let _ = self.rx.wait_for(|v| !*v).await;
    }
}

/// One replica's side of the election: reads, creates, renews, takes over and releases the
/// Lease.
#[derive(Debug, Clone)]
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
}

fn micro(t: Timestamp) -> MicroTime {
    MicroTime(t)
}

impl Elector {
    pub fn new(client: kube::Client, config: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &config.namespace),
            config,
        }
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    fn err(&self, what: &'static str) -> impl FnOnce(kube::Error) -> LeaseError + '_ {
        move |source| LeaseError::Kube {
            what,
            namespace: self.config.namespace.clone(),
            name: self.config.name.clone(),
            source: Box::new(source),
        }
    }

    fn duration_secs(&self) -> i32 {
        self.config
            .lease_duration
            .as_secs()
            .clamp(1, i32::MAX as u64) as i32
    }

    /// One round: read the Lease and create, renew or take it over as [`plan`] says. Ok(true)
    /// when this replica holds the Lease afterwards; Ok(false) when another does or won a race
    /// (409); Err for other API errors (the caller keeps leading until its renew deadline).
    pub async fn step(&self, now: Timestamp) -> Result<bool, LeaseError> {
        let lease = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(self.err("GET"))?;
        let p = plan(
            lease.as_ref().and_then(|l| l.spec.as_ref()),
            &self.config.identity,
            now,
            self.config.lease_duration,
        );
        let conflict = |e: &kube::Error| matches!(e, kube::Error::Api(s) if s.code == 409);
        match p {
            Plan::Follow { holder } => {
                tracing::debug!(%holder, "following the leader");
                Ok(false)
            }
            Plan::Create => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.config.name.clone()),
                        namespace: Some(self.config.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.config.identity.clone()),
                        lease_duration_seconds: Some(self.duration_secs()),
                        acquire_time: Some(micro(now)),
                        renew_time: Some(micro(now)),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(e) if conflict(&e) => Ok(false),
                    Err(e) => Err(self.err("create")(e)),
                }
            }
            Plan::Renew | Plan::TakeOver => {
                let mut lease = lease.expect("plan is Create without a lease");
                let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
                if p == Plan::TakeOver {
                    spec.holder_identity = Some(self.config.identity.clone());
                    spec.acquire_time = Some(micro(now));
                    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                }
                spec.renew_time = Some(micro(now));
                spec.lease_duration_seconds = Some(self.duration_secs());
                match self
                    .api
                    .replace(&self.config.name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(e) if conflict(&e) => Ok(false),
                    Err(e) => Err(self.err("replace")(e)),
                }
            }
        }
    }

    /// Gives the Lease up if this replica holds it (no holder, 1 s duration), so that another
    /// replica takes over at its next round.
    pub async fn release(&self) -> Result<(), LeaseError> {
        let Some(mut lease) = self
            .api
            .get_opt(&self.config.name)
            .await
            .map_err(self.err("GET"))?
        else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(micro(Timestamp::now()));
        self.api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
            .map_err(self.err("release"))?;
        Ok(())
    }
}

/// Runs the election until `shutdown`, publishing leadership on `tx`; releases the Lease on
/// shutdown if held.
pub async fn run(
    elector: Elector,
    tx: watch::Sender<bool>,
    metrics: LeaderMetrics,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let cfg = elector.config().clone();
    let mut last_renewal: Option<Instant> = None;
    let set = |leading: bool| {
        let was = tx.send_replace(leading);
        if was != leading {
            metrics.transitions.inc();
            metrics.leader.set(leading as i64);
            if leading {
                tracing::info!(identity = %cfg.identity, lease = %cfg.name, "became leader");
            } else {
                tracing::warn!(identity = %cfg.identity, lease = %cfg.name, "stopped leading");
            }
        }
    };
    loop {
        match elector.step(Timestamp::now()).await {
            Ok(true) => {
                last_renewal = Some(Instant::now());
                set(true);
            }
            Ok(false) => {
                last_renewal = None;
                set(false);
            }
            Err(e) => {
                tracing::warn!(error = %e, "leader election round failed");
                if last_renewal.is_none_or(|t| t.elapsed() >= cfg.renew_deadline) {
                    last_renewal = None;
                    set(false);
                }
            }
        }
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(cfg.retry_period) => {}
        }
    }
    if *tx.borrow() {
        set(false);
        if let Err(e) = elector.release().await {
            tracing::warn!(error = %e, "releasing the leader Lease failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed: Timestamp, secs: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_string),
            renew_time: Some(MicroTime(renewed)),
            lease_duration_seconds: Some(secs),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn plans() {
        let now = Timestamp::from_second(1_000_000).unwrap();
        let d = DEFAULT_LEASE_DURATION;
        let ago = |s: i64| now.checked_sub(SignedDuration::from_secs(s)).unwrap();
        assert_eq!(plan(None, "a", now, d), Plan::Create);
        assert_eq!(
            plan(Some(&spec(Some("a"), ago(100), 15)), "a", now, d),
            Plan::Renew
        );
        assert_eq!(
            plan(Some(&spec(Some("b"), ago(14), 15)), "a", now, d),
            Plan::Follow { holder: "b".into() }
        );
        assert_eq!(
            plan(Some(&spec(Some("b"), ago(15), 15)), "a", now, d),
            Plan::TakeOver
        );
        assert_eq!(
            plan(Some(&spec(None, now, 15)), "a", now, d),
            Plan::TakeOver
        );
        assert_eq!(
            plan(Some(&spec(Some(""), now, 15)), "a", now, d),
            Plan::TakeOver
        );
        // No duration in the Lease: the configured one.
        let mut s = spec(Some("b"), ago(10), 0);
        s.lease_duration_seconds = None;
        assert!(matches!(plan(Some(&s), "a", now, d), Plan::Follow { .. }));
        assert_eq!(
            plan(Some(&s), "a", now, Duration::from_secs(5)),
            Plan::TakeOver
        );
        s.renew_time = None;
        assert_eq!(plan(Some(&s), "a", now, d), Plan::TakeOver, "never renewed");
    }

    #[test]
    fn timings_are_checked() {
        let mut c = LeaseConfig::new("ns", "pod-a");
        assert!(c.validate().is_ok());
        c.renew_deadline = c.lease_duration;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("renew deadline"));
        let mut c = LeaseConfig::new("ns", "");
        assert!(c.validate().unwrap_err().to_string().contains("identity"));
        c.identity = "x".into();
        c.retry_period = Duration::ZERO;
        assert!(c.validate().is_err());
    }

    #[tokio::test]
    async fn leadership_channels() {
        assert!(Leadership::always().is_leader());
        let (tx, mut l) = Leadership::channel();
        assert!(!l.is_leader());
        tx.send_replace(true);
        l.until_leader().await;
        tx.send_replace(false);
        l.until_follower().await;
        assert!(!l.is_leader());
    }
}
