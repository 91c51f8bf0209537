//! `deploy/` against the binary: yamllint over every manifest, kustomizations that list every file,
//! the ConfigMap's config loaded by ledgerd's own loader (with the StatefulSet's environment) and
//! its keys, ports, paths and topics matched against the manifests, the probe and scrape paths
//! answered by a real `ledgerd`, and the Dockerfile. The alerts and the dashboard: monitoring.rs.

mod common;

use common::ops::{alert_rules, assert_success, find, kustomized, read, repo, tool, yaml_documents};
use ledgerd::config::Config;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CONFIG: &str = "deploy/k8s/base/ledgerd.toml";
/// Keys the Kubernetes copy may set differently from config/ledgerd.toml (each marked "k8s:").
const CLUSTER_KEYS: [&str; 5] =
    ["kafka.bootstrap_servers", "kafka.replication_factor", "state.dir", "http.listen", "log.format"];
/// What the Downward API gives the example pod.
const POD: &str = "ledgerd-0";
const NAMESPACE: &str = "ledger";

fn base() -> Vec<Value> {
    kustomized("deploy/k8s/base")
}

fn statefulset(documents: &[Value]) -> &Value {
    find(documents, "StatefulSet", "ledgerd")
}

fn container(statefulset: &Value) -> &Value {
    let containers = statefulset["spec"]["template"]["spec"]["containers"].as_array().expect("containers");
    containers.iter().find(|c| c["name"] == "ledgerd").expect("a container named ledgerd")
}

/// The container's environment as the kubelet would set it for pod `POD`: Downward API fields,
/// `$(VAR)` references to earlier variables, and every optional Secret present.
fn pod_environment(container: &Value) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for variable in container["env"].as_array().into_iter().flatten() {
        let name = variable["name"].as_str().expect("env name").to_owned();
        let value = if let Some(literal) = variable["value"].as_str() {
            let mut value = literal.to_owned();
            for (earlier, earlier_value) in &env {
                value = value.replace(&format!("$({earlier})"), earlier_value);
            }
            assert!(!value.contains("$("), "{name} refers to an undefined variable: {literal}");
            value
        } else if let Some(field) = variable["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            match field {
                "metadata.name" => POD.to_owned(),
                "metadata.namespace" => NAMESPACE.to_owned(),
                other => panic!("{name}: unexpected fieldRef {other}"),
            }
        } else if variable["valueFrom"]["secretKeyRef"].is_object() {
            format!("secret-for-{name}")
        } else {
            panic!("{name}: unsupported env source {variable}")
        };
        env.push((name, value));
    }
    env
}

/// The config each pod runs with: the ConfigMap's file plus the StatefulSet's environment, through
/// ledgerd's own loader (which refuses unknown keys and bad values, naming them).
fn pod_config(documents: &[Value]) -> Config {
    let env = pod_environment(container(statefulset(documents)));
    Config::load_from(Some(&repo(CONFIG)), env).unwrap_or_else(|e| panic!("{CONFIG} with the pod's environment: {e}"))
}

/// Flattened `section.key` → value of a TOML file.
fn toml_keys(relative: &str) -> BTreeMap<String, toml::Value> {
    fn walk(prefix: &str, table: &toml::Table, out: &mut BTreeMap<String, toml::Value>) {
        for (key, value) in table {
            let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
            match value {
                // kafka.properties is a map of passthrough settings, compared as a whole.
                toml::Value::Table(inner) if path != "kafka.properties" => walk(&path, inner, out),
                other => {
                    out.insert(path, other.clone());
                }
            }
        }
    }
    let table: toml::Table = read(relative).parse().unwrap_or_else(|e| panic!("{relative}: {e}"));
    let mut out = BTreeMap::new();
    walk("", &table, &mut out);
    out
}

fn labels(value: &Value) -> BTreeMap<String, String> {
    value
        .as_object()
        .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_str().expect("label values are strings").to_owned())).collect())
        .unwrap_or_default()
}

