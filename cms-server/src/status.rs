//! The one place where the domain's errors become gRPC statuses: each
//! error type maps its variants to a code, and the message is the error's
//! own text, which is what the client prints.

use tonic::Status;

use crate::auth::AuthError;
use crate::blocking::BlockingFailed;
use crate::dashboard_tokens::DashboardTokenError;
use crate::enrollment::EnrollError;
use crate::fleet_diff::DiffError;
use crate::nodes::NodesError;
use crate::operators::OperatorError;
use crate::reports::{RateExceeded, ReportError};
use crate::revision::CatalogError;
use crate::rollouts::RolloutError;
use crate::store::StoreError;
use crate::triggers::TriggerError;

fn internal(error: impl std::fmt::Display) -> Status {
    Status::internal(format!("{error}"))
}

/// A store failure, with its causes in the message (what an agent prints
/// and an operator acts on): `UNAVAILABLE` when the disk refused the write
/// (a full disk: the store recovers by itself) or the shared database
/// cannot be reached (its message ends in a hint to retry), since a retry
/// later succeeds; `INTERNAL` otherwise. `outer` is the error that carries
/// `store`.
fn store_failure(store: &StoreError, outer: &dyn std::error::Error) -> Status {
    let message = crate::store::error_chain(outer);
    if store.is_retryable() {
        Status::unavailable(message)
    } else {
        Status::internal(message)
    }
}

impl From<AuthError> for Status {
    fn from(error: AuthError) -> Status {
        let message = error.to_string();
        match error {
            AuthError::NoCertificate | AuthError::Unreadable(_) => Status::unauthenticated(message),
            AuthError::OperatorRevoked { .. }
            | AuthError::OperatorUnknown { .. }
            | AuthError::NodeRevoked { .. }
            | AuthError::NodeUnknown { .. }
            | AuthError::NotANode
            | AuthError::NotAdmin { .. } => Status::permission_denied(message),
            AuthError::Store(ref store) => store_failure(store, &error),
        }
    }
}

impl From<EnrollError> for Status {
    fn from(error: EnrollError) -> Status {
        let message = error.to_string();
        match error {
            EnrollError::InvalidNodeName(_)
            | EnrollError::InvalidCsr(_)
            | EnrollError::NoScope
            | EnrollError::TokenTtlTooLong { .. } => Status::invalid_argument(message),
            EnrollError::TokenUnknown | EnrollError::TokenRefused(_) => {
                Status::unauthenticated(message)
            }
            EnrollError::OutOfScope(_) | EnrollError::NameOutOfScope { .. } => {
                Status::permission_denied(message)
            }
            EnrollError::NameTaken { .. } | EnrollError::NameClaimed { .. } => {
                Status::already_exists(message)
            }
            EnrollError::NotEnrolled { .. } => Status::not_found(message),
            EnrollError::AttestationOff => Status::failed_precondition(message),
            EnrollError::Attestation(crate::aws::AttestationError::Ec2 { .. }) => {
                Status::unavailable(message)
            }
            EnrollError::Attestation(_) => Status::permission_denied(message),
            EnrollError::Store(ref store) => store_failure(store, &error),
            EnrollError::Random(_) => Status::internal(message),
        }
    }
}

impl From<DiffError> for Status {
    fn from(error: DiffError) -> Status {
        let message = error.to_string();
        match error {
            DiffError::InvalidRevision(_) => Status::invalid_argument(message),
            DiffError::CannotRun(_) => Status::failed_precondition(message),
        }
    }
}

impl From<RolloutError> for Status {
    fn from(error: RolloutError) -> Status {
        let message = error.to_string();
        match error {
            RolloutError::Environment(_) | RolloutError::Unknown { .. } => {
                Status::not_found(message)
            }
            RolloutError::BadAction(_) | RolloutError::InvalidPin(_) => {
                Status::invalid_argument(message)
            }
            RolloutError::NoneActive { .. }
            | RolloutError::NotAllowed { .. }
            | RolloutError::CannotRun(_) => Status::failed_precondition(message),
            RolloutError::Store(store) => store_failure(&store, &store),
            RolloutError::FromLeader { code, message } => {
                Status::new(tonic::Code::from_i32(code), message)
            }
            RolloutError::NoLeader | RolloutError::Behind { .. } => Status::unavailable(message),
        }
    }
}

impl From<OperatorError> for Status {
    fn from(error: OperatorError) -> Status {
        let message = error.to_string();
        match error {
            OperatorError::InvalidName(_)
            | OperatorError::InvalidCsr(_)
            | OperatorError::TooLong { .. } => Status::invalid_argument(message),
            OperatorError::Exists { .. } | OperatorError::RevokedName { .. } => {
                Status::already_exists(message)
            }
            OperatorError::Unknown { .. } => Status::not_found(message),
            OperatorError::Revoked { .. } | OperatorError::LastOperator { .. } => {
                Status::failed_precondition(message)
            }
            OperatorError::Store(_) => Status::internal(message),
        }
    }
}

impl From<DashboardTokenError> for Status {
    fn from(error: DashboardTokenError) -> Status {
        let message = error.to_string();
        match error {
            DashboardTokenError::InvalidId { .. } | DashboardTokenError::Ambiguous { .. } => {
                Status::invalid_argument(message)
            }
            DashboardTokenError::Unknown { .. } => Status::not_found(message),
            DashboardTokenError::Random(_) => Status::internal(message),
            DashboardTokenError::Store(ref store) => store_failure(store, &error),
        }
    }
}

