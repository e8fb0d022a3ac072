//! Compiled catalogs, cached and bounded.
//!
//! Many instances of one role share a catalog: same revision, same tags,
//! same data layers, and the same facts and attested values where the
//! templates read them. A boot storm of hundreds of identical instances
//! must cost one compile, not hundreds. So catalogs are cached by a digest
//! of what the compile reads (`CatalogKey`): the revision, the tags, the
//! data layers that apply, and only those node values the repository can
//! read (`cms_roles::NodeReads`, found from the parsed templates; a read
//! whose root cannot be told counts as reading everything), and the
//! generation of the AWS secret values (`secrets::RevisionSecrets`), so a
//! rotated value compiles anew. Catalogs may hold secret values: they stay
//! in this cache, in memory, and are never written anywhere. A compile
//! already running for a key is joined rather than repeated (single
//! flight), and at most `max_concurrent_compiles` run at once; the others
//! queue on a semaphore instead of being refused.
//!
//! Compiling is CPU work that blocks, so it runs on compile threads of the
//! cache's own (as many as may compile at once, each with the compile
//! stack, started once), not on the async workers. A catalog's canonical
//! bytes are encoded once, with the compile ([`Compiled`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use cms_roles::{
    Catalog, Diagnostics, Node, NodeReads, Repository, SecretValues, compile_encoded_with_secrets,
    data_layers, node_context, sha256_hex,
};
use tokio::sync::{Semaphore, watch};

/// What a compile gives: the catalog, or the problems found.
pub type CompileResult = Result<Arc<Compiled>, Arc<Diagnostics>>;

/// A compiled catalog and its canonical bytes, encoded once when it is
/// compiled: every agent served this catalog is sent these bytes, and the
/// cache counts its size from them, instead of encoding it again (its
/// contents in base64) for each.
#[derive(Debug)]
pub struct Compiled {
    catalog: Catalog,
    canonical: Vec<u8>,
}

impl Compiled {
    /// A catalog and the canonical bytes its compile made with it
    /// ([`cms_roles::compile_encoded_with_secrets`]).
    fn encoded((catalog, canonical): (Catalog, Vec<u8>)) -> Compiled {
        Compiled { catalog, canonical }
    }

    /// The catalog's canonical bytes ([`Catalog::canonical_bytes`]).
    pub fn canonical(&self) -> &[u8] {
        &self.canonical
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }
}

impl std::ops::Deref for Compiled {
    type Target = Catalog;

    fn deref(&self) -> &Catalog {
        &self.catalog
    }
}

/// The cache key of a node's catalog.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CatalogKey(String);

impl CatalogKey {
    /// A digest of everything a compile reads: the revision, the tags
    /// (they select the roles), the data layers that apply (the node's data
    /// is them merged), and the node id, facts and attested values as far
    /// as the repository can read them (`reads`, found by
    /// `NodeReads::of`). A value the repository reads by name and the node
    /// lacks is absent from the digest, unlike one it has.
    /// `secrets_generation` is the generation of the AWS secret values
    /// the compile uses: a rotated value makes a new key.
    pub fn of(
        revision: &str,
        repository: &Repository,
        node: &Node,
        reads: &NodeReads,
        secrets_generation: u64,
    ) -> CatalogKey {
        let (layers, problems) = data_layers(repository, &node_context(node));
        let id = reads.node_id.then_some(node.id.as_str());
        let facts: BTreeMap<&String, &serde_json::Value> = node
            .facts
            .iter()
            .filter(|(name, _)| reads.all_facts || reads.facts.contains(name.as_str()))
            .collect();
        let attested: BTreeMap<&String, &String> = node
            .attested
            .iter()
            .filter(|(name, _)| reads.all_attested || reads.attested.contains(name.as_str()))
            .collect();
        let identity = serde_json::to_vec(&(
            revision,
            &node.tags,
            id,
            facts,
            attested,
            layers,
            problems.to_string(),
            secrets_generation,
        ))
        .expect("a node serializes");
        CatalogKey(sha256_hex(&identity))
    }
}

/// A compile to run on a compile thread.
type CompileJob = Box<dyn FnOnce() + Send>;

