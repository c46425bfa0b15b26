//! A fresh cluster of containers per scenario, and the faults injected into it.
//!
//! Network design (see the README): every node is attached to
//!
//! - a per-scenario **client network**, on which its client and raft ports
//!   are published to random ports of 127.0.0.1 only. The runner talks to the
//!   nodes through those published ports, and never cuts this network, so
//!   it can still reach a node that is partitioned from its peers (to show
//!   that an isolated old leader refuses a write or a linearizable read).
//!   Peers cannot use it to reach each other: on it, the containers are known
//!   only by their container names, not by `nodeN`;
//! - one **link network per pair of nodes** (`...-l1-2`), on which both nodes
//!   carry the alias of their own name (`node1`, `node2`). A node's peers are
//!   `nodeN:PEER_PORT`, so node 1 reaches node 2 only through their link
//!   network. Disconnecting a node from that network cuts exactly that link,
//!   in both directions (packets are dropped, as by a firewall; docker keeps
//!   bridge networks apart), so any partition shape is a set of cut links:
//!   no privileges and no tooling inside the (FROM scratch) image are needed.
//!
//! Everything created carries the label `kvstore.conformance.run=RUN`, and
//! names start with `kvconf-`; `kvstore-conformance cleanup` removes leftovers.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use testcontainers::bollard::models::{
    EndpointSettings, HostConfig, NetworkConnectRequest, NetworkCreateRequest,
    NetworkDisconnectRequest, PortBinding,
};
use testcontainers::bollard::query_parameters::{
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
    RemoveContainerOptionsBuilder,
};
use testcontainers::bollard::Docker;
use testcontainers::core::{ContainerPort, IntoContainerPort};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

use crate::client::Endpoints;

/// Label on every container and network the runner creates.
pub const LABEL: &str = "kvstore.conformance.run";
/// Prefix of every container and network name.
pub const NAME_PREFIX: &str = "kvconf-";

/// How to start the cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Image reference, e.g. `kvstore:local`.
    pub image: String,
    /// Number of nodes.
    pub nodes: u64,
    /// Environment of every node (defaults, scenario, command line).
    pub env: BTreeMap<String, String>,
    /// Client API port inside the container.
    pub client_port: u16,
    /// Raft peer port inside the container.
    pub peer_port: u16,
    /// Unique name of this cluster (`kvconf-RUN-SCENARIO`).
    pub prefix: String,
    /// Run id (label value).
    pub run: String,
}

/// Lifecycle state of a node's container, as the runner left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Running.
    Running,
    /// Killed or stopped.
    Stopped,
    /// Frozen.
    Paused,
}

struct Node {
    id: u64,
    name: String,
    container: ContainerAsync<GenericImage>,
}

/// A running cluster. Dropping it removes its containers and networks.
pub struct Cluster {
    docker: Docker,
    config: ClusterConfig,
    nodes: Vec<Node>,
    networks: Vec<String>,
    states: Mutex<BTreeMap<u64, NodeState>>,
    cut_links: Mutex<BTreeSet<(u64, u64)>>,
    endpoints: Endpoints,
    removed: bool,
}

/// Splits `repository:tag` (a registry port is not a tag).
pub fn split_image(image: &str) -> (String, String) {
    match image.rsplit_once(':') {
        Some((repository, tag)) if !tag.contains('/') => (repository.to_string(), tag.to_string()),
        _ => (image.to_string(), "latest".to_string()),
    }
}

/// Fails unless `image` exists locally (nothing is ever pulled).
pub async fn check_image(docker: &Docker, image: &str) -> Result<()> {
    docker.inspect_image(image).await.map(|_| ()).map_err(|error| {
        anyhow!("image {image} not found locally ({error}); build it first (make image); nothing is pulled")
    })
}

fn link_network(prefix: &str, a: u64, b: u64) -> String {
    let (a, b) = (a.min(b), a.max(b));
    format!("{prefix}-l{a}-{b}")
}

fn links(nodes: u64) -> Vec<(u64, u64)> {
    (1..=nodes)
        .flat_map(|a| (a + 1..=nodes).map(move |b| (a, b)))
        .collect()
}

