//! Runs the login server's jobs against an [`AccountStore`] with Argon2id, on worker threads.

use crate::machine::{Job, JobOutcome, NewDeviceLimit, Secret, WorkItem};

/// Seconds in the window of [`NewDeviceLimit::per_account_per_day`].
const DAY: u64 = 86_400;
use crate::password::{self, HashParams};
use natter_core::crypto::{DeviceId, UnixTime, UserName};
use natter_core::login::proto::{
    DeviceSummary, LoginError, RevokedDevice, MAX_DEVICES_LISTED, MAX_REQUESTS_LISTED,
};

use crate::store::{AccountRecord, AccountStore, DeviceRecord, RequestAdded, StoreError};

/// Everything a worker needs besides the job.
pub struct JobContext<'a> {
    /// The accounts.
    pub store: &'a dyn AccountStore,
    /// Argon2id cost for new hashes.
    pub params: HashParams,
    /// A hash of no password, verified against when the account does not exist so that
    /// "unknown user" takes as long as "wrong password".
    pub dummy_hash: &'a str,
}

fn backend(e: &StoreError) -> LoginError {
    tracing::warn!(error = %e, "account store failure");
    LoginError::Server
}

fn salt() -> Result<[u8; 16], LoginError> {
    let mut s = [0u8; 16];
    getrandom::fill(&mut s).map_err(|_| LoginError::Server)?;
    Ok(s)
}

