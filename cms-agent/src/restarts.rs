//! The agent's side of coordinated restarts ([`cms_modules::restarts`]):
//! a place in the server's restart budget before a service or a Java
//! application restarts (`AcquireRestart`, given back with
//! `ReleaseRestart`), and the drain of the instance from its load
//! balancers' target groups around the restart (ELBv2, through `aws`).
//!
//! Providers call it from the converge's blocking thread, so the gRPC calls
//! run on the runtime through its handle. What the agent took out of a
//! target group is written to `drained.json` in its state directory before
//! it deregisters, and removed once it registered again: a run killed in
//! between is repaired by the next one ([`AgentRestarts::restore_drained`]).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use cms_modules::{ProviderError, RestartWindow, Restarts};
use cms_proto::v1 as pb;
use cms_roles::Drain;
use serde::{Deserialize, Serialize};

use crate::aws::{Aws, AwsSettings, TargetState};
use crate::client::{Connectors, ServerAddress};
use crate::identity::Identity;

/// How often a draining or registering target's state is read.
const TARGET_POLL: Duration = Duration::from_secs(1);
/// How long to wait before asking a busy budget again, when the server
/// gives no hint.
const RETRY_DEFAULT: Duration = Duration::from_secs(2);
/// The file that remembers what the agent deregistered.
const DRAINED_FILE: &str = "drained.json";

/// The server a run asks for restart places.
pub struct BudgetServer {
    pub runtime: tokio::runtime::Handle,
    pub connectors: Connectors,
    pub address: ServerAddress,
    pub identity: Identity,
}

impl BudgetServer {
    /// A connection to the server, as this node.
    async fn connect(
        &self,
    ) -> anyhow::Result<pb::agent_client::AgentClient<tonic::transport::Channel>> {
        self.connectors
            .for_identity(&self.address, &self.identity)?
            .connect()
            .await
    }
}

/// The [`Restarts`] of one agent run.
pub struct AgentRestarts {
    budget: Option<BudgetServer>,
    /// How long to wait for a place.
    wait: Duration,
    aws: AwsSettings,
    /// Made on the first drain.
    load_balancers: OnceLock<Aws>,
    state_dir: PathBuf,
}

/// One target group the agent took the instance out of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Drained {
    target_group: String,
    port: Option<u16>,
}

impl AgentRestarts {
    pub fn new(
        budget: Option<BudgetServer>,
        wait: Duration,
        aws: AwsSettings,
        state_dir: &Path,
    ) -> AgentRestarts {
        AgentRestarts {
            budget,
            wait,
            aws,
            load_balancers: OnceLock::new(),
            state_dir: state_dir.to_path_buf(),
        }
    }

    fn load_balancers(&self) -> &Aws {
        self.load_balancers
            .get_or_init(|| Aws::new(self.aws.clone()))
    }

    /// Registers the instance again where a killed run left it drained.
    /// Returns what it did, for the run's report.
    pub fn restore_drained(&self) -> Option<String> {
        let left = read_drained(&self.state_dir);
        if left.is_empty() {
            return None;
        }
        let aws = self.load_balancers();
        let mut failed = Vec::new();
        for target in &left {
            if let Err(error) = aws.register_target(&target.target_group, target.port) {
                failed.push(format!("{}: {error}", target.target_group));
            }
        }
        if failed.is_empty() {
            let _ = write_drained(&self.state_dir, &[]);
            Some(format!(
                "registered the instance again in {} target group(s) an interrupted run had drained it from",
                left.len()
            ))
        } else {
            Some(format!(
                "Failed to register the instance again where an interrupted run drained it ({}); the next run tries again",
                failed.join("; ")
            ))
        }
    }

