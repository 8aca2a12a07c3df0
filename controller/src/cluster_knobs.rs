//! The knobs in force for destinations meshtune has not written: the controller watches every
//! DestinationRule and VirtualService of the cluster (kube-runtime watchers, one list and one
//! watch per kind, whatever the number of destinations) and keeps what istiod would apply per
//! (client namespace, host) ([`meshtune_sinks::istio_foreign`]: client namespace first, then
//! the service's, then the root namespace; exportTo; the VirtualService's default route).
//!
//! The decision loop reads it once per cycle for the destinations it decides
//! ([`ClusterKnobs::index`], [`meshtune_sinks::istio_foreign::Index::resolve`]) as each key's
//! baseline (`decision::LoopState::baseline`): the knobs in force in features, in a
//! recommendation's `before`, in the knob gauges and `meshtune top`, and the value the
//! guardrails' step limits start from. What meshtune pushed still wins for its keys. Until both
//! kinds are listed ([`ClusterKnobs::synced`]) the loop decides nothing: it would decide from
//! Istio's defaults for hand-tuned destinations. Watch errors are logged, counted and retried
//! with kube-runtime's default backoff; the last listed objects stay in use meanwhile.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use futures::StreamExt;
use kube::api::{Api, DynamicObject};
use kube::runtime::watcher;
use kube::ResourceExt;
use meshtune_sinks::istio_foreign::{ForeignObject, Index, Kind, Lookup};
use meshtune_sinks::istio_sink::{destination_rule_resource, virtual_service_resource};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Kubernetes access of this module (`crate::rbac`): DestinationRules and VirtualServices
/// listed and watched in every namespace.
pub const KUBE_ACCESS: &[crate::rbac::Access] = &[
    (
        "networking.istio.io",
        "destinationrules",
        &["list", "watch"],
    ),
    ("networking.istio.io", "virtualservices", &["list", "watch"]),
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

/// Metrics of the watch and of where the decided destinations' knobs come from.
#[derive(Debug, Clone, Default)]
pub struct ClusterKnobsMetrics {
    /// Objects listed and watched, by kind (meshtune's own excluded).
    pub objects: Family<KindLabels, Gauge>,
    /// Watch errors (retried).
    pub watch_errors: Family<KindLabels, Counter>,
    /// Destinations decided in the last cycle, by where their knobs in force came from.
    pub knobs_source: Family<crate::metrics::SourceLabels, Gauge>,
}

impl ClusterKnobsMetrics {
    /// Creates the metrics and registers them into `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "meshtune_istio_objects_watched",
            "DestinationRules and VirtualServices not written by meshtune, by kind: the cluster's own configuration read as the knobs in force of destinations meshtune has not pushed to",
            m.objects.clone(),
        );
        registry.register(
            "meshtune_istio_object_watch_errors",
            "Errors of the DestinationRule/VirtualService watch, by kind (retried with backoff)",
            m.watch_errors.clone(),
        );
        registry.register(
            "meshtune_destinations_knobs_source",
            "Destinations decided in the last cycle by where their knobs in force come from (pushed: meshtune's push; cluster: the cluster's own DestinationRule/VirtualService; istio_defaults: nothing configures them)",
            m.knobs_source.clone(),
        );
        m
    }
}

type Key = (String, String);

/// Objects of one kind, and the listing in progress.
#[derive(Debug, Default)]
struct KindState {
    objects: BTreeMap<Key, ForeignObject>,
    listing: Option<BTreeMap<Key, ForeignObject>>,
    synced: bool,
}

/// The cluster's DestinationRules and VirtualServices, kept current by [`ClusterKnobs::run`].
#[derive(Debug)]
pub struct ClusterKnobs {
    lookup: Lookup,
    kinds: Mutex<[KindState; 2]>,
    /// The index of the current objects; `None` after a change (rebuilt on the next read).
    index: RwLock<Option<Arc<Index>>>,
    metrics: ClusterKnobsMetrics,
}

fn slot(kind: Kind) -> usize {
    match kind {
        Kind::DestinationRule => 0,
        Kind::VirtualService => 1,
    }
}

fn key(o: &DynamicObject) -> Key {
    (o.namespace().unwrap_or_default(), o.name_any())
}

impl ClusterKnobs {
    /// An empty store reading the mesh with `lookup` (root namespace, cluster domain).
    pub fn new(lookup: Lookup, metrics: ClusterKnobsMetrics) -> Self {
        Self {
            lookup,
            kinds: Default::default(),
            index: RwLock::new(None),
            metrics,
        }
    }

    /// Whether both kinds have been listed once.
    pub fn synced(&self) -> bool {
        self.kinds
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .all(|k| k.synced)
    }

