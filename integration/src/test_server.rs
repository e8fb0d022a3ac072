//! `cms-server` running in this process, for tests and the demo: its own
//! tokio runtime on a thread, listening where it is told (loopback, or the
//! testbed bridge where instances reach the host), stopped on drop.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use cms_proto::v1 as pb;

/// The server, running in its own runtime on a thread, stopped on drop.
pub struct TestServer {
    pub address: String,
    /// The HTTP port's address, when the server was started with one.
    pub http_address: Option<String>,
    pub data: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
    pub runtime: tokio::runtime::Runtime,
}

/// The environment variable that runs the tests' servers on another
/// store: `postgres` puts each data directory's store in a database of its
/// own on the PostgreSQL the tests start (`PostgresServer::shared`), so the
/// server and fleet suites run against both stores (scripts/test runs them
/// again with it).
pub const TEST_STORE_VARIABLE: &str = "CMS_TEST_STORE";

/// The store `CMS_TEST_STORE` asks for, for the server of `data`: the same
/// database every time that data directory's server starts again.
fn store_from_environment(data: &Path) -> Result<Option<cms_server::store::StoreConfig>> {
    match std::env::var(TEST_STORE_VARIABLE).as_deref() {
        Err(_) | Ok("") | Ok("sled") => Ok(None),
        Ok("postgres") => {
            std::fs::create_dir_all(data)?;
            let url_file = data.join("test-store-url");
            let key_file = data.join("test-store.key");
            let url = match std::fs::read_to_string(&url_file) {
                Ok(url) => url,
                Err(_) => {
                    let url = crate::postgres::PostgresServer::shared()?.create_database()?;
                    std::fs::write(&key_file, cms_server::store::StoreKey::generate_text())?;
                    std::fs::write(&url_file, &url)?;
                    url
                }
            };
            Ok(Some(cms_server::store::StoreConfig {
                location: Some(cms_server::store::StoreLocation::Postgres(url)),
                key_file: Some(key_file),
                pool_size: Some(4),
            }))
        }
        Ok(other) => anyhow::bail!("{TEST_STORE_VARIABLE}={other}: expected sled or postgres"),
    }
}

impl TestServer {
    pub fn start(data: &Path, repo: &Path, port: u16) -> Result<TestServer> {
        TestServer::start_on(
            data,
            repo,
            std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        )
    }

    pub fn start_on(data: &Path, repo: &Path, address: std::net::SocketAddr) -> Result<TestServer> {
        TestServer::start_inner(data, repo, address, false, |_| {})
    }

    /// Starts with settings changed by `configure` (e.g. a certificate
    /// lifetime or gone-after time in seconds, for lifecycle tests).
    pub fn start_with(
        data: &Path,
        repo: &Path,
        address: std::net::SocketAddr,
        configure: impl FnOnce(&mut cms_server::server::ServeConfig),
    ) -> Result<TestServer> {
        TestServer::start_inner(data, repo, address, false, configure)
    }

    /// On loopback, with the HTTP port too (on port 0, like gRPC), and the
    /// configuration changed by `configure`.
    pub fn start_with_http(
        data: &Path,
        repo: &Path,
        configure: impl FnOnce(&mut cms_server::server::ServeConfig),
    ) -> Result<TestServer> {
        TestServer::start_inner(
            data,
            repo,
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
            true,
            configure,
        )
    }

    fn start_inner(
        data: &Path,
        repo: &Path,
        address: std::net::SocketAddr,
        http: bool,
        configure: impl FnOnce(&mut cms_server::server::ServeConfig),
    ) -> Result<TestServer> {
        let runtime = tokio::runtime::Runtime::new()?;
        let listener = runtime.block_on(tokio::net::TcpListener::bind(address))?;
        let address = listener.local_addr()?.to_string();
        let http_listener = if http {
            let mut http_address = address.parse::<std::net::SocketAddr>()?;
            http_address.set_port(0);
            Some(runtime.block_on(tokio::net::TcpListener::bind(http_address))?)
        } else {
            None
        };
        let http_address = match &http_listener {
            Some(listener) => Some(listener.local_addr()?.to_string()),
            None => None,
        };
        let mut config =
            cms_server::server::ServeConfig::new(data.to_path_buf(), repo.display().to_string());
        config.sync_interval = Duration::from_secs(3600);
        config.certificate_validity = Duration::from_secs(3600);
        if let Some(store) = store_from_environment(data)? {
            config.store = store;
        }
        configure(&mut config);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let handle = runtime.handle().clone();
        let thread = std::thread::spawn(move || {
            handle.block_on(cms_server::server::run(
                listener,
                http_listener,
                config,
                async move {
                    let _ = stopped.await;
                },
            ))
        });
        let server = TestServer {
            address,
            http_address,
            data: data.to_path_buf(),
            stop: Some(stop),
            thread: Some(thread),
            runtime,
        };
        server.wait_until_serving()?;
        Ok(server)
    }

