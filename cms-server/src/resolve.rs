//! The one step from what the user wrote (`cli::Command`: flags and their
//! environment variables, as clap parsed them) to what each command runs
//! with. Every default that depends on the machine is decided here, once,
//! in one `match` over every command with no catch-all arm: a new command
//! does not compile until it says where its data directory comes from.
//!
//! The process environment is read once, into `Environment`, so tests
//! resolve command lines against folders of their own.

use std::path::{Path, PathBuf};

use crate::cli::{
    AdminArgs, AdminCommand, AuditArgs, CheckArgs, Command, CompletionsArgs, DiffArgs, ExplainArgs,
    Format, NodeCommand, NodeRevokeArgs, NodesArgs, OperatorCredentialArgs, OperatorNameArgs,
    PinArgs, ReportsArgs, RolloutCommand, RolloutControlArgs, RolloutListArgs, RolloutStatusArgs,
    SecretsCommand, SecretsEncryptArgs, SecretsNewIdentityArgs, ServeArgs, StoreCommand,
    StoreMigrateArgs, TokenCommand, TokenCreateArgs, TriggerArgs, UnpinArgs,
};

/// The packaged server's data directory.
pub const PACKAGED_DATA_DIR: &str = "/var/lib/cms-server";

/// What the defaults depend on, read from the process once.
#[derive(Debug, Clone)]
pub struct Environment {
    pub home: Option<PathBuf>,
    pub xdg_state_home: Option<PathBuf>,
    /// Where the packaged server keeps its data (`PACKAGED_DATA_DIR`).
    pub packaged_data_dir: PathBuf,
}

impl Environment {
    /// `HOME` and `XDG_STATE_HOME` of this process.
    pub fn of_process() -> Environment {
        Environment {
            home: std::env::var_os("HOME").map(PathBuf::from),
            xdg_state_home: std::env::var_os("XDG_STATE_HOME").map(PathBuf::from),
            packaged_data_dir: PathBuf::from(PACKAGED_DATA_DIR),
        }
    }

    /// The current user's data directory: `$XDG_STATE_HOME/cms-server`, or
    /// `~/.local/state/cms-server`, else the packaged one.
    pub fn user_data_dir(&self) -> PathBuf {
        match (&self.xdg_state_home, &self.home) {
            (Some(state), _) if state.is_absolute() => state.join("cms-server"),
            (_, Some(home)) => home.join(".local/state/cms-server"),
            _ => self.packaged_data_dir.clone(),
        }
    }

    /// The data directory of the server an admin command talks to: the
    /// user's own when it exists, else the packaged server's when it holds
    /// an admin credential, else the user's (so the error names it).
    pub fn admin_data_dir(&self) -> PathBuf {
        let user = self.user_data_dir();
        if !user.exists() && is_server_data_dir(&self.packaged_data_dir) {
            return self.packaged_data_dir.clone();
        }
        user
    }
}

fn is_server_data_dir(dir: &Path) -> bool {
    dir.join("admin").is_dir()
}

/// How an admin command reaches the running server, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminTarget {
    /// The server's gRPC address.
    pub server: String,
    /// The server's data directory.
    pub data_dir: PathBuf,
    /// The folder of the operator's admin credential: `--credential`, else
    /// the bootstrap operator's, `DATA/admin`.
    pub credential_dir: PathBuf,
    pub format: Format,
}

impl AdminTarget {
    fn resolve(args: AdminArgs, env: &Environment) -> AdminTarget {
        let data_dir = args.data.unwrap_or_else(|| env.admin_data_dir());
        AdminTarget {
            server: args
                .server
                .or_else(|| crate::startup::recorded_server_address(&data_dir))
                .unwrap_or_else(|| crate::cli::DEFAULT_SERVER.to_owned()),
            credential_dir: args
                .credential
                .unwrap_or_else(|| crate::startup::admin_dir(&data_dir)),
            data_dir,
            format: args.format,
        }
    }
}

