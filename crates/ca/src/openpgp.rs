//! `certify_openpgp` and `openpgp_ca`: user IDs of a user's OpenPGP key
//! certified with the CA's HSM-held OpenPGP key, recorded before the answer.

use std::sync::Arc;

use signer_hsm::KeyKind;
use signer_openpgp::{certify, inspect, public_key_packet, CaCertificate, HsmSigner, PgpError};
use signer_protocol::{msg, Status};
use signer_repository::{CertificationRecord, Certified};
use signer_service::{CallContext, Failure};
use tracing::info;

use crate::{idempotency, pgp_failure, CaService, OpenpgpConfig};

/// The CA's OpenPGP key, checked against its certificate file.
pub struct OpenpgpCa {
    kind: KeyKind,
    ca: CaCertificate,
}

impl OpenpgpCa {
    /// The CA key's fingerprint, upper-case hex.
    pub fn fingerprint(&self) -> String {
        self.ca.fingerprint()
    }
}

fn reply_from(r: &CertificationRecord, replayed: bool) -> msg::CertifyOpenpgpReply {
    msg::CertifyOpenpgpReply {
        key: r.key.clone(),
        fingerprint: r.fingerprint.clone(),
        ca_fingerprint: r.ca_fingerprint.clone(),
        certifications: r
            .certifications
            .iter()
            .map(|(uid, sig)| msg::Certification {
                user_id: uid.clone(),
                signature: sig.to_vec(),
            })
            .collect(),
        created_at: r.created_at,
        expires_at: r.expires_at,
        replayed,
    }
}

fn replay(
    record: &CertificationRecord,
    digest: &[u8],
) -> Result<msg::CertifyOpenpgpReply, Failure> {
    idempotency::same_request(
        &record.request_id,
        &record.request_digest,
        digest,
        &format!("key {}", record.fingerprint),
    )?;
    Ok(reply_from(record, true))
}

/// Derives the CA's key packet from the HSM key and checks the certificate
/// file (startup, `check-config`).
pub fn load(
    backend: &dyn signer_hsm::SigningBackend,
    config: &OpenpgpConfig,
) -> Result<OpenpgpCa, PgpError> {
    let public = backend.public_key(&config.key).map_err(PgpError::Hsm)?;
    let created = config.created_secs().map_err(PgpError::CaKey)?;
    let packet = public_key_packet(&public, created)?;
    let bytes = std::fs::read(&config.certificate).map_err(|e| {
        PgpError::CaKey(format!(
            "{}: {e} (run signerd setup openpgp)",
            config.certificate.display()
        ))
    })?;
    let ca = CaCertificate::load(&bytes, packet)?;
    info!(fingerprint = %ca.fingerprint(), key = %config.key, "OpenPGP CA certificate matches its HSM key");
    Ok(OpenpgpCa {
        kind: public.kind,
        ca,
    })
}

impl CaService {
    pub(crate) fn openpgp_ca(&self) -> Result<(Arc<OpenpgpCa>, &OpenpgpConfig), Failure> {
        let config = self.config.openpgp.as_ref().ok_or_else(|| {
            Failure::new(
                Status::NOT_ENABLED,
                "OpenPGP certification is not configured",
            )
        })?;
        if let Some(ca) = self
            .openpgp
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            return Ok((Arc::clone(ca), config));
        }
        // Loaded without the lock held: the HSM may hang, and health reads the slot.
        let ca = Arc::new(load(self.backend.as_ref(), config).map_err(|e| pgp_failure(&e))?);
        *self.openpgp.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&ca));
        Ok((ca, config))
    }

    /// Handles `openpgp_ca`.
    pub fn openpgp_certificate(&self) -> Result<msg::OpenpgpCaReply, Failure> {
        let (ca, _) = self.openpgp_ca()?;
        Ok(msg::OpenpgpCaReply {
            fingerprint: ca.ca.fingerprint(),
            certificate: ca.ca.binary().map_err(|e| pgp_failure(&e))?,
        })
    }

    /// Handles `certify_openpgp`: checks the key and the user IDs, certifies
    /// them in the HSM and records the result durably before answering.
    pub fn certify_openpgp(
        &self,
        ctx: &CallContext,
        request: msg::CertifyOpenpgp,
    ) -> Result<msg::CertifyOpenpgpReply, Failure> {
        idempotency::check_key(&request.request_id)?;
        let digest = idempotency::request_digest(&request);
        if let Some(record) = self
            .repo
            .find_certification(&request.request_id)
            .map_err(|e| self.damaged(e, "nothing was certified"))?
        {
            return replay(&record, &digest);
        }
        let (ca, config) = self.openpgp_ca()?;
        let policy = &config.policy;
        let user = inspect(&request.key, policy).map_err(|e| pgp_failure(&e))?;
        let signer = HsmSigner::new(
            self.backend.as_ref(),
            &config.key,
            &ca.ca.public,
            ca.kind,
            policy.hash,
        );
        self.check_clock(None)?;
        let now = self.clock.now_secs();
        let certified = certify(
            user,
            &request.user_ids,
            now,
            request.expires_at,
            policy,
            &signer,
        )
        .map_err(|e| pgp_failure(&e))?;
        let record = CertificationRecord {
            request_id: request.request_id.clone(),
            request_digest: digest.clone(),
            fingerprint: certified.fingerprint,
            ca_fingerprint: ca.ca.fingerprint(),
            certifications: certified
                .certifications
                .into_iter()
                .map(|(uid, sig)| (uid, serde_bytes::ByteBuf::from(sig)))
                .collect(),
            key: certified.key,
            created_at: now,
            expires_at: request.expires_at,
            signer_id: self.signer_id.clone(),
        };
        match self.repo.record_certification(record.clone()) {
            Ok(Certified::Inserted) => {
                let uids: Vec<&str> = record
                    .certifications
                    .iter()
                    .map(|(u, _)| u.as_str())
                    .collect();
                info!(req_id = ctx.envelope_id, request_id = %record.request_id, fingerprint = %record.fingerprint, user_ids = ?uids, expires_at = record.expires_at, "OpenPGP user IDs certified");
                Ok(reply_from(&record, false))
            }
            Ok(Certified::Existing(original)) => replay(&original, &digest),
            Err(e) => Err(self.damaged(e, "nothing was certified")),
        }
    }
}