    fn wait_until_serving(&self) -> Result<()> {
        let mut last_answer = String::new();
        crate::wait::wait_until_polling_every(
            Duration::from_millis(50),
            Duration::from_secs(30),
            "the server to serve",
            || {
                // Answering is enough: after a restart the branch may point
                // at a refused commit while the last good revision is served.
                match self.runtime.block_on(self.sync()) {
                    Ok(_) => Ok(Some(())),
                    Err(error) => {
                        last_answer = format!("{error:#}");
                        Ok(None)
                    }
                }
            },
        )
        .with_context(|| format!("the last answer: {last_answer}"))
    }

    pub async fn admin(&self) -> Result<pb::admin_client::AdminClient<tonic::transport::Channel>> {
        cms_server::admin::connect(&self.address, &self.data).await
    }

    /// One Admin call, made with the server's bootstrap admin credential
    /// and waited for: `server.call_admin(|mut admin| async move {
    /// admin.list_environments(pb::ListEnvironmentsRequest {}).await })`.
    /// A refusal is an error carrying the status's code and message.
    pub fn call_admin<T, Call, Answer>(&self, call: Call) -> Result<T>
    where
        Call: FnOnce(pb::admin_client::AdminClient<tonic::transport::Channel>) -> Answer,
        Answer: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        self.runtime.block_on(async {
            let admin = self.admin().await?;
            let answer = call(admin).await.map_err(|status| {
                anyhow::anyhow!(
                    "the server refused: {:?}: {}",
                    status.code(),
                    status.message()
                )
            })?;
            Ok(answer.into_inner())
        })
    }

    pub async fn sync(&self) -> Result<pb::SyncResponse> {
        Ok(self
            .admin()
            .await?
            .sync(pb::SyncRequest {})
            .await?
            .into_inner())
    }

    /// Triggers a run on the nodes whose tags hold `tags` and waits for its
    /// last progress (every node reported, or `timeout` is over).
    pub fn trigger(
        &self,
        tags: &[(&str, &str)],
        noop: bool,
        timeout: Duration,
    ) -> Result<pb::TriggerProgress> {
        self.runtime.block_on(async {
            let mut stream = self
                .admin()
                .await?
                .trigger(pb::TriggerRequest {
                    selector: Some(pb::Selector {
                        tags: tags
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                    }),
                    noop,
                    timeout_seconds: timeout.as_secs() as u32,
                    ..Default::default()
                })
                .await?
                .into_inner();
            let mut last = None;
            while let Some(progress) = stream.message().await? {
                last = Some(progress);
            }
            last.context("the trigger sent no progress")
        })
    }

    /// Waits until a noop trigger of `tags` reaches `count` nodes and each
    /// answers (a failed noop run answers too), none unreachable: agents open their watch channels after their first
    /// run, and only then can a trigger or a rollout reach them.
    pub fn wait_until_watch_channels_held(&self, tags: &[(&str, &str)], count: u32) -> Result<()> {
        let mut last = None;
        crate::wait_until_polling_every(
            Duration::from_millis(500),
            Duration::from_secs(60),
            &format!("a noop trigger to reach the {count} nodes"),
            || {
                let progress = self.trigger(tags, true, Duration::from_secs(60))?;
                // A node whose role fails still answered: it holds its
                // channel.
                let reached =
                    progress.total == count && progress.unreachable == 0 && progress.done == count;
                last = Some(progress);
                Ok(reached.then_some(()))
            },
        )
        .with_context(|| format!("the last trigger: {last:#?}"))
    }

    pub fn token(&self, scope: &[(&str, &str)]) -> Result<String> {
        self.runtime.block_on(async {
            let response = self
                .admin()
                .await?
                .create_token(pb::CreateTokenRequest {
                    scope: scope
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ttl_seconds: 600,
                    // Enough for every instance of a test: tokens are
                    // single use by default.
                    uses: 1_000,
                })
                .await?;
            Ok(response.into_inner().token)
        })
    }

    /// A new dashboard login token, made through the admin API as
    /// `cms-server dashboard-token` makes it.
    pub fn dashboard_token(&self) -> Result<String> {
        Ok(self
            .call_admin(|mut admin| async move {
                admin
                    .create_dashboard_token(pb::CreateDashboardTokenRequest {})
                    .await
            })?
            .token)
    }

    pub fn stop(mut self) -> Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("server thread panicked"))??;
        }
        Ok(())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
