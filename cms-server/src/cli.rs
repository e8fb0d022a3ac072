//! The command line of `cms-server` as the user wrote it: clap's flags and
//! environment variables, with no defaults that depend on the machine.
//! `resolve` turns a `Command` into what it runs with; this module imports
//! nothing else of the crate.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// Exit code when the repository is invalid.
pub const EXIT_INVALID: u8 = 1;
/// Exit code when the command itself could not run (unreadable input).
pub const EXIT_ERROR: u8 = 3;

#[derive(Debug, Parser)]
#[command(
    name = "cms-server",
    version,
    about = "The cms server and its admin commands",
    after_help = "Examples:\n  cms-server serve --repo https://git.internal/ops/roles.git\n  cms-server token create --tags 'env=prod,role=*'\n  cms-server nodes --select role=api --format json\n  cms-server reports web-1\n  cms-server check --repo roles-repo\n  cms-server explain --repo roles-repo --tags role=api,env=prod\n  cms-server rollout status --env staging --follow\n  cms-server completions bash > /etc/bash_completion.d/cms-server\n\nThe admin commands find the server's admin credential in --data, by default the\ncurrent user's state directory, else /var/lib/cms-server (the package's)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The default gRPC address.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7470";
/// The default HTTP address (webhook, health).
pub const DEFAULT_HTTP: &str = "0.0.0.0:7471";
/// Where admin commands find the server by default.
pub const DEFAULT_SERVER: &str = "127.0.0.1:7470";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve roles to enrolled agents: sync the roles repository, enroll
    /// nodes, compile and serve their catalogs over mTLS, store reports.
    #[command(
        after_help = "Examples:\n  cms-server serve\n  cms-server serve --data /var/lib/cms-server --repo https://git.internal/ops/roles.git --branch main\n  cms-server serve --repo ./roles --listen 0.0.0.0:7470 --http 0.0.0.0:7471"
    )]
    Serve(Box<ServeArgs>),
    /// Enrollment tokens.
    #[command(
        subcommand,
        after_help = "Examples:\n  cms-server token create --tags 'env=staging,role=web'\n  cms-server token create --tags 'env=prod,role=api' --ttl 2h --uses 3"
    )]
    Token(TokenCommand),
    /// List nodes, with their tags, last run and status.
    #[command(
        after_help = "Examples:\n  cms-server nodes\n  cms-server nodes --select 'role=api,env=prod'\n  cms-server nodes --format json | jq -r '.[] | select(.failed > 0) | .id'"
    )]
    Nodes(NodesArgs),
    /// Show a node's last runs, with their changes and failures.
    #[command(
        after_help = "Examples:\n  cms-server reports web-1\n  cms-server reports web-1 --limit 20 --format json"
    )]
    Reports(ReportsArgs),
    /// Manage one node.
    #[command(subcommand, after_help = "Examples:\n  cms-server node revoke web-7")]
    Node(NodeCommand),
    /// Operators: one admin credential each, revocable on its own.
    #[command(
        subcommand,
        after_help = "Examples:\n  cms-server admin add alice\n  cms-server admin list\n  cms-server admin renew alice\n  cms-server admin revoke alice"
    )]
    Admin(AdminCommand),
    /// Show the audit log of admin calls (who, what, on what, when, and the
    /// outcome), newest last.
    #[command(
        after_help = "Examples:\n  cms-server audit\n  cms-server audit --limit 200 --format json | jq -r '.[] | select(.outcome != \"ok\")'"
    )]
    Audit(AuditArgs),
    /// Sync the roles repository now.
    #[command(
        after_help = "Examples:\n  cms-server sync\n  cms-server sync --format json | jq .errors\n\nExit status: 0 the commit was accepted and is served, 1 it was refused (its errors on stderr; the last good revision stays), 3 the server cannot be reached."
    )]
    Sync(AdminArgs),
    /// Make a login token for the fleet dashboard, printed once; or list
    /// the tokens, or revoke one. Asks the running server, as an operator:
    /// the tokens are in its store, so every replica of a shared store
    /// honours them.
    #[command(
        after_help = "Examples:\n  cms-server dashboard-token --data /var/lib/cms-server\n  cms-server dashboard-token --list\n  cms-server dashboard-token --list --format json | jq -r '.[] | select(.revoked_unix_ms == null) | .id'\n  cms-server dashboard-token --revoke 3f2a9c1e8b4d\n\nThe server keeps only each token's sha256, with when it was made and by which\noperator; the token is shown once. A revoked token signs in nowhere from then on;\nsessions it opened last until logout or their 12 hours end. The dashboard is at\nhttps://SERVER:7471/dashboard when the server runs with --http-tls."
    )]
    DashboardToken(DashboardTokenArgs),
    /// Converge a selection of the fleet now: the canary first, then batch
    /// after batch, stopping when failures pass the limit; or show a
    /// trigger's progress with --status.
    #[command(
        after_help = "Examples:\n  cms-server trigger --select role=web --canary 1 --batch 50%\n  cms-server trigger --select role=api,env=prod --batch 25% --max-failures 2\n  cms-server trigger --select role=api --noop\n  cms-server trigger --status t1764108000000\n\nExit status: 0 every node converged (changed or unchanged), 4 a node failed or was unreachable, or the rollout stopped, 3 the trigger could not start (no node matches, the server cannot be reached)."
    )]
    Trigger(TriggerArgs),
    /// Show which nodes' catalogs change between two revisions of the roles
    /// repository, and how, resource by resource (sensitive resources show
    /// only which fields changed).
    #[command(
        after_help = "Examples:\n  cms-server diff --from 3f2a9c1\n  cms-server diff --from 3f2a9c1 --to 8be04d2 --select role=web\n  cms-server diff --env staging --from 3f2a9c1\n  cms-server diff --from 3f2a9c1 --format json | jq '.nodes[] | select(.status == \"failed\")'\n\nExit status: 0 the diff ran (whether or not anything changes), 1 a revision, flag or environment is invalid, 3 the diff could not run (the server cannot be reached, no revision is served)."
    )]
    Diff(DiffArgs),
    /// Rollouts of each environment's commits through its nodes, wave
    /// after wave: list them, follow one, pause, resume, abort (roll back)
    /// or promote (finish at once).
    #[command(
        subcommand,
        after_help = "Examples:\n  cms-server rollout list\n  cms-server rollout status --env staging --follow\n  cms-server rollout pause --env production\n  cms-server rollout promote --env staging"
    )]
    Rollout(RolloutCommand),
    /// Hold the nodes a selector matches on a revision: rollouts pass them
    /// by until `cms-server unpin`.
    #[command(
        after_help = "Examples:\n  cms-server pin --select role=api\n  cms-server pin --select role=api --revision 3f2a9c1 --env staging\n\nExit status: 0 pinned, 1 the request is invalid (unknown environment or revision, bad selector), 3 the server cannot be reached."
    )]
    Pin(PinArgs),
    /// Release the nodes of a pin (the same selector as pinned): they
    /// follow their environment again.
    #[command(
        after_help = "Examples:\n  cms-server unpin --select role=api\n  cms-server unpin --select role=api --env staging\n\nExit status: 0 released, 1 the request is invalid (unknown environment, no such pin), 3 the server cannot be reached."
    )]
    Unpin(UnpinArgs),
    /// List the environments: branch, stable revision, active rollout,
    /// waiting commit, nodes and pins.
    #[command(
        after_help = "Examples:\n  cms-server environments\n  cms-server environments --format json | jq -r '.[] | select(.active_rollout_id != \"\") | .name'"
    )]
    Environments(AdminArgs),
    /// Check a roles repository: validate every role, or print the catalog
    /// that a node with the given tags would get.
    #[command(
        after_help = "Examples:\n  cms-server check --repo roles-repo\n  cms-server check --repo roles-repo --tags role=api,env=prod\n  cms-server check --repo roles-repo --tags role=web --facts facts.json --format json\n\nExit status: 0 valid, 1 invalid (errors on stderr), 3 the check could not run."
    )]
    Check(CheckArgs),
    /// Explain why a node gets its roles and data: each role's `[match]`
    /// entries against the node's tags, the data layers with the files
    /// found, and every data value its roles read with the file:line it
    /// comes from. For a repository folder (--repo, --tags), or for a live
    /// node (NODE) with the revision the server serves it.
    #[command(
        after_help = "Examples:\n  cms-server explain --repo roles-repo --tags role=api,env=prod\n  cms-server explain --repo roles-repo --tags role=web --facts facts.json --format json\n  cms-server explain web-1\n\nExit status: 0 the node gets at least one role, 1 it gets none (or the repository is invalid), 3 the explanation could not be made (unreadable input, the server cannot be reached)."
    )]
    Explain(ExplainArgs),
    /// Secrets: the server's public key, and encrypting values into a
    /// roles repository's `secrets/` files.
    #[command(
        subcommand,
        after_help = "Examples:\n  cms-server secrets recipient --data /var/lib/cms-server\n  printf %s \"$DB_PASSWORD\" | cms-server secrets encrypt --repo roles --layer env/prod db_password"
    )]
    Secrets(SecretsCommand),
    /// The server's store: move an installation between sled and
    /// PostgreSQL, or make a store key.
    #[command(
        subcommand,
        after_help = "Examples:\n  (umask 077; cms-server store keygen > /etc/cms-server/store.key)\n  cms-server store migrate --from sled:/var/lib/cms-server --to postgres://cms@db.internal/cms --store-key-file /etc/cms-server/store.key"
    )]
    Store(StoreCommand),
    /// Print a shell completion script.
    #[command(
        after_help = "Examples:\n  cms-server completions bash > /etc/bash_completion.d/cms-server\n  cms-server completions zsh > \"${fpath[1]}/_cms-server\"\n  cms-server completions fish > ~/.config/fish/completions/cms-server.fish\n\nThe Debian package installs all three."
    )]
    Completions(CompletionsArgs),
}

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// The data directory (database, CA, admin credential, git mirror)
    /// [default: the current user's state directory, cms-server/].
    #[arg(long, value_name = "DIR", env = "CMS_SERVER_DATA")]
    pub data: Option<PathBuf>,
    /// The store: postgres://USER:PASSWORD@HOST:PORT/DATABASE, shared by
    /// every replica, or sled:DIR [default: sled in the data directory].
    #[arg(long, value_name = "URL", env = "CMS_STORE")]
    pub store: Option<String>,
    /// The file holding the store key (base64 of 32 bytes, made by
    /// `cms-server store keygen`), which encrypts the CA's private key in a
    /// PostgreSQL store; the same file on every replica.
    #[arg(long, value_name = "FILE", env = "CMS_STORE_KEY_FILE")]
    pub store_key_file: Option<PathBuf>,
    /// How many connections to PostgreSQL this server keeps at most.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 16,
        env = "CMS_STORE_POOL_SIZE"
    )]
    pub store_pool_size: usize,
    /// The roles repository: a git URL (https, ssh, file) or a local path
    /// [default: the example roles repository].
    #[arg(long, value_name = "URL_OR_PATH", env = "CMS_SERVER_REPO")]
    pub repo: Option<String>,
    /// The branch followed when no --environment is given (one
    /// environment, `production`).
    #[arg(long, default_value = "main", env = "CMS_SERVER_BRANCH")]
    pub branch: String,
    /// An environment and the branch it follows, NAME=BRANCH (repeat for
    /// each, e.g. --environment prod=main --environment staging=staging).
    /// Each branch is validated and rolled out on its own.
    #[arg(
        long = "environment",
        value_name = "NAME=BRANCH",
        env = "CMS_SERVER_ENVIRONMENTS",
        value_delimiter = ','
    )]
    pub environments: Vec<String>,
    /// The environment of nodes whose environment tag names none
    /// [default: the first --environment].
    #[arg(long, value_name = "NAME", env = "CMS_SERVER_DEFAULT_ENVIRONMENT")]
    pub default_environment: Option<String>,
    /// The trusted tag whose value names a node's environment, bound when
    /// it enrolls.
    #[arg(
        long,
        value_name = "TAG",
        default_value = "env",
        env = "CMS_SERVER_ENVIRONMENT_TAG"
    )]
    pub environment_tag: String,
    /// The gRPC address agents and admin commands use.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN, env = "CMS_SERVER_LISTEN")]
    pub listen: std::net::SocketAddr,
    /// The HTTP address (git webhook at POST /hooks/git, GET /healthz).
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_HTTP, env = "CMS_SERVER_HTTP")]
    pub http: std::net::SocketAddr,
    /// How often to sync the roles repository.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "60s",
        env = "CMS_SERVER_SYNC_INTERVAL"
    )]
    pub sync_interval: String,
    /// The git webhook's shared secret (GitHub secret or GitLab token).
    #[arg(
        long,
        value_name = "SECRET",
        env = "CMS_SERVER_WEBHOOK_SECRET",
        hide_env_values = true
    )]
    pub webhook_secret: Option<String>,
    /// How long run reports are kept.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "30d",
        env = "CMS_SERVER_REPORT_RETENTION"
    )]
    pub report_retention: String,
    /// A DNS name agents use to reach this server (repeatable; in the
    /// environment, comma-separated); `localhost` and the listen address are
    /// always included.
    #[arg(
        long = "server-name",
        value_name = "NAME",
        env = "CMS_SERVER_NAMES",
        value_delimiter = ','
    )]
    pub server_names: Vec<String>,
    /// Serve the HTTP port over TLS with the server's certificate (from its
    /// CA). The fleet dashboard is served only then.
    #[arg(long, env = "CMS_SERVER_HTTP_TLS")]
    pub http_tls: bool,
    /// A file holding a bearer token that `GET /metrics` then requires
    /// [default: /metrics is open, as Prometheus scrapes usually are].
    #[arg(long, value_name = "FILE", env = "CMS_SERVER_METRICS_TOKEN_FILE")]
    pub metrics_token_file: Option<PathBuf>,
    /// A TOML file of enrollment settings: its `[aws]` table turns on
    /// attested enrollment of EC2 instances (allowed accounts, the AWS
    /// certificate of each region, optional autoscaling groups) [default:
    /// tokens only].
    #[arg(long, value_name = "FILE", env = "CMS_SERVER_ENROLLMENT_CONFIG")]
    pub enrollment_config: Option<PathBuf>,
    /// Logs as text lines (for journald or a terminal) or JSON objects.
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = cms_logging::LogFormat::Text, env = "CMS_LOG_FORMAT")]
    pub log_format: cms_logging::LogFormat,
    /// How long a node certificate is valid; agents renew theirs when two
    /// thirds of it have passed.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "24h",
        env = "CMS_SERVER_CERTIFICATE_LIFETIME"
    )]
    pub certificate_lifetime: String,
    /// A node not seen for this long is marked gone and its name is free
    /// for a new instance.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "2h",
        env = "CMS_SERVER_GONE_AFTER"
    )]
    pub gone_after: String,
    /// A gone node is removed, and its certificates refused, this long
    /// after it was marked gone.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "24h",
        env = "CMS_SERVER_REMOVE_AFTER"
    )]
    pub remove_after: String,
    /// gRPC connections with a client certificate open (or in their
    /// handshake) at once; more wait their turn.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 256,
        env = "CMS_SERVER_MAX_CONNECTIONS"
    )]
    pub max_connections: usize,
    /// TLS handshakes in progress at once; more wait their turn.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 64,
        env = "CMS_SERVER_MAX_HANDSHAKES"
    )]
    pub max_handshakes: usize,
    /// Connections without a client certificate (enrollments) open at
    /// once, apart from the others.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 32,
        env = "CMS_SERVER_MAX_UNAUTHENTICATED"
    )]
    pub max_unauthenticated: usize,
    /// Connections from one address (IPv6: one /64) not yet through their
    /// handshake; more are closed at once. Raise it when many agents share
    /// one address (NAT).
    #[arg(
        long,
        value_name = "N",
        default_value_t = 16,
        env = "CMS_SERVER_PER_SOURCE_PENDING"
    )]
    pub per_source_pending: usize,
    /// Connections without a client certificate from one address; more
    /// are closed after their handshake.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 4,
        env = "CMS_SERVER_PER_SOURCE_UNAUTHENTICATED"
    )]
    pub per_source_unauthenticated: usize,
    /// How long a client may take to send its TLS ClientHello.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "10s",
        env = "CMS_SERVER_CLIENT_HELLO_TIMEOUT"
    )]
    pub client_hello_timeout: String,
    /// How long a TLS handshake may take once started.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "10s",
        env = "CMS_SERVER_HANDSHAKE_TIMEOUT"
    )]
    pub handshake_timeout: String,
    /// How long a connection may wait for its turn (a connection, a
    /// handshake); then it is closed and the client tries again.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "2m",
        env = "CMS_SERVER_PLACE_WAIT"
    )]
    pub place_wait: String,
    /// How long a connection without a client certificate may take to send
    /// its first request.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "5s",
        env = "CMS_SERVER_UNAUTHENTICATED_FIRST_REQUEST"
    )]
    pub unauthenticated_first_request: String,
    /// How long a connection without a client certificate stays open.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "30s",
        env = "CMS_SERVER_UNAUTHENTICATED_LIFETIME"
    )]
    pub unauthenticated_lifetime: String,
    /// When a connection is closed gracefully (calls in progress finish);
    /// the client reconnects if it has more to say.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "5m",
        env = "CMS_SERVER_CONNECTION_AGE"
    )]
    pub connection_age: String,
    /// How long after --connection-age a node's connection is closed,
    /// whatever is in progress (the admin credential's are not).
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "5m",
        env = "CMS_SERVER_CONNECTION_AGE_GRACE"
    )]
    pub connection_age_grace: String,
    /// Reports one node may send at once; beyond, they are refused and
    /// stay queued on the agent.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 60,
        env = "CMS_SERVER_REPORT_BURST"
    )]
    pub report_burst: u32,
    /// Reports an hour one node may send once its burst is spent.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 120,
        env = "CMS_SERVER_REPORT_RATE"
    )]
    pub report_rate: u32,
    /// The AWS region of SSM and Secrets Manager, for `from = "ssm:…"` and
    /// `secretsmanager:…` secrets [default: AWS_REGION].
    #[arg(long, value_name = "REGION", env = "CMS_SERVER_AWS_REGION")]
    pub aws_region: Option<String>,
    /// The SSM endpoint (a VPC endpoint, a test double) [default:
    /// https://ssm.REGION.amazonaws.com].
    #[arg(long, value_name = "URL", env = "CMS_SERVER_SSM_ENDPOINT")]
    pub ssm_endpoint: Option<String>,
    /// The Secrets Manager endpoint [default:
    /// https://secretsmanager.REGION.amazonaws.com].
    #[arg(long, value_name = "URL", env = "CMS_SERVER_SECRETSMANAGER_ENDPOINT")]
    pub secretsmanager_endpoint: Option<String>,
    /// AWS secret values older than this are fetched again; a changed
    /// value reaches the agents on their next pull.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "5m",
        env = "CMS_SERVER_SECRETS_REFRESH"
    )]
    pub secrets_refresh: String,
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Copy every record of a stopped server's store into a new, empty
    /// one (sled to PostgreSQL or back), then compare the counts of each
    /// kind of record; exits 1 when they differ.
    #[command(
        after_help = "Examples:\n  cms-server store migrate --from sled:/var/lib/cms-server --to postgres://cms@db.internal/cms --store-key-file /etc/cms-server/store.key\n  cms-server store migrate --from postgres://cms@db.internal/cms --to sled:/var/lib/cms-server --store-key-file /etc/cms-server/store.key\n\nsled:DIR is a server's data directory (the store is DIR/db). Stop the server first."
    )]
    Migrate(StoreMigrateArgs),
    /// Print a new random store key (base64 of 32 bytes) for
    /// --store-key-file.
    #[command(
        after_help = "Examples:\n  (umask 077; cms-server store keygen > /etc/cms-server/store.key)"
    )]
    Keygen,
}

