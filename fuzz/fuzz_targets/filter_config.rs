//! The filter's plugin configuration (the JSON in the Envoy `StringValue`), as the plugin reads
//! it at `on_configure`: parse and validate, then derive what the reporter uses from it (the
//! Report call's authority and upstream argument). Must never panic: the filter fails open.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshtune_filter::config::Config;
use meshtune_filter::report::grpc_service_upstream;

fuzz_target!(|data: &[u8]| {
    match Config::from_json(data) {
        Ok(cfg) => {
            let authority = cfg.authority();
            let _ = grpc_service_upstream(&cfg.controller_cluster, &authority);
            let _ = cfg.report_mode.as_str();
        }
        Err(e) => {
            let _ = e.to_string();
            let _ = e.field();
        }
    }
});
