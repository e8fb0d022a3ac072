//! Restart budgets: how many nodes of a role group may restart services at
//! the same time (`[restarts]` of `cms.toml`, `cms_roles::RestartBudgets`).
//! An agent asks for a place before a restart (`AcquireRestart`) and gives
//! it back once its services are healthy again (`ReleaseRestart`).
//!
//! A role group is the nodes of an environment (not gone) that get a role
//! under the revision the asking node is served: its budget is the one in
//! that revision's `cms.toml`, so a commit's own budget holds for the
//! nodes on it. A node needs a free place in every budgeted group it
//! belongs to, and takes them all or none, so two groups never wait on
//! each other's half-held places.
//!
//! A place is a **lease**: one per node, renewed by asking again, freed by
//! release or when it expires, so a node that dies holding one blocks no
//! one for long. A server alone keeps its leases in memory: a restarted
//! server starts with every place free (at worst, one more round of
//! restarts than the budget for up to one hold time). Replicas sharing a
//! PostgreSQL store keep them in the database (`restart_leases`), read,
//! decided and written back in one transaction under a lock, so every
//! replica counts the same places; the places-held gauge of a replica
//! shows the leases as of its last acquire or release.
//!
//! The decision ([`RestartBudget::acquire`]) is pure over the groups the
//! caller hands in; [`group_sizes`] and [`budgeted_groups`] find them from
//! a repository and the environment's nodes. Time comes from the server's
//! `Clock`, so tests move it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::io::Read as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cms_roles::{MaxRestarting, Repository, RestartBudgets, select_roles};

use crate::clock::SharedClock;
use crate::store::{NodeRecord, NodeStatus};

/// How long a place is held when the agent names no time.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(10 * 60);
/// The longest a place is held without asking again.
pub const MAX_HOLD: Duration = Duration::from_secs(30 * 60);
/// How long a refused agent waits before asking again, around which
/// [`RETRY_JITTER_MS`] spreads the agents refused at once.
pub const RETRY_AFTER_MS: u32 = 2000;
pub const RETRY_JITTER_MS: u32 = 500;
/// How long the group sizes of an environment at a revision are reused.
/// Counting them reads every node of the store (about 170 ms at 10,000
/// nodes in sled, docs/BENCHMARKS.md) and selects each node's roles (80 ms
/// more at 10,000 in a debug build, the test
/// `group_sizes_of_ten_thousand_nodes_are_measured`), while a rolling
/// restart asks many times a second; a node enrolled or gone meanwhile
/// changes a group's places at most this late.
pub const GROUP_SIZES_TTL: Duration = Duration::from_secs(5);

/// How many nodes of an environment get each role, by role name.
pub type GroupSizes = BTreeMap<String, usize>;

/// One role group the asking node belongs to, with its budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetedGroup {
    pub role: String,
    pub max_restarting: MaxRestarting,
    /// How many nodes of the environment get the role.
    pub size: usize,
}

impl BudgetedGroup {
    /// How many of the group's nodes may hold a place at once.
    pub fn places(&self) -> usize {
        self.max_restarting.places(self.size)
    }

    /// `max_restarting = "20%" of 10 nodes`.
    fn budget_text(&self) -> String {
        let nodes = if self.size == 1 { "node" } else { "nodes" };
        format!(
            "max_restarting = {} of {} {nodes}",
            self.max_restarting.as_toml(),
            self.size
        )
    }
}

/// A node asking for a place.
#[derive(Debug, Clone)]
pub struct Ask {
    pub node_id: String,
    pub environment: String,
    /// What is about to restart, for the log.
    pub unit: String,
    /// How long the node needs the place; 0 is [`DEFAULT_HOLD`], above
    /// [`MAX_HOLD`] is capped.
    pub hold_seconds: u32,
    /// Every budgeted group the node belongs to; empty when no budget
    /// applies.
    pub groups: Vec<BudgetedGroup>,
}

/// What the node is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A place in every budgeted group; `lease_id` is empty when no budget
    /// applies (nothing to give back).
    Granted {
        lease_id: String,
        expires_unix_ms: u64,
        reason: String,
    },
    /// Some group is full: ask again after `retry_after_ms`.
    Refused { retry_after_ms: u32, reason: String },
}

