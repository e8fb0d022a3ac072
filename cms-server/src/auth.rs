//! Who is calling, from a verified client certificate, checked against the
//! store: every gRPC call but `Enroll`, and the watch channel, go through
//! [`identify`].
//!
//! Who calls is never taken from a request field: an agent's node id comes
//! from its certificate (`PeerIdentity::Node`), an operator's name from its
//! admin certificate (`PeerIdentity::Operator`). A revoked serial is refused
//! on every call, and so is a node certificate the store no longer knows
//! (the node was removed, or its name enrolled again by a new instance).
//! An operator's certificate is accepted only while the store's operator
//! record names its serial and is not revoked: revoking an operator, or
//! renewing its credential, refuses the old certificate on the next call.

use crate::pki::{PeerIdentity, PkiError, peer_identity};
use crate::store::{Store, StoreError};

/// Why a caller is refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("a client certificate is required: enroll first")]
    NoCertificate,
    #[error("{0}")]
    Unreadable(#[source] PkiError),
    #[error("the admin credential of operator {name} (certificate {serial}) is revoked")]
    OperatorRevoked { name: String, serial: String },
    #[error(
        "the admin credential of operator {name} (certificate {serial}) is not the operator's current one: it was renewed or the operator was never added"
    )]
    OperatorUnknown { name: String, serial: String },
    #[error("certificate {serial} of node {node_id} is revoked")]
    NodeRevoked { serial: String, node_id: String },
    #[error(
        "certificate {serial} of node {node_id} is no longer valid: the node was removed or its name enrolled again; enroll again"
    )]
    NodeUnknown { serial: String, node_id: String },
    #[error("this call is for nodes, not the admin credential")]
    NotANode,
    #[error("node {node_id} may not call admin functions")]
    NotAdmin { node_id: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Who a verified client certificate (its DER) names, checked against the
/// store.
pub fn identify(store: &dyn Store, leaf_der: &[u8]) -> Result<PeerIdentity, AuthError> {
    let (identity, serial) = peer_identity(leaf_der).map_err(AuthError::Unreadable)?;
    match &identity {
        PeerIdentity::Operator(name) => match store.operator(name)? {
            Some(operator) if operator.revoked_unix.is_some() => {
                return Err(AuthError::OperatorRevoked {
                    name: name.clone(),
                    serial,
                });
            }
            Some(operator) if operator.serial == serial => {}
            _ => {
                return Err(AuthError::OperatorUnknown {
                    name: name.clone(),
                    serial,
                });
            }
        },
        PeerIdentity::Node(id) => match store.certificate(&serial)? {
            Some(record) if record.revoked => {
                return Err(AuthError::NodeRevoked {
                    serial,
                    node_id: id.clone(),
                });
            }
            Some(record) if record.node_id == *id => {}
            _ => {
                return Err(AuthError::NodeUnknown {
                    serial,
                    node_id: id.clone(),
                });
            }
        },
    }
    Ok(identity)
}

/// The node a certificate names; the admin credential is refused.
pub fn node(identity: PeerIdentity) -> Result<String, AuthError> {
    match identity {
        PeerIdentity::Node(id) => Ok(id),
        PeerIdentity::Operator(_) => Err(AuthError::NotANode),
    }
}

/// The operator an admin credential names; a node is refused.
pub fn admin(identity: PeerIdentity) -> Result<String, AuthError> {
    match identity {
        PeerIdentity::Operator(name) => Ok(name),
        PeerIdentity::Node(node_id) => Err(AuthError::NotAdmin { node_id }),
    }
}
