//! Steering toward Raft's Figure 8 (§5.4.2): in some seeds the harness
//! drives the network, in episodes, through the one pattern where counting
//! replicas of an entry from an earlier term would commit an entry that a
//! later leader then overwrites. Random faults reach it in about one seed in
//! a hundred; an episode reaches it on purpose:
//!
//! 1. Strand: a leader A of term `ta` is cut off with a minority and takes
//!    proposals: its entries of term `ta` reach that minority only.
//! 2. Rival: A is cut off alone; the others elect B in a later term `tb`,
//!    which is cut off alone the tick it wins, so that its entries of term
//!    `tb` stay on it.
//! 3. Return: everyone but B is reconnected and a holder of A's entries
//!    campaigns; it leads as C in a term `tc > tb` and replicates A's
//!    entries ahead of its own. The episode waits, reading C's progress,
//!    for the moment a majority holds A's entries but not yet one of C's
//!    term: C must not commit then (an entry of `ta`, not of `tc`).
//! 4. Overwrite: C and the holders of its term's entries are cut off, B is
//!    reconnected with the others and campaigns; with its last term
//!    `tb > ta` it may win and overwrite A's entries. Had C committed them,
//!    the checkers see a leader lacking a committed entry.
//!
//! During an episode the random partitions and crashes pause; every phase
//! gives up after a bound and heals the network.

use kvstore_raft::{Index, NodeId, Role, Term};
use rand::rngs::SmallRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};

use super::World;

/// Seeds `s` with `s % FIGURE8_SEED_CYCLE == FIGURE8_SEED_RESIDUE` are
/// steered (one in four; clusters of 2 voters have no Figure 8).
const FIGURE8_SEED_CYCLE: u64 = 4;
/// See [`FIGURE8_SEED_CYCLE`].
const FIGURE8_SEED_RESIDUE: u64 = 1;
/// Mixed into the seed of the episodes' own draws.
const FIGURE8_RNG_SALT: u64 = 0x0066_6967_7572_6538;
/// A phase gives up after this many election timeouts.
const PHASE_ELECTION_TIMEOUTS_MAX: u64 = 20;
/// Ticks of ordinary chaos between two episodes, at most.
const EPISODE_GAP_TICKS_MAX: u64 = 150;
/// Proposals made on the stranded leader, at most.
const STRANDED_PROPOSALS_MAX: usize = 6;
/// Ticks the stranded leader's minority has to take its entries, at most.
const STRAND_TICKS_MAX: u64 = 8;

/// Where an episode stands.
#[derive(Clone, Copy, Debug)]
enum Phase {
    /// No episode; the next one starts at this tick (once a leader exists).
    Idle { start_at: u64 },
    /// `leader` and a minority are cut off until `until`.
    Strand { leader: NodeId, until: u64 },
    /// The stranded leader is alone; waiting for a leader of a later term.
    Rival {
        stranded: (Index, Term),
        deadline: u64,
    },
    /// The rival is alone; waiting for a holder of the stranded entries to
    /// lead and for the window where only they are on a majority.
    Return {
        rival: NodeId,
        rival_term: Term,
        stranded: (Index, Term),
        deadline: u64,
        next_campaign_at: u64,
    },
    /// The returned leader is cut off; the rival campaigns.
    Overwrite {
        rival: NodeId,
        returned_term: Term,
        deadline: u64,
        next_campaign_at: u64,
    },
}

/// The steering of one seed.
pub struct Figure8 {
    rng: SmallRng,
    phase: Phase,
}

impl Figure8 {
    /// The steering for `seed`, if it is one of the steered seeds.
    pub fn for_seed(seed: u64, node_count: usize) -> Option<Self> {
        if seed % FIGURE8_SEED_CYCLE != FIGURE8_SEED_RESIDUE || node_count < 3 {
            return None;
        }
        let mut rng = SmallRng::seed_from_u64(seed ^ FIGURE8_RNG_SALT);
        let start_at = rng.random_range(0..=EPISODE_GAP_TICKS_MAX);
        Some(Figure8 {
            rng,
            phase: Phase::Idle { start_at },
        })
    }

    /// Whether an episode runs (random partitions and crashes pause).
    pub fn is_active(&self) -> bool {
        !matches!(self.phase, Phase::Idle { .. })
    }
}

impl World {
    fn majority(&self) -> usize {
        self.nodes.len() / 2 + 1
    }

    /// The live leader with the highest term among `candidates`.
    fn leader_among(&self, candidates: impl Fn(NodeId) -> bool) -> Option<(NodeId, Term)> {
        self.nodes
            .iter()
            .filter_map(|node| node.core.as_ref())
            .filter(|core| core.role() == Role::Leader && candidates(core.id()))
            .map(|core| (core.id(), core.term()))
            .max_by_key(|(_, term)| *term)
    }

