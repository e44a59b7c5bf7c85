use prometheus_client::registry::Registry;

use super::*;

fn indexes_follow<L: LabelValue>() {
    for (i, v) in L::ALL.iter().enumerate() {
        assert_eq!(v.index(), i, "{v:?}");
    }
}

#[test]
fn label_indexes_follow_the_all_tables() {
    indexes_follow::<InputKind>();
    indexes_follow::<ParseError>();
    indexes_follow::<Leg>();
    indexes_follow::<Eviction>();
    indexes_follow::<Skip>();
    indexes_follow::<Anomaly>();
    indexes_follow::<DropReason>();
    indexes_follow::<Unclassified>();
    indexes_follow::<MemoryPart>();
    indexes_follow::<Shed>();
}

#[test]
fn every_series_exists_at_zero_and_counts_in_place() {
    let mut reg = Registry::with_prefix("routeskew");
    let m = PipelineMetrics::register(&mut reg);
    let text = crate::metrics::encode(&reg);
    for line in [
        "routeskew_pipeline_events_total{kind=\"upstream_failure\"} 0\n",
        "routeskew_pipeline_parse_errors_total{kind=\"trailing_garbage\"} 0\n",
        "routeskew_pipeline_unanswered_requests_total{leg=\"upstream\"} 0\n",
        "routeskew_pipeline_evicted_connections_total{reason=\"idle\"} 0\n",
        "routeskew_pipeline_skipped_data_total{reason=\"h2_desync\"} 0\n",
        "routeskew_pipeline_connection_anomalies_total{kind=\"upstream_log_full\"} 0\n",
        "routeskew_pipeline_dropped_observations_total{reason=\"unknown_origin\"} 0\n",
        "routeskew_pipeline_h2_unclassified_total{reason=\"connection_limit\"} 0\n",
        "routeskew_pipeline_truncated_heads_total 0\n",
        "routeskew_pipeline_connections 0\n",
        "routeskew_pipeline_memory_bytes{part=\"series\"} 0\n",
        "routeskew_pipeline_shed_total{what=\"request_aged\"} 0\n",
        "routeskew_pipeline_memory_budget_bytes 0\n",
    ] {
        assert!(text.contains(line), "{line}{text}");
    }
    // A clone (what each stage holds) counts into the registered series.
    let stage = m.clone();
    stage.skipped_data.inc(Skip::H2Desync);
    stage.h2_unclassified.inc_by(Unclassified::Hpack, 3);
    let text = crate::metrics::encode(&reg);
    assert!(text.contains("routeskew_pipeline_skipped_data_total{reason=\"h2_desync\"} 1\n"));
    assert!(text.contains("routeskew_pipeline_h2_unclassified_total{reason=\"hpack\"} 3\n"));
    assert_eq!(m.h2_unclassified.get(Unclassified::Hpack), 3);
}