impl From<NodesError> for Status {
    fn from(error: NodesError) -> Status {
        let message = error.to_string();
        match error {
            NodesError::NotEnrolled { .. } | NodesError::NoCertificates { .. } => {
                Status::not_found(message)
            }
            NodesError::Store(ref store) => store_failure(store, &error),
        }
    }
}

impl From<ReportError> for Status {
    fn from(error: ReportError) -> Status {
        match error {
            ReportError::Store(ref store) => store_failure(store, &error),
            ReportError::TooLarge { .. } => Status::invalid_argument(error.to_string()),
        }
    }
}

impl From<RateExceeded> for Status {
    fn from(error: RateExceeded) -> Status {
        Status::resource_exhausted(error.to_string())
    }
}

impl From<TriggerError> for Status {
    fn from(error: TriggerError) -> Status {
        let message = error.to_string();
        match error {
            TriggerError::NoSelection | TriggerError::Batch(_) => Status::invalid_argument(message),
            TriggerError::NoNodeMatches { .. } | TriggerError::Unknown { .. } => {
                Status::not_found(message)
            }
            TriggerError::Store(ref store) => store_failure(store, &error),
        }
    }
}

impl From<CatalogError> for Status {
    fn from(error: CatalogError) -> Status {
        let message = error.to_string();
        match error {
            CatalogError::NoRevision => Status::unavailable(message),
            CatalogError::EnvironmentNotServed { .. } => Status::failed_precondition(message),
            CatalogError::Compile { .. } => Status::failed_precondition(message),
            CatalogError::NoContent { .. } => Status::not_found(message),
            CatalogError::TooLarge { .. } => Status::failed_precondition(message),
        }
    }
}

impl From<BlockingFailed> for Status {
    fn from(error: BlockingFailed) -> Status {
        internal(error)
    }
}

impl From<StoreError> for Status {
    fn from(error: StoreError) -> Status {
        store_failure(&error, &error)
    }
}

/// A sync that could not run.
pub fn sync_failed(error: &anyhow::Error) -> Status {
    Status::unavailable(format!("{error:#}"))
}

/// A request field that does not parse.
pub fn invalid_argument(message: String) -> Status {
    Status::invalid_argument(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn each_domain_error_has_its_grpc_code_and_keeps_its_message_with_its_cause() {
        let cases: Vec<(Status, Code)> = vec![
            (AuthError::NoCertificate.into(), Code::Unauthenticated),
            (AuthError::NotANode.into(), Code::PermissionDenied),
            (
                EnrollError::NameTaken {
                    node_id: "web-1".into(),
                    seen_seconds_ago: 3,
                    gone_after_seconds: 7200,
                }
                .into(),
                Code::AlreadyExists,
            ),
            (EnrollError::TokenUnknown.into(), Code::Unauthenticated),
            (
                EnrollError::TokenRefused(StoreError::TokenUsedUp).into(),
                Code::Unauthenticated,
            ),
            (EnrollError::NoScope.into(), Code::InvalidArgument),
            (
                NodesError::NoCertificates {
                    node_id: "x".into(),
                }
                .into(),
                Code::NotFound,
            ),
            (TriggerError::NoSelection.into(), Code::InvalidArgument),
            (
                TriggerError::Unknown { id: "t1".into() }.into(),
                Code::NotFound,
            ),
            (CatalogError::NoRevision.into(), Code::Unavailable),
            (
                CatalogError::Compile {
                    node_id: "x".into(),
                    diagnostics: "bad".into(),
                }
                .into(),
                Code::FailedPrecondition,
            ),
            (
                ReportError::Store(StoreError::TokenUnknown).into(),
                Code::Internal,
            ),
        ];
        for (status, code) in cases {
            assert_eq!(status.code(), code, "{status:?}");
            assert!(!status.message().is_empty());
        }
        // A full disk: retryable, and the cause reaches the caller.
        let full = || StoreError::Unwritable {
            action: "write report r1 of node n1".into(),
            path: "/var/lib/cms-server/db".into(),
            source: std::io::Error::from_raw_os_error(28),
        };
        for status in [
            Status::from(ReportError::Store(full())),
            Status::from(EnrollError::Store(full())),
            Status::from(full()),
        ] {
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            assert!(
                status
                    .message()
                    .contains("the server's store cannot write: No space left on device (os error 28) (store at /var/lib/cms-server/db)"),
                "{status:?}"
            );
        }
        // The shared database unreachable: retryable, and the message says
        // to retry.
        let unreachable = || StoreError::Unavailable {
            action: "write report r1 of node n1".into(),
            target: "postgres://cms@db.internal:5432/cms".into(),
            detail: "connection closed".into(),
        };
        for status in [
            Status::from(ReportError::Store(unreachable())),
            Status::from(EnrollError::Store(unreachable())),
            Status::from(unreachable()),
        ] {
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            assert_eq!(
                status.message(),
                "Failed to write report r1 of node n1: the database postgres://cms@db.internal:5432/cms cannot be reached: connection closed; retry in a few seconds",
                "{status:?}"
            );
        }
        let status = Status::from(EnrollError::NameTaken {
            node_id: "web-1".into(),
            seen_seconds_ago: 3,
            gone_after_seconds: 7200,
        });
        assert_eq!(
            status.message(),
            "Failed to enroll: node web-1 is live (last seen 3 s ago); its name becomes free when it has not been seen for 7200 s, or when an operator runs `cms-server node revoke web-1`"
        );
    }
}
