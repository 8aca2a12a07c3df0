//! Simulator scenario files (TOML): parse and validate, then the derived figures the simulator
//! uses (episode length, capacity, offered rate over the episode).
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshtune_sim::scenario::Scenario;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Scenario::from_toml_str(text, "fuzz.toml") {
        Ok(sc) => {
            let episode = sc.episode_s();
            let _ = sc.capacity_rps();
            for i in 0..=8 {
                let _ = sc.load.rate(episode * f64::from(i) / 8.0, episode);
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