/// The catalog cache of one server.
#[derive(Debug)]
pub struct Catalogs {
    permits: Arc<Semaphore>,
    /// Where compiles go: as many long-lived threads with the compile
    /// stack (`cms_roles::bounded::spawn_compile_thread`) as compiles may
    /// run at once, so a compile starts no thread of its own. `None` when
    /// they could not start: compiles then run on tokio's blocking threads.
    compile_threads: Option<Mutex<std::sync::mpsc::Sender<CompileJob>>>,
    state: Mutex<State>,
    capacity: usize,
    /// Where each compile's duration goes (`metrics`).
    compile_duration: Option<prometheus_client::metrics::histogram::Histogram>,
    max_bytes: usize,
    /// The catalog each node was last served (`GetCatalog`), so that its
    /// `GetContent` calls find it without computing its key again.
    served: Mutex<Served>,
}

/// The catalog last served to each node, by node id. Weak: only the cache
/// keeps a catalog alive, so this holds a few hundred bytes per node; when
/// it has doubled since the last pruning, entries of catalogs gone are
/// dropped.
#[derive(Debug)]
struct Served {
    nodes: HashMap<String, ServedCatalog>,
    prune_at: usize,
}

#[derive(Debug)]
struct ServedCatalog {
    /// The certificate the node called with: a new instance enrolled
    /// under the name has another and is not served the old one's.
    certificate_serial: String,
    commit: String,
    catalog: std::sync::Weak<Compiled>,
}

/// Entries of [`Served`] kept before the first pruning.
const SERVED_PRUNE_AT: usize = 4096;

/// The memory the cache may hold, estimated from catalog sizes: a fleet of
/// nodes with catalogs of their own must not grow the server without
/// bound; an evicted catalog is compiled again when asked for. Measured in
/// the boot-storm bench: a 48 MB budget held about 80 MB of catalogs when
/// the estimate was 8 times the canonical size; it is 16 times now. 16 MB
/// holds a few dozen 50-resource catalogs with their contents, which
/// `GetContent` serves from here; 10,000 distinct catalogs churn through
/// it whatever its size.
pub const CACHE_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug, Default)]
struct State {
    done: HashMap<CatalogKey, CompileResult>,
    /// Insertion order, to evict the oldest when full.
    order: std::collections::VecDeque<CatalogKey>,
    /// Compiles in flight: later callers wait on the channel.
    running: HashMap<CatalogKey, watch::Receiver<Option<CompileResult>>>,
    compiles: u64,
    /// Estimated bytes of the catalogs in `done`.
    bytes: usize,
    /// What each revision's repository reads of a node.
    reads: HashMap<String, Arc<NodeReads>>,
}

/// How often the cache compiled, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CatalogStats {
    pub compiles: u64,
    pub cached: usize,
}

impl Catalogs {
    /// A cache of at most `capacity` catalogs, compiling at most
    /// `max_concurrent_compiles` at once.
    pub fn new(capacity: usize, max_concurrent_compiles: usize) -> Catalogs {
        let threads = max_concurrent_compiles.max(1);
        Catalogs {
            permits: Arc::new(Semaphore::new(threads)),
            compile_threads: compile_threads(threads),
            state: Mutex::new(State::default()),
            capacity: capacity.max(1),
            compile_duration: None,
            max_bytes: CACHE_BYTES,
            served: Mutex::new(Served {
                nodes: HashMap::new(),
                prune_at: SERVED_PRUNE_AT,
            }),
        }
    }

    /// Notes that `node_id`, calling with the certificate
    /// `certificate_serial`, was served `catalog` of `commit`: its
    /// `GetContent` calls find it with [`Catalogs::served`].
    pub fn note_served(
        &self,
        node_id: &str,
        certificate_serial: &str,
        commit: &str,
        catalog: &Arc<Compiled>,
    ) {
        let mut served = self.served.lock().expect("served catalogs lock");
        if let Some(entry) = served.nodes.get_mut(node_id) {
            if entry.certificate_serial != certificate_serial {
                entry.certificate_serial = certificate_serial.to_string();
            }
            if entry.commit != commit {
                entry.commit = commit.to_string();
            }
            entry.catalog = Arc::downgrade(catalog);
            return;
        }
        if served.nodes.len() >= served.prune_at {
            served
                .nodes
                .retain(|_, entry| entry.catalog.strong_count() > 0);
            served.prune_at = (served.nodes.len() * 2).max(SERVED_PRUNE_AT);
        }
        served.nodes.insert(
            node_id.to_string(),
            ServedCatalog {
                certificate_serial: certificate_serial.to_string(),
                commit: commit.to_string(),
                catalog: Arc::downgrade(catalog),
            },
        );
    }