    /// Messages flow only within the group of `ids` and within the rest.
    fn cut_off(&mut self, ids: &[NodeId]) {
        self.cut_links.clear();
        for (id, group) in self.groups.iter_mut() {
            *group = u8::from(ids.contains(id));
        }
    }

    /// Ends any episode: heals the network, schedules the next one.
    pub(super) fn figure8_reset(&mut self) {
        let Some(figure8) = self.figure8.as_mut() else {
            return;
        };
        let start_at = self.now + figure8.rng.random_range(0..=EPISODE_GAP_TICKS_MAX);
        let was_active = figure8.is_active();
        figure8.phase = Phase::Idle { start_at };
        if was_active {
            self.heal_network();
        }
    }

    /// Advances the episode by one tick (after the world stepped).
    pub(super) fn steer_figure8(&mut self) {
        let Some(figure8) = self.figure8.as_ref() else {
            return;
        };
        let phase = figure8.phase;
        let deadline = self.now + PHASE_ELECTION_TIMEOUTS_MAX * u64::from(self.election_tick);
        let next = match phase {
            Phase::Idle { start_at } if self.now >= start_at => self.figure8_strand(),
            Phase::Idle { .. } => Some(phase),
            Phase::Strand { leader, until } if self.now >= until => {
                self.figure8_rival(leader, deadline)
            }
            Phase::Strand { .. } => Some(phase),
            Phase::Rival { deadline: due, .. }
            | Phase::Return { deadline: due, .. }
            | Phase::Overwrite { deadline: due, .. }
                if self.now >= due =>
            {
                self.trace(|| "figure 8: phase timed out".to_string());
                None
            }
            Phase::Rival { stranded, .. } => self.figure8_return(phase, stranded, deadline),
            Phase::Return {
                rival,
                rival_term,
                stranded,
                deadline: due,
                next_campaign_at,
            } => self.figure8_window(rival, rival_term, stranded, due, next_campaign_at, deadline),
            Phase::Overwrite {
                rival,
                returned_term,
                deadline: due,
                next_campaign_at,
            } => self.figure8_overwrite(rival, returned_term, due, next_campaign_at),
        };
        match next {
            Some(phase) => self.figure8.as_mut().expect("steered").phase = phase,
            None => self.figure8_reset(),
        }
    }

    /// Idle to Strand: cut a leader off with a minority, propose on it.
    fn figure8_strand(&mut self) -> Option<Phase> {
        let Some((leader, _)) = self.leader_among(|_| true) else {
            let start_at = self.now + 1;
            return Some(Phase::Idle { start_at });
        };
        let node_count = self.nodes.len();
        // The rest must still elect a leader: at most `n - majority` here.
        let others_max = node_count - self.majority();
        let figure8 = self.figure8.as_mut().expect("steered");
        let companion_count = figure8.rng.random_range(1..=others_max) - 1;
        let mut others: Vec<NodeId> = (1..=node_count as NodeId)
            .filter(|id| *id != leader)
            .collect();
        others.shuffle(&mut figure8.rng);
        let mut stranded: Vec<NodeId> = others[..companion_count].to_vec();
        stranded.push(leader);
        let proposals = figure8.rng.random_range(1..=STRANDED_PROPOSALS_MAX);
        let until = self.now + figure8.rng.random_range(2..=STRAND_TICKS_MAX);
        self.cut_off(&stranded);
        self.stats.figure8_episodes += 1;
        let core = self.nodes[(leader - 1) as usize]
            .core
            .as_mut()
            .expect("a live leader");
        for proposal in 0..proposals {
            let _ = core.propose(format!("figure8-{}-{proposal}", self.now).into_bytes());
        }
        self.trace(|| {
            format!("figure 8: leader n{leader} stranded with {stranded:?}, {proposals} proposals")
        });
        Some(Phase::Strand { leader, until })
    }

    /// Strand to Rival: cut the stranded leader off alone.
    fn figure8_rival(&mut self, leader: NodeId, deadline: u64) -> Option<Phase> {
        let core = self.nodes[(leader - 1) as usize].core.as_ref()?;
        let stranded = (core.last_index(), core.last_term());
        self.cut_off(&[leader]);
        self.trace(|| format!("figure 8: n{leader} alone with entries up to {stranded:?}"));
        Some(Phase::Rival { stranded, deadline })
    }