/// Whether `selector` (matchLabels) selects objects labelled `labelled`.
fn selects(selector: &Value, labelled: &Value) -> bool {
    let wanted = labels(selector);
    let have = labels(labelled);
    !wanted.is_empty() && wanted.iter().all(|(k, v)| have.get(k) == Some(v))
}

fn listen(config: &Config) -> SocketAddr {
    config.http.listen
}

#[test]
fn yamllint_finds_no_problem_in_deploy_and_the_rule_tests() {
    let output = tool("yamllint", "yamllint")
        .args(["--strict", "-c", "deploy/.yamllint.yaml", "deploy", "tests/prometheus"])
        .current_dir(repo("."))
        .output()
        .unwrap();
    assert_success("yamllint --strict deploy tests/prometheus", &output);
}

#[test]
fn kustomizations_list_every_manifest_and_every_manifest_parses() {
    let root = repo("deploy/k8s");
    for entry in std::fs::read_dir(&root).unwrap() {
        let dir = entry.unwrap().path();
        let name = dir.file_name().unwrap().to_str().unwrap().to_owned();
        let relative = format!("deploy/k8s/{name}");
        let kustomization = yaml_documents(&format!("{relative}/kustomization.yaml")).remove(0);
        assert_eq!(kustomization["kind"], "Kustomization", "{relative}");
        let mut listed = BTreeSet::new();
        for resource in kustomization["resources"].as_array().into_iter().flatten() {
            let resource = resource.as_str().unwrap();
            assert!(dir.join(resource).exists(), "{relative}: resource {resource} does not exist");
            listed.insert(resource.to_owned());
        }
        for generator in kustomization["configMapGenerator"].as_array().into_iter().flatten() {
            for file in generator["files"].as_array().into_iter().flatten() {
                let file = file.as_str().unwrap();
                assert!(dir.join(file).is_file(), "{relative}: generated from {file}, which does not exist");
            }
        }
        // No manifest is left out of its kustomization.
        for file in std::fs::read_dir(&dir).unwrap() {
            let file = file.unwrap().file_name().into_string().unwrap();
            if file.ends_with(".yaml") && file != "kustomization.yaml" {
                assert!(listed.contains(&file), "{relative}/{file} is not in its kustomization's resources");
                for document in yaml_documents(&format!("{relative}/{file}")) {
                    for field in ["apiVersion", "kind"] {
                        assert!(document[field].is_string(), "{relative}/{file}: a document without {field}");
                    }
                    assert!(document["metadata"]["name"].is_string(), "{relative}/{file}: a document without a name");
                }
            }
        }
    }
    // The example combines the three parts.
    let all = kustomized("deploy/k8s/example");
    let kinds: BTreeSet<&str> = all.iter().filter_map(|d| d["kind"].as_str()).collect();
    for kind in ["StatefulSet", "Service", "PodDisruptionBudget", "KafkaTopic", "ServiceMonitor", "PrometheusRule"] {
        assert!(kinds.contains(kind), "deploy/k8s/example has no {kind}");
    }
}

#[test]
fn the_configmap_config_is_the_shipped_config_with_cluster_settings() {
    let shipped = toml_keys("config/ledgerd.toml");
    let cluster = toml_keys(CONFIG);
    let shipped_keys: BTreeSet<&String> = shipped.keys().collect();
    let cluster_keys: BTreeSet<&String> = cluster.keys().collect();
    assert_eq!(cluster_keys, shipped_keys, "{CONFIG} must set every key config/ledgerd.toml documents");
    for (key, value) in &shipped {
        if !CLUSTER_KEYS.contains(&key.as_str()) {
            assert_eq!(&cluster[key], value, "{key} differs from config/ledgerd.toml without being a cluster key");
        }
    }
    for key in CLUSTER_KEYS {
        let line = cluster[key].to_string();
        let marked = read(CONFIG)
            .lines()
            .collect::<Vec<_>>()
            .windows(2)
            .any(|pair| pair[0].contains("# k8s:") && pair[1].contains(line.as_str()));
        assert!(marked, "{key} = {line} in {CONFIG} needs a \"# k8s:\" comment line above it");
    }

    // It loads with ledgerd's own loader, and listens where probes and peers can reach it.
    let config = Config::load_from(Some(&repo(CONFIG)), Vec::new()).unwrap_or_else(|e| panic!("{CONFIG}: {e}"));
    assert!(listen(&config).ip().is_unspecified(), "http.listen must accept connections from outside the pod");
    assert_eq!(config.log.format, ledgerd::config::LogFormat::Json);
}