#[derive(Debug, clap::Args)]
pub struct StoreMigrateArgs {
    /// The store to copy: sled:DIR or postgres://...
    #[arg(long, value_name = "STORE")]
    pub from: String,
    /// The new, empty store: sled:DIR or postgres://...
    #[arg(long, value_name = "STORE")]
    pub to: String,
    /// The store key of the PostgreSQL side.
    #[arg(long, value_name = "FILE", env = "CMS_STORE_KEY_FILE")]
    pub store_key_file: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum SecretsCommand {
    /// Print the server's public key (age1…), for `[secrets] recipients`
    /// of cms.toml. The key is made on the server's first start.
    #[command(after_help = "Examples:\n  cms-server secrets recipient --data /var/lib/cms-server")]
    Recipient(SecretsRecipientArgs),
    /// Encrypt a value, read from standard input, to the recipients of
    /// cms.toml, as one secret of a layer's secrets file. Needs no private
    /// key.
    #[command(
        after_help = "Examples:\n  printf %s \"$DB_PASSWORD\" | cms-server secrets encrypt --repo roles --layer env/prod db_password\n  cms-server secrets encrypt --repo roles --layer common tls_key < server.key\n  cms-server secrets encrypt --repo roles --layer common api_token --scope env=prod,role=api < token.txt"
    )]
    Encrypt(SecretsEncryptArgs),
    /// Decrypt every secret of a repository with the server's key (or a
    /// break-glass key) and encrypt it again to the recipients of cms.toml,
    /// after a recipient was added or removed. Writes nothing unless every
    /// secret decrypts.
    #[command(
        after_help = "Examples:\n  cms-server secrets reencrypt --repo roles --data /var/lib/cms-server\n  cms-server secrets reencrypt --repo roles --identity break-glass.txt"
    )]
    Reencrypt(SecretsReencryptArgs),
    /// Make a new age identity in a new owner-only file (the team's
    /// break-glass key, kept offline); prints its public key.
    #[command(after_help = "Examples:\n  cms-server secrets new-identity --out break-glass.txt")]
    NewIdentity(SecretsNewIdentityArgs),
}

