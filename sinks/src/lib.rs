//! Config sinks: render Knobs to Envoy CDS/RDS files and Istio DestinationRule/VirtualService; apply them.
//!
//! - Rendering (pure): [`envoy`] (Cluster, route action, RDS/CDS files, bootstraps), [`istio`]
//!   (DestinationRule, VirtualService), [`hint`] (fast-path `meshtune.v1.Hint`).
//! - Validation: [`schema`] checks objects against Istio's real CRD schemas.
//! - Sinks implementing [`Sink`]: [`envoy_file::EnvoyFileSink`], [`istio_sink::IstioSink`],
//!   [`log_sink::LogSink`].
//! - Undo and recovery of what the Istio sink wrote: [`istio_undo`] (delete owned objects,
//!   restore co-managed fields, per namespace or everywhere; read the knobs in force back).
//! - What the cluster's own (foreign) Istio objects put in force for a client namespace and
//!   host, as istiod selects them: [`istio_foreign`] (pure).

pub mod duration;
pub mod envoy;
pub mod envoy_file;
pub mod hint;
pub mod istio;
pub mod istio_foreign;
pub mod istio_sink;
pub mod istio_undo;
pub mod log_sink;
pub mod schema;
pub mod sink;

pub use envoy_file::{EnvoyDestination, EnvoyFileConfig, EnvoyFileSink, EnvoyRoute};
pub use istio_sink::{IstioSink, IstioSinkConfig};
pub use log_sink::LogSink;
pub use schema::CrdSchemas;
pub use sink::{ApplyFuture, ApplyReport, Decision, ItemReport, Outcome, Sink, SinkError};

/// The destination host of an Istio outbound cluster name
/// (`outbound|9080|v1|reviews.default.svc.cluster.local` → `reviews.default.svc.cluster.local`);
/// `None` for other cluster names.
pub fn host_from_cluster_name(cluster: &str) -> Option<&str> {
    let mut parts = cluster.split('|');
    let direction = parts.next()?;
    let _port = parts.next()?;
    let _subset = parts.next()?;
    let host = parts.next()?;
    (matches!(direction, "outbound" | "inbound") && !host.is_empty() && parts.next().is_none())
        .then_some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sinks_are_usable_as_trait_objects() {
        let sinks: Vec<Box<dyn Sink>> = vec![Box::new(LogSink::new(Box::new(std::io::sink())))];
        let d = Decision {
            destination: "a".into(),
            namespace: "n".into(),
            knobs: meshtune_core::Knobs::istio_defaults(),
            previous: None,
        };
        for s in &sinks {
            let r = s.apply(std::slice::from_ref(&d)).await.unwrap();
            assert_eq!(s.name(), "log");
            assert_eq!(r.succeeded(), 1);
            assert_eq!(r.problems().count(), 0);
        }
    }

    #[test]
    fn istio_cluster_names_give_their_host() {
        use super::host_from_cluster_name as h;
        assert_eq!(
            h("outbound|9080||reviews.default.svc.cluster.local"),
            Some("reviews.default.svc.cluster.local")
        );
        assert_eq!(h("outbound|9080|v1|reviews"), Some("reviews"));
        assert_eq!(h("reviews"), None);
        assert_eq!(h("outbound|9080||"), None);
        assert_eq!(h("BlackHoleCluster"), None);
    }
}
