//! The one place where the domain's errors become gRPC statuses: each
//! error type maps its variants to a code, and the message is the error's
//! own text, which is what the client prints.

use tonic::Status;

use crate::auth::AuthError;
use crate::blocking::BlockingFailed;
use crate::enrollment::EnrollError;
use crate::nodes::NodesError;
use crate::reports::{RateExceeded, ReportError};
use crate::revision::CatalogError;
use crate::store::StoreError;
use crate::triggers::TriggerError;

fn internal(error: impl std::fmt::Display) -> Status {
    Status::internal(format!("{error}"))
}

impl From<AuthError> for Status {
    fn from(error: AuthError) -> Status {
        let message = error.to_string();
        match error {
            AuthError::NoCertificate | AuthError::Unreadable(_) => Status::unauthenticated(message),
            AuthError::AdminRevoked { .. }
            | AuthError::NodeRevoked { .. }
            | AuthError::NodeUnknown { .. }
            | AuthError::NotANode
            | AuthError::NotAdmin { .. } => Status::permission_denied(message),
            AuthError::Store(error) => internal(error),
        }
    }
}

impl From<EnrollError> for Status {
    fn from(error: EnrollError) -> Status {
        let message = error.to_string();
        match error {
            EnrollError::InvalidNodeName(_) | EnrollError::InvalidCsr(_) | EnrollError::NoScope => {
                Status::invalid_argument(message)
            }
            EnrollError::TokenUnknown | EnrollError::TokenRefused(_) => {
                Status::unauthenticated(message)
            }
            EnrollError::OutOfScope(_) => Status::permission_denied(message),
            EnrollError::NameTaken { .. } => Status::already_exists(message),
            EnrollError::NotEnrolled { .. } => Status::not_found(message),
            EnrollError::Random(_) | EnrollError::Store(_) => Status::internal(message),
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
            NodesError::Store(_) => Status::internal(message),
        }
    }
}

impl From<ReportError> for Status {
    fn from(error: ReportError) -> Status {
        match error {
            ReportError::Store(error) => internal(error),
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
            TriggerError::Store(_) => Status::internal(message),
        }
    }
}

impl From<CatalogError> for Status {
    fn from(error: CatalogError) -> Status {
        let message = error.to_string();
        match error {
            CatalogError::NoRevision => Status::unavailable(message),
            CatalogError::Compile { .. } => Status::failed_precondition(message),
            CatalogError::NoContent { .. } => Status::not_found(message),
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
        internal(error)
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
    fn each_domain_error_has_its_grpc_code_and_keeps_its_message() {
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
