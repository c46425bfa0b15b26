//! Snapshot test of the scenario outcomes.
//!
//! `make conformance` first runs every scenario with the release binary
//! (`kvstore-conformance run`), which writes `conformance/out/SCENARIO/outcome.yaml`,
//! then runs this test, which compares each outcome with its committed
//! snapshot in `tests/snapshots/outcomes__SCENARIO.snap`. An outcome holds only
//! deterministic facts (steps passed, linearizable, final values, ...), never
//! timings, ports or node ids. With `CI` set, a missing or changed snapshot
//! fails; locally insta writes `.snap.new` files to review with
//! `cargo insta review` (or `INSTA_UPDATE=always` to accept).
//!
//! Ignored by plain `cargo test`: it needs the outcomes of a docker run.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate is in the workspace")
        .to_path_buf()
}

/// The scenario's `description`, shown in its snapshot's header.
fn description(name: &str) -> String {
    let path = root().join("scenarios").join(format!("{name}.yaml"));
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let value: serde_norway::Value = serde_norway::from_str(&text).unwrap_or_default();
    value["description"]
        .as_str()
        .unwrap_or_default()
        .trim()
        .to_string()
}

#[test]
#[ignore = "needs the outcomes of a conformance run: make conformance"]
fn outcomes() {
    let out = std::env::var_os("KVSTORE_CONFORMANCE_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("conformance/out"));
    let mut scenarios: Vec<String> = std::fs::read_dir(root().join("scenarios"))
        .expect("scenarios/ exists")
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            (path.extension()? == "yaml").then(|| path.file_stem()?.to_str().map(str::to_string))?
        })
        .collect();
    scenarios.sort();
    assert!(!scenarios.is_empty(), "no scenarios");
    let mut failures = Vec::new();
    for name in &scenarios {
        let path = out.join(name).join("outcome.yaml");
        let Ok(outcome) = std::fs::read_to_string(&path) else {
            failures.push(format!(
                "{name}: no outcome at {} (run the scenarios first)",
                path.display()
            ));
            continue;
        };
        let description = description(name);
        let checked = std::panic::catch_unwind(|| {
            insta::with_settings!({
                snapshot_path => root().join("conformance/tests/snapshots"),
                prepend_module_to_snapshot => true,
                description => description.clone(),
                omit_expression => true,
            }, {
                insta::assert_snapshot!(name.as_str(), outcome);
            });
        });
        if checked.is_err() {
            failures.push(format!(
                "{name}: outcome differs from its snapshot (or has none)"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} outcomes failed:\n  {}",
        failures.len(),
        scenarios.len(),
        failures.join("\n  ")
    );
    println!("outcomes: {} passed, 0 failed", scenarios.len());
}
