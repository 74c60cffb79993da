//! Three nodes under one control plane, on a network the test makes: four network namespaces
//! joined by a bridge (the control plane's) and veth pairs, an agent in each node's namespace
//! listening on its own address over TLS and requiring the control plane's client certificate, all
//! reporting to one receiver. The control plane registers 10 apps per node and stops all 30 at
//! once; one node is frozen (SIGSTOP) and another cut off (its link down) in the middle.

use std::os::fd::AsFd;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support;
use crate::support::pki::{Ca, Files, Pair, server_requiring_clients_of};
use crate::support::receiver::Receiver;
use crate::support::{AgentOptions, AgentProcess, Workload, app_body, app_id, write_private};
use futures_util::future::join_all;
use http_body_util::BodyExt;
use serde_json::Value;

const NODES: usize = 3;
const APPS_PER_NODE: usize = 10;
/// The control plane's time limit for one call to a node.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
const CP_ADDR: &str = "10.213.0.1";
const PORT: u16 = 8475;
/// The frozen node and the cut-off one.
const FROZEN: usize = 1;
const CUT: usize = 2;

fn node_addr(i: usize) -> String {
    format!("10.213.0.{}", 11 + i)
}

/// Runs `ip` with `args`; the test fails with its error when it fails.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("iproute2's ip is needed (apt-get install iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {} (the fleet test makes network namespaces: it must run as root)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// The test's network: the control plane's namespace with the bridge, and one namespace a node,
/// each joined to the bridge by a veth pair. Dropped, it deletes them all (and so their links).
struct Network {
    cp: String,
    nodes: Vec<String>,
}

impl Network {
    fn make() -> Network {
        let tag = format!("na-fleet-{}", std::process::id());
        let net = Network {
            cp: format!("{tag}-cp"),
            nodes: (0..NODES).map(|i| format!("{tag}-n{i}")).collect(),
        };
        ip(&["netns", "add", &net.cp]);
        for n in &net.nodes {
            ip(&["netns", "add", n]);
        }
        let cp = net.cp.as_str();
        ip(&["-n", cp, "link", "set", "lo", "up"]);
        ip(&["-n", cp, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            cp,
            "addr",
            "add",
            &format!("{CP_ADDR}/24"),
            "dev",
            "br0",
        ]);
        ip(&["-n", cp, "link", "set", "br0", "up"]);
        for (i, n) in net.nodes.iter().enumerate() {
            let port = format!("v{i}");
            ip(&[
                "-n", cp, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", n,
            ]);
            ip(&["-n", cp, "link", "set", &port, "master", "br0"]);
            ip(&["-n", cp, "link", "set", &port, "up"]);
            ip(&["-n", n, "link", "set", "lo", "up"]);
            ip(&[
                "-n",
                n,
                "addr",
                "add",
                &format!("{}/24", node_addr(i)),
                "dev",
                "eth0",
            ]);
            ip(&["-n", n, "link", "set", "eth0", "up"]);
        }
        net
    }

    /// Takes node `i`'s link to the bridge down, or up again.
    fn link(&self, i: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["-n", &self.cp, "link", "set", &format!("v{i}"), state]);
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for n in self.nodes.iter().chain([&self.cp]) {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

/// Runs `f` on a thread of its own inside network namespace `netns`: every socket it opens, and
/// those of the threads it starts, are that namespace's.
fn in_netns<T: Send + 'static>(netns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap();
        rustix::thread::move_into_link_name_space(
            ns.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .expect("setns into the control plane's namespace");
        f()
    })
    .join()
    .unwrap()
}

type Https = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    http_body_util::Full<hyper::body::Bytes>,
>;