#[test]
fn the_statefulset_runs_the_configmap_config_with_its_state_on_the_volume() {
    let documents = base();
    let set = statefulset(&documents);
    let pod = &set["spec"]["template"]["spec"];
    let container = container(set);
    let config = pod_config(&documents);

    // The process reads the ConfigMap file.
    let args: Vec<&str> = container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    let at = args.iter().position(|a| *a == "--config").expect("--config in args");
    let config_path = Path::new(args[at + 1]);
    assert_eq!(args[0], "run");
    let mounts = container["volumeMounts"].as_array().unwrap();
    let mount_of = |volume: &str| {
        mounts.iter().find(|m| m["name"] == volume).unwrap_or_else(|| panic!("no mount of volume {volume}"))
    };
    let volumes = pod["volumes"].as_array().unwrap();
    let config_volume = volumes.iter().find(|v| v["configMap"]["name"] == "ledgerd-config").expect("config volume");
    let config_mount = mount_of(config_volume["name"].as_str().unwrap());
    assert_eq!(Path::new(config_mount["mountPath"].as_str().unwrap()).join("ledgerd.toml"), config_path);
    let kustomization = yaml_documents("deploy/k8s/base/kustomization.yaml").remove(0);
    let generator = &kustomization["configMapGenerator"][0];
    assert_eq!(generator["name"], "ledgerd-config");
    assert_eq!(generator["files"][0], "ledgerd.toml");

    // state.dir is the per-pod volume.
    let claim = &set["spec"]["volumeClaimTemplates"][0];
    let state_mount = mount_of(claim["metadata"]["name"].as_str().unwrap());
    assert_eq!(Path::new(state_mount["mountPath"].as_str().unwrap()), config.state.dir);
    assert_eq!(claim["spec"]["accessModes"][0], "ReadWriteOnce");

    // Static membership by pod name, and an address the other instances can reach.
    assert_eq!(config.kafka.group_instance_id, POD);
    let headless = find(&documents, "Service", set["spec"]["serviceName"].as_str().unwrap());
    assert_eq!(headless["spec"]["clusterIP"], "None");
    assert_eq!(
        config.routing.advertised_url,
        format!(
            "http://{POD}.{}.{NAMESPACE}.svc:{}",
            headless["metadata"]["name"].as_str().unwrap(),
            listen(&config).port()
        )
    );
    // The API token comes from the Secret when there is one, and its absence is no error.
    assert_eq!(config.http.resolve_auth_token().unwrap().as_deref(), Some("secret-for-LEDGERD_HTTP__AUTH_TOKEN"));
    let secret = container["env"].as_array().unwrap().iter().find(|e| e["name"] == "LEDGERD_HTTP__AUTH_TOKEN").unwrap();
    assert_eq!(secret["valueFrom"]["secretKeyRef"]["optional"], true);

    // The container port is http.listen's; the probes use it and the pod outlives a graceful stop.
    let port = &container["ports"][0];
    assert_eq!(port["name"], "http");
    assert_eq!(port["containerPort"].as_u64(), Some(u64::from(listen(&config).port())));
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        assert_eq!(container[probe]["httpGet"]["port"], "http", "{probe}");
    }
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        Duration::from_secs(grace) >= config.shutdown.timeout + Duration::from_secs(10),
        "terminationGracePeriodSeconds {grace} leaves no room after shutdown.timeout {:?}",
        config.shutdown.timeout
    );
    // The startup probe gives a first restore far longer than a normal start.
    let startup = &container["startupProbe"];
    let budget = startup["periodSeconds"].as_u64().unwrap() * startup["failureThreshold"].as_u64().unwrap();
    assert!(budget >= 1800, "startup budget {budget}s is too short for restoring partitions");

    // The memory limit holds the block cache (memtables included), the balance cache and the rest
    // of the process.
    let limit = parse_quantity(container["resources"]["limits"]["memory"].as_str().unwrap());
    let state = config.state.block_cache_size.0 + config.state.balance_cache_size.0;
    assert!(limit >= state * 3, "memory limit {limit} vs state caches {state}");

    // Non-root, as the image's user.
    let security = &pod["securityContext"];
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["runAsUser"].as_u64(), Some(image_uid()));
    assert_eq!(security["fsGroup"].as_u64(), Some(image_uid()));
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
}