impl Cluster {
    /// Creates the networks and starts every node.
    pub async fn start(
        docker: Docker,
        config: ClusterConfig,
        endpoints: Endpoints,
    ) -> Result<Cluster> {
        check_image(&docker, &config.image).await?;
        let mut cluster = Cluster {
            docker,
            nodes: Vec::new(),
            networks: Vec::new(),
            states: Mutex::new(BTreeMap::new()),
            cut_links: Mutex::new(BTreeSet::new()),
            endpoints,
            removed: false,
            config,
        };
        let client_network = format!("{}-client", cluster.config.prefix);
        cluster.create_network(&client_network).await?;
        for (a, b) in links(cluster.config.nodes) {
            cluster
                .create_network(&link_network(&cluster.config.prefix, a, b))
                .await?;
        }
        let starts = (1..=cluster.config.nodes).map(|id| cluster.start_node(id, &client_network));
        let started = futures::future::join_all(starts).await;
        let mut first_error = None;
        for result in started {
            match result {
                Ok(node) => cluster.nodes.push(node),
                Err(error) => first_error = first_error.or(Some(error)),
            }
        }
        if let Some(error) = first_error {
            cluster.remove().await;
            return Err(error);
        }
        cluster.nodes.sort_by_key(|node| node.id);
        for (a, b) in links(cluster.config.nodes) {
            cluster.connect_link(a, b).await?;
        }
        for id in 1..=cluster.config.nodes {
            cluster.set_state(id, NodeState::Running);
            cluster.refresh_endpoint(id).await?;
        }
        Ok(cluster)
    }