#[derive(Debug, clap::Args)]
pub struct SecretsRecipientArgs {
    /// The server's data directory [default: as the admin commands'].
    #[arg(long, value_name = "DIR", env = "CMS_SERVER_DATA")]
    pub data: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct SecretsEncryptArgs {
    /// The roles repository's folder (a checkout).
    #[arg(long, value_name = "DIR")]
    pub repo: PathBuf,
    /// The layer of the hierarchy: `common`, `env/prod`, … (the file is
    /// secrets/LAYER.toml).
    #[arg(long, value_name = "LAYER")]
    pub layer: String,
    /// Who may receive the secret: tag names or trusted.KEY, with globs,
    /// all must hold [default: the secret's scope stays as it is].
    #[arg(long, value_name = "NAME=GLOB,...")]
    pub scope: Option<String>,
    /// Accept an empty value.
    #[arg(long)]
    pub allow_empty: bool,
    /// The secret's key: letters, digits, `_`, `-`.
    pub key: String,
}

#[derive(Debug, clap::Args)]
pub struct SecretsReencryptArgs {
    /// The roles repository's folder (a checkout).
    #[arg(long, value_name = "DIR")]
    pub repo: PathBuf,
    /// An identity file to decrypt with (a break-glass key) instead of the
    /// server's.
    #[arg(long, value_name = "FILE", conflicts_with = "data")]
    pub identity: Option<PathBuf>,
    /// The server's data directory, whose identity decrypts [default: as
    /// the admin commands'].
    #[arg(long, value_name = "DIR", env = "CMS_SERVER_DATA")]
    pub data: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct SecretsNewIdentityArgs {
    /// The new identity file (refused if it exists).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct DashboardTokenArgs {
    /// List the tokens instead of making one: id (the first 12 hex digits
    /// of its sha256), when it was made (UTC), by which operator, and its
    /// revocation.
    #[arg(long, conflicts_with = "revoke")]
    pub list: bool,
    /// Revoke the token with this id (as --list shows it, or more hex
    /// digits of its sha256) instead of making one.
    #[arg(long, value_name = "ID")]
    pub revoke: Option<String>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, clap::Args)]
pub struct TriggerArgs {
    /// The nodes to converge: tags as name=value or glob, all must hold.
    #[arg(long, value_name = "K=V,...", required_unless_present = "status")]
    pub select: Option<String>,
    /// How many nodes converge at once after the canary: a count or a
    /// percentage of the selected nodes [default: all at once].
    #[arg(long, value_name = "N|P%")]
    pub batch: Option<String>,
    /// How many nodes converge first, alone; any failure among them stops
    /// the rollout.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub canary: u32,
    /// Ask the nodes what would change, change nothing.
    #[arg(long)]
    pub noop: bool,
    /// How many nodes may fail (or be unreachable) before the rollout stops.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_failures: u32,
    /// How long to wait for one node's report.
    #[arg(long, value_name = "DURATION", default_value = "10m")]
    pub timeout: String,
    /// Show the progress or result of a trigger instead of starting one.
    #[arg(long, value_name = "ID", conflicts_with_all = ["select", "batch", "canary", "noop", "max_failures"])]
    pub status: Option<String>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, clap::Args)]