/// A command with every machine-dependent default decided.
#[derive(Debug)]
pub enum Invocation {
    StoreMigrate(StoreMigrateArgs),
    StoreKeygen,
    Serve {
        args: Box<ServeArgs>,
        data_dir: PathBuf,
    },
    Check(CheckArgs),
    /// `explain --repo DIR --tags …`: no server.
    ExplainRepo(ExplainArgs),
    /// `explain NODE`: the server explains its node.
    ExplainNode {
        args: ExplainArgs,
        admin: AdminTarget,
    },
    Completions(CompletionsArgs),
    TokenCreate {
        args: TokenCreateArgs,
        admin: AdminTarget,
    },
    Nodes {
        args: NodesArgs,
        admin: AdminTarget,
    },
    Reports {
        args: ReportsArgs,
        admin: AdminTarget,
    },
    NodeRevoke {
        args: NodeRevokeArgs,
        admin: AdminTarget,
    },
    Sync(AdminTarget),
    OperatorAdd {
        args: OperatorCredentialArgs,
        admin: AdminTarget,
    },
    OperatorRenew {
        args: OperatorCredentialArgs,
        admin: AdminTarget,
    },
    OperatorRevoke {
        args: OperatorNameArgs,
        admin: AdminTarget,
    },
    OperatorList(AdminTarget),
    Audit {
        args: AuditArgs,
        admin: AdminTarget,
    },
    DashboardToken {
        action: DashboardTokenAction,
        admin: AdminTarget,
    },
    Trigger {
        args: TriggerArgs,
        admin: AdminTarget,
    },
    Diff {
        args: DiffArgs,
        admin: AdminTarget,
    },
    RolloutList {
        args: RolloutListArgs,
        admin: AdminTarget,
    },
    RolloutStatus {
        args: RolloutStatusArgs,
        admin: AdminTarget,
    },
    /// `rollout pause|resume|abort|promote`.
    RolloutControl {
        action: RolloutAction,
        args: RolloutControlArgs,
        admin: AdminTarget,
    },
    Pin {
        args: PinArgs,
        admin: AdminTarget,
    },
    Unpin {
        args: UnpinArgs,
        admin: AdminTarget,
    },
    Environments(AdminTarget),
    /// Prints the public key of the identity in `data_dir`.
    SecretsRecipient {
        data_dir: PathBuf,
    },
    SecretsEncrypt(SecretsEncryptArgs),
    /// Re-encrypts `repo`'s secrets, decrypting with `identity` (a given
    /// file, else the server's in its data directory).
    SecretsReencrypt {
        repo: PathBuf,
        identity: PathBuf,
    },
    SecretsNewIdentity(SecretsNewIdentityArgs),
}

/// What `dashboard-token` does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DashboardTokenAction {
    Create,
    List,
    /// Revoke the token with this id.
    Revoke(String),
}

/// What `rollout pause|resume|abort|promote` asks of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutAction {
    Pause,
    Resume,
    Abort,
    Promote,
}

impl RolloutAction {
    /// The action's name in `ControlRolloutRequest.action`.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutAction::Pause => "pause",
            RolloutAction::Resume => "resume",
            RolloutAction::Abort => "abort",
            RolloutAction::Promote => "promote",
        }
    }
}