    /// The catalog last served to `node_id` with this certificate, if it
    /// was of `commit` and is still in the cache.
    pub fn served(
        &self,
        node_id: &str,
        certificate_serial: &str,
        commit: &str,
    ) -> Option<Arc<Compiled>> {
        let served = self.served.lock().expect("served catalogs lock");
        let entry = served.nodes.get(node_id)?;
        if entry.certificate_serial != certificate_serial || entry.commit != commit {
            return None;
        }
        entry.catalog.upgrade()
    }

    /// Records the duration of every compile in `histogram`.
    pub fn observe_compiles(
        mut self,
        histogram: prometheus_client::metrics::histogram::Histogram,
    ) -> Catalogs {
        self.compile_duration = Some(histogram);
        self
    }

    /// The same with a memory budget other than `CACHE_BYTES`.
    pub fn with_max_bytes(mut self, max_bytes: usize) -> Catalogs {
        self.max_bytes = max_bytes;
        self
    }

    pub fn stats(&self) -> CatalogStats {
        let state = self.state.lock().expect("catalog cache lock");
        CatalogStats {
            compiles: state.compiles,
            cached: state.done.len(),
        }
    }

    /// The catalog of `node` at `revision` of a repository without
    /// secrets, compiled at most once per key.
    pub async fn get(
        &self,
        revision: &str,
        repository: Arc<Repository>,
        node: Node,
    ) -> CompileResult {
        self.get_with_secrets(revision, repository, node, Arc::default(), 0)
            .await
    }

    /// The catalog of `node` at `revision`, compiled with `secrets` (whose
    /// AWS values are of `secrets_generation`), at most once per key. The
    /// catalog, which may hold secret values, stays in this cache, in
    /// memory.
    pub async fn get_with_secrets(
        &self,
        revision: &str,
        repository: Arc<Repository>,
        node: Node,
        secrets: Arc<SecretValues>,
        secrets_generation: u64,
    ) -> CompileResult {
        let reads = {
            let known = self
                .state
                .lock()
                .expect("catalog cache lock")
                .reads
                .get(revision)
                .cloned();
            match known {
                Some(reads) => reads,
                None => {
                    let reads = Arc::new(NodeReads::of(&repository));
                    self.state
                        .lock()
                        .expect("catalog cache lock")
                        .reads
                        .insert(revision.to_string(), reads.clone());
                    reads
                }
            }
        };
        let key = CatalogKey::of(revision, &repository, &node, &reads, secrets_generation);
        // Either the result is known, a compile is running (wait for it), or
        // this caller compiles. The lock is released before any await.
        enum Next {
            Known(CompileResult),
            Wait(watch::Receiver<Option<CompileResult>>),
            Compile(watch::Sender<Option<CompileResult>>),
        }
        let next = {
            let mut state = self.state.lock().expect("catalog cache lock");
            if let Some(result) = state.done.get(&key) {
                Next::Known(result.clone())
            } else if let Some(receiver) = state.running.get(&key) {
                Next::Wait(receiver.clone())
            } else {
                let (sender, receiver) = watch::channel(None);
                state.running.insert(key.clone(), receiver);
                Next::Compile(sender)
            }
        };
        let sender = match next {
            Next::Known(result) => return result,
            Next::Wait(mut receiver) => return wait_for(&mut receiver).await,
            Next::Compile(sender) => sender,
        };
        let result = {
            // Queue for a permit rather than refuse: a boot storm waits a
            // little instead of failing.
            let _permit = self
                .permits
                .acquire()
                .await
                .expect("the semaphore is never closed");
            let compile_duration = self.compile_duration.clone();
            let compile = move || {
                let started = crate::clock::instant();
                let result = compile_encoded_with_secrets(&repository, &node, &secrets)
                    .map(|encoded| Arc::new(Compiled::encoded(encoded)))
                    .map_err(Arc::new);
                if let Some(histogram) = compile_duration {
                    histogram.observe(started.elapsed().as_secs_f64());
                }
                result
            };
            let stopped = |why: String| {
                Err(Arc::new(Diagnostics(vec![cms_roles::Diagnostic::new(
                    "(server)",
                    cms_roles::Position::UNKNOWN,
                    format!("the compiler panicked: {why}"),
                )])))
            };
            match &self.compile_threads {
                Some(jobs) => {
                    let (reply, answer) = tokio::sync::oneshot::channel();
                    let job: CompileJob = Box::new(move || {
                        let _ = reply.send(compile());
                    });
                    let sent = jobs.lock().expect("compile threads lock").send(job);
                    match sent {
                        Ok(()) => answer.await.unwrap_or_else(|_| {
                            stopped("its thread stopped before answering".to_string())
                        }),
                        Err(_) => stopped("no compile thread is running".to_string()),
                    }
                }
                None => tokio::task::spawn_blocking(compile)
                    .await
                    .unwrap_or_else(|panic| stopped(panic.to_string())),
            }
        };
        // What the cache lets go of is dropped after its lock is released:
        // freeing a catalog (its resources and contents, a few hundred
        // allocations) under the lock kept every other request waiting.
        let mut evicted = Vec::new();
        {
            let mut state = self.state.lock().expect("catalog cache lock");
            state.compiles += 1;
            state.running.remove(&key);
            let size = estimated_size(&result);
            while (state.done.len() >= self.capacity || state.bytes + size > self.max_bytes)
                && let Some(oldest) = state.order.pop_front()
            {
                if let Some(old) = state.done.remove(&oldest) {
                    state.bytes = state.bytes.saturating_sub(estimated_size(&old));
                    evicted.push(old);
                }
            }
            if let Some(previous) = state.done.insert(key.clone(), result.clone()) {
                state.bytes = state.bytes.saturating_sub(estimated_size(&previous));
                evicted.push(previous);
            } else {
                state.order.push_back(key);
            }
            state.bytes += size;
        }
        drop(evicted);
        let _ = sender.send(Some(result.clone()));
        result
    }

