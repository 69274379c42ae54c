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

fn read(path: &str) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    std::fs::read_to_string(format!("{root}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The files of a directory of the repository whose names end with `ext`, as `dir/name`, sorted.
fn files(dir: &str, ext: &str) -> Vec<String> {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut out: Vec<String> = std::fs::read_dir(format!("{root}/{dir}"))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.ends_with(ext).then(|| format!("{dir}/{name}"))
        })
        .collect();
    out.sort();
    out
}

/// The markdown tables of a text: each a list of rows, a row a list of trimmed cells (separator rows dropped).
fn tables(text: &str) -> Vec<Vec<Vec<String>>> {
    let mut out: Vec<Vec<Vec<String>>> = Vec::new();
    let mut in_table = false;
    for line in text.lines() {
        let t = line.trim();
        if !t.starts_with('|') {
            in_table = false;
            continue;
        }
        if !in_table {
            out.push(Vec::new());
            in_table = true;
        }
        let inner = t.strip_prefix('|').unwrap_or(t);
        let cells: Vec<String> = inner
            .strip_suffix('|')
            .unwrap_or(inner)
            .split('|')
            .map(|c| c.trim().to_owned())
            .collect();
        if !cells
            .iter()
            .all(|c| c.chars().all(|ch| matches!(ch, '-' | ':' | '|' | ' ')))
        {
            out.last_mut().unwrap().push(cells);
        }
    }
    out
}

#[test]
fn the_readme_is_about_a_hundred_lines_and_points_at_every_doc_the_benchmarks_and_the_dashboard() {
    let readme = read("README.md");
    let lines = readme.lines().count();
    println!("README.md: {lines} lines");
    assert!(
        lines <= 110,
        "README.md has {lines} lines: what is not the service, the two commands, a minimal config and \
         where to go next belongs in docs/ (docs/testing.md holds the servers and the tests)"
    );
    for doc in files("docs", ".md") {
        assert!(
            readme.contains(&format!("]({doc})")),
            "README.md does not point at {doc}"
        );
    }
    for must in [
        "](BENCHMARKS.md)",
        "](docs/dashboard.png)",
        "](CHANGELOG.md)",
        "](LICENSE)",
        "scripts/demo",
        "scripts/test",
        "root",
        "minutes",
    ] {
        assert!(readme.contains(must), "README.md does not say {must:?}");
    }
    assert!(
        tables(&readme).is_empty(),
        "README.md holds a table: timings and inventories live in docs/testing.md and BENCHMARKS.md"
    );
}

#[test]
fn every_relative_link_in_the_docs_names_a_file_that_exists() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut pages = vec![
        "README.md".to_owned(),
        "BENCHMARKS.md".to_owned(),
        "CHANGELOG.md".to_owned(),
        "schemas/README.md".to_owned(),
    ];
    pages.extend(files("docs", ".md"));
    let mut checked = 0;
    for page in &pages {
        let text = read(page);
        let dir = root.join(page).parent().unwrap().to_owned();
        for part in text.split("](").skip(1) {
            let target = part.split(')').next().unwrap_or_default();
            let path = target.split('#').next().unwrap_or_default();
            if path.is_empty() || path.contains("://") || path.starts_with("mailto:") {
                continue;
            }
            assert!(
                dir.join(path).exists(),
                "{page} links to {target}, which does not exist"
            );
            checked += 1;
        }
    }
    assert!(checked > 40, "too few links found: {checked}");
}

#[test]
fn the_testing_guide_lists_every_test_file_and_names_none_that_is_gone() {
    let guide = read("docs/testing.md");
    let tests = files("tests", ".rs");
    assert!(tests.len() > 30, "the tests are found: {tests:?}");
    for t in &tests {
        assert!(
            guide.contains(&format!("`{t}`")),
            "docs/testing.md does not say what {t} proves"
        );
    }
    for part in guide.split("`tests/").skip(1) {
        let name = part.split('`').next().unwrap_or_default();
        if let Some(file) = name.strip_suffix(".rs").filter(|n| !n.contains('/')) {
            assert!(
                tests.contains(&format!("tests/{file}.rs")),
                "docs/testing.md names tests/{name}, which is gone"
            );
        }
    }
}