impl JobContext<'_> {
    /// Check `password` for `user`; on success returns the account (re-hashed with the
    /// current parameters if its hash was weaker).
    fn check_password(
        &self,
        user: &UserName,
        password: &Secret,
    ) -> Result<AccountRecord, LoginError> {
        let account = self.store.account(user).map_err(|e| backend(&e))?;
        let Some(account) = account else {
            let _ = password::verify(&password.0, self.dummy_hash);
            return Err(LoginError::UnknownUser);
        };
        match password::verify(&password.0, &account.password_hash) {
            Ok(true) => {}
            Ok(false) => return Err(LoginError::WrongPassword),
            Err(e) => {
                tracing::warn!(user = %user, error = %e, "stored password hash unreadable");
                return Err(LoginError::Server);
            }
        }
        if password::needs_rehash(&account.password_hash, self.params) {
            if let Ok(h) = password::hash(&password.0, salt()?, self.params) {
                let _ = self.store.set_password_hash(user, &h);
            }
        }
        Ok(account)
    }

    fn record_device(
        &self,
        user: &UserName,
        device: DeviceId,
        signing_public: [u8; 32],
        dh_public: [u8; 32],
        wall: UnixTime,
        new_device: Option<NewDeviceLimit>,
    ) -> Result<bool, LoginError> {
        let existing = self.store.device(&device).map_err(|e| backend(&e))?;
        match (&existing, new_device) {
            (Some(d), _) if d.revoked_at.is_some() => return Err(LoginError::Revoked),
            (Some(d), _) if d.user != *user => return Err(LoginError::UnknownDevice),
            (Some(d), _) if d.signing_public != signing_public || d.dh_public != dh_public => {
                return Err(LoginError::BadProof)
            }
            (None, None) => return Err(LoginError::UnknownDevice),
            (None, Some(limit)) => self.may_add_device(user, wall, limit)?,
            _ => {}
        }
        let record = DeviceRecord {
            user: user.clone(),
            device,
            signing_public,
            dh_public,
            first_seen: existing.as_ref().map_or(wall, |d| d.first_seen),
            last_seen: wall,
            revoked_at: None,
        };
        match self.store.upsert_device(&record) {
            Ok(()) => Ok(existing.is_none()),
            Err(StoreError::NoSuchAccount) => Err(LoginError::UnknownUser),
            Err(StoreError::DeviceOwnedElsewhere) => Err(LoginError::UnknownDevice),
            // One X25519 key, one device: a second device claiming it proves nothing it may
            // have (the proof of possession makes this a copied key, not a stolen one).
            Err(StoreError::KeyInUse) => Err(LoginError::BadProof),
            Err(e) => Err(backend(&e)),
        }
    }

    /// Whether `user` may add a device now: within its own allowance for 24 hours and its
    /// address's.
    fn may_add_device(
        &self,
        user: &UserName,
        wall: UnixTime,
        limit: NewDeviceLimit,
    ) -> Result<(), LoginError> {
        if let Some(retry_after_secs) = limit.address_retry_after {
            return Err(LoginError::Throttled { retry_after_secs });
        }
        let since = wall.0.saturating_sub(DAY);
        let recent: Vec<u64> = self
            .store
            .devices(user)
            .map_err(|e| backend(&e))?
            .iter()
            .map(|d| d.first_seen.0)
            .filter(|t| *t > since)
            .collect();
        if recent.len() >= limit.per_account_per_day as usize {
            let oldest = recent.iter().min().copied().unwrap_or(wall.0);
            let wait = (oldest + DAY).saturating_sub(wall.0).max(1);
            return Err(LoginError::Throttled {
                retry_after_secs: u32::try_from(wait).unwrap_or(u32::MAX),
            });
        }
        Ok(())
    }

    /// The asking `device` is one of `user`'s, not revoked.
    fn device_in_use(&self, user: &UserName, device: &DeviceId) -> Result<(), LoginError> {
        match self.store.device(device).map_err(|e| backend(&e))? {
            Some(d) if d.user != *user => Err(LoginError::UnknownDevice),
            None => Err(LoginError::UnknownDevice),
            Some(d) if d.revoked_at.is_some() => Err(LoginError::Revoked),
            Some(_) => Ok(()),
        }
    }

    /// Run one job.
    pub fn run(&self, item: &WorkItem) -> JobOutcome {
        match self.run_inner(item) {
            Ok(outcome) => outcome,
            Err(e) => JobOutcome::Failed(e),
        }
    }

    fn run_inner(&self, item: &WorkItem) -> Result<JobOutcome, LoginError> {
        let wall = item.wall;
        match &item.job {
            Job::Register { user, password } => {
                let hash = password::hash(&password.0, salt()?, self.params)
                    .map_err(|_| LoginError::Server)?;
                let record = AccountRecord {
                    user: user.clone(),
                    password_hash: hash,
                    created_at: wall,
                };
                match self.store.create_account(&record) {
                    Ok(()) => Ok(JobOutcome::Ok),
                    Err(StoreError::NameTaken) => Err(LoginError::NameTaken),
                    Err(e) => Err(backend(&e)),
                }
            }
            Job::Login {
                user,
                password,
                device,
                keys,
                new_device,
            } => {
                self.check_password(user, password)?;
                let added = self.record_device(
                    user,
                    *device,
                    keys.signing_public,
                    keys.dh_public,
                    wall,
                    Some(*new_device),
                )?;
                Ok(if added {
                    JobOutcome::DeviceAdded
                } else {
                    JobOutcome::Ok
                })
            }
            Job::Renew {
                user,
                device,
                signing_public,
                dh_public,
            } => {
                if self.store.account(user).map_err(|e| backend(&e))?.is_none() {
                    return Err(LoginError::UnknownUser);
                }
                self.record_device(user, *device, *signing_public, *dh_public, wall, None)?;
                Ok(JobOutcome::Ok)
            }
            Job::ChangePassword {
                user,
                old,
                new,
                keep_only,
            } => {
                self.check_password(user, old)?;
                let hash =
                    password::hash(&new.0, salt()?, self.params).map_err(|_| LoginError::Server)?;
                match self.store.set_password_hash(user, &hash) {
                    Ok(()) => {}
                    Err(StoreError::NoSuchAccount) => return Err(LoginError::UnknownUser),
                    Err(e) => return Err(backend(&e)),
                }
                if let Some(keep) = keep_only {
                    // Each revocation is atomic and goes on the revocation list; a crash
                    // midway leaves some devices certified, and asking again revokes them.
                    let devices = self.store.devices(user).map_err(|e| backend(&e))?;
                    for d in devices
                        .iter()
                        .filter(|d| d.device != *keep && d.revoked_at.is_none())
                    {
                        match self.store.revoke_device(user, &d.device, wall) {
                            Ok(_) | Err(StoreError::NoSuchDevice) => {}
                            Err(e) => return Err(backend(&e)),
                        }
                    }
                }
                Ok(JobOutcome::Ok)
            }
            Job::RevokeDevice {
                user,
                password,
                device,
            } => {
                self.check_password(user, password)?;
                match self.store.revoke_device(user, device, wall) {
                    Ok(_) => Ok(JobOutcome::Ok),
                    Err(StoreError::NoSuchDevice) => Err(LoginError::UnknownDevice),
                    Err(e) => Err(backend(&e)),
                }
            }
            Job::DeleteAccount { user, password } => {
                self.check_password(user, password)?;
                match self.store.delete_account(user, wall) {
                    Ok(()) => Ok(JobOutcome::Ok),
                    Err(StoreError::NoSuchAccount) => Err(LoginError::UnknownUser),
                    Err(e) => Err(backend(&e)),
                }
            }
            Job::Revocations { since, limit } => {
                let rows = self
                    .store
                    .revocations_since(*since, *limit + 1)
                    .map_err(|e| backend(&e))?;
                let complete = rows.len() <= *limit;
                let entries = rows
                    .into_iter()
                    .take(*limit)
                    .map(|r| RevokedDevice {
                        serial: r.serial,
                        device: r.device,
                        revoked_at: r.revoked_at,
                    })
                    .collect();
                Ok(JobOutcome::Revocations { entries, complete })
            }
            Job::Devices { user, device } => {
                let mut devices = self.store.devices(user).map_err(|e| backend(&e))?;
                // Only a device of the account in use may ask.
                match devices.iter().find(|d| d.device == *device) {
                    None => return Err(LoginError::UnknownDevice),
                    Some(d) if d.revoked_at.is_some() => return Err(LoginError::Revoked),
                    Some(_) => {}
                }
                // In use first (oldest first), then the most recently revoked.
                devices.sort_by_key(|d| match d.revoked_at {
                    None => (0, d.first_seen.0),
                    Some(t) => (1, u64::MAX - t.0),
                });
                Ok(JobOutcome::Devices(
                    devices
                        .into_iter()
                        .take(MAX_DEVICES_LISTED)
                        .map(|d| DeviceSummary {
                            device: d.device,
                            first_seen: d.first_seen,
                            last_seen: d.last_seen,
                            revoked_at: d.revoked_at,
                        })
                        .collect(),
                ))
            }
            Job::GetBuddyList { user, device } => {
                self.device_in_use(user, device)?;
                let list = self.store.buddy_list(user).map_err(|e| backend(&e))?;
                Ok(JobOutcome::BuddyList(list))
            }
            Job::PutBuddyList {
                user,
                device,
                base,
                list,
            } => {
                self.device_in_use(user, device)?;
                match self.store.put_buddy_list(user, *base, list) {
                    Ok(true) => Ok(JobOutcome::Ok),
                    Ok(false) => Err(LoginError::VersionConflict),
                    Err(e) => Err(backend(&e)),
                }
            }
            Job::SendContactRequest {
                user,
                device,
                to,
                note,
                accepting,
            } => {
                self.device_in_use(user, device)?;
                match self
                    .store
                    .add_contact_request(user, to, note, *accepting, wall)
                {
                    Ok(RequestAdded::Stored) => Ok(JobOutcome::Ok),
                    Ok(RequestAdded::NoSuchRecipient) => Err(LoginError::UnknownUser),
                    // Waiting requests leave as they are answered: an hour is a guess the
                    // client only shows.
                    Ok(RequestAdded::SenderLimit | RequestAdded::RecipientFull) => {
                        Err(LoginError::Throttled {
                            retry_after_secs: 3600,
                        })
                    }
                    Err(e) => Err(backend(&e)),
                }
            }
            Job::GetContactRequests { user, device } => {
                self.device_in_use(user, device)?;
                self.store
                    .contact_requests(user, MAX_REQUESTS_LISTED)
                    .map(JobOutcome::ContactRequests)
                    .map_err(|e| backend(&e))
            }
            Job::DeleteContactRequests { user, device, ids } => {
                self.device_in_use(user, device)?;
                self.store
                    .delete_contact_requests(user, ids)
                    .map(|()| JobOutcome::Ok)
                    .map_err(|e| backend(&e))
            }
        }
    }
}
