//! Discovery's own health metrics (`routeskew_discovery_*`), registered and updated by
//! the Kubernetes discovery.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: &'static str,
}

/// Health of Kubernetes discovery.
#[derive(Clone)]
pub struct DiscoveryMetrics {
    /// 1 while the last request to the API server got an answer, 0 while it is unreachable.
    pub api_up: Gauge,
    /// Watch and list failures, by resource (`pods`, `ingresses`, `ingressroutes`, `discovery`).
    pub api_errors: Family<ResourceLabels, Counter>,
    /// Hosts learnt from Ingress/IngressRoute objects and flags, in use as `host` labels.
    pub known_hosts: Gauge,
    /// Host names dropped by the label bound or invalid.
    pub dropped_hosts: Gauge,
    /// IngressRoute rules that could not be parsed (hosts not taken from them).
    pub unparsable_rules: Gauge,
}

impl DiscoveryMetrics {
    pub fn register(reg: &mut Registry) -> Self {
        let m = DiscoveryMetrics {
            api_up: Gauge::default(),
            api_errors: Family::default(),
            known_hosts: Gauge::default(),
            dropped_hosts: Gauge::default(),
            unparsable_rules: Gauge::default(),
        };
        for resource in ["pods", "ingresses", "ingressroutes", "discovery"] {
            let _ = m.api_errors.get_or_create(&ResourceLabels { resource });
        }
        let r = reg.sub_registry_with_prefix("discovery");
        r.register(
            "api_up",
            "Whether the Kubernetes API server answered the last request (1) or is unreachable (0)",
            m.api_up.clone(),
        );
        r.register(
            "api_errors",
            "Failed Kubernetes list/watch requests, by resource",
            m.api_errors.clone(),
        );
        r.register(
            "known_hosts",
            "Hosts with their own host label (flags, Ingress and IngressRoute rules)",
            m.known_hosts.clone(),
        );
        r.register(
            "dropped_hosts",
            "Host names from Kubernetes objects not used as labels (invalid or over the limit)",
            m.dropped_hosts.clone(),
        );
        r.register(
            "unparsable_rules",
            "IngressRoute match rules that could not be parsed",
            m.unparsable_rules.clone(),
        );
        m
    }
}