#[test]
fn the_testing_guide_names_the_versions_the_tools_pin() {
    let guide = read("docs/testing.md");
    // (the Go module of tools/, the module it pins): the guide names the pinned version.
    for (tool, module) in [
        ("tools/testcluster", "k8s.io/kubernetes"),
        ("tools/testcluster", "go.etcd.io/etcd/server/v3"),
        ("tools/gatewayapi", "sigs.k8s.io/gateway-api"),
        ("tools/envoygateway", "github.com/envoyproxy/gateway"),
        ("tools/contour", "github.com/projectcontour/contour"),
        ("tools/kwok", "sigs.k8s.io/kwok"),
        ("tools/helm", "helm.sh/helm/v4"),
    ] {
        let gomod = read(&format!("{tool}/go.mod"));
        let version = gomod
            .lines()
            .map(|l| l.trim().trim_start_matches("require").trim())
            .find_map(|l| l.strip_prefix(&format!("{module} v")))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("{tool}/go.mod pins no {module}"));
        assert!(
            guide.contains(version),
            "docs/testing.md does not name {module} {version}, which {tool}/go.mod pins"
        );
    }
}

#[test]
fn the_testing_guide_has_one_timing_table_with_a_date_on_every_row() {
    let guide = read("docs/testing.md");
    let all = tables(&guide);
    assert_eq!(all.len(), 1, "docs/testing.md has one table, the timings");
    let table = &all[0];
    assert_eq!(table[0], ["date", "case", "time"]);
    let dated = |cell: &str| {
        cell.as_bytes().windows(10).any(|w| {
            w.iter().enumerate().all(|(i, b)| match i {
                4 | 7 => *b == b'-',
                _ => b.is_ascii_digit(),
            })
        })
    };
    for row in &table[1..] {
        assert!(dated(&row[0]), "a timing without a date: {row:?}");
        assert!(!row[2].is_empty(), "a timing without a time: {row:?}");
    }
    // Newest first, so the first row is what a newcomer meets.
    let dates: Vec<&str> = table[1..].iter().map(|r| r[0].as_str()).collect();
    let mut sorted = dates.clone();
    sorted.sort_by_key(|d| std::cmp::Reverse(d.trim_start_matches("week of ").to_owned()));
    assert_eq!(dates, sorted, "the timing rows run newest first");
}