pub struct DiffArgs {
    /// The revision to compare from: a commit id or an unambiguous prefix
    /// of the roles repository the server follows.
    #[arg(long, value_name = "REV")]
    pub from: String,
    /// The revision to compare to [default: the revision being served].
    #[arg(long, value_name = "REV")]
    pub to: Option<String>,
    /// Only the nodes whose tags match: name=value or glob, all must hold.
    #[arg(long, value_name = "K=V,...")]
    pub select: Option<String>,
    /// The environment whose nodes and branch are compared [default: the
    /// server's default environment].
    #[arg(long = "env", value_name = "ENV")]
    pub environment: Option<String>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, Subcommand)]
pub enum RolloutCommand {
    /// List rollouts, newest first: environment, state, wave, revisions,
    /// start.
    #[command(
        after_help = "Examples:\n  cms-server rollout list\n  cms-server rollout list --env staging --format json\n\nExit status: 0 listed, 1 unknown environment, 3 the server cannot be reached."
    )]
    List(RolloutListArgs),
    /// Show a rollout: its revisions, state and policy, a progress bar per
    /// wave, failures, rollback, pinned nodes, operator actions and the
    /// diff it rolls out.
    #[command(
        after_help = "Examples:\n  cms-server rollout status\n  cms-server rollout status --env staging r1764108000000 --format json\n  cms-server rollout status --follow\n\nExit status: 0 the rollout is running, baking, paused, done or promoted; 4 it was rolled back or aborted; 1 unknown environment or rollout; 3 the server cannot be reached."
    )]
    Status(RolloutStatusArgs),
    /// Pause a rollout: no new wave starts; a wave in flight finishes.
    #[command(
        after_help = "Examples:\n  cms-server rollout pause\n  cms-server rollout pause --env staging r1764108000000\n\nExit status: 0 done, 1 unknown environment or rollout or the action is not allowed in its state, 3 the server cannot be reached."
    )]
    Pause(RolloutControlArgs),
    /// Resume a paused rollout with its next wave.
    #[command(
        after_help = "Examples:\n  cms-server rollout resume --env staging\n\nExit status: 0 done, 1 unknown environment or rollout or the action is not allowed in its state, 3 the server cannot be reached."
    )]
    Resume(RolloutControlArgs),
    /// Abort a rollout: halt it and move the nodes it moved back to the
    /// previous revision.
    #[command(
        after_help = "Examples:\n  cms-server rollout abort --env production\n\nExit status: 0 done, 1 unknown environment or rollout or the action is not allowed in its state, 3 the server cannot be reached."
    )]
    Abort(RolloutControlArgs),
    /// Promote a rollout: skip the bake and the remaining waves, every
    /// remaining node moves at once.
    #[command(
        after_help = "Examples:\n  cms-server rollout promote --env staging\n\nExit status: 0 done, 1 unknown environment or rollout or the action is not allowed in its state, 3 the server cannot be reached."
    )]
    Promote(RolloutControlArgs),
}