    /// Rival to Return: the tick a leader of a later term appears, cut it
    /// off alone (its first appends, on the wire, are cut too).
    fn figure8_return(
        &mut self,
        phase: Phase,
        stranded: (Index, Term),
        deadline: u64,
    ) -> Option<Phase> {
        let Some((rival, rival_term)) = self.leader_among(|_| true) else {
            return Some(phase);
        };
        if rival_term <= stranded.1 {
            return Some(phase);
        }
        self.cut_off(&[rival]);
        self.trace(|| format!("figure 8: rival n{rival} of term {rival_term} alone"));
        Some(Phase::Return {
            rival,
            rival_term,
            stranded,
            deadline,
            next_campaign_at: self.now,
        })
    }

    /// Return: a holder of the stranded entries campaigns until one leads;
    /// then, once a majority holds the stranded entries but not one of the
    /// new leader's term, cut the new leader off.
    fn figure8_window(
        &mut self,
        rival: NodeId,
        rival_term: Term,
        stranded: (Index, Term),
        due: u64,
        next_campaign_at: u64,
        deadline: u64,
    ) -> Option<Phase> {
        let waiting = Phase::Return {
            rival,
            rival_term,
            stranded,
            deadline: due,
            next_campaign_at,
        };
        let Some((returned, returned_term)) = self
            .leader_among(|id| id != rival)
            .filter(|(_, term)| *term > rival_term)
        else {
            if self.now < next_campaign_at {
                return Some(waiting);
            }
            let holders: Vec<usize> = (0..self.nodes.len())
                .filter(|position| {
                    self.nodes[*position].id != rival
                        && self.nodes[*position]
                            .core
                            .as_ref()
                            .is_some_and(|core| core.term_at(stranded.0) == Some(stranded.1))
                })
                .collect();
            let figure8 = self.figure8.as_mut().expect("steered");
            if let Some(position) = holders.choose(&mut figure8.rng) {
                self.nodes[*position]
                    .core
                    .as_mut()
                    .expect("live")
                    .campaign();
            }
            return Some(Phase::Return {
                rival,
                rival_term,
                stranded,
                deadline: due,
                next_campaign_at: self.now + u64::from(self.election_tick),
            });
        };
        let core = self.nodes[(returned - 1) as usize]
            .core
            .as_ref()
            .expect("live");
        if core.term_at(stranded.0) != Some(stranded.1) {
            self.trace(|| format!("figure 8: n{returned} leads without the stranded entries"));
            return None;
        }
        let Some(own_index) = (stranded.0 + 1..=core.last_index())
            .find(|index| core.term_at(*index) == Some(returned_term))
        else {
            return Some(waiting);
        };
        let matches: Vec<Index> = (1..=self.nodes.len() as NodeId)
            .map(|id| {
                if id == returned {
                    core.persisted_index()
                } else {
                    core.progress_of(id)
                        .map_or(0, |progress| progress.match_index)
                }
            })
            .collect();
        let holding = |index: Index| matches.iter().filter(|matched| **matched >= index).count();
        if holding(own_index) >= self.majority() {
            self.trace(|| format!("figure 8: n{returned}'s own entry reached a majority first"));
            return None;
        }
        if holding(stranded.0) < self.majority() {
            return Some(waiting);
        }
        // The window: cut off the new leader with every holder of its term's
        // entries; the rival rejoins the others.
        let mut cut: Vec<NodeId> = self
            .nodes
            .iter()
            .filter_map(|node| node.core.as_ref())
            .filter(|core| core.last_term() >= returned_term)
            .map(|core| core.id())
            .collect();
        if !cut.contains(&returned) {
            cut.push(returned);
        }
        self.cut_off(&cut);
        self.stats.figure8_windows += 1;
        self.trace(|| {
            format!("figure 8: window at n{returned} (stranded {stranded:?}, own entry {own_index}), cut off {cut:?}")
        });
        Some(Phase::Overwrite {
            rival,
            returned_term,
            deadline,
            next_campaign_at: self.now,
        })
    }

    /// Overwrite: the rival campaigns until a leader of a later term leads
    /// the rival's side.
    fn figure8_overwrite(
        &mut self,
        rival: NodeId,
        returned_term: Term,
        due: u64,
        next_campaign_at: u64,
    ) -> Option<Phase> {
        let rival_group = self.groups[&rival];
        let groups = self.groups.clone();
        if let Some((leader, term)) = self.leader_among(|id| groups[&id] == rival_group) {
            if term > returned_term {
                self.trace(|| format!("figure 8: n{leader} leads term {term} on the rival's side"));
                return None;
            }
        }
        if self.now >= next_campaign_at {
            if let Some(core) = self.nodes[(rival - 1) as usize].core.as_mut() {
                core.campaign();
            }
            return Some(Phase::Overwrite {
                rival,
                returned_term,
                deadline: due,
                next_campaign_at: self.now + u64::from(self.election_tick),
            });
        }
        Some(Phase::Overwrite {
            rival,
            returned_term,
            deadline: due,
            next_campaign_at,
        })
    }
}