    async fn create_network(&mut self, name: &str) -> Result<()> {
        let request = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".into()),
            labels: Some(HashMap::from([(
                LABEL.to_string(),
                self.config.run.clone(),
            )])),
            ..Default::default()
        };
        self.docker
            .create_network(request)
            .await
            .with_context(|| format!("cannot create docker network {name}"))?;
        self.networks.push(name.to_string());
        Ok(())
    }

    fn container_name(&self, id: u64) -> String {
        format!("{}-n{id}", self.config.prefix)
    }

    async fn start_node(&self, id: u64, client_network: &str) -> Result<Node> {
        let (repository, tag) = split_image(&self.config.image);
        let client_port = self.config.client_port;
        let peer_port = self.config.peer_port;
        let peers: Vec<String> = (1..=self.config.nodes)
            .filter(|&other| other != id)
            .map(|other| format!("{other}=node{other}:{peer_port}"))
            .collect();
        let name = self.container_name(id);
        let mut request = GenericImage::new(repository, tag)
            .with_exposed_port(client_port.tcp())
            .with_exposed_port(peer_port.tcp())
            .with_container_name(name.clone())
            // No `with_hostname("nodeN")`: docker's DNS would resolve the
            // hostname on the client network too, and peers would reach each
            // other there, around every partition.
            .with_network(client_network)
            .with_label(LABEL, self.config.run.clone())
            .with_env_var("KVSTORE_ID", id.to_string())
            .with_env_var("KVSTORE_PEERS", peers.join(","))
            .with_env_var("KVSTORE_CLUSTER_ID", self.config.prefix.clone())
            .with_env_var("KVSTORE_CLIENT_ADDR", format!("0.0.0.0:{client_port}"))
            .with_env_var("KVSTORE_RAFT_ADDR", format!("0.0.0.0:{peer_port}"))
            .with_startup_timeout(Duration::from_secs(60))
            .with_host_config_modifier(move |host_config: &mut HostConfig| {
                // Published on 127.0.0.1 only, on random host ports.
                let binding = || {
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".into()),
                        host_port: Some(String::new()),
                    }])
                };
                host_config.publish_all_ports = Some(false);
                host_config.port_bindings = Some(HashMap::from([
                    (format!("{client_port}/tcp"), binding()),
                    (format!("{peer_port}/tcp"), binding()),
                ]));
            });
        for (key, value) in &self.config.env {
            request = request.with_env_var(key.clone(), value.clone());
        }
        let container = request
            .start()
            .await
            .with_context(|| format!("cannot start node {id} ({name})"))?;
        Ok(Node {
            id,
            name,
            container,
        })
    }

    fn node(&self, id: u64) -> Result<&Node> {
        self.nodes
            .iter()
            .find(|node| node.id == id)
            .ok_or_else(|| anyhow!("no node {id} in this cluster"))
    }

    /// Node ids, 1..=N.
    pub fn ids(&self) -> Vec<u64> {
        (1..=self.config.nodes).collect()
    }

    /// State of node `id`.
    pub fn state(&self, id: u64) -> NodeState {
        self.states
            .lock()
            .expect("states lock")
            .get(&id)
            .copied()
            .unwrap_or(NodeState::Stopped)
    }

    fn set_state(&self, id: u64, state: NodeState) {
        self.states.lock().expect("states lock").insert(id, state);
    }

    async fn refresh_endpoint(&self, id: u64) -> Result<()> {
        let node = self.node(id)?;
        let port = node
            .container
            .get_host_port_ipv4(ContainerPort::Tcp(self.config.client_port))
            .await
            .with_context(|| format!("node {id}: no published client port"))?;
        self.endpoints
            .set(id, Some(SocketAddr::from((Ipv4Addr::LOCALHOST, port))));
        Ok(())
    }

    /// The host port on 127.0.0.1 that node `id`'s container port is published on.
    pub async fn published_port(&self, id: u64, container_port: u16) -> Result<u16> {
        self.node(id)?
            .container
            .get_host_port_ipv4(ContainerPort::Tcp(container_port))
            .await
            .with_context(|| format!("node {id}: port {container_port} is not published"))
    }

    async fn wait_stopped(&self, id: u64) -> Result<()> {
        let node = self.node(id)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while node.container.is_running().await? {
            if Instant::now() > deadline {
                bail!("node {id} still running 30s after it was told to stop");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// SIGKILL. A paused node is killed too.
    pub async fn kill(&self, id: u64) -> Result<()> {
        let node = self.node(id)?;
        if self.state(id) == NodeState::Stopped {
            return Ok(());
        }
        self.endpoints.set(id, None);
        let options = KillContainerOptionsBuilder::new().signal("SIGKILL").build();
        self.docker
            .kill_container(&node.name, Some(options))
            .await
            .with_context(|| format!("cannot kill node {id}"))?;
        self.wait_stopped(id).await?;
        self.set_state(id, NodeState::Stopped);
        Ok(())
    }

    /// Graceful stop: SIGTERM, SIGKILL after 10 s.
    pub async fn stop(&self, id: u64) -> Result<()> {
        let node = self.node(id)?;
        match self.state(id) {
            NodeState::Stopped => return Ok(()),
            NodeState::Paused => self.unpause(id).await?,
            NodeState::Running => {}
        }
        self.endpoints.set(id, None);
        node.container
            .stop_with_timeout(Some(10))
            .await
            .with_context(|| format!("cannot stop node {id}"))?;
        self.wait_stopped(id).await?;
        self.set_state(id, NodeState::Stopped);
        Ok(())
    }

    /// Starts a stopped node (same container, same data); its published port
    /// may change.
    pub async fn start_node_again(&self, id: u64) -> Result<()> {
        let node = self.node(id)?;
        if self.state(id) != NodeState::Stopped {
            return Ok(());
        }
        node.container
            .start()
            .await
            .with_context(|| format!("cannot start node {id}"))?;
        self.set_state(id, NodeState::Running);
        self.refresh_endpoint(id).await
    }

    /// Freezes a node (its process gets no CPU: a long GC pause).
    pub async fn pause(&self, id: u64) -> Result<()> {
        let node = self.node(id)?;
        if self.state(id) != NodeState::Running {
            return Ok(());
        }
        node.container
            .pause()
            .await
            .with_context(|| format!("cannot pause node {id}"))?;
        self.set_state(id, NodeState::Paused);
        Ok(())
    }

    /// Thaws a paused node.
    pub async fn unpause(&self, id: u64) -> Result<()> {
        let node = self.node(id)?;
        if self.state(id) != NodeState::Paused {
            return Ok(());
        }
        node.container
            .unpause()
            .await
            .with_context(|| format!("cannot unpause node {id}"))?;
        self.set_state(id, NodeState::Running);
        Ok(())
    }

    /// Links currently cut.
    pub fn cut_links(&self) -> BTreeSet<(u64, u64)> {
        self.cut_links.lock().expect("links lock").clone()
    }

    /// Cuts the peer link between `a` and `b` (both directions).
    pub async fn cut(&self, a: u64, b: u64) -> Result<()> {
        if a == b {
            bail!("cannot cut node {a} from itself");
        }
        let link = (a.min(b), a.max(b));
        if self.cut_links().contains(&link) {
            return Ok(());
        }
        let network = link_network(&self.config.prefix, a, b);
        for id in [a, b] {
            let request = NetworkDisconnectRequest {
                container: self.node(id)?.name.clone(),
                force: Some(true),
            };
            self.docker
                .disconnect_network(&network, request)
                .await
                .with_context(|| format!("cannot disconnect node {id} from {network}"))?;
        }
        self.cut_links.lock().expect("links lock").insert(link);
        Ok(())
    }

    async fn connect_link(&self, a: u64, b: u64) -> Result<()> {
        let network = link_network(&self.config.prefix, a, b);
        for id in [a, b] {
            let request = NetworkConnectRequest {
                container: self.node(id)?.name.clone(),
                endpoint_config: Some(EndpointSettings {
                    aliases: Some(vec![format!("node{id}")]),
                    ..Default::default()
                }),
            };
            self.docker
                .connect_network(&network, request)
                .await
                .with_context(|| format!("cannot connect node {id} to {network}"))?;
        }
        Ok(())
    }

    /// Reconnects the link between `a` and `b`.
    pub async fn reconnect(&self, a: u64, b: u64) -> Result<()> {
        let link = (a.min(b), a.max(b));
        if !self.cut_links().contains(&link) {
            return Ok(());
        }
        self.connect_link(a, b).await?;
        self.cut_links.lock().expect("links lock").remove(&link);
        Ok(())
    }

    /// Reconnects every cut link.
    pub async fn heal(&self) -> Result<()> {
        for (a, b) in self.cut_links() {
            self.reconnect(a, b).await?;
        }
        Ok(())
    }

    /// The node's output so far (stdout and stderr; JSON log lines).
    pub async fn logs(&self, id: u64) -> String {
        let Ok(node) = self.node(id) else {
            return String::new();
        };
        let mut text = String::new();
        if let Ok(stdout) = node.container.stdout_to_vec().await {
            text.push_str(&String::from_utf8_lossy(&stdout));
        }
        if let Ok(stderr) = node.container.stderr_to_vec().await {
            text.push_str(&String::from_utf8_lossy(&stderr));
        }
        text
    }

    /// Removes the containers, then the networks. Errors are ignored (the
    /// cleanup command catches leftovers).
    pub async fn remove(&mut self) {
        for node in self.nodes.drain(..) {
            // Unpause first: a paused container cannot always be removed.
            let _ = node.container.unpause().await;
            let _ = node.container.rm().await;
        }
        for network in self.networks.drain(..) {
            let _ = self.docker.remove_network(&network).await;
        }
        self.removed = true;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        // A panic or an early return: the containers remove themselves
        // (testcontainers' drop); then the networks, on a thread of their own
        // so that this works inside or outside a runtime.
        let nodes: Vec<Node> = self.nodes.drain(..).collect();
        let names: Vec<String> = nodes.iter().map(|node| node.name.clone()).collect();
        drop(nodes);
        let docker = self.docker.clone();
        let networks: Vec<String> = self.networks.drain(..).collect();
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                let options = RemoveContainerOptionsBuilder::new()
                    .force(true)
                    .v(true)
                    .build();
                for name in names {
                    let _ = docker.remove_container(&name, Some(options.clone())).await;
                }
                for network in networks {
                    let _ = docker.remove_network(&network).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// Removes every container and network labelled by any run of the runner
/// (or only by `run`). Returns how many of each were removed.
pub async fn cleanup(docker: &Docker, run: Option<&str>) -> Result<(usize, usize)> {
    let label = match run {
        Some(run) => format!("{LABEL}={run}"),
        None => LABEL.to_string(),
    };
    let filters = HashMap::from([("label".to_string(), vec![label])]);
    let containers = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await?;
    let options = RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    let mut removed_containers = 0;
    for container in containers {
        if let Some(id) = container.id {
            if docker
                .remove_container(&id, Some(options.clone()))
                .await
                .is_ok()
            {
                removed_containers += 1;
            }
        }
    }
    let networks = docker
        .list_networks(Some(
            ListNetworksOptionsBuilder::new().filters(&filters).build(),
        ))
        .await?;
    let mut removed_networks = 0;
    for network in networks {
        if let Some(name) = network.name {
            if name.starts_with(NAME_PREFIX) && docker.remove_network(&name).await.is_ok() {
                removed_networks += 1;
            }
        }
    }
    Ok((removed_containers, removed_networks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_image_references() {
        assert_eq!(
            split_image("kvstore:local"),
            ("kvstore".into(), "local".into())
        );
        assert_eq!(split_image("kvstore"), ("kvstore".into(), "latest".into()));
        assert_eq!(
            split_image("registry:5000/team/kvstore"),
            ("registry:5000/team/kvstore".into(), "latest".into())
        );
        assert_eq!(
            split_image("registry:5000/kvstore:v2"),
            ("registry:5000/kvstore".into(), "v2".into())
        );
    }

    #[test]
    fn every_pair_has_a_link() {
        assert_eq!(links(3), vec![(1, 2), (1, 3), (2, 3)]);
        assert_eq!(links(1), vec![]);
        assert_eq!(link_network("p", 3, 1), "p-l1-3");
    }
}
