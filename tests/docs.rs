//! The configuration reference in docs/ is checked against the config schema, key by key and default by
//! default, so the two cannot drift apart.

use std::collections::BTreeMap;

use serde_json::Value;

/// Every leaf key of the schema (arrays of objects as `key[]`), with its default or "required"/"absent".
fn schema_keys(node: &Value, path: &str, out: &mut BTreeMap<String, String>) {
    if node["type"] == "array" && node["items"]["properties"].is_object() {
        return schema_keys(&node["items"], &format!("{path}[]"), out);
    }
    let Some(props) = node["properties"].as_object() else {
        return;
    };
    let required: Vec<&str> = node["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (k, v) in props {
        let p = if path.is_empty() {
            k.clone()
        } else {
            format!("{path}.{k}")
        };
        let nested = v["properties"].is_object()
            || (v["type"] == "array" && v["items"]["properties"].is_object());
        if nested {
            schema_keys(v, &p, out);
        } else {
            let default = if required.contains(&k.as_str()) {
                "required".to_owned()
            } else if v.get("default").is_some() {
                format!("`{}`", v["default"])
            } else {
                "absent".to_owned()
            };
            out.insert(p, default);
        }
    }
}

/// The rows of the reference table: key -> default column.
fn doc_rows(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let cells: Vec<&str> = l.split(" | ").collect();
            let key = cells.first()?.strip_prefix("| `")?.strip_suffix('`')?;
            Some((key.to_owned(), cells.get(1)?.trim().to_owned()))
        })
        .collect()
}

#[test]
fn the_configuration_reference_lists_every_schema_key_with_its_default() {
    let root = env!("CARGO_MANIFEST_DIR");
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{root}/schemas/config.schema.json")).unwrap(),
    )
    .unwrap();
    let doc = std::fs::read_to_string(format!("{root}/docs/configuration.md")).unwrap();
    let mut want = BTreeMap::new();
    schema_keys(&schema, "", &mut want);
    let have = doc_rows(&doc);
    assert!(
        want.len() > 30,
        "the schema walk found too few keys: {want:?}"
    );
    for (key, default) in &want {
        // The JSON of a default string is quoted the same way in both: compare without spaces.
        let got = have
            .get(key)
            .unwrap_or_else(|| panic!("docs/configuration.md has no row for `{key}`"));
        assert_eq!(
            got.replace(' ', ""),
            default.replace(' ', ""),
            "default of `{key}`"
        );
    }
    for key in have.keys() {
        assert!(
            want.contains_key(key),
            "docs/configuration.md documents `{key}`, which the schema lacks"
        );
    }
}

#[test]
fn the_operations_guide_lists_every_metric_the_worker_exports() {
    // Every name the registry is given, read from the source: a family without series is not encoded.
    let root = env!("CARGO_MANIFEST_DIR");
    let doc = std::fs::read_to_string(format!("{root}/docs/operations.md")).unwrap();
    let source = std::fs::read_to_string(format!("{root}/crates/core/src/metrics.rs")).unwrap();
    let names: Vec<&str> = source
        .split("registry.register(")
        .skip(1)
        .filter_map(|call| call.split('"').nth(1))
        .collect();
    assert!(names.len() >= 15, "too few metrics found: {names:?}");
    // What is encoded must be among them, under the names the guide gives (counters end in `_total`).
    itg::metrics::get().register_rm("docs");
    let text = itg::metrics::get().encode();
    for family in text.lines().filter_map(|l| l.strip_prefix("# TYPE itg_")) {
        let name = family.split(' ').next().unwrap_or_default();
        assert!(
            names.contains(&name),
            "{name} is encoded but was not found in the source"
        );
    }
    for name in &names {
        let listed = ["`", "_total`", "{"]
            .iter()
            .any(|end| doc.contains(&format!("`itg_{name}{end}")));
        assert!(listed, "docs/operations.md does not list `itg_{name}`");
    }
}