/// What a release did; either way the node is answered OK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    Released,
    /// The node holds no lease of that id (released before, expired, or
    /// another node's).
    NotHeld,
}

/// The leases of one server.
#[derive(Debug)]
pub struct RestartBudget {
    clock: SharedClock,
    /// A std mutex: every use is a short computation over the leases,
    /// never held across an await or I/O.
    state: Mutex<State>,
    /// Group sizes by (environment, commit).
    sizes: Mutex<HashMap<(String, String), Counted>>,
    /// Where replicas keep the leases; `None`: in `state`.
    shared: Option<crate::restart_leases::SharedLeases>,
}

/// The decision of an acquire over `state`'s leases.
fn decide_acquire(state: &mut State, ask: &Ask, now: u64, expires_unix_ms: u64) -> Answer {
    state.leases.retain(|_, lease| lease.expires_unix_ms > now);
    let roles: Vec<String> = ask.groups.iter().map(|g| g.role.clone()).collect();
    if let Some(lease) = state.leases.get_mut(&ask.node_id) {
        lease.expires_unix_ms = expires_unix_ms;
        lease.environment = ask.environment.clone();
        lease.roles = roles;
        let lease_id = lease.id.clone();
        let reason = format!("renewed: {}", held_text(&ask.groups, state, ask));
        tracing::debug!(node = %ask.node_id, unit = %ask.unit, lease = %lease_id, "restart place renewed");
        return Answer::Granted {
            lease_id,
            expires_unix_ms,
            reason,
        };
    }
    let full: Vec<String> = ask
        .groups
        .iter()
        .filter_map(|group| {
            let taken = taken(state, &ask.environment, &group.role, &ask.node_id);
            (taken >= group.places()).then(|| {
                format!(
                    "role {}: {taken} of {} places taken ({})",
                    group.role,
                    group.places(),
                    group.budget_text()
                )
            })
        })
        .collect();
    if !full.is_empty() {
        let reason = full.join("; ");
        tracing::info!(node = %ask.node_id, unit = %ask.unit, environment = %ask.environment, "restart refused: {reason}");
        return Answer::Refused {
            retry_after_ms: retry_after_ms(),
            reason,
        };
    }
    let lease_id = new_lease_id();
    state.leases.insert(
        ask.node_id.clone(),
        Lease {
            id: lease_id.clone(),
            environment: ask.environment.clone(),
            roles: roles.clone(),
            expires_unix_ms,
        },
    );
    for role in roles {
        state.groups_seen.insert((ask.environment.clone(), role));
    }
    let reason = held_text(&ask.groups, state, ask);
    tracing::info!(node = %ask.node_id, unit = %ask.unit, environment = %ask.environment, lease = %lease_id, "restart granted: {reason}");
    Answer::Granted {
        lease_id,
        expires_unix_ms,
        reason,
    }
}

/// The decision of a release over `state`'s leases.
fn decide_release(state: &mut State, node_id: &str, lease_id: &str) -> Released {
    let held = state
        .leases
        .get(node_id)
        .is_some_and(|lease| !lease_id.is_empty() && lease.id == lease_id);
    if held {
        state.leases.remove(node_id);
        tracing::info!(node = %node_id, lease = %lease_id, "restart place released");
        Released::Released
    } else {
        tracing::debug!(node = %node_id, lease = %lease_id, "restart release of a lease not held");
        Released::NotHeld
    }
}

/// Group sizes and when they were counted (unix ms).
#[derive(Debug, Clone)]
struct Counted {
    at: u64,
    sizes: Arc<GroupSizes>,
}

#[derive(Debug, Default)]
struct State {
    /// At most one lease per node, by node id.
    leases: HashMap<String, Lease>,
    /// Every (environment, role) a lease was granted in, so that the
    /// places-held gauge shows 0 for a group that emptied.
    groups_seen: BTreeSet<(String, String)>,
}

/// A lease: its id, environment, the roles whose groups it holds a place
/// in, and when it expires.
type Lease = crate::restart_leases::StoredLease;

impl RestartBudget {
    pub fn new(clock: SharedClock) -> RestartBudget {
        RestartBudget {
            clock,
            state: Mutex::new(State::default()),
            sizes: Mutex::new(HashMap::new()),
            shared: None,
        }
    }