/// An HTTPS client trusting `servers`, presenting `identity` when given.
fn https(servers: &Ca, identity: Option<&Pair>) -> Https {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(servers.der.clone()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some(pair) => {
            let chain = CertificateDer::pem_slice_iter(pair.cert.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(pair.key.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .build();
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(connector)
}

/// One call to node `i`, within [`CLIENT_TIMEOUT`]: the status and JSON body, or why it failed.
async fn call(
    client: &Https,
    i: usize,
    method: &str,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), String> {
    let uri = format!("https://{}:{PORT}{path}", node_addr(i));
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(uri)
        .header("authorization", format!("Bearer {token}"));
    let bytes = match body {
        Some(b) => {
            req = req.header("content-type", "application/json");
            serde_json::to_vec(b).unwrap()
        }
        None => Vec::new(),
    };
    let req = req
        .body(http_body_util::Full::new(hyper::body::Bytes::from(bytes)))
        .unwrap();
    let answer = async {
        let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Ok((status, body))
    };
    tokio::time::timeout(CLIENT_TIMEOUT, answer)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {CLIENT_TIMEOUT:?}")))
}

/// A stop as the control plane makes it: a stop under way already is waited for.
async fn stop_surely(client: &Https, i: usize, id: &str, token: &str) -> u16 {
    let (status, body) = call(
        client,
        i,
        "POST",
        &format!("/v1/apps/{id}/stop"),
        token,
        None,
    )
    .await
    .unwrap_or_else(|e| panic!("node {i}, stop of {id}: {e}"));
    if status == 409 && body["error"] == "stop_in_progress" {
        let path = format!("/v1/apps/{id}/wait?online=false&timeout=3");
        let (waited, _) = call(client, i, "GET", &path, token, None).await.unwrap();
        return waited;
    }
    status
}

#[test]
fn three_nodes_under_one_control_plane_stop_through_freezes_and_cuts() {
    let net = Network::make();
    let cp_ns = net.cp.clone();
    in_netns(&cp_ns, move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(scenario(net));
    });
}

async fn scenario(net: Network) {
    let files = Files::new();
    // The fleet's CA issues the nodes' server and client certificates and the receiver's; the
    // control plane's CA issues the one client certificate the nodes accept.
    let fleet = Ca::new("fleet");
    let cp = Ca::new("control plane");
    let stranger = Ca::new("someone else");
    let cp_identity = cp.client("control-plane");
    let receiver_pair = fleet.issue(server_params(CP_ADDR));
    let receiver = Receiver::start_tls_at(
        &format!("{CP_ADDR}:0"),
        server_requiring_clients_of(&receiver_pair, &fleet),
    )
    .await;
    let fleet_ca = files.write("fleet-ca.pem", &fleet.pem);
    let cp_ca = files.write("cp-ca.pem", &cp.pem);

    let agents: Vec<AgentProcess> = (0..NODES)
        .map(|i| {
            let server = fleet.issue(server_params(&node_addr(i)));
            let client = fleet.client(&format!("node-{i}"));
            let (cert, key) = (
                files.path(&format!("n{i}.pem")),
                files.path(&format!("n{i}.key")),
            );
            write_private(&cert, &server.cert);
            write_private(&key, &server.key);
            let (ccert, ckey) = (
                files.path(&format!("c{i}.pem")),
                files.path(&format!("c{i}.key")),
            );
            write_private(&ccert, &client.cert);
            write_private(&ckey, &client.key);
            AgentProcess::start_with(AgentOptions {
                netns: Some(net.nodes[i].clone()),
                listen: Some(format!("{}:{PORT}", node_addr(i))),
                log_filter: Some("info".into()),
                env: vec![
                    ("NODE_AGENT__NODE__ID".into(), format!("node-{i}")),
                    ("NODE_AGENT__NODE__NAME".into(), format!("NODE{i}")),
                ],
                extra_config: format!(
                    "[tls]\ncert_file = \"{}\"\nkey_file = \"{}\"\nclient_ca_file = \"{}\"\n",
                    cert.display(),
                    key.display(),
                    cp_ca.display()
                ),
                report_url: Some(receiver.url()),
                report_ca_file: Some(fleet_ca.clone()),
                report_identity: Some((ccert, ckey)),
                ..Default::default()
            })
        })
        .collect();
    let tokens: Vec<String> = agents.iter().map(|a| a.token.clone()).collect();
    let client = https(&fleet, Some(&cp_identity));

    // Ten apps a node, registered by the control plane over mTLS.
    let mut workloads = Vec::new();
    let mut apps: Vec<Vec<String>> = vec![Vec::new(); NODES];
    for i in 0..NODES {
        let ws = join_all((0..APPS_PER_NODE).map(|_| Workload::start("exit"))).await;
        for w in &ws {
            let id = app_id();
            let path = format!("/v1/apps/{id}");
            let (status, body) = call(
                &client,
                i,
                "PUT",
                &path,
                &tokens[i],
                Some(&app_body(&id, &w.name)),
            )
            .await
            .unwrap_or_else(|e| panic!("register on node {i}: {e}"));
            assert_eq!(status, 201, "{body}");
            apps[i].push(id);
        }
        workloads.extend(ws);
    }

    // All 30 stopped at once; a moment later one node freezes and another falls off the network.
    let started = Instant::now();
    let stops = join_all(apps.iter().enumerate().flat_map(|(i, ids)| {
        let (client, token) = (&client, &tokens[i]);
        ids.iter().map(move |id| async move {
            let path = format!("/v1/apps/{id}/stop");
            let answer = call(client, i, "POST", &path, token, None).await;
            (i, id.clone(), answer, started.elapsed())
        })
    }));
    let faults = async {
        tokio::time::sleep(Duration::from_millis(30)).await;
        agents[FROZEN].signal("-STOP");
        net.link(CUT, false);
    };
    let (results, ()) = futures_util::join!(stops, faults);

    let mut cut_failures = 0;
    for (i, id, answer, took) in &results {
        match i {
            0 => {
                let (status, body) = answer
                    .as_ref()
                    .unwrap_or_else(|e| panic!("healthy node, {id}: {e}"));
                assert_eq!(*status, 200, "healthy node, {id}: {body}");
            }
            _ => {
                assert!(
                    *took <= CLIENT_TIMEOUT + Duration::from_secs(1),
                    "node {i}, {id}: answered or failed only after {took:?}"
                );
                if *i == CUT && answer.is_err() {
                    cut_failures += 1;
                }
            }
        }
    }
    let healthy_slowest = results
        .iter()
        .filter(|r| r.0 == 0)
        .map(|r| r.3)
        .max()
        .unwrap();
    assert!(
        healthy_slowest < CLIENT_TIMEOUT,
        "the healthy node's stops waited on the others: {healthy_slowest:?}"
    );
    let slowest_failure = |node: usize| {
        results
            .iter()
            .filter(|r| r.0 == node && r.2.is_err())
            .map(|r| r.3)
            .max()
    };
    eprintln!(
        "healthy node's slowest stop: {healthy_slowest:?}; cut-off node: {cut_failures} calls failed, the last after {:?}; frozen node: the last failed call after {:?}",
        slowest_failure(CUT),
        slowest_failure(FROZEN)
    );

    // Thawed and reconnected, the control plane retries what did not answer.
    agents[FROZEN].signal("-CONT");
    net.link(CUT, true);
    for (i, id, answer, _) in &results {
        if !matches!(answer, Ok((200, _))) {
            let status = stop_surely(&client, *i, id, &tokens[*i]).await;
            assert!(
                status == 200 || status == 409,
                "node {i}, retried stop of {id}: {status}"
            );
        }
    }

    let reconnected = Instant::now();
    // Every record on every node is true, and every change reached the receiver, in order.
    let docker = support::docker().await;
    for (i, ids) in apps.iter().enumerate() {
        for id in ids {
            let (status, record) = call(
                &client,
                i,
                "GET",
                &format!("/v1/apps/{id}"),
                &tokens[i],
                None,
            )
            .await
            .unwrap();
            assert_eq!(status, 200, "{record}");
            let container = record["containerId"].as_str().unwrap();
            let running = docker
                .inspect_container(container, None)
                .await
                .unwrap()
                .state
                .unwrap()
                .running
                .unwrap();
            assert!(!running, "node {i}, {id}: the container still runs");
            assert_eq!(
                record["currentResourceMetrics"]["online"], false,
                "{record}"
            );
            let generation = record["generation"].as_u64().unwrap();
            receiver
                .wait(|| receiver.latest(id).filter(|(g, _)| *g >= generation))
                .await;
        }
    }
    receiver.assert_in_order();
    eprintln!(
        "every change reached the receiver {:?} after the thaw and the reconnection",
        reconnected.elapsed()
    );
    // What each node cost the control plane: its reports, and the changes they carried.
    let reports = receiver.reports();
    for i in 0..NODES {
        let of_node: Vec<_> = reports
            .iter()
            .filter(|r| r.body["nodeId"] == format!("node-{i}"))
            .collect();
        assert!(!of_node.is_empty(), "no report from node {i}");
        let changes: usize = of_node.iter().map(|r| r.changes().len()).sum();
        let span = of_node.last().unwrap().at - of_node[0].at;
        eprintln!(
            "node {i}: {} reports carrying {changes} changes over {span:?} ({:.1} reports/s)",
            of_node.len(),
            of_node.len() as f64 / span.as_secs_f64().max(1.0)
        );
    }

    // A client without the control plane's certificate is refused on every node.
    let anonymous = https(&fleet, None);
    let impostor = https(&fleet, Some(&stranger.client("impostor")));
    for (i, token) in tokens.iter().enumerate() {
        for (who, c) in [("no certificate", &anonymous), ("another CA's", &impostor)] {
            let answer = call(c, i, "GET", "/v1/apps", token, None).await;
            assert!(
                answer.is_err(),
                "node {i} let a client with {who} in: {answer:?}"
            );
        }
    }
    drop(agents);
    drop(workloads);
}

/// A server certificate's parameters for `addr`.
fn server_params(addr: &str) -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::new(vec![addr.to_owned()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, addr);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params
}