    /// Forgets every catalog: a new revision makes them stale.
    pub fn clear(&self) {
        let mut state = self.state.lock().expect("catalog cache lock");
        // Freed after the lock is released, as evicted catalogs are: the
        // whole cache (up to its byte budget) would otherwise be freed
        // while every request waits.
        let forgotten = std::mem::take(&mut state.done);
        state.order.clear();
        state.bytes = 0;
        state.reads.clear();
        drop(state);
        drop(forgotten);
        self.served
            .lock()
            .expect("served catalogs lock")
            .nodes
            .clear();
    }
}

/// Starts `count` compile threads taking jobs from one queue; they end
/// when the cache (the queue's sender) is dropped. `None` when a thread
/// could not start.
fn compile_threads(count: usize) -> Option<Mutex<std::sync::mpsc::Sender<CompileJob>>> {
    let (sender, receiver) = std::sync::mpsc::channel::<CompileJob>();
    let receiver = Arc::new(Mutex::new(receiver));
    for index in 0..count {
        let receiver = receiver.clone();
        let started =
            cms_roles::bounded::spawn_compile_thread(format!("cms-compile-{index}"), move || {
                loop {
                    let job = receiver.lock().expect("compile queue lock").recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                }
            });
        if let Err(error) = started {
            tracing::warn!(%error, "Failed to start a compile thread; compiling on blocking threads");
            return None;
        }
    }
    Some(Mutex::new(sender))
}

/// About what a compile result holds in memory. A catalog in memory (its
/// resources as structs and JSON values, its contents map) takes several
/// times its canonical JSON; the factor was measured with `cms-storm`,
/// whose 50-resource catalogs of about 40 KB took about 300 KB each.
fn estimated_size(result: &CompileResult) -> usize {
    match result {
        // The parsed catalog as measured (16 times its canonical bytes),
        // and the canonical bytes kept beside it.
        Ok(catalog) => catalog.canonical().len() * 17,
        Err(diagnostics) => diagnostics.len() * 256 + 256,
    }
}

async fn wait_for(receiver: &mut watch::Receiver<Option<CompileResult>>) -> CompileResult {
    loop {
        if let Some(result) = receiver.borrow_and_update().clone() {
            return result;
        }
        if receiver.changed().await.is_err() {
            // The compiling caller was cancelled; report it rather than hang.
            return Err(Arc::new(Diagnostics(vec![cms_roles::Diagnostic::new(
                "(server)",
                cms_roles::Position::UNKNOWN,
                "the compile this request waited for was cancelled; retry",
            )])));
        }
    }
}

