//! A small synchronous cluster for interaction tests: in-memory "disks" that
//! persist every `Ready` at once, a FIFO network with directed cuts, and a
//! `stabilize` loop that runs until no node has anything left to do.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use kvstore_raft::{
    Config, Entry, EntryKind, HardState, Message, MessageBody, NodeId, RaftCore, ReadState, Role,
    SnapshotMetadata,
};

/// Upper bound on message deliveries in one `stabilize`.
const DELIVERIES_PER_STABILIZE_MAX: usize = 100_000;

/// What a node has made durable.
#[derive(Clone, Debug, Default)]
pub struct Storage {
    pub hard_state: HardState,
    pub snapshot: Option<SnapshotMetadata>,
    pub entries: Vec<Entry>,
}

/// Nodes, their disks and state machines, and the wire.
pub struct Cluster {
    pub nodes: BTreeMap<NodeId, RaftCore>,
    pub storage: BTreeMap<NodeId, Storage>,
    /// Normal entries applied, per node, as `(index, data)`.
    pub applied: BTreeMap<NodeId, Vec<(u64, Vec<u8>)>>,
    pub read_states: BTreeMap<NodeId, Vec<ReadState>>,
    pub snapshots_installed: BTreeMap<NodeId, Vec<SnapshotMetadata>>,
    pub wire: VecDeque<Message>,
    /// Directed cuts `(from, to)`.
    pub cuts: BTreeSet<(NodeId, NodeId)>,
    /// Every message delivered, in order.
    pub delivered: Vec<Message>,
}

pub fn config(id: NodeId, size: u64) -> Config {
    Config::new(id, (1..=size).collect())
}

pub fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        kind: EntryKind::Normal,
        data: format!("{index}@{term}").into_bytes().into(),
    }
}

/// Entries `1..=terms.len()` with the given terms.
pub fn entries_with_terms(terms: &[u64]) -> Vec<Entry> {
    terms
        .iter()
        .enumerate()
        .map(|(position, term)| entry(position as u64 + 1, *term))
        .collect()
}

impl Cluster {
    /// `size` fresh nodes, each configured by `configure`.
    pub fn new(size: u64, configure: impl Fn(&mut Config)) -> Self {
        let nodes = (1..=size)
            .map(|id| {
                let mut node_config = config(id, size);
                configure(&mut node_config);
                RaftCore::new(node_config, HardState::default(), None, vec![]).unwrap()
            })
            .collect();
        Cluster::from_nodes(nodes)
    }

    /// Wraps prebuilt nodes (e.g. restored from crafted persisted state).
    pub fn from_nodes(nodes: Vec<RaftCore>) -> Self {
        let mut cluster = Cluster {
            nodes: BTreeMap::new(),
            storage: BTreeMap::new(),
            applied: BTreeMap::new(),
            read_states: BTreeMap::new(),
            snapshots_installed: BTreeMap::new(),
            wire: VecDeque::new(),
            cuts: BTreeSet::new(),
            delivered: Vec::new(),
        };
        for node in nodes {
            let id = node.id();
            cluster.storage.insert(
                id,
                Storage {
                    hard_state: node.hard_state(),
                    snapshot: node.snapshot_metadata(),
                    entries: node.log_entries().to_vec(),
                },
            );
            cluster.applied.insert(id, Vec::new());
            cluster.read_states.insert(id, Vec::new());
            cluster.snapshots_installed.insert(id, Vec::new());
            cluster.nodes.insert(id, node);
        }
        cluster
    }

    pub fn node(&self, id: NodeId) -> &RaftCore {
        &self.nodes[&id]
    }

    pub fn node_mut(&mut self, id: NodeId) -> &mut RaftCore {
        self.nodes.get_mut(&id).unwrap()
    }

    pub fn leader(&self) -> Option<NodeId> {
        let leaders: Vec<NodeId> = self
            .nodes
            .values()
            .filter(|node| node.role() == Role::Leader)
            .map(RaftCore::id)
            .collect();
        assert!(
            leaders.len() <= 1 || {
                let terms: BTreeSet<u64> = leaders.iter().map(|id| self.node(*id).term()).collect();
                terms.len() == leaders.len()
            }
        );
        leaders.into_iter().max_by_key(|id| self.node(*id).term())
    }

    /// Persists, "sends" (queues), applies and advances every pending Ready
    /// of `id`.
    pub fn process_ready(&mut self, id: NodeId) {
        while self.nodes[&id].has_ready() {
            let ready = self.node_mut(id).ready();
            let storage = self.storage.get_mut(&id).unwrap();
            if let Some(snapshot) = ready.snapshot {
                storage.snapshot = Some(snapshot);
                storage.entries.clear();
                self.snapshots_installed
                    .get_mut(&id)
                    .unwrap()
                    .push(snapshot);
            }
            if let Some(first) = ready.entries.first() {
                storage.entries.retain(|entry| entry.index < first.index);
                storage.entries.extend(ready.entries.iter().cloned());
            }
            if let Some(hard_state) = ready.hard_state {
                storage.hard_state = hard_state;
            }
            self.wire.extend(ready.messages);
            let applied = self.applied.get_mut(&id).unwrap();
            for entry in ready.committed_entries {
                if entry.kind == EntryKind::Normal {
                    applied.push((entry.index, entry.data.to_vec()));
                }
            }
            self.read_states
                .get_mut(&id)
                .unwrap()
                .extend(ready.read_states);
            self.node_mut(id).advance();
        }
    }