#[derive(Debug, clap::Args)]
pub struct RolloutListArgs {
    /// Only this environment's rollouts [default: every environment's].
    #[arg(long = "env", value_name = "ENV")]
    pub environment: Option<String>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, clap::Args)]
pub struct RolloutStatusArgs {
    /// The environment [default: the server's default environment].
    #[arg(long = "env", value_name = "ENV")]
    pub environment: Option<String>,
    /// The rollout [default: the environment's active rollout, else its
    /// latest].
    #[arg(value_name = "ROLLOUT_ID")]
    pub rollout_id: Option<String>,
    /// Ask again every second and show the progress until the rollout is
    /// done, promoted, rolled back or aborted (a paused one is followed).
    #[arg(long)]
    pub follow: bool,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, clap::Args)]
pub struct RolloutControlArgs {
    /// The environment [default: the server's default environment].
    #[arg(long = "env", value_name = "ENV")]
    pub environment: Option<String>,
    /// The rollout [default: the environment's active rollout].
    #[arg(value_name = "ROLLOUT_ID")]
    pub rollout_id: Option<String>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, clap::Args)]
pub struct PinArgs {
    /// The nodes to hold: tags as name=value or glob, all must hold.
    /// Nodes that enroll later and match are held too.
    #[arg(long, value_name = "K=V,...")]
    pub select: String,
    /// The revision to hold them on: a commit id or an unambiguous prefix
    /// of the environment's branch [default: the environment's stable
    /// revision].
    #[arg(long, value_name = "REV")]
    pub revision: Option<String>,
    /// The environment [default: the server's default environment].
    #[arg(long = "env", value_name = "ENV")]
    pub environment: Option<String>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, clap::Args)]