/// Tags as the compiler wants them.
pub fn node(
    id: &str,
    tags: &BTreeMap<String, String>,
    facts: BTreeMap<String, serde_json::Value>,
) -> Node {
    Node {
        id: id.to_string(),
        tags: tags.clone(),
        facts,
        attested: BTreeMap::new(),
    }
}

/// What the compiler sees of a stored node: its tags, its last facts and
/// what was attested at enrollment.
pub fn node_of_record(record: &crate::store::NodeRecord) -> Node {
    let facts = serde_json::from_value(record.facts.clone()).unwrap_or_default();
    Node {
        attested: record.attested.clone(),
        ..node(&record.id, &record.tags, facts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cms_roles::{RepoFiles, compile};

    fn repository() -> Arc<Repository> {
        let mut files = RepoFiles::new();
        files.insert("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n");
        files.insert("templates/t.hbs", "role={{tag.role}}\n");
        files.insert(
            "roles/web.toml",
            "[match]\nrole = \"*\"\n[[file]]\npath = \"/etc/t\"\ntemplate = \"t.hbs\"\n",
        );
        Arc::new(Repository::parse(files).expect("valid"))
    }

    fn web_node(id: &str) -> Node {
        node(
            id,
            &BTreeMap::from([("role".to_string(), "web".to_string())]),
            BTreeMap::new(),
        )
    }

    #[tokio::test]
    async fn many_requests_for_one_catalog_compile_it_once() {
        let catalogs = Arc::new(Catalogs::new(100, 2));
        let repository = repository();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..200 {
            let catalogs = catalogs.clone();
            let repository = repository.clone();
            tasks.spawn(async move { catalogs.get("rev1", repository, web_node("same")).await });
        }
        let mut ids = std::collections::BTreeSet::new();
        while let Some(result) = tasks.join_next().await {
            ids.insert(result.expect("task").expect("compiles").catalog_id.clone());
        }
        assert_eq!(ids.len(), 1);
        assert_eq!(catalogs.stats().compiles, 1);
    }

    #[tokio::test]
    async fn a_new_revision_or_other_tags_compile_again_but_identical_instances_share() {
        let catalogs = Catalogs::new(100, 2);
        let repository = repository();
        let db = |id: &str| {
            node(
                id,
                &BTreeMap::from([("role".to_string(), "db".to_string())]),
                BTreeMap::new(),
            )
        };
        for (revision, node) in [
            ("rev1", web_node("a")),
            ("rev2", web_node("a")),
            ("rev2", web_node("b")),
            ("rev2", db("c")),
            ("rev2", db("d")),
        ] {
            catalogs
                .get(revision, repository.clone(), node)
                .await
                .expect("compiles");
        }
        // rev1/web, rev2/web (a and b share), rev2/db (c and d share).
        assert_eq!(catalogs.stats().compiles, 3);
    }

    #[tokio::test]
    async fn the_catalog_served_to_a_node_is_found_for_that_certificate_and_commit_while_cached() {
        // Room for one catalog: the second compile evicts the first.
        let catalogs = Catalogs::new(1, 2);
        let repository = repository();
        let served = catalogs
            .get("rev1", repository.clone(), web_node("a"))
            .await
            .expect("compiles");
        catalogs.note_served("a", "s1", "rev1", &served);
        let found = catalogs.served("a", "s1", "rev1").expect("served");
        assert!(Arc::ptr_eq(&found, &served));
        drop(found);
        // Another instance enrolled under the name, another commit, another
        // node: not this catalog.
        assert!(catalogs.served("a", "s2", "rev1").is_none());
        assert!(catalogs.served("a", "s1", "rev2").is_none());
        assert!(catalogs.served("b", "s1", "rev1").is_none());
        // Evicted from the cache (and held by no one): no longer found.
        drop(served);
        catalogs
            .get("rev3", repository.clone(), web_node("b"))
            .await
            .expect("compiles");
        let other = catalogs
            .get("rev2", repository, web_node("a"))
            .await
            .expect("compiles");
        assert!(catalogs.served("a", "s1", "rev1").is_none());
        // Served again: the new one replaces it.
        catalogs.note_served("a", "s1", "rev2", &other);
        assert!(Arc::ptr_eq(
            &catalogs.served("a", "s1", "rev2").expect("served"),
            &other
        ));
    }

    fn repository_with_template(template: &str) -> Arc<Repository> {
        let mut files = RepoFiles::new();
        files.insert("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n");
        files.insert("templates/t.hbs", template);
        files.insert(
            "roles/web.toml",
            "[match]\nrole = \"*\"\n[[file]]\npath = \"/etc/t\"\ntemplate = \"t.hbs\"\n",
        );
        Arc::new(Repository::parse(files).expect("valid"))
    }

    fn web_node_with(id: &str, facts: &[(&str, serde_json::Value)]) -> Node {
        node(
            id,
            &BTreeMap::from([("role".to_string(), "web".to_string())]),
            facts
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    async fn compiles_for(repository: Arc<Repository>, nodes: Vec<Node>) -> u64 {
        let catalogs = Catalogs::new(100, 2);
        for node in nodes {
            catalogs
                .get("rev1", repository.clone(), node)
                .await
                .expect("compiles");
        }
        catalogs.stats().compiles
    }

    #[tokio::test]
    async fn nodes_differing_only_in_what_no_template_reads_share_one_compile() {
        let nodes = || {
            vec![
                web_node_with("a", &[("os", "debian".into()), ("hostname", "a".into())]),
                web_node_with("b", &[("os", "debian".into()), ("hostname", "b".into())]),
                web_node_with("c", &[("os", "rocky".into()), ("hostname", "c".into())]),
            ]
        };
        // Reads the role only: one compile for all three.
        assert_eq!(
            compiles_for(repository_with_template("role={{tag.role}}\n"), nodes()).await,
            1
        );
        // Reads the os fact: debian and rocky.
        assert_eq!(
            compiles_for(repository_with_template("{{fact.os}}\n"), nodes()).await,
            2
        );
        // Reads the node id: one each.
        assert_eq!(
            compiles_for(repository_with_template("{{node.id}}\n"), nodes()).await,
            3
        );
        // Walks every fact: one each (their hostnames differ).
        assert_eq!(
            compiles_for(
                repository_with_template("{{#each fact}}{{@key}}={{this}}\n{{/each}}"),
                nodes()
            )
            .await,
            3
        );
    }

    #[test]
    fn node_reads_are_found_in_templates_fields_and_for_each() {
        let mut files = RepoFiles::new();
        files.insert("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n");
        files.insert("data/common.toml", "apps = []\n");
        files.insert("templates/t.hbs", "{{#each data.apps}}{{name}}{{/each}}\n");
        files.insert(
            "roles/web.toml",
            "# a node is an instance\n[[file]]\npath = \"/etc/t\"\ntemplate = \"t.hbs\"\nvars = { heap = \"{{ memory_percent 50 }}\" }\n[[file]]\nfor_each = \"fact.mounts\"\npath = \"/etc/m/{{item.key}}\"\ncontent = \"{{fact.never_rendered}}\"\n",
        );
        let repository = Repository::parse(files).expect("valid");
        let reads = NodeReads::of(&repository);
        assert_eq!(
            reads.facts,
            ["memory_mb".to_string(), "mounts".to_string()].into()
        );
        assert!(
            !reads.node_id && !reads.all_facts && !reads.all_attested,
            "{reads:?}"
        );
    }

    /// Two nodes of one role that differ in everything but their tags.
    fn twin_nodes() -> (Node, Node) {
        let twin = |id: &str, host: &str, instance: &str| Node {
            id: id.to_string(),
            tags: BTreeMap::from([("role".to_string(), "web".to_string())]),
            facts: BTreeMap::from([
                ("hostname".to_string(), serde_json::json!(host)),
                ("os".to_string(), serde_json::json!("debian")),
            ]),
            attested: BTreeMap::from([("instance_id".to_string(), instance.to_string())]),
        };
        (
            twin("node-a", "host-a", "i-0aaaaaaaaaaaaaaaa"),
            twin("node-b", "host-b", "i-0bbbbbbbbbbbbbbbb"),
        )
    }

    /// Asks the cache for node A's catalog, then node B's, and checks that
    /// B got the catalog compiled for B.
    async fn node_b_gets_its_own_catalog(repository: Arc<Repository>, what: &str) {
        let (a, b) = twin_nodes();
        let catalogs = Catalogs::new(100, 2);
        let for_a = catalogs
            .get("rev1", repository.clone(), a.clone())
            .await
            .unwrap_or_else(|d| panic!("{what}: node A: {d}"));
        let for_b = catalogs
            .get("rev1", repository.clone(), b.clone())
            .await
            .unwrap_or_else(|d| panic!("{what}: node B: {d}"));
        let own_a = compile(&repository, &a).expect("A compiles");
        let own_b = compile(&repository, &b).expect("B compiles");
        assert_ne!(
            own_a.catalog_id, own_b.catalog_id,
            "{what}: the test needs catalogs that differ"
        );
        assert_eq!(for_a.catalog_id, own_a.catalog_id, "{what}: node A");
        assert_eq!(
            for_b.catalog_id, own_b.catalog_id,
            "{what}: node B was served node A's catalog"
        );
    }

    #[tokio::test]
    async fn a_template_printing_the_whole_context_as_json_is_keyed_by_everything() {
        node_b_gets_its_own_catalog(repository_with_template("{{json this}}\n"), "json this").await;
    }

    #[tokio::test]
    async fn a_template_walking_the_whole_context_is_keyed_by_everything() {
        node_b_gets_its_own_catalog(
            repository_with_template("{{#each this}}{{@key}}={{json this}}\n{{/each}}"),
            "each this",
        )
        .await;
    }

    #[tokio::test]
    async fn a_template_reading_from_the_root_inside_a_block_is_keyed_by_what_it_reads() {
        node_b_gets_its_own_catalog(
            repository_with_template("{{#each tag}}{{json @root.this}}{{/each}}"),
            "json @root.this",
        )
        .await;
        node_b_gets_its_own_catalog(
            repository_with_template("{{#with tag}}{{json @root.fact}}{{/with}}"),
            "json @root.fact",
        )
        .await;
    }

    #[tokio::test]
    async fn a_computed_lookup_is_keyed_by_everything_it_could_reach() {
        node_b_gets_its_own_catalog(
            repository_with_template("{{json (lookup this (lower \"FACT\"))}}\n"),
            "lookup this computed",
        )
        .await;
        node_b_gets_its_own_catalog(
            repository_with_template("{{json (lookup this (lower \"NODE\"))}}\n"),
            "lookup this computed for the node",
        )
        .await;
    }

    #[tokio::test]
    async fn a_with_block_over_the_facts_is_keyed_by_the_facts() {
        node_b_gets_its_own_catalog(
            repository_with_template("{{#with fact}}{{hostname}}{{/with}}\n"),
            "with fact",
        )
        .await;
    }

    #[tokio::test]
    async fn a_parent_path_out_of_a_block_is_keyed_by_what_it_reaches() {
        node_b_gets_its_own_catalog(
            repository_with_template("{{#with tag}}{{json ../this}}{{/with}}\n"),
            "../this",
        )
        .await;
        node_b_gets_its_own_catalog(
            repository_with_template("{{#each tag}}{{../fact.hostname}}{{/each}}\n"),
            "../fact.hostname",
        )
        .await;
    }

    #[tokio::test]
    async fn a_partial_is_keyed_by_everything_it_could_read() {
        let mut files = RepoFiles::new();
        files.insert("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n");
        files.insert("templates/t.hbs", "{{> templates/who.hbs}}\n");
        files.insert("templates/who.hbs", "{{json this}}");
        files.insert(
            "roles/web.toml",
            "[match]\nrole = \"*\"\n[[file]]\npath = \"/etc/t\"\ntemplate = \"t.hbs\"\n",
        );
        let repository = Arc::new(Repository::parse(files).expect("valid"));
        node_b_gets_its_own_catalog(repository, "partial").await;
    }

    #[tokio::test]
    async fn a_for_each_over_a_whole_table_of_node_values_is_keyed_by_it() {
        for table in ["fact", "node", "trusted"] {
            let mut files = RepoFiles::new();
            files.insert("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n");
            files.insert("roles/web.toml", format!(
                "[match]\nrole = \"*\"\n[[exec]]\nfor_each = \"{table}\"\nname = \"show-{{{{item.key}}}}\"\ncommand = \"echo {{{{json item.value}}}}\"\n"
            ).as_str());
            let repository = Arc::new(Repository::parse(files).expect("valid"));
            node_b_gets_its_own_catalog(repository, table).await;
        }
    }

    #[tokio::test]
    async fn trusted_values_a_template_reads_are_in_the_key() {
        node_b_gets_its_own_catalog(
            repository_with_template("{{trusted.instance_id}}\n"),
            "trusted.instance_id",
        )
        .await;
        node_b_gets_its_own_catalog(repository_with_template("{{trusted.id}}\n"), "trusted.id")
            .await;
    }

    #[tokio::test]
    async fn a_data_layer_chosen_by_a_trusted_value_is_in_the_key() {
        let mut files = RepoFiles::new();
        files.insert(
            "cms.toml",
            "[hierarchy]\nlayers = [\"node/{{trusted.instance_id}}\", \"common\"]\n",
        );
        files.insert("data/common.toml", "secret = \"none\"\n");
        files.insert("data/node/i-0aaaaaaaaaaaaaaaa.toml", "secret = \"for-a\"\n");
        files.insert("templates/t.hbs", "{{data.secret}}\n");
        files.insert(
            "roles/web.toml",
            "[match]\nrole = \"*\"\n[[file]]\npath = \"/etc/t\"\ntemplate = \"t.hbs\"\n",
        );
        let repository = Arc::new(Repository::parse(files).expect("valid"));
        node_b_gets_its_own_catalog(repository, "data layer").await;
    }

    #[tokio::test]
    async fn plain_data_and_tag_reads_still_share_one_compile_between_instances() {
        let mut files = RepoFiles::new();
        files.insert(
            "cms.toml",
            "[hierarchy]\nlayers = [\"node/{{trusted.instance_id}}\", \"role/{{tag.role}}\", \"common\"]\n",
        );
        files.insert("data/common.toml", "apps = [\"a\", \"b\"]\n");
        files.insert("data/node/i-0other.toml", "apps = [\"other\"]\n");
        files.insert(
            "templates/t.hbs",
            "{{#each data.apps}}{{this}} of {{../tag.role}} {{@index}}\n{{/each}}{{#with data}}{{json apps}}{{/with}}\n",
        );
        files.insert(
            "roles/web.toml",
            "[match]\nrole = \"*\"\n[[file]]\npath = \"/etc/t\"\ntemplate = \"t.hbs\"\n",
        );
        let repository = Arc::new(Repository::parse(files).expect("valid"));
        let (a, b) = twin_nodes();
        assert_eq!(compiles_for(repository, vec![a, b]).await, 1);
    }

    #[tokio::test]
    async fn the_cache_keeps_at_most_its_capacity() {
        let catalogs = Catalogs::new(2, 1);
        let repository = repository_with_template("{{node.id}}\n");
        for id in ["a", "b", "c", "d"] {
            catalogs
                .get("rev1", repository.clone(), web_node(id))
                .await
                .expect("compiles");
        }
        assert_eq!(catalogs.stats().cached, 2);
        // A memory budget bounds it too: these catalogs count about 1 KB each.
        let one = estimated_size(
            &catalogs
                .get("rev1", repository.clone(), web_node("d"))
                .await,
        );
        let small = Catalogs::new(100, 1).with_max_bytes(one * 5 / 2);
        for id in ["a", "b", "c", "d"] {
            small
                .get("rev1", repository.clone(), web_node(id))
                .await
                .expect("compiles");
        }
        assert_eq!(small.stats().cached, 2);
    }

    #[tokio::test]
    async fn compile_errors_are_cached_and_returned_to_every_caller() {
        let mut files = RepoFiles::new();
        files.insert("cms.toml", "[hierarchy]\nlayers = [\"common\"]\n");
        files.insert("templates/t.hbs", "{{data.missing}}\n");
        files.insert(
            "roles/web.toml",
            "[[file]]\npath = \"/etc/t\"\ntemplate = \"t.hbs\"\n",
        );
        let repository = Arc::new(Repository::parse(files).expect("parses"));
        let catalogs = Catalogs::new(10, 1);
        let first = catalogs
            .get("rev1", repository.clone(), web_node("a"))
            .await
            .expect_err("fails");
        let second = catalogs
            .get("rev1", repository, web_node("a"))
            .await
            .expect_err("fails");
        assert!(first.to_string().contains("templates/t.hbs"));
        assert_eq!(first, second);
        assert_eq!(catalogs.stats().compiles, 1);
    }
}