/// Every YAML document of a file.
fn yaml_documents(path: &str) -> Vec<Value> {
    use serde::Deserialize;
    serde_norway::Deserializer::from_str(&read(path))
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// The backticked words of a table cell.
fn ticked(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_rbac_table_of_the_deploy_guide_grants_what_the_base_grants() {
    // What the base's Roles and ClusterRoles grant: (resource, verb), and whether any is cluster-wide.
    let kustomization = yaml_documents("deploy/base/kustomization.yaml").remove(0);
    let mut manifests = std::collections::BTreeSet::new();
    for file in kustomization["resources"].as_array().unwrap() {
        for o in yaml_documents(&format!("deploy/base/{}", file.as_str().unwrap())) {
            if !matches!(o["kind"].as_str(), Some("Role" | "ClusterRole")) {
                continue;
            }
            for rule in o["rules"].as_array().unwrap() {
                for r in rule["resources"].as_array().unwrap() {
                    for v in rule["verbs"].as_array().unwrap() {
                        manifests.insert((
                            r.as_str().unwrap().to_owned(),
                            v.as_str().unwrap().to_owned(),
                        ));
                    }
                }
            }
        }
    }
    let guide = read("docs/deploy.md");
    let section = guide
        .split("## RBAC, and why each verb")
        .nth(1)
        .expect("docs/deploy.md has its RBAC section");
    let table = tables(section).remove(0);
    assert_eq!(table[0], ["where", "resource", "verbs", "for"]);
    let known: std::collections::BTreeSet<&str> =
        manifests.iter().map(|(r, _)| r.as_str()).collect();
    let mut documented = std::collections::BTreeSet::new();
    let mut resources: Vec<String> = Vec::new();
    for row in &table[1..] {
        if !row[1].is_empty() {
            resources = ticked(&row[1])
                .into_iter()
                .filter(|r| known.contains(r.as_str()))
                .collect();
        }
        for r in &resources {
            for v in ticked(&row[2]) {
                documented.insert((r.clone(), v));
            }
        }
    }
    assert_eq!(
        documented, manifests,
        "docs/deploy.md's RBAC table lists (resource, verb) pairs other than the base's Roles grant"
    );
    assert!(
        !section.to_lowercase().contains("nothing cluster-wide"),
        "the base grants a ClusterRole bound cluster-wide; the guide must not say nothing is"
    );
}

#[test]
fn the_reconciler_alert_s_threshold_is_the_one_its_runbook_gives() {
    let rules = yaml_documents("deploy/prometheus/alerts.yaml").remove(0);
    let rule = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_array().unwrap())
        .find(|r| r["alert"] == "ITGReconcilerNotCompleting")
        .expect("the reconciler's alert");
    let expr = rule["expr"].as_str().unwrap().trim();
    let threshold = expr.rsplit("> ").next().unwrap().trim();
    let seconds: u64 = threshold
        .parse()
        .unwrap_or_else(|_| panic!("a number of seconds: {expr}"));
    let ops = read("docs/operations.md");
    let runbook = ops
        .split("### ITGReconcilerNotCompleting")
        .nth(1)
        .and_then(|s| s.split("\n### ").next())
        .expect("the runbook entry");
    assert!(
        runbook.contains(&format!("`> {seconds}`")) && runbook.contains(&format!("{seconds} s")),
        "the runbook does not give the rule's threshold of {seconds} s: {runbook}"
    );
    assert!(
        runbook.contains("does not follow") && runbook.contains("worker.reconcile_interval"),
        "the runbook says how the threshold relates to worker.reconcile_interval"
    );
    // The chart ships the same rules.
    assert_eq!(
        yaml_documents("deploy/helm/internal-task-gateway/files/alerts.yaml").remove(0),
        rules
    );
}

#[test]
fn unknown_resource_manager_is_never_sent_and_the_contract_says_so() {
    // The reason's only uses outside its definition would be where a reply is built with it.
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut uses = Vec::new();
    let mut todo = vec![root.join("src"), root.join("crates")];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if p.extension().is_some_and(|e| e == "rs")
                && !p.ends_with("contract/replies.rs")
                && std::fs::read_to_string(&p)
                    .unwrap()
                    .contains("FailureReason::UnknownResourceManager")
            {
                uses.push(p.display().to_string());
            }
        }
    }
    let contract = read("docs/contract.md");
    assert!(
        uses.is_empty(),
        "the worker now sends unknown_resource_manager ({uses:?}): say where in docs/contract.md"
    );
    assert!(
        contract.contains("`unknown_resource_manager` is never sent"),
        "docs/contract.md must say that unknown_resource_manager is never sent, and why"
    );
}

/// The `.rs` files under a directory of the repository, recursively, as paths from the root.
fn sources(dir: &str, out: &mut Vec<String>) {
    let root = env!("CARGO_MANIFEST_DIR");
    for e in std::fs::read_dir(format!("{root}/{dir}")).unwrap() {
        let e = e.unwrap();
        let path = format!("{dir}/{}", e.file_name().into_string().unwrap());
        if e.file_type().unwrap().is_dir() {
            if !path.ends_with("/target") {
                sources(&path, out);
            }
        } else if path.ends_with(".rs") {
            out.push(path);
        }
    }
}

/// The subject families (`itg.events`, `itg.requeue`...) that the code outside tests names in a string
/// literal, each with a file that names it.
fn subject_families_in_code() -> BTreeMap<String, String> {
    let mut files = Vec::new();
    sources("src", &mut files);
    sources("crates", &mut files);
    let mut families = BTreeMap::new();
    for f in files {
        let text = read(&f);
        // A file's unit tests follow its code; their sample strings are no subjects.
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for lit in code.split("\"itg.").skip(1) {
            let token: String = lit
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_' || *c == '-')
                .collect();
            if !token.is_empty() && lit[token.len()..].starts_with(['.', '{']) {
                families.entry(format!("itg.{token}")).or_insert(f.clone());
            }
        }
    }
    families
}