    /// Leases shared by the replicas of the PostgreSQL database at `url`.
    pub fn shared(clock: SharedClock, url: &str) -> std::io::Result<RestartBudget> {
        Ok(RestartBudget {
            shared: Some(crate::restart_leases::SharedLeases::new(url)?),
            ..RestartBudget::new(clock)
        })
    }

    /// Runs `decide` over the leases: this server's, or the replicas'
    /// shared ones (then a copy is kept in `state` for the gauge).
    fn with_state<T: Send + 'static>(
        &self,
        decide: impl FnOnce(&mut State) -> T + Send + 'static,
    ) -> Result<T, String> {
        let Some(shared) = &self.shared else {
            let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
            return Ok(decide(&mut state));
        };
        let (answer, leases, seen) = shared.with_leases(move |stored| {
            let mut state = State {
                leases: std::mem::take(stored),
                groups_seen: BTreeSet::new(),
            };
            let answer = decide(&mut state);
            *stored = state.leases.clone();
            (answer, state.leases, state.groups_seen)
        })?;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.leases = leases;
        state.groups_seen.extend(seen);
        Ok(answer)
    }

    /// Grants `ask` a place in every group it names, or refuses it, saying
    /// which groups are full. A node already holding a lease renews it
    /// (same id, new expiry, the groups it names now) without waiting.
    pub fn acquire(&self, ask: &Ask) -> Answer {
        let now = self.clock.now_unix_ms();
        if ask.groups.is_empty() {
            tracing::debug!(node = %ask.node_id, unit = %ask.unit, "restart: no budget applies");
            return Answer::Granted {
                lease_id: String::new(),
                expires_unix_ms: 0,
                reason: String::new(),
            };
        }
        let hold = match ask.hold_seconds {
            0 => DEFAULT_HOLD,
            seconds => Duration::from_secs(u64::from(seconds)).min(MAX_HOLD),
        };
        let expires_unix_ms = now.saturating_add(hold.as_millis() as u64);
        let owned = ask.clone();
        self.with_state(move |state| decide_acquire(state, &owned, now, expires_unix_ms))
            .unwrap_or_else(|problem| {
                tracing::warn!(node = %ask.node_id, "restart refused: {problem}");
                Answer::Refused {
                    retry_after_ms: retry_after_ms(),
                    reason: format!(
                        "the restart places are kept in the database, which cannot be reached now ({problem})"
                    ),
                }
            })
    }

    /// Frees `node_id`'s lease `lease_id`. Releasing a lease already
    /// released or expired, or another node's, changes nothing. Blocks
    /// when the leases are shared.
    pub fn release(&self, node_id: &str, lease_id: &str) -> Released {
        let (node_id, lease_id) = (node_id.to_string(), lease_id.to_string());
        self.with_state(move |state| decide_release(state, &node_id, &lease_id))
            .unwrap_or_else(|problem| {
                tracing::warn!(
                    "Failed to release a restart place (it expires on its own): {problem}"
                );
                Released::NotHeld
            })
    }

    /// Places held now, by (environment, role), 0 for a group that held
    /// one since the server started: the gauge read at each scrape.
    pub fn places_held(&self) -> BTreeMap<(String, String), usize> {
        let now = self.clock.now_unix_ms();
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let mut held: BTreeMap<(String, String), usize> = state
            .groups_seen
            .iter()
            .map(|group| (group.clone(), 0))
            .collect();
        for lease in state.leases.values() {
            if lease.expires_unix_ms > now {
                for role in &lease.roles {
                    *held
                        .entry((lease.environment.clone(), role.clone()))
                        .or_default() += 1;
                }
            }
        }
        held
    }

    /// The group sizes of `environment` at `commit`: the ones counted less
    /// than [`GROUP_SIZES_TTL`] ago, else `count()`'s, kept.
    pub fn group_sizes<E>(
        &self,
        environment: &str,
        commit: &str,
        count: impl FnOnce() -> Result<GroupSizes, E>,
    ) -> Result<Arc<GroupSizes>, E> {
        let now = self.clock.now_unix_ms();
        let key = (environment.to_string(), commit.to_string());
        let ttl = GROUP_SIZES_TTL.as_millis() as u64;
        {
            let sizes = self.sizes.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(counted) = sizes.get(&key)
                && now.saturating_sub(counted.at) < ttl
            {
                return Ok(counted.sizes.clone());
            }
        }
        let counted = Arc::new(count()?);
        let mut sizes = self.sizes.lock().unwrap_or_else(|e| e.into_inner());
        // Sizes of revisions no longer asked about go with their time.
        sizes.retain(|_, kept| now.saturating_sub(kept.at) < ttl);
        sizes.insert(
            key,
            Counted {
                at: now,
                sizes: counted.clone(),
            },
        );
        Ok(counted)
    }
}