    /// Asks for a place until one is granted or `wait` is over.
    fn acquire(&self, unit: &str, hold: Duration) -> Result<Option<String>, ProviderError> {
        let Some(budget) = &self.budget else {
            return Ok(None);
        };
        let started = crate::clock::instant();
        loop {
            let request = pb::AcquireRestartRequest {
                unit: unit.to_string(),
                hold_seconds: u32::try_from(hold.as_secs()).unwrap_or(u32::MAX),
            };
            let answer = budget.runtime.block_on(async {
                anyhow::Ok(budget.connect().await?.acquire_restart(request).await)
            });
            let response = match answer {
                Ok(Ok(response)) => response.into_inner(),
                // A server without budgets: nothing to wait for.
                Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => {
                    return Ok(None);
                }
                // The budget coordinates the fleet; without its server, a
                // local repair (a cached catalog's run) still restarts.
                Ok(Err(status)) => {
                    tracing::warn!(
                        "restarting {unit} without a place in the restart budget: the server answered {}",
                        status.message()
                    );
                    return Ok(None);
                }
                Err(error) => {
                    tracing::warn!(
                        "restarting {unit} without a place in the restart budget: the server could not be reached: {error:#}"
                    );
                    return Ok(None);
                }
            };
            if response.granted {
                return Ok((!response.lease_id.is_empty()).then_some(response.lease_id));
            }
            let retry = match response.retry_after_ms {
                0 => RETRY_DEFAULT,
                ms => Duration::from_millis(u64::from(ms)),
            };
            if started.elapsed() + retry > self.wait {
                return Err(ProviderError::Failed(format!(
                    "no place to restart {unit} within {} s: {}; nothing was restarted, the next run tries again ([restarts] wait in agent.toml sets how long to wait)",
                    self.wait.as_secs(),
                    response.reason
                )));
            }
            std::thread::sleep(retry);
        }
    }

    fn release(&self, lease_id: &str) {
        let Some(budget) = &self.budget else {
            return;
        };
        let request = pb::ReleaseRestartRequest {
            lease_id: lease_id.to_string(),
        };
        let released = budget.runtime.block_on(async {
            budget.connect().await?.release_restart(request).await?;
            anyhow::Ok(())
        });
        if let Err(error) = released {
            // The place frees itself when its hold ends.
            tracing::warn!("Failed to give back restart place {lease_id}: {error:#}");
        }
    }
}

impl Restarts for AgentRestarts {
    fn reserve(
        &self,
        unit: &str,
        hold: Duration,
    ) -> Result<Box<dyn RestartWindow + '_>, ProviderError> {
        let lease = self.acquire(unit, hold)?;
        Ok(Box::new(Window {
            owner: self,
            lease,
            drained: Vec::new(),
            drain_timeout: Duration::ZERO,
            drained_in: None,
            ended: false,
        }))
    }
}

/// A place held, and what was drained for it.
struct Window<'a> {
    owner: &'a AgentRestarts,
    lease: Option<String>,
    drained: Vec<Drained>,
    drain_timeout: Duration,
    /// How long the drain took, or `None` when it timed out.
    drained_in: Option<Duration>,
    ended: bool,
}

impl Window<'_> {
    fn register_again(&mut self) -> Result<(), ProviderError> {
        let aws = self.owner.load_balancers();
        for target in &self.drained {
            aws.register_target(&target.target_group, target.port)
                .map_err(|error| {
                    ProviderError::Failed(format!(
                        "Failed to register the instance again in target group {}: {error}; the next run tries again",
                        target.target_group
                    ))
                })?;
        }
        write_drained(&self.owner.state_dir, &[]).map_err(ProviderError::Failed)?;
        Ok(())
    }

    fn give_back(&mut self) {
        if let Some(lease) = self.lease.take() {
            self.owner.release(&lease);
        }
    }
}