/// Bytes of a Kubernetes quantity such as `1Gi` or `768Mi`.
fn parse_quantity(text: &str) -> u64 {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let factor = match unit {
        "" => 1,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        other => panic!("unexpected unit {other}"),
    };
    number.parse::<u64>().unwrap() * factor
}

#[test]
fn services_budget_and_scrape_target_select_the_pods_by_their_port_name() {
    let documents = base();
    let set = statefulset(&documents);
    let pod_labels = &set["spec"]["template"]["metadata"]["labels"];
    assert!(selects(&set["spec"]["selector"]["matchLabels"], pod_labels));
    let services: Vec<&Value> = documents.iter().filter(|d| d["kind"] == "Service").collect();
    assert_eq!(services.len(), 2, "a headless and an API Service");
    for service in &services {
        assert!(selects(&service["spec"]["selector"], pod_labels), "{} selects the pods", service["metadata"]["name"]);
        for port in service["spec"]["ports"].as_array().unwrap() {
            assert_eq!(
                port["targetPort"], "http",
                "{} targets the container port by name",
                service["metadata"]["name"]
            );
        }
    }
    let headless = find(&documents, "Service", set["spec"]["serviceName"].as_str().unwrap());
    assert_eq!(headless["spec"]["publishNotReadyAddresses"], true, "restoring pods must be scraped");
    let budget = documents.iter().find(|d| d["kind"] == "PodDisruptionBudget").expect("a PodDisruptionBudget");
    assert!(selects(&budget["spec"]["selector"]["matchLabels"], pod_labels));
    assert_eq!(budget["spec"]["maxUnavailable"], 1);

    // The ServiceMonitor scrapes the headless Service only (each pod once, ready or not) on its
    // named port, and labels the job as the alert rules expect.
    let monitoring = kustomized("deploy/k8s/monitoring");
    let monitor = find(&monitoring, "ServiceMonitor", "ledgerd");
    let scraped: Vec<&&Value> = services
        .iter()
        .filter(|s| selects(&monitor["spec"]["selector"]["matchLabels"], &s["metadata"]["labels"]))
        .collect();
    assert_eq!(scraped.len(), 1, "the ServiceMonitor must select exactly one Service");
    assert_eq!(scraped[0]["metadata"]["name"], headless["metadata"]["name"]);
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert!(headless["spec"]["ports"].as_array().unwrap().iter().any(|p| p["name"] == endpoint["port"]));
    assert_eq!(endpoint["path"], "/metrics");
    let job_label = monitor["spec"]["jobLabel"].as_str().unwrap();
    let job = headless["metadata"]["labels"][job_label].as_str().expect("the headless Service carries the job label");
    for (alert, expr) in alert_rules() {
        assert!(expr.contains(&format!("job=\"{job}\"")), "{alert} must select job=\"{job}\": {expr}");
    }
}