/// How many nodes of `nodes` (an environment's) get each role of
/// `repository`; gone nodes do not count.
pub fn group_sizes(repository: &Repository, nodes: &[NodeRecord]) -> GroupSizes {
    let mut sizes = BTreeMap::new();
    for node in nodes {
        if node.status == NodeStatus::Gone {
            continue;
        }
        for role in select_roles(repository, &node.tags) {
            *sizes.entry(role.name.clone()).or_insert(0) += 1;
        }
    }
    sizes
}

/// The groups a node with `tags` belongs to that have a budget in
/// `budgets`, each with its size from `sizes` (at least 1: the node);
/// `sizes` is called only when some group has a budget.
pub fn budgeted_groups<E>(
    repository: &Repository,
    budgets: &RestartBudgets,
    tags: &BTreeMap<String, String>,
    sizes: impl FnOnce() -> Result<Arc<GroupSizes>, E>,
) -> Result<Vec<BudgetedGroup>, E> {
    let budgeted: Vec<(String, MaxRestarting)> = select_roles(repository, tags)
        .into_iter()
        .filter_map(|role| Some((role.name.clone(), budgets.for_role(&role.name)?)))
        .collect();
    if budgeted.is_empty() {
        return Ok(Vec::new());
    }
    let sizes = sizes()?;
    Ok(budgeted
        .into_iter()
        .map(|(role, max_restarting)| BudgetedGroup {
            size: sizes.get(&role).copied().unwrap_or(0).max(1),
            role,
            max_restarting,
        })
        .collect())
}

/// Places of `role`'s group in `environment` held by nodes other than
/// `node_id`.
fn taken(state: &State, environment: &str, role: &str, node_id: &str) -> usize {
    state
        .leases
        .iter()
        .filter(|(holder, lease)| {
            holder.as_str() != node_id
                && lease.environment == environment
                && lease.roles.iter().any(|r| r == role)
        })
        .count()
}

