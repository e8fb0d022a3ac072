//! Compiled catalogs, cached and bounded.
//!
//! Many instances of one role share a catalog: same revision, same tags,
//! and the same facts where the templates read them. A boot storm of
//! hundreds of identical instances must cost one compile, not hundreds. So
//! catalogs are cached by (revision, node id, tags, facts) digest, a compile
//! already running for a key is joined rather than repeated (single
//! flight), and at most `max_concurrent_compiles` run at once; the others
//! queue on a semaphore instead of being refused.
//!
//! Compiling is CPU work that blocks, so it runs in `spawn_blocking`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use cms_roles::{Catalog, Diagnostics, Node, Repository, compile, sha256_hex};
use tokio::sync::{Semaphore, watch};

/// What a compile gives: the catalog, or the problems found.
pub type CompileResult = Result<Arc<Catalog>, Arc<Diagnostics>>;

/// The cache key of a node's catalog.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CatalogKey(String);

impl CatalogKey {
    /// A digest of everything a compile reads: the revision and the node.
    pub fn of(revision: &str, node: &Node) -> CatalogKey {
        let identity = serde_json::to_vec(&(revision, node)).expect("a node serializes");
        CatalogKey(sha256_hex(&identity))
    }
}

/// The catalog cache of one server.
#[derive(Debug)]
pub struct Catalogs {
    permits: Arc<Semaphore>,
    state: Mutex<State>,
    capacity: usize,
    /// Where each compile's duration goes (`metrics`).
    compile_duration: Option<prometheus_client::metrics::histogram::Histogram>,
}

#[derive(Debug, Default)]
struct State {
    done: HashMap<CatalogKey, CompileResult>,
    /// Insertion order, to evict the oldest when full.
    order: std::collections::VecDeque<CatalogKey>,
    /// Compiles in flight: later callers wait on the channel.
    running: HashMap<CatalogKey, watch::Receiver<Option<CompileResult>>>,
    compiles: u64,
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
        Catalogs {
            permits: Arc::new(Semaphore::new(max_concurrent_compiles.max(1))),
            state: Mutex::new(State::default()),
            capacity: capacity.max(1),
            compile_duration: None,
        }
    }

    /// Records the duration of every compile in `histogram`.
    pub fn observe_compiles(
        mut self,
        histogram: prometheus_client::metrics::histogram::Histogram,
    ) -> Catalogs {
        self.compile_duration = Some(histogram);
        self
    }

    pub fn stats(&self) -> CatalogStats {
        let state = self.state.lock().expect("catalog cache lock");
        CatalogStats {
            compiles: state.compiles,
            cached: state.done.len(),
        }
    }

    /// The catalog of `node` at `revision`, compiled at most once per key.
    pub async fn get(
        &self,
        revision: &str,
        repository: Arc<Repository>,
        node: Node,
    ) -> CompileResult {
        let key = CatalogKey::of(revision, &node);
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
            tokio::task::spawn_blocking(move || {
                let started = std::time::Instant::now();
                let result = compile(&repository, &node).map(Arc::new).map_err(Arc::new);
                if let Some(histogram) = compile_duration {
                    histogram.observe(started.elapsed().as_secs_f64());
                }
                result
            })
            .await
            .unwrap_or_else(|panic| {
                Err(Arc::new(Diagnostics(vec![cms_roles::Diagnostic::new(
                    "(server)",
                    cms_roles::Position::UNKNOWN,
                    format!("the compiler panicked: {panic}"),
                )])))
            })
        };
        {
            let mut state = self.state.lock().expect("catalog cache lock");
            state.compiles += 1;
            state.running.remove(&key);
            if state.done.len() >= self.capacity
                && let Some(oldest) = state.order.pop_front()
            {
                state.done.remove(&oldest);
            }
            state.done.insert(key.clone(), result.clone());
            state.order.push_back(key);
        }
        let _ = sender.send(Some(result.clone()));
        result
    }

    /// Forgets every catalog: a new revision makes them stale.
    pub fn clear(&self) {
        let mut state = self.state.lock().expect("catalog cache lock");
        state.done.clear();
        state.order.clear();
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cms_roles::RepoFiles;

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
    async fn a_new_revision_or_another_node_compiles_again() {
        let catalogs = Catalogs::new(100, 2);
        let repository = repository();
        catalogs
            .get("rev1", repository.clone(), web_node("a"))
            .await
            .expect("compiles");
        catalogs
            .get("rev2", repository.clone(), web_node("a"))
            .await
            .expect("compiles");
        catalogs
            .get("rev2", repository.clone(), web_node("b"))
            .await
            .expect("compiles");
        catalogs
            .get("rev2", repository, web_node("b"))
            .await
            .expect("compiles");
        assert_eq!(catalogs.stats().compiles, 3);
    }

    #[tokio::test]
    async fn the_cache_keeps_at_most_its_capacity() {
        let catalogs = Catalogs::new(2, 1);
        let repository = repository();
        for id in ["a", "b", "c", "d"] {
            catalogs
                .get("rev1", repository.clone(), web_node(id))
                .await
                .expect("compiles");
        }
        assert_eq!(catalogs.stats().cached, 2);
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