pub struct UnpinArgs {
    /// The pin's selector, as it was pinned.
    #[arg(long, value_name = "K=V,...")]
    pub select: String,
    /// The environment [default: the server's default environment].
    #[arg(long = "env", value_name = "ENV")]
    pub environment: Option<String>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

/// Finding the running server and its admin credential.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArgs {
    /// The server's gRPC address [default: the address the server
    /// recorded in DATA/admin/server when it started, else 127.0.0.1:7470].
    #[arg(long, value_name = "ADDR", env = "CMS_SERVER")]
    pub server: Option<String>,
    /// The server's data directory, where its admin credential is
    /// [default: the current user's state directory, cms-server/, else
    /// /var/lib/cms-server when it holds an admin credential].
    #[arg(long, value_name = "DIR", env = "CMS_SERVER_DATA")]
    pub data: Option<PathBuf>,
    /// The folder of the operator's admin credential (ca.pem, admin.pem,
    /// admin.key), as `cms-server admin add` wrote it [default: the
    /// bootstrap operator's, DATA/admin].
    #[arg(long, value_name = "DIR", env = "CMS_ADMIN_CREDENTIAL")]
    pub credential: Option<PathBuf>,
    /// Output: a table for people, or JSON for programs.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Make an enrollment token; prints the token alone on stdout.
    #[command(
        after_help = "Examples:\n  cms-server token create --tags 'env=staging,role=web'\n  cms-server token create --tags 'env=staging,role=api' --ttl 2h --uses 3\n\nA token is single use and lives an hour unless told otherwise; it is a secret until\nit is used up. Hand each host its own, scoped to that host's tags."
    )]
    Create(TokenCreateArgs),
}

