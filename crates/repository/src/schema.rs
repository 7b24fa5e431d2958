//! The tables of certificates, request ids, expiry, revocations and CRLs.
//! (The audit chain, certifications, the outbox and replication state keep
//! their tables beside the code that writes them: `audit`, `openpgp`,
//! `outbox`, `apply`, `crls`, `clock`, `identity`.)

use redb::TableDefinition;

use crate::{audit, clock, identity, openpgp};
use crate::{storage, RepoError};

pub(crate) const CERTS: TableDefinition<(&str, &[u8]), &[u8]> = TableDefinition::new("certs_v1");

pub(crate) const REQUESTS: TableDefinition<&str, &[u8]> = TableDefinition::new("requests_v1");

pub(crate) const EXPIRY: TableDefinition<(i64, &str, &[u8]), ()> =
    TableDefinition::new("expiry_v1");

/// Key: (issuer, serial length, serial): iteration yields serials in numeric order.
pub(crate) const REVOCATIONS: TableDefinition<(&str, u8, &[u8]), &[u8]> =
    TableDefinition::new("revocations_v1");

/// Per issuer: a counter bumped by every new revocation (tells a stale CRL).
pub(crate) const REVOCATION_SEQ: TableDefinition<&str, u64> =
    TableDefinition::new("revocation_seq_v1");

/// Per issuer: the last CRL signed.
pub(crate) const CRLS: TableDefinition<&str, &[u8]> = TableDefinition::new("crls_v1");

/// Every CRL signed, without its DER: (issuer, number) → metadata. A client's
/// older copy is recognised here, and its entries derived for a difference.
pub(crate) const CRL_HISTORY: TableDefinition<(&str, &[u8]), &[u8]> =
    TableDefinition::new("crl_history_v1");

/// Every table, created with the repository.
pub(crate) fn create_tables(txn: &redb::WriteTransaction) -> Result<(), RepoError> {
    txn.open_table(identity::IDENTITY).map_err(storage)?;
    txn.open_table(crate::outbox::EVENTS).map_err(storage)?;
    txn.open_table(crate::outbox::META).map_err(storage)?;
    txn.open_table(crate::outbox::DIGESTS).map_err(storage)?;
    txn.open_table(audit::AUDIT).map_err(storage)?;
    txn.open_table(audit::AUDIT_PEER).map_err(storage)?;
    txn.open_table(crate::tree::AUDIT_TREE).map_err(storage)?;
    txn.open_table(crate::tree::AUDIT_CHECKPOINTS)
        .map_err(storage)?;
    txn.open_table(crate::tree::AUDIT_ACKS).map_err(storage)?;
    txn.open_table(crate::tree::AUDIT_PEER_CHECKPOINTS)
        .map_err(storage)?;
    txn.open_table(crate::tree::AUDIT_COSIGNED)
        .map_err(storage)?;
    txn.open_table(crate::tree::AUDIT_COSIGS).map_err(storage)?;
    txn.open_table(crate::apply::APPLIED).map_err(storage)?;
    txn.open_table(crate::apply::CONFLICTS).map_err(storage)?;
    txn.open_table(crate::crls::CRL_FLOOR).map_err(storage)?;
    txn.open_table(crate::crls::CRL_DER).map_err(storage)?;
    txn.open_table(openpgp::CERTIFICATIONS).map_err(storage)?;
    txn.open_table(CERTS).map_err(storage)?;
    txn.open_table(REQUESTS).map_err(storage)?;
    txn.open_table(EXPIRY).map_err(storage)?;
    txn.open_table(REVOCATIONS).map_err(storage)?;
    txn.open_table(REVOCATION_SEQ).map_err(storage)?;
    txn.open_table(CRLS).map_err(storage)?;
    txn.open_table(CRL_HISTORY).map_err(storage)?;
    txn.open_table(clock::HIGH_WATER).map_err(storage)?;
    Ok(())
}