#[test]
fn the_contract_s_subjects_table_holds_every_subject_the_worker_uses() {
    let contract = read("docs/contract.md");
    let source = read("crates/core/src/contract/subjects.rs");
    let table = tables(&contract).remove(0);
    assert_eq!(table[0], ["subject", "direction", "meaning"]);
    let listed: Vec<&str> = table[1..].iter().map(|r| r[0].as_str()).collect();
    // The prefix of each stream's subjects, from the source: itg.events, itg.replies, itg.deadletter.
    let prefixes: std::collections::BTreeSet<&str> = source
        .lines()
        .filter(|l| l.contains("_SUBJECTS: &str = \""))
        .filter_map(|l| l.split('"').nth(1)?.strip_suffix(".>"))
        .collect();
    assert!(
        prefixes.len() >= 3,
        "the streams' subjects are found: {prefixes:?}"
    );
    for p in prefixes {
        assert!(
            listed.iter().any(|s| s.starts_with(&format!("`{p}."))),
            "docs/contract.md's subjects table has no {p}.* subject: {listed:?}"
        );
    }
    // Every subject family the code publishes to or captures, streams or not (a site's requeue).
    let families = subject_families_in_code();
    for known in ["itg.events", "itg.replies", "itg.deadletter", "itg.requeue"] {
        assert!(
            families.contains_key(known),
            "the scan of src/ and crates/ finds {known}: {families:?}"
        );
    }
    for (family, file) in &families {
        assert!(
            listed
                .iter()
                .any(|s| s.starts_with(&format!("`{family}.<rm>."))),
            "{file} uses {family}.*, which docs/contract.md's subjects table does not list: {listed:?}"
        );
    }
}

#[test]
fn the_docs_agree_that_tcproute_v1_is_in_the_standard_channel_from_v1_6() {
    for doc in [
        "docs/deploy.md",
        "docs/controllers.md",
        "README.md",
        "docs/testing.md",
    ] {
        let text = read(doc).replace('\n', " ");
        assert!(
            !text.contains("not in the standard channel")
                && !text.contains("not in the   standard channel"),
            "{doc} says TCPRoute is not in the standard channel"
        );
    }
    for doc in ["docs/deploy.md", "docs/controllers.md"] {
        let text = read(doc).replace('\n', " ");
        assert!(
            text.contains("v1.6"),
            "{doc} does not say from which Gateway API release TCPRoute v1 is standard"
        );
    }
}

#[test]
fn benchmarks_open_with_one_table_of_every_target_its_status_date_commit_machine_and_command() {
    let text = read("BENCHMARKS.md");
    let first = text
        .split("\n## ")
        .nth(1)
        .expect("a first section after the title");
    assert!(
        first.starts_with("Every target, now"),
        "BENCHMARKS.md opens with the method, not the targets"
    );
    let table = tables(first).remove(0);
    assert_eq!(
        table[0],
        [
            "target", "now", "status", "date", "commit", "machine", "command"
        ]
    );
    assert!(table.len() > 15, "every target: {} rows", table.len() - 1);
    let root = env!("CARGO_MANIFEST_DIR");
    for row in &table[1..] {
        assert!(
            row[0].contains("<=") || row[0].contains(">=") || row[0].contains("= 0"),
            "a target says its bound: {row:?}"
        );
        assert!(
            row[2].starts_with("met") || row[2].starts_with("missed"),
            "status is met or missed: {row:?}"
        );
        assert!(
            row[3].len() == 10 && row[3].as_bytes()[4] == b'-',
            "a date: {row:?}"
        );
        let commit = row[4]
            .split(|c: char| !c.is_ascii_hexdigit())
            .find(|w| w.len() >= 7)
            .unwrap_or_else(|| panic!("a commit: {row:?}"));
        let known = std::process::Command::new("git")
            .args(["cat-file", "-e", &format!("{commit}^{{commit}}")])
            .current_dir(root)
            .status()
            .is_ok_and(|s| s.success());
        assert!(known, "commit {commit} is not in this repository's history");
        assert!(
            !row[5].is_empty() && !row[6].is_empty(),
            "machine and command: {row:?}"
        );
    }
}

#[test]
fn the_demo_runs_its_worker_as_the_docs_recommend_where_envoy_gateway_serves_its_gateway() {
    let demo = read("scripts/demo");
    let envoy = demo
        .split("GATEWAY=${ITG_ENVOY_GATEWAY#*/}")
        .nth(1)
        .and_then(|s| s.split("\nelse\n").next())
        .expect("the demo's Envoy Gateway branch");
    assert!(
        envoy.contains("WAIT_FOR_CONTROLLER=true") && envoy.contains("FIRST_BYTE=yes"),
        "with Envoy Gateway the demo waits for the controller and times the first byte"
    );
    assert!(demo.contains("wait_for_controller: $WAIT_FOR_CONTROLLER"));
    assert!(
        !demo.contains("data_plane_probe"),
        "the data plane probe keeps its default: on wherever the controller wait is"
    );
    assert!(demo.contains("${FIRST_BYTE:+--first-byte}"));
}