#[test]
fn kafka_topics_match_the_configured_topics() {
    let config = pod_config(&base());
    let topics = kustomized("deploy/k8s/strimzi");
    let topic = |name: &str| -> &Value {
        let matches: Vec<&Value> = topics
            .iter()
            .filter(|t| {
                t["kind"] == "KafkaTopic"
                    && t["spec"]["topicName"].as_str().or(t["metadata"]["name"].as_str()) == Some(name)
            })
            .collect();
        assert_eq!(matches.len(), 1, "expected one KafkaTopic for {name}");
        matches[0]
    };
    let input = topic(&config.kafka.input_topic);
    let dlq = topic(&config.kafka.dlq_topic);
    let snapshots = topic(&config.snapshot.topic);
    let routing = topic(&config.routing.topic);
    assert_eq!(topics.len(), 4, "no KafkaTopic beyond ledgerd's four");
    for t in &topics {
        assert_eq!(t["apiVersion"], "kafka.strimzi.io/v1");
        assert_eq!(t["metadata"]["labels"]["strimzi.io/cluster"], input["metadata"]["labels"]["strimzi.io/cluster"]);
        assert_eq!(t["spec"]["replicas"].as_i64(), Some(i64::from(config.kafka.replication_factor)));
    }
    // ledgerd refuses a snapshot topic with another partition count; dead letters keep their partition.
    let partitions = input["spec"]["partitions"].as_u64().unwrap();
    assert_eq!(snapshots["spec"]["partitions"].as_u64(), Some(partitions));
    assert_eq!(dlq["spec"]["partitions"].as_u64(), Some(partitions));
    assert_eq!(snapshots["spec"]["config"]["cleanup.policy"], "compact");
    assert_eq!(routing["spec"]["config"]["cleanup.policy"], "compact");
    assert_eq!(routing["spec"]["partitions"], 1);
    // The snapshot writer's records are up to max_record_size plus its 4096 bytes of headroom.
    let max_message = snapshots["spec"]["config"]["max.message.bytes"].as_u64().unwrap();
    assert!(max_message >= config.snapshot.max_record_size.0 + 4096, "max.message.bytes {max_message}");
    // The StatefulSet never runs more instances than there are partitions to own.
    let replicas = statefulset(&base())["spec"]["replicas"].as_u64().unwrap();
    assert!(replicas <= partitions);
}