#[derive(Debug, clap::Args)]
pub struct TokenCreateArgs {
    /// The tags a node may enroll with: name=value or glob.
    #[arg(long, value_name = "K=V,...")]
    pub tags: String,
    /// How long the token can be used [default: 1h; at most 24h].
    #[arg(long, value_name = "DURATION")]
    pub ttl: Option<String>,
    /// How many enrollments it allows [default: 1]. There are no unlimited
    /// tokens.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub uses: Option<u32>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Add an operator: make its key and CSR here, have the server sign
    /// the certificate, and write the credential (0600) to --out.
    #[command(
        after_help = "Examples:\n  cms-server admin add alice\n  cms-server admin add alice --out /home/alice/.config/cms-admin --lifetime 30d\n  cms-server nodes --credential /home/alice/.config/cms-admin\n\nThe credential is valid 90 days unless --lifetime says otherwise (at most 365d);\n`cms-server admin renew NAME` replaces it before then."
    )]
    Add(OperatorCredentialArgs),
    /// Replace an operator's credential with a new key and certificate; the
    /// old certificate is refused from then on.
    #[command(
        after_help = "Examples:\n  cms-server admin renew admin\n  cms-server admin renew alice --credential /home/alice/.config/cms-admin"
    )]
    Renew(OperatorCredentialArgs),
    /// Revoke an operator: its credential is refused on its next call.
    #[command(after_help = "Examples:\n  cms-server admin revoke alice")]
    Revoke(OperatorNameArgs),
    /// List the operators: name, created, expires, revoked.
    #[command(
        after_help = "Examples:\n  cms-server admin list\n  cms-server admin list --format json | jq -r '.[] | select(.revoked_unix == 0) | .name'"
    )]
    List(AdminArgs),
}