/// Resolves a parsed command line. A given `--data` (or `CMS_SERVER_DATA`)
/// always wins; `serve` defaults to the user's data directory; every
/// command that talks to, or writes for, a running server defaults to that
/// server's (`Environment::admin_data_dir`).
pub fn resolve(command: Command, env: &Environment) -> Invocation {
    match command {
        Command::Serve(args) => {
            let data_dir = args.data.clone().unwrap_or_else(|| env.user_data_dir());
            Invocation::Serve { args, data_dir }
        }
        Command::Check(args) => Invocation::Check(args),
        Command::Explain(args) if args.node.is_none() => Invocation::ExplainRepo(args),
        Command::Explain(mut args) => {
            let admin = AdminTarget::resolve(take_admin(&mut args.admin), env);
            Invocation::ExplainNode { args, admin }
        }
        Command::Completions(args) => Invocation::Completions(args),
        Command::Token(TokenCommand::Create(mut args)) => {
            let admin = AdminTarget::resolve(take_admin(&mut args.admin), env);
            Invocation::TokenCreate { args, admin }
        }
        Command::Nodes(mut args) => {
            let admin = AdminTarget::resolve(take_admin(&mut args.admin), env);
            Invocation::Nodes { args, admin }
        }
        Command::Reports(mut args) => {
            let admin = AdminTarget::resolve(take_admin(&mut args.admin), env);
            Invocation::Reports { args, admin }
        }
        Command::Node(NodeCommand::Revoke(mut args)) => {
            let admin = AdminTarget::resolve(take_admin(&mut args.admin), env);
            Invocation::NodeRevoke { args, admin }
        }
        Command::Sync(args) => Invocation::Sync(AdminTarget::resolve(args, env)),
        Command::Admin(AdminCommand::Add(mut args)) => {
            let admin = AdminTarget::resolve(take_admin(&mut args.admin), env);
            Invocation::OperatorAdd { args, admin }
        }
        Command::Admin(AdminCommand::Renew(mut args)) => {
            let admin = AdminTarget::resolve(take_admin(&mut args.admin), env);
            Invocation::OperatorRenew { args, admin }
        }
        Command::Admin(AdminCommand::Revoke(mut args)) => {
            let admin = AdminTarget::resolve(take_admin(&mut args.admin), env);
            Invocation::OperatorRevoke { args, admin }
        }
        Command::Admin(AdminCommand::List(args)) => {
            Invocation::OperatorList(AdminTarget::resolve(args, env))
        }
        Command::Audit(mut args) => {
            let admin = AdminTarget::resolve(take_admin(&mut args.admin), env);
            Invocation::Audit { args, admin }
        }
        Command::DashboardToken(mut args) => {
            let admin = AdminTarget::resolve(take_admin(&mut args.admin), env);
            let action = match (args.list, args.revoke) {
                (_, Some(id)) => DashboardTokenAction::Revoke(id),
                (true, None) => DashboardTokenAction::List,
                (false, None) => DashboardTokenAction::Create,
            };
            Invocation::DashboardToken { action, admin }
        }
        Command::Trigger(mut args) => {
            let admin = AdminTarget::resolve(take_admin(&mut args.admin), env);
            Invocation::Trigger { args, admin }
        }
        Command::Diff(mut args) => {
            let admin = AdminTarget::resolve(take_admin(&mut args.admin), env);
            Invocation::Diff { args, admin }
        }
        Command::Rollout(RolloutCommand::List(mut args)) => {
            let admin = AdminTarget::resolve(take_admin(&mut args.admin), env);
            Invocation::RolloutList { args, admin }
        }
        Command::Rollout(RolloutCommand::Status(mut args)) => {
            let admin = AdminTarget::resolve(take_admin(&mut args.admin), env);
            Invocation::RolloutStatus { args, admin }
        }
        Command::Rollout(RolloutCommand::Pause(args)) => {
            rollout_control(RolloutAction::Pause, args, env)
        }
        Command::Rollout(RolloutCommand::Resume(args)) => {
            rollout_control(RolloutAction::Resume, args, env)
        }
        Command::Rollout(RolloutCommand::Abort(args)) => {
            rollout_control(RolloutAction::Abort, args, env)
        }
        Command::Rollout(RolloutCommand::Promote(args)) => {
            rollout_control(RolloutAction::Promote, args, env)
        }
        Command::Pin(mut args) => {
            let admin = AdminTarget::resolve(take_admin(&mut args.admin), env);
            Invocation::Pin { args, admin }
        }
        Command::Unpin(mut args) => {
            let admin = AdminTarget::resolve(take_admin(&mut args.admin), env);
            Invocation::Unpin { args, admin }
        }
        Command::Environments(args) => Invocation::Environments(AdminTarget::resolve(args, env)),
        Command::Secrets(SecretsCommand::Recipient(args)) => Invocation::SecretsRecipient {
            data_dir: args.data.unwrap_or_else(|| env.admin_data_dir()),
        },
        Command::Secrets(SecretsCommand::Encrypt(args)) => Invocation::SecretsEncrypt(args),
        Command::Secrets(SecretsCommand::Reencrypt(args)) => Invocation::SecretsReencrypt {
            identity: args.identity.unwrap_or_else(|| {
                crate::secrets::identity::identity_path(
                    &args.data.unwrap_or_else(|| env.admin_data_dir()),
                )
            }),
            repo: args.repo,
        },
        Command::Secrets(SecretsCommand::NewIdentity(args)) => Invocation::SecretsNewIdentity(args),
        Command::Store(StoreCommand::Migrate(args)) => Invocation::StoreMigrate(args),
        Command::Store(StoreCommand::Keygen) => Invocation::StoreKeygen,
    }
}

fn rollout_control(
    action: RolloutAction,
    mut args: RolloutControlArgs,
    env: &Environment,
) -> Invocation {
    let admin = AdminTarget::resolve(take_admin(&mut args.admin), env);
    Invocation::RolloutControl {
        action,
        args,
        admin,
    }
}