    /// The current objects indexed (built once per change).
    pub fn index(&self) -> Arc<Index> {
        if let Some(ix) = self
            .index
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            return ix.clone();
        }
        let kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        let ix = Arc::new(Index::build(
            self.lookup.clone(),
            kinds.iter().flat_map(|k| k.objects.values().cloned()),
        ));
        *self.index.write().unwrap_or_else(|e| e.into_inner()) = Some(ix.clone());
        ix
    }

    /// Applies one watch event of `kind`.
    pub fn handle(&self, kind: Kind, event: watcher::Event<DynamicObject>) {
        let mut kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        let state = &mut kinds[slot(kind)];
        match event {
            watcher::Event::Init => state.listing = Some(BTreeMap::new()),
            watcher::Event::InitApply(o) => {
                if let (Some(l), Some(f)) =
                    (state.listing.as_mut(), ForeignObject::from_object(kind, &o))
                {
                    l.insert(key(&o), f);
                }
            }
            watcher::Event::InitDone => {
                state.objects = state.listing.take().unwrap_or_default();
                if !state.synced {
                    tracing::info!(
                        kind = kind.name(),
                        objects = state.objects.len(),
                        "listed the cluster's own Istio objects: they are the knobs in force of destinations meshtune has not pushed to"
                    );
                }
                state.synced = true;
            }
            watcher::Event::Apply(o) => {
                // An object meshtune now owns (or one without a name) is no longer foreign.
                match ForeignObject::from_object(kind, &o) {
                    Some(f) => {
                        tracing::debug!(object = %f.id(), "cluster object changed");
                        state.objects.insert(key(&o), f);
                    }
                    None => {
                        state.objects.remove(&key(&o));
                    }
                }
            }
            watcher::Event::Delete(o) => {
                state.objects.remove(&key(&o));
            }
        }
        self.metrics
            .objects
            .get_or_create(&KindLabels {
                kind: kind.name().into(),
            })
            .set(state.objects.len() as i64);
        drop(kinds);
        *self.index.write().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Watches DestinationRules and VirtualServices in every namespace until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        client: kube::Client,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        use kube::runtime::WatchStreamExt;
        let stream = |kind: Kind| {
            let ar = match kind {
                Kind::DestinationRule => destination_rule_resource(),
                Kind::VirtualService => virtual_service_resource(),
            };
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
            watcher(api, watcher::Config::default())
                .default_backoff()
                .map(move |ev| (kind, ev))
                .boxed()
        };
        let merged =
            futures::stream::select(stream(Kind::DestinationRule), stream(Kind::VirtualService));
        tokio::pin!(merged);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                ev = merged.next() => match ev {
                    Some((kind, Ok(ev))) => self.handle(kind, ev),
                    Some((kind, Err(e))) => {
                        self.metrics.watch_errors.get_or_create(&KindLabels { kind: kind.name().into() }).inc();
                        tracing::warn!(kind = kind.name(), error = %e, "watching the cluster's Istio objects failed; retrying (the last listed objects stay in use)");
                    }
                    None => return,
                },
            }
        }
    }
}

/// Owned objects of meshtune's must not hide another namespace's richer object
/// ([`meshtune_sinks::istio_sink::ShadowCheck`]); answered from the current objects.
impl meshtune_sinks::istio_sink::ShadowCheck for ClusterKnobs {
    fn shadowed(&self, namespace: &str, kind: &str, host: &str) -> Option<(String, Vec<String>)> {
        let kind = match kind {
            "DestinationRule" => Kind::DestinationRule,
            "VirtualService" => Kind::VirtualService,
            _ => return None,
        };
        self.index().shadowed(namespace, kind, host)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshtune_core::Knob;
    use serde_json::json;

    fn dr(ns: &str, name: &str, http2: u32, owned: bool) -> DynamicObject {
        let labels = if owned {
            json!({"app.kubernetes.io/managed-by": "meshtune"})
        } else {
            json!({})
        };
        serde_json::from_value(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"host": "reviews.bookinfo.svc.cluster.local",
                "trafficPolicy": {"connectionPool": {"http": {"http2MaxRequests": http2}}}}}))
        .unwrap()
    }

    fn http2(s: &ClusterKnobs) -> f64 {
        s.index()
            .resolve("frontend", "reviews.bookinfo.svc.cluster.local")
            .knobs
            .get(Knob::Http2MaxRequests)
    }

    #[test]
    fn events_keep_the_index_current_and_sync_needs_both_kinds() {
        let mut registry = Registry::default();
        let s = ClusterKnobs::new(
            Lookup::default(),
            ClusterKnobsMetrics::register(&mut registry),
        );
        let default = meshtune_core::Knobs::istio_defaults().get(Knob::Http2MaxRequests);
        s.handle(Kind::DestinationRule, watcher::Event::Init);
        s.handle(
            Kind::DestinationRule,
            watcher::Event::InitApply(dr("bookinfo", "reviews", 50, false)),
        );
        s.handle(
            Kind::DestinationRule,
            watcher::Event::InitApply(dr("frontend", "mine", 99, true)),
        );
        assert_eq!(http2(&s), default, "nothing before the list completes");
        s.handle(Kind::DestinationRule, watcher::Event::InitDone);
        assert!(!s.synced(), "VirtualServices not listed yet");
        assert_eq!(http2(&s), 50.0, "meshtune's own object is left out");
        s.handle(Kind::VirtualService, watcher::Event::Init);
        s.handle(Kind::VirtualService, watcher::Event::InitDone);
        assert!(s.synced());
        s.handle(
            Kind::DestinationRule,
            watcher::Event::Apply(dr("bookinfo", "reviews", 64, false)),
        );
        assert_eq!(http2(&s), 64.0, "a changed rule is picked up");
        // The owner hands the object to meshtune: no longer foreign.
        s.handle(
            Kind::DestinationRule,
            watcher::Event::Apply(dr("bookinfo", "reviews", 64, true)),
        );
        assert_eq!(http2(&s), default);
        s.handle(
            Kind::DestinationRule,
            watcher::Event::Apply(dr("bookinfo", "reviews", 32, false)),
        );
        s.handle(
            Kind::DestinationRule,
            watcher::Event::Delete(dr("bookinfo", "reviews", 32, false)),
        );
        assert_eq!(http2(&s), default, "a deleted rule is gone");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains(r#"meshtune_istio_objects_watched{kind="DestinationRule"} 0"#),
            "{text}"
        );
    }
}