    pub fn process_all_readies(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.process_ready(id);
        }
    }

    fn deliverable(&self, message: &Message) -> bool {
        !self.cuts.contains(&(message.from, message.to))
    }

    /// Runs until no node has a Ready and the wire is empty. Messages for
    /// which `keep` returns false (and cut ones) are dropped.
    pub fn stabilize_filtered(&mut self, mut keep: impl FnMut(&Message) -> bool) {
        let mut deliveries = 0;
        loop {
            self.process_all_readies();
            let Some(message) = self.wire.pop_front() else {
                return;
            };
            if !self.deliverable(&message) || !keep(&message) {
                continue;
            }
            deliveries += 1;
            assert!(
                deliveries < DELIVERIES_PER_STABILIZE_MAX,
                "cluster never stabilizes"
            );
            self.delivered.push(message.clone());
            let to = message.to;
            self.node_mut(to).step(message);
        }
    }

    /// Delivers only messages matching `pick` (until none is left), keeping
    /// the others on the wire.
    pub fn deliver_matching(&mut self, mut pick: impl FnMut(&Message) -> bool) {
        let mut deliveries = 0;
        loop {
            self.process_all_readies();
            let Some(position) = self.wire.iter().position(&mut pick) else {
                return;
            };
            let message = self.wire.remove(position).unwrap();
            if !self.deliverable(&message) {
                continue;
            }
            deliveries += 1;
            assert!(
                deliveries < DELIVERIES_PER_STABILIZE_MAX,
                "cluster never stabilizes"
            );
            self.delivered.push(message.clone());
            let to = message.to;
            self.node_mut(to).step(message);
        }
    }

    pub fn stabilize(&mut self) {
        self.stabilize_filtered(|_| true);
    }

    /// Ticks every node `count` times, stabilizing after each tick.
    pub fn tick_all(&mut self, count: u32) {
        for _ in 0..count {
            for node in self.nodes.values_mut() {
                node.tick();
            }
            self.stabilize();
        }
    }

    /// Ticks only `id`, `count` times, stabilizing after each tick.
    pub fn tick_node(&mut self, id: NodeId, count: u32) {
        for _ in 0..count {
            self.node_mut(id).tick();
            self.stabilize();
        }
    }

    /// `id` campaigns and the cluster stabilizes; it must win.
    pub fn elect(&mut self, id: NodeId) {
        self.node_mut(id).campaign();
        self.stabilize();
        assert_eq!(self.node(id).role(), Role::Leader, "node {id} did not win");
    }

    /// `id` loses its disk and restarts from nothing, configured by
    /// `configure`; messages on the wire to or from it are lost.
    pub fn wipe(&mut self, id: NodeId, configure: impl Fn(&mut Config)) {
        let mut node_config = config(id, self.nodes.len() as u64);
        configure(&mut node_config);
        let node = RaftCore::new(node_config, HardState::default(), None, vec![]).unwrap();
        self.storage.insert(id, Storage::default());
        self.applied.insert(id, Vec::new());
        self.wire
            .retain(|message| message.to != id && message.from != id);
        self.nodes.insert(id, node);
    }

    pub fn isolate(&mut self, id: NodeId) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for other in ids {
            if other != id {
                self.cuts.insert((id, other));
                self.cuts.insert((other, id));
            }
        }
    }

    pub fn heal(&mut self) {
        self.cuts.clear();
    }

    pub fn propose(&mut self, id: NodeId, data: &[u8]) -> (u64, u64) {
        self.node_mut(id).propose(data.to_vec()).unwrap()
    }

    /// Messages currently on the wire from `from` to `to`.
    pub fn on_wire(&self, from: NodeId, to: NodeId) -> Vec<&Message> {
        self.wire
            .iter()
            .filter(|message| message.from == from && message.to == to)
            .collect()
    }

    /// Count of delivered messages of one kind.
    pub fn delivered_count(&self, kind: &str) -> usize {
        self.delivered
            .iter()
            .filter(|message| message.body.kind_name() == kind)
            .count()
    }

    pub fn append_entry_counts(messages: &[&Message]) -> Vec<usize> {
        messages
            .iter()
            .filter_map(|message| match &message.body {
                MessageBody::AppendEntries { entries, .. } => Some(entries.len()),
                _ => None,
            })
            .collect()
    }
}