/// Moves the admin flags out of a command's arguments, so that only the
/// resolved `AdminTarget` is left to read: a command cannot use the raw
/// `--data` by mistake.
fn take_admin(admin: &mut AdminArgs) -> AdminArgs {
    AdminArgs {
        server: admin.server.take(),
        data: admin.data.take(),
        credential: admin.credential.take(),
        format: admin.format,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Cli;
    use clap::Parser;

    struct Machine {
        _dir: tempfile::TempDir,
        env: Environment,
        user: PathBuf,
        packaged: PathBuf,
    }

    fn machine() -> Machine {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        let packaged = dir.path().join("var-lib-cms-server");
        Machine {
            user: home.join(".local/state/cms-server"),
            env: Environment {
                home: Some(home),
                xdg_state_home: None,
                packaged_data_dir: packaged.clone(),
            },
            packaged,
            _dir: dir,
        }
    }

    /// The data directory a command line runs with on `machine`.
    #[track_caller]
    fn data_dir_of(machine: &Machine, line: &[&str]) -> PathBuf {
        let cli = Cli::try_parse_from(std::iter::once("cms-server").chain(line.iter().copied()))
            .unwrap_or_else(|e| panic!("{line:?} parses: {e}"));
        match resolve(cli.command, &machine.env) {
            Invocation::Serve { data_dir, .. } | Invocation::SecretsRecipient { data_dir } => {
                data_dir
            }
            Invocation::SecretsReencrypt { identity, .. } => identity
                .parent()
                .and_then(Path::parent)
                .expect("DATA/secrets/identity.txt")
                .to_path_buf(),
            Invocation::TokenCreate { admin, .. }
            | Invocation::Nodes { admin, .. }
            | Invocation::Reports { admin, .. }
            | Invocation::ExplainNode { admin, .. }
            | Invocation::NodeRevoke { admin, .. }
            | Invocation::Sync(admin)
            | Invocation::OperatorAdd { admin, .. }
            | Invocation::OperatorRenew { admin, .. }
            | Invocation::OperatorRevoke { admin, .. }
            | Invocation::OperatorList(admin)
            | Invocation::Audit { admin, .. }
            | Invocation::DashboardToken { admin, .. }
            | Invocation::Trigger { admin, .. }
            | Invocation::Diff { admin, .. }
            | Invocation::RolloutList { admin, .. }
            | Invocation::RolloutStatus { admin, .. }
            | Invocation::RolloutControl { admin, .. }
            | Invocation::Pin { admin, .. }
            | Invocation::Unpin { admin, .. }
            | Invocation::Environments(admin) => admin.data_dir,
            Invocation::Check(_)
            | Invocation::ExplainRepo(_)
            | Invocation::Completions(_)
            | Invocation::SecretsEncrypt(_)
            | Invocation::SecretsNewIdentity(_)
            | Invocation::StoreMigrate(_)
            | Invocation::StoreKeygen => {
                panic!("{line:?} has no data directory")
            }
        }
    }

    /// Every command that talks to a running server, or writes for it.
    const SERVER_COMMANDS: &[&[&str]] = &[
        &["token", "create", "--tags", "env=prod,role=*"],
        &["nodes"],
        &["reports", "web-1"],
        &["explain", "web-1"],
        &["node", "revoke", "web-1"],
        &["sync"],
        &["dashboard-token"],
        &["dashboard-token", "--list"],
        &["dashboard-token", "--revoke", "3f2a9c1e8b4d"],
        &["trigger", "--select", "role=web"],
        &["trigger", "--status", "t1"],
        &["diff", "--from", "3f2a9c1", "--env", "staging"],
        &["rollout", "list"],
        &["rollout", "status", "--env", "staging", "r1"],
        &["rollout", "pause"],
        &["rollout", "resume", "r1"],
        &["rollout", "abort", "--env", "production"],
        &["rollout", "promote"],
        &["pin", "--select", "role=api"],
        &["unpin", "--select", "role=api"],
        &["environments"],
        &["admin", "add", "alice"],
        &["admin", "renew", "alice"],
        &["admin", "revoke", "alice"],
        &["admin", "list"],
        &["audit"],
        &["secrets", "recipient"],
        &["secrets", "reencrypt", "--repo", "roles"],
    ];

    #[test]
    fn every_server_command_finds_the_packaged_server_when_the_user_has_no_data_directory() {
        let machine = machine();
        std::fs::create_dir_all(machine.packaged.join("admin")).expect("mkdir");
        for line in SERVER_COMMANDS {
            assert_eq!(data_dir_of(&machine, line), machine.packaged, "{line:?}");
        }
    }

    #[test]
    fn the_users_own_server_comes_before_the_packaged_one() {
        let machine = machine();
        std::fs::create_dir_all(machine.packaged.join("admin")).expect("mkdir");
        std::fs::create_dir_all(&machine.user).expect("mkdir");
        for line in SERVER_COMMANDS {
            assert_eq!(data_dir_of(&machine, line), machine.user, "{line:?}");
        }
    }

    #[test]
    fn without_any_server_the_users_directory_is_named_for_the_error() {
        let machine = machine();
        for line in SERVER_COMMANDS {
            assert_eq!(data_dir_of(&machine, line), machine.user, "{line:?}");
        }
    }

    #[test]
    fn a_given_data_directory_always_wins() {
        let machine = machine();
        std::fs::create_dir_all(machine.packaged.join("admin")).expect("mkdir");
        for line in SERVER_COMMANDS.iter().chain([&["serve"][..]].iter()) {
            let mut with_data = line.to_vec();
            with_data.extend(["--data", "/srv/cms"]);
            assert_eq!(
                data_dir_of(&machine, &with_data),
                PathBuf::from("/srv/cms"),
                "{with_data:?}"
            );
        }
    }

    #[test]
    fn serve_defaults_to_the_users_state_directory_even_beside_a_packaged_server() {
        let machine = machine();
        std::fs::create_dir_all(machine.packaged.join("admin")).expect("mkdir");
        assert_eq!(data_dir_of(&machine, &["serve"]), machine.user);
    }

    #[test]
    fn the_credential_defaults_to_the_bootstrap_operators_and_a_given_one_wins() {
        let machine = machine();
        let target = |line: &[&str]| {
            let cli =
                Cli::try_parse_from(std::iter::once("cms-server").chain(line.iter().copied()))
                    .unwrap();
            match resolve(cli.command, &machine.env) {
                Invocation::Audit { admin, .. } => admin.credential_dir,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(target(&["audit"]), machine.user.join("admin"));
        assert_eq!(
            target(&["audit", "--data", "/srv/cms"]),
            PathBuf::from("/srv/cms/admin")
        );
        assert_eq!(
            target(&["audit", "--credential", "/home/alice/cms"]),
            PathBuf::from("/home/alice/cms")
        );
    }

    #[test]
    fn the_server_address_is_the_given_one_else_the_one_the_server_recorded_else_the_default() {
        let machine = machine();
        let server = |line: &[&str]| {
            let cli =
                Cli::try_parse_from(std::iter::once("cms-server").chain(line.iter().copied()))
                    .unwrap();
            match resolve(cli.command, &machine.env) {
                Invocation::Nodes { admin, .. } => admin.server,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(server(&["nodes"]), crate::cli::DEFAULT_SERVER);
        std::fs::create_dir_all(machine.user.join("admin")).expect("mkdir");
        crate::startup::record_server_address(&machine.user, "0.0.0.0:7480".parse().unwrap())
            .expect("record");
        assert_eq!(server(&["nodes"]), "127.0.0.1:7480");
        assert_eq!(
            server(&["nodes", "--server", "cms.internal:7470"]),
            "cms.internal:7470"
        );
        let other = machine._dir.path().join("other");
        std::fs::create_dir_all(other.join("admin")).expect("mkdir");
        crate::startup::record_server_address(&other, "10.0.0.5:7490".parse().unwrap())
            .expect("record");
        assert_eq!(
            server(&["nodes", "--data", other.to_str().unwrap()]),
            "10.0.0.5:7490"
        );
    }

    #[test]
    fn dashboard_token_makes_one_lists_them_or_revokes_one_and_not_two_at_once() {
        let machine = machine();
        let action = |line: &[&str]| {
            let cli =
                Cli::try_parse_from(std::iter::once("cms-server").chain(line.iter().copied()))
                    .map_err(|e| e.kind())?;
            match resolve(cli.command, &machine.env) {
                Invocation::DashboardToken { action, .. } => Ok(action),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            action(&["dashboard-token"]),
            Ok(DashboardTokenAction::Create)
        );
        assert_eq!(
            action(&["dashboard-token", "--list", "--format", "json"]),
            Ok(DashboardTokenAction::List)
        );
        assert_eq!(
            action(&["dashboard-token", "--revoke", "3f2a9c1e8b4d"]),
            Ok(DashboardTokenAction::Revoke("3f2a9c1e8b4d".into()))
        );
        assert_eq!(
            action(&["dashboard-token", "--list", "--revoke", "3f2a9c1e8b4d"]),
            Err(clap::error::ErrorKind::ArgumentConflict)
        );
    }

    #[test]
    fn xdg_state_home_is_used_only_when_absolute() {
        let mut machine = machine();
        machine.env.xdg_state_home = Some(PathBuf::from("/state"));
        assert_eq!(
            machine.env.user_data_dir(),
            PathBuf::from("/state/cms-server")
        );
        machine.env.xdg_state_home = Some(PathBuf::from("relative"));
        assert_eq!(machine.env.user_data_dir(), machine.user);
        machine.env.home = None;
        assert_eq!(machine.env.user_data_dir(), machine.packaged);
    }
}