/// `role web: 2 of 2 places held (max_restarting = "20%" of 10 nodes)`,
/// for each group, the caller's place counted.
fn held_text(groups: &[BudgetedGroup], state: &State, ask: &Ask) -> String {
    groups
        .iter()
        .map(|group| {
            let held = taken(state, &ask.environment, &group.role, &ask.node_id) + 1;
            format!(
                "role {}: {held} of {} places held ({})",
                group.role,
                group.places(),
                group.budget_text()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// [`RETRY_AFTER_MS`] ± [`RETRY_JITTER_MS`], so that nodes refused
/// together do not ask again together.
fn retry_after_ms() -> u32 {
    let spread = u64::from(2 * RETRY_JITTER_MS + 1);
    let offset = (weak_random() % spread) as u32;
    RETRY_AFTER_MS - RETRY_JITTER_MS + offset
}

/// 16 random bytes as hex, from the kernel's generator; a lease id is not
/// a secret (only its node may release it), so should `/dev/urandom` fail
/// the id comes from the process's hash seeds instead.
fn new_lease_id() -> String {
    let mut bytes = [0u8; 16];
    let read = std::fs::File::open("/dev/urandom").and_then(|mut file| file.read_exact(&mut bytes));
    if read.is_err() {
        bytes[..8].copy_from_slice(&weak_random().to_le_bytes());
        bytes[8..].copy_from_slice(&weak_random().to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A number unpredictable enough for jitter: std's randomly seeded hasher.
fn weak_random() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u64(crate::clock::now_unix_ms());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    const START: u64 = 1_000_000;

    fn budget() -> (RestartBudget, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::at(START));
        (RestartBudget::new(clock.clone()), clock)
    }

    fn group(role: &str, max: MaxRestarting, size: usize) -> BudgetedGroup {
        BudgetedGroup {
            role: role.to_string(),
            max_restarting: max,
            size,
        }
    }

    fn ask(node: &str, groups: &[BudgetedGroup]) -> Ask {
        Ask {
            node_id: node.to_string(),
            environment: "production".to_string(),
            unit: "nginx.service".to_string(),
            hold_seconds: 60,
            groups: groups.to_vec(),
        }
    }

    #[track_caller]
    fn granted(answer: Answer) -> String {
        match answer {
            Answer::Granted { lease_id, .. } => lease_id,
            Answer::Refused { reason, .. } => panic!("refused: {reason}"),
        }
    }

    #[track_caller]
    fn refused(answer: Answer) -> String {
        match answer {
            Answer::Refused {
                reason,
                retry_after_ms,
            } => {
                assert!(
                    (RETRY_AFTER_MS - RETRY_JITTER_MS..=RETRY_AFTER_MS + RETRY_JITTER_MS)
                        .contains(&retry_after_ms),
                    "{retry_after_ms}"
                );
                reason
            }
            Answer::Granted { lease_id, .. } => panic!("granted {lease_id}"),
        }
    }

    #[test]
    fn twenty_percent_of_ten_nodes_is_two_places_and_the_third_waits() {
        let (budget, _) = budget();
        let web = [group("web", MaxRestarting::Percent(20), 10)];
        let first = granted(budget.acquire(&ask("web-1", &web)));
        let second = granted(budget.acquire(&ask("web-2", &web)));
        assert_eq!(first.len(), 32, "{first}");
        assert!(first.bytes().all(|b| b.is_ascii_hexdigit()), "{first}");
        assert_ne!(first, second);
        assert_eq!(
            refused(budget.acquire(&ask("web-3", &web))),
            "role web: 2 of 2 places taken (max_restarting = \"20%\" of 10 nodes)"
        );
        assert_eq!(budget.release("web-1", &first), Released::Released);
        granted(budget.acquire(&ask("web-3", &web)));
        assert_eq!(
            budget.places_held(),
            BTreeMap::from([(("production".to_string(), "web".to_string()), 2)])
        );
    }

    #[test]
    fn a_granted_place_names_its_budgets() {
        let (budget, _) = budget();
        let groups = [
            group("web", MaxRestarting::Count(2), 10),
            group("base", MaxRestarting::Percent(10), 30),
        ];
        match budget.acquire(&ask("web-1", &groups)) {
            Answer::Granted {
                reason,
                expires_unix_ms,
                ..
            } => {
                assert_eq!(
                    reason,
                    "role web: 1 of 2 places held (max_restarting = 2 of 10 nodes); role base: 1 of 3 places held (max_restarting = \"10%\" of 30 nodes)"
                );
                assert_eq!(expires_unix_ms, START + 60_000);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_node_needs_a_place_in_every_group_and_takes_all_or_none() {
        let (budget, _) = budget();
        let web = group("web", MaxRestarting::Count(1), 5);
        let java = group("java", MaxRestarting::Count(2), 8);
        // web-1 holds web's only place; api-1 holds one of java's two.
        granted(budget.acquire(&ask("web-1", std::slice::from_ref(&web))));
        granted(budget.acquire(&ask("api-1", std::slice::from_ref(&java))));
        // web-2 is in both: java has a place, web has none, so it takes
        // neither.
        let reason = refused(budget.acquire(&ask("web-2", &[web.clone(), java.clone()])));
        assert_eq!(
            reason,
            "role web: 1 of 1 places taken (max_restarting = 1 of 5 nodes)"
        );
        // java's second place is still free for another node.
        granted(budget.acquire(&ask("api-2", std::slice::from_ref(&java))));
        assert_eq!(
            budget.places_held(),
            BTreeMap::from([
                (("production".to_string(), "java".to_string()), 2),
                (("production".to_string(), "web".to_string()), 1),
            ])
        );
    }

    #[test]
    fn asking_again_renews_the_one_place_a_node_holds() {
        let (budget, clock) = budget();
        let web = [group("web", MaxRestarting::Count(1), 3)];
        let first = granted(budget.acquire(&ask("web-1", &web)));
        clock.set(START + 50_000);
        match budget.acquire(&ask("web-1", &web)) {
            Answer::Granted {
                lease_id,
                expires_unix_ms,
                reason,
            } => {
                assert_eq!(lease_id, first);
                assert_eq!(expires_unix_ms, START + 50_000 + 60_000);
                assert!(reason.starts_with("renewed: role web: 1 of 1"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(budget.places_held().values().sum::<usize>(), 1);
        // Past the first expiry, the renewed lease still holds the place.
        clock.set(START + 70_000);
        refused(budget.acquire(&ask("web-2", &web)));
    }

    #[test]
    fn an_expired_lease_frees_its_place() {
        let (budget, clock) = budget();
        let web = [group("web", MaxRestarting::Count(1), 3)];
        let first = granted(budget.acquire(&ask("web-1", &web)));
        refused(budget.acquire(&ask("web-2", &web)));
        clock.set(START + 60_000);
        assert_eq!(budget.places_held().values().sum::<usize>(), 0);
        granted(budget.acquire(&ask("web-2", &web)));
        // The expired lease is gone: releasing it is a no-op.
        assert_eq!(budget.release("web-1", &first), Released::NotHeld);
    }

    #[test]
    fn hold_time_defaults_to_ten_minutes_and_is_capped_at_thirty() {
        let (budget, _) = budget();
        let web = [group("web", MaxRestarting::Count(5), 10)];
        for (node, hold_seconds, held) in [
            ("web-1", 0, DEFAULT_HOLD),
            ("web-2", 7200, MAX_HOLD),
            ("web-3", 90, Duration::from_secs(90)),
        ] {
            let answer = budget.acquire(&Ask {
                hold_seconds,
                ..ask(node, &web)
            });
            let Answer::Granted {
                expires_unix_ms, ..
            } = answer
            else {
                panic!("{answer:?}")
            };
            assert_eq!(expires_unix_ms, START + held.as_millis() as u64, "{node}");
        }
    }

    #[test]
    fn a_node_cannot_release_another_nodes_lease() {
        let (budget, _) = budget();
        let web = [group("web", MaxRestarting::Count(1), 3)];
        let lease = granted(budget.acquire(&ask("web-1", &web)));
        assert_eq!(budget.release("web-2", &lease), Released::NotHeld);
        refused(budget.acquire(&ask("web-2", &web)));
        assert_eq!(budget.release("web-1", &lease), Released::Released);
        // Releasing twice is fine, and changes nothing.
        assert_eq!(budget.release("web-1", &lease), Released::NotHeld);
        assert_eq!(budget.release("web-1", ""), Released::NotHeld);
        granted(budget.acquire(&ask("web-2", &web)));
    }

    #[test]
    fn a_node_in_no_budgeted_group_gets_an_empty_lease_at_once() {
        let (budget, _) = budget();
        for _ in 0..3 {
            assert_eq!(
                budget.acquire(&ask("db-1", &[])),
                Answer::Granted {
                    lease_id: String::new(),
                    expires_unix_ms: 0,
                    reason: String::new()
                }
            );
        }
        assert!(budget.places_held().is_empty());
    }

    #[test]
    fn groups_of_other_environments_do_not_share_places() {
        let (budget, _) = budget();
        let web = [group("web", MaxRestarting::Count(1), 3)];
        granted(budget.acquire(&ask("web-1", &web)));
        granted(budget.acquire(&Ask {
            environment: "staging".to_string(),
            ..ask("web-s1", &web)
        }));
    }

    #[test]
    fn a_share_of_a_small_group_is_still_one_place() {
        let (budget, _) = budget();
        let web = [group("web", MaxRestarting::Percent(10), 4)];
        granted(budget.acquire(&ask("web-1", &web)));
        assert_eq!(
            refused(budget.acquire(&ask("web-2", &web))),
            "role web: 1 of 1 places taken (max_restarting = \"10%\" of 4 nodes)"
        );
    }

    fn repository() -> Repository {
        let mut files = cms_roles::RepoFiles::new();
        files.insert(
            "cms.toml",
            "[restarts]\nmax_restarting = \"20%\"\n[restarts.role.web]\nmax_restarting = 1\n",
        );
        files.insert("roles/base.toml", "[[package]]\nname = \"curl\"\n");
        files.insert(
            "roles/web.toml",
            "include = [\"java\"]\n[match]\nrole = \"web\"\n[[package]]\nname = \"nginx\"\n",
        );
        files.insert(
            "roles/java.toml",
            "[match]\nrole = \"api\"\n[[package]]\nname = \"java\"\n",
        );
        files.insert(
            "roles/db.toml",
            "[match]\nrole = \"db\"\n[[package]]\nname = \"postgresql\"\n",
        );
        Repository::parse(files).unwrap_or_else(|d| panic!("{d}"))
    }

    fn node(id: &str, role: &str) -> NodeRecord {
        let mut record = crate::store::tests::node(id);
        record.tags = crate::store::tests::tags(&[("role", role)]);
        record
    }

    #[test]
    fn a_group_is_the_live_nodes_that_get_the_role_includes_too() {
        let repository = repository();
        let mut gone = node("web-9", "web");
        gone.status = NodeStatus::Gone;
        let nodes = [
            node("web-1", "web"),
            node("web-2", "web"),
            node("api-1", "api"),
            node("db-1", "db"),
            gone,
        ];
        let sizes = group_sizes(&repository, &nodes);
        assert_eq!(
            sizes,
            BTreeMap::from([
                ("base".to_string(), 4),
                ("db".to_string(), 1),
                ("java".to_string(), 3),
                ("web".to_string(), 2),
            ])
        );
        let budgets = repository.settings.restarts.clone().expect("budgets");
        let sizes = Arc::new(sizes);
        let counted = || Ok::<_, ()>(sizes.clone());
        let groups = budgeted_groups(&repository, &budgets, &nodes[0].tags, counted).unwrap();
        assert_eq!(
            groups,
            [
                group("base", MaxRestarting::Percent(20), 4),
                group("java", MaxRestarting::Percent(20), 3),
                group("web", MaxRestarting::Count(1), 2),
            ]
        );
        let without_default = RestartBudgets {
            default: None,
            ..budgets
        };
        // db has no budget of its own and there is no default: no group,
        // and the sizes are not even counted.
        let not_counted = || -> Result<Arc<GroupSizes>, ()> { panic!("counted") };
        let groups = budgeted_groups(&repository, &without_default, &nodes[3].tags, not_counted);
        assert_eq!(groups, Ok(Vec::new()));
    }

    #[test]
    fn group_sizes_are_counted_again_once_stale() {
        let (budget, clock) = budget();
        let count = |n: usize| move || Ok::<_, ()>(BTreeMap::from([("web".to_string(), n)]));
        assert_eq!(
            budget.group_sizes("production", "c1", count(1)).unwrap()["web"],
            1
        );
        assert_eq!(
            budget.group_sizes("production", "c1", count(2)).unwrap()["web"],
            1
        );
        assert_eq!(
            budget.group_sizes("production", "c2", count(3)).unwrap()["web"],
            3
        );
        clock.set(START + GROUP_SIZES_TTL.as_millis() as u64);
        assert_eq!(
            budget.group_sizes("production", "c1", count(4)).unwrap()["web"],
            4
        );
    }

    /// Lists 10,000 stored nodes with facts and counts their groups, as an
    /// acquire with cold sizes does, and prints how long each step took.
    #[test]
    fn group_sizes_of_ten_thousand_nodes_are_measured() {
        let store: crate::store::SharedStore = Arc::new(crate::store::MemoryStore::default());
        let roles = ["web", "api", "db", "cache", "worker"];
        for i in 0..10_000 {
            let mut record = node(&format!("node-{i:05}"), roles[i % roles.len()]);
            record.facts = serde_json::json!({
                "hostname": format!("node-{i:05}"),
                "os": {"family": "debian", "release": "12"},
                "memory_mb": 4096,
                "cpus": 2,
            });
            store.put_node(&record).unwrap();
        }
        let repository = repository();
        let started = crate::clock::instant();
        let nodes = store.nodes().unwrap();
        let listed = started.elapsed();
        let sizes = group_sizes(&repository, &nodes);
        let counted = started.elapsed() - listed;
        assert_eq!(sizes["base"], 10_000);
        assert_eq!(sizes["web"], 2_000);
        assert_eq!(sizes["java"], 4_000);
        println!("10,000 nodes: listed in {listed:?}, groups counted in {counted:?}");
    }
}