/// The probes' and the ServiceMonitor's paths, asked of a real `ledgerd` started with the
/// ConfigMap's config (only the address, state directory and brokers changed for the test).
#[test]
fn probe_and_scrape_paths_answer_on_ledgerd_started_with_the_deploy_config() {
    let documents = base();
    let container = container(statefulset(&documents));
    let monitoring = kustomized("deploy/k8s/monitoring");
    let mut paths: Vec<(String, &str)> = ["startupProbe", "readinessProbe", "livenessProbe"]
        .iter()
        .map(|probe| (container[*probe]["httpGet"]["path"].as_str().unwrap().to_owned(), *probe))
        .collect();
    let scrape = find(&monitoring, "ServiceMonitor", "ledgerd")["spec"]["endpoints"][0]["path"].as_str().unwrap();
    paths.push((scrape.to_owned(), "ServiceMonitor"));

    let port = common::free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ledgerd"))
        .args(["run", "--config"])
        .arg(repo(CONFIG))
        .env_remove("RUST_LOG")
        .envs(pod_environment(container))
        .env("LEDGERD_HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env("LEDGERD_STATE__DIR", dir.path())
        .env("LEDGERD_KAFKA__BOOTSTRAP_SERVERS", "127.0.0.1:1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let get = |path: &str| common::http_get(&format!("http://127.0.0.1:{port}{path}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while get("/livez").is_none() {
        assert!(child.try_wait().unwrap().is_none(), "ledgerd exited with the deploy config");
        assert!(Instant::now() < deadline, "ledgerd did not answer within 30s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let answers: Vec<_> = paths.iter().map(|(path, user)| (path, user, get(path))).collect();
    let _ = child.kill();
    let _ = child.wait();
    for (path, user, answer) in answers {
        let (status, body) = answer.unwrap_or_else(|| panic!("{user}: no answer on {path}"));
        // Not joined (no broker): /readyz says 503, but the route exists (unknown ones say 404).
        let expected: &[u16] = if path == "/readyz" { &[200, 503] } else { &[200] };
        assert!(expected.contains(&status), "{user}: GET {path} answered {status}: {body}");
    }
}

#[test]
fn the_dockerfile_builds_a_non_root_image_matching_the_manifests() {
    let dockerfile = read("deploy/Dockerfile");
    let instructions: Vec<(String, String)> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .fold(Vec::<String>::new(), |mut joined, line| {
            // Continuation lines belong to the instruction above.
            match joined.last_mut() {
                Some(last) if last.ends_with('\\') => {
                    last.pop();
                    last.push(' ');
                    last.push_str(line);
                }
                _ => joined.push(line.to_owned()),
            }
            joined
        })
        .into_iter()
        .map(|line| {
            let (word, rest) = line.split_once(' ').unwrap_or((&line, ""));
            (word.to_ascii_uppercase(), rest.trim().to_owned())
        })
        .collect();
    let stages: Vec<usize> =
        instructions.iter().enumerate().filter(|(_, (w, _))| w == "FROM").map(|(i, _)| i).collect();
    assert!(stages.len() >= 2, "a multi-stage build");
    let last_stage = &instructions[*stages.last().unwrap()..];
    let build_stage = &instructions[stages[0]..stages[1]];

    // The dependency layer is built from the manifests before the sources are copied.
    let position = |stage: &[(String, String)], word: &str, needle: &str| {
        stage.iter().position(|(w, rest)| w == word && rest.contains(needle))
    };
    let manifests = position(build_stage, "COPY", "Cargo.lock").expect("COPY of Cargo.toml and Cargo.lock");
    let dependencies = position(build_stage, "RUN", "cargo build").expect("a dependency build");
    let sources = position(build_stage, "COPY", "src").expect("COPY of src");
    assert!(manifests < dependencies && dependencies < sources, "dependencies must be built before COPY src");
    // .cargo/config.toml sets RocksDB's C++ flags: the image must be the build that was measured.
    let settings = position(build_stage, "COPY", ".cargo").expect("COPY of .cargo, the build settings");
    assert!(settings < dependencies, "the build settings must be in place for the dependency build");
    assert!(position(build_stage, "RUN", "libclang-dev").is_some(), "bindgen needs libclang-dev");

    // The run stage: non-root user, the Kubernetes config as default, http.listen's port.
    let user = last_stage.iter().rev().find(|(w, _)| w == "USER").expect("USER in the final stage");
    let uid: u64 = user.1.split(':').next().unwrap().parse().expect("a numeric USER, as runAsNonRoot requires");
    assert_ne!(uid, 0);
    assert_eq!(uid, image_uid());
    let config = Config::load_from(Some(&repo(CONFIG)), Vec::new()).unwrap();
    let expose = last_stage.iter().find(|(w, _)| w == "EXPOSE").expect("EXPOSE");
    assert_eq!(expose.1, listen(&config).port().to_string());
    let copy = position(last_stage, "COPY", CONFIG).expect("the image ships deploy/k8s/base/ledgerd.toml");
    let target = last_stage[copy].1.split_whitespace().last().unwrap().to_owned();
    let cmd = last_stage.iter().find(|(w, _)| w == "CMD").expect("CMD");
    let cmd: Vec<String> = serde_json::from_str(&cmd.1).expect("CMD in exec form");
    assert_eq!(cmd, ["run", "--config", target.as_str()]);
    let documents = base();
    let args = &container(statefulset(&documents))["args"];
    assert_eq!(args, &serde_json::json!(cmd), "the StatefulSet runs what the image runs");

    // The build context holds only what the build copies: never target/ (gigabytes).
    let ignore = read(".dockerignore");
    assert!(ignore.lines().any(|l| l.trim() == "*"), ".dockerignore must exclude everything by default");
    for needed in ["Cargo.toml", "Cargo.lock", ".cargo/config.toml", "build.rs", "proto/", "src/", CONFIG] {
        assert!(ignore.lines().any(|l| l.trim() == format!("!{needed}")), ".dockerignore must let {needed} in");
    }
}

/// The numeric user of the image's final stage.
fn image_uid() -> u64 {
    let dockerfile = read("deploy/Dockerfile");
    let user = dockerfile.lines().rev().find_map(|l| l.trim().strip_prefix("USER ")).expect("USER");
    user.split(':').next().unwrap().parse().expect("numeric USER")
}
