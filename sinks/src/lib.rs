//! Config sinks: render Knobs to Envoy CDS/RDS files and Istio DestinationRule/VirtualService; apply them.