impl RestartWindow for Window<'_> {
    fn drain(&mut self, drain: &Drain) -> Result<(), ProviderError> {
        let aws = self.owner.load_balancers();
        let failed = |action: &str, group: &str, error: crate::aws::AwsError| {
            ProviderError::Failed(format!(
                "Failed to {action} target group {group} before the restart: {error}"
            ))
        };
        self.drain_timeout = Duration::from_secs(drain.timeout.0);
        for group in &drain.target_groups {
            let state = aws
                .target_state(group, drain.port)
                .map_err(|e| failed("read", group, e))?;
            // Not in the group (a first converge before the launch is
            // complete): nothing to drain, nothing to put back.
            if matches!(state, TargetState::NotRegistered | TargetState::Unused) {
                continue;
            }
            self.drained.push(Drained {
                target_group: group.clone(),
                port: drain.port,
            });
            write_drained(&self.owner.state_dir, &self.drained).map_err(ProviderError::Failed)?;
            aws.deregister_target(group, drain.port)
                .map_err(|e| failed("leave", group, e))?;
        }
        let started = crate::clock::instant();
        loop {
            let mut draining = false;
            for target in &self.drained {
                let state = aws
                    .target_state(&target.target_group, target.port)
                    .map_err(|e| failed("read", &target.target_group, e))?;
                draining |= !matches!(state, TargetState::NotRegistered | TargetState::Unused);
            }
            if !draining {
                self.drained_in = Some(started.elapsed());
                return Ok(());
            }
            if started.elapsed() >= self.drain_timeout {
                // Bounded: the restart goes on, as the deregistration delay
                // would end it anyway.
                self.drained_in = None;
                return Ok(());
            }
            std::thread::sleep(TARGET_POLL);
        }
    }

    fn end(mut self: Box<Self>, healthy: bool) -> Result<Option<String>, ProviderError> {
        self.ended = true;
        if self.drained.is_empty() {
            self.give_back();
            return Ok(None);
        }
        let drained_from = self.drained.len();
        let drain_words = match self.drained_in {
            Some(took) => format!(
                "drained from {drained_from} target group(s) in {} s",
                took.as_secs()
            ),
            None => format!(
                "still draining from {drained_from} target group(s) after {} s, restarted anyway",
                self.drain_timeout.as_secs()
            ),
        };
        let registered = self.register_again();
        if let Err(error) = registered {
            self.give_back();
            return Err(error);
        }
        if !healthy {
            self.give_back();
            return Ok(Some(format!(
                "{drain_words}; registered again (the load balancer's health check decides when it serves)"
            )));
        }
        // The place is held until the load balancers send traffic again,
        // so the next node of the group does not leave before.
        let aws = self.owner.load_balancers();
        let started = crate::clock::instant();
        let outcome = loop {
            let mut waiting = Vec::new();
            for target in &self.drained {
                match aws.target_state(&target.target_group, target.port) {
                    Ok(TargetState::Healthy) => {}
                    Ok(state) => waiting.push(format!("{}: {state:?}", target.target_group)),
                    Err(error) => waiting.push(format!("{}: {error}", target.target_group)),
                }
            }
            if waiting.is_empty() {
                break Ok(Some(format!(
                    "{drain_words}; registered again and healthy in {} s",
                    started.elapsed().as_secs()
                )));
            }
            if started.elapsed() >= self.drain_timeout {
                break Err(ProviderError::Failed(format!(
                    "{drain_words}; registered again, but not healthy in its target groups after {} s ({})",
                    self.drain_timeout.as_secs(),
                    waiting.join("; ")
                )));
            }
            std::thread::sleep(TARGET_POLL);
        };
        self.give_back();
        outcome
    }
}

impl Drop for Window<'_> {
    /// A restart that failed on the way (an error, a panic): what was taken
    /// out goes back, and the place is given up.
    fn drop(&mut self) {
        if !self.ended {
            if !self.drained.is_empty()
                && let Err(error) = self.register_again()
            {
                tracing::warn!("{error}");
            }
            self.give_back();
        }
    }
}

fn read_drained(state_dir: &Path) -> Vec<Drained> {
    std::fs::read(state_dir.join(DRAINED_FILE))
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default()
}

/// Writes (by rename) or, for none, removes the record of what is drained.
fn write_drained(state_dir: &Path, drained: &[Drained]) -> Result<(), String> {
    let path = state_dir.join(DRAINED_FILE);
    if drained.is_empty() {
        return match std::fs::remove_file(&path) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                Err(format!("Failed to remove {}: {error}", path.display()))
            }
            _ => Ok(()),
        };
    }
    let bytes = serde_json::to_vec(drained).map_err(|e| e.to_string())?;
    crate::state::write_private_atomically(&path, &bytes).map_err(|error| {
        format!(
            "Failed to record the drain in {}: {error:#}",
            path.display()
        )
    })
}