#[derive(Debug, clap::Args)]
pub struct OperatorCredentialArgs {
    /// The operator's name: lowercase letters, digits, `-`, `_`, `.`.
    pub name: String,
    /// Where to write the credential (ca.pem, admin.pem, admin.key)
    /// [default: DATA/admin/operators/NAME; for renew, the credential in
    /// use when it is NAME's].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// How long the certificate is valid [default: 90d; at most 365d].
    #[arg(long, value_name = "DURATION")]
    pub lifetime: Option<String>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, clap::Args)]
pub struct OperatorNameArgs {
    pub name: String,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// How many of the last calls to show.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, clap::Args)]
pub struct NodesArgs {
    /// Only nodes whose tags match, e.g. `role=api,env=prod` (globs allowed).
    #[arg(long, value_name = "K=V,...")]
    pub select: Option<String>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, clap::Args)]
pub struct ReportsArgs {
    /// The node id.
    pub node: String,
    /// How many runs.
    #[arg(long, default_value_t = 5)]
    pub limit: u32,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Revoke a node's certificates; it is refused at once.
    #[command(
        after_help = "Examples:\n  cms-server node revoke web-7\n  cms-server node revoke i-0123456789abcdef0 --format json\n\nThe node's watch channel is closed at once and its next call refused; it can enroll again only with a new token."
    )]
    Revoke(NodeRevokeArgs),
}

#[derive(Debug, clap::Args)]
pub struct NodeRevokeArgs {
    pub id: String,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The roles repository folder (the one holding cms.toml).
    #[arg(long, value_name = "DIR")]
    pub repo: PathBuf,
    /// Compile for a node with these tags, e.g. `role=api,env=prod`.
    #[arg(long, value_name = "K=V,...")]
    pub tags: Option<String>,
    /// Facts of the node as a JSON object; example facts of a small Debian
    /// instance are used when not given.
    #[arg(long, value_name = "FILE.json")]
    pub facts: Option<PathBuf>,
    /// The node id to compile for (`trusted.id`, `node.id`); default: the
    /// attested instance id.
    #[arg(long, value_name = "ID")]
    pub node: Option<String>,
    /// Values the server attested for the node (`trusted.instance_id`, …)
    /// as a JSON object of strings; `{}` for a node enrolled with a token.
    /// Example values of an EC2 instance are used when not given.
    #[arg(long, value_name = "FILE.json")]
    pub attested: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
}

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// A live node's id: explain it with its stored tags, facts and
    /// attested values, against the revision the server serves it.
    #[arg(value_name = "NODE", required_unless_present = "repo", conflicts_with_all = ["repo", "tags", "facts", "attested", "node_id"])]
    pub node: Option<String>,
    /// The roles repository folder (the one holding cms.toml).
    #[arg(long, value_name = "DIR", requires = "tags")]
    pub repo: Option<PathBuf>,
    /// The node's tags, e.g. `role=api,env=prod`.
    #[arg(long, value_name = "K=V,...")]
    pub tags: Option<String>,
    /// Facts of the node as a JSON object, as `check` takes them; example
    /// facts of a small Debian instance are used when not given.
    #[arg(long, value_name = "FILE.json")]
    pub facts: Option<PathBuf>,
    /// The node id (`trusted.id`, `node.id`); default: the attested
    /// instance id.
    #[arg(long = "node", value_name = "ID")]
    pub node_id: Option<String>,
    /// Values the server attested for the node as a JSON object of
    /// strings, as `check` takes them; `{}` for a node enrolled with a
    /// token.
    #[arg(long, value_name = "FILE.json")]
    pub attested: Option<PathBuf>,
    #[command(flatten)]
    pub admin: AdminArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Parses a `--tags` or `--select` value: `name=value` pairs separated by
/// commas.
pub fn parse_tags(text: &str) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    cms_roles::parse_tag_list(text).map_err(anyhow::Error::msg)
}

/// The completion script for `shell`. clap_complete 4.6 names the bash
/// functions of subcommands after the binary with its `-` replaced twice
/// over (`cms__subcmd__server`, where the dispatcher uses `cms__server`), so
/// subcommand flags would not complete; the names are put back in line.
pub fn completion_script(shell: clap_complete::Shell) -> Vec<u8> {
    use clap::CommandFactory;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "cms-server", &mut script);
    if shell == clap_complete::Shell::Bash {
        let text = String::from_utf8_lossy(&script).replace("cms__subcmd__server", "cms__server");
        return text.into_bytes();
    }
    script
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_offer_the_rollout_pin_and_environment_commands() {
        for shell in [
            clap_complete::Shell::Bash,
            clap_complete::Shell::Zsh,
            clap_complete::Shell::Fish,
        ] {
            let script = String::from_utf8(completion_script(shell)).expect("UTF-8");
            for word in [
                "rollout",
                "promote",
                "follow",
                "pin",
                "unpin",
                "environments",
            ] {
                assert!(script.contains(word), "{shell:?} lacks {word}");
            }
        }
    }
}
