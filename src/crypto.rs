//! Everything that turns a secret into something safe to keep: argon2id for credentials, HMAC-SHA256 for
//! OTPs and carrier hop texts (to sign the delivery-report URLs given to Kannel, and to name the subject
//! of an audit trail line without its ID number), and
//! ChaCha20-Poly1305 to seal queued SMS bodies.
//!
//! All keys derive from one 32-byte master key kept in a file *outside* the sled database
//! (`--key-file`), so a copy of the database alone reveals no OTP, hop text or queued SMS.
//!
//! Argon2id parameters are OWASP's Password Storage Cheat Sheet minimum, m = 19 MiB, t = 2, p = 1
//! (the `argon2` 0.5 defaults). Hashing is pure CPU work: callers run it on the hashing pool
//! (`hashing`), whose threads keep their 19 MiB of argon2 working memory from one hash to the next
//! ([`keep_hash_memory`]) instead of allocating, zeroing and page-faulting it in for every hash.

use std::cell::RefCell;
use std::fs;
use std::io::Write;
use std::path::Path;

use argon2::password_hash::{Output, ParamsString, PasswordHash, SaltString};
use argon2::{Algorithm, Argon2, Block, KeyId, Params, ParamsBuilder, Version};
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::domain::Secret;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("password hashing failed")]
    Hash,
    #[error("sealed data could not be opened")]
    Open,
}

thread_local! {
    /// The argon2 working memory a hashing thread keeps between hashes; `None` on other threads, which
    /// allocate it per hash as usual.
    static KEPT_BLOCKS: RefCell<Option<Vec<Block>>> = const { RefCell::new(None) };
}

/// Makes this thread keep argon2's working memory between hashes (the hashing pool's threads: a bounded
/// number, so the memory kept is bounded too: one block set of the current cost each).
pub fn keep_hash_memory() {
    KEPT_BLOCKS.with(|k| {
        if let Ok(mut k) = k.try_borrow_mut() {
            k.get_or_insert_with(Vec::new);
        }
    });
}

/// argon2 of `pwd` and `salt` into `out`, in this thread's kept memory when it keeps some.
fn argon_into(argon: &Argon2<'_>, pwd: &[u8], salt: &[u8], out: &mut [u8]) -> Result<(), argon2::Error> {
    KEPT_BLOCKS.with(|k| match k.try_borrow_mut() {
        Ok(mut kept) => match kept.as_mut() {
            Some(blocks) => {
                // Every block is written before it is read, so what an earlier hash left needs no clearing.
                blocks.resize(argon.params().block_count(), Block::default());
                argon.hash_password_into_with_memory(pwd, salt, out, &mut blocks[..])
            }
            None => argon.hash_password_into(pwd, salt, out),
        },
        Err(_) => argon.hash_password_into(pwd, salt, out),
    })
}

/// Argon2id cost settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashCost {
    pub m_kib: u32,
    pub t: u32,
    pub p: u32,
}

impl HashCost {
    /// OWASP Password Storage Cheat Sheet: argon2id, m = 19456 KiB, t = 2, p = 1.
    pub const OWASP: HashCost = HashCost { m_kib: 19_456, t: 2, p: 1 };
    /// Cheap settings that keep long test suites fast. Never for production: the name says so.
    pub const DANGER_TEST_ONLY: HashCost = HashCost { m_kib: 64, t: 1, p: 1 };
}

/// A 32-byte key; its `Debug` never prints the bytes.
#[derive(Clone)]
struct Key([u8; 32]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(***)")
    }
}

/// The hashing and sealing toolbox handed to the engine and the stores.
#[derive(Debug, Clone)]
pub struct Crypto {
    otp: Key,
    hop: Key,
    seal: Key,
    /// argon2id's secret input (a "pepper"), kept out of the database: a stolen database alone does not
    /// allow guessing a 6-digit passcode offline (10^6 tries) or a password.
    pepper: Key,
    dlr: Key,
    /// Pseudonyms of ID numbers in the audit trail file.
    audit: Key,
    /// See [`Crypto::key_check`].
    key_check: Key,
    cost: HashCost,
    dummy_hash: String,
}

fn derive(master: &[u8; 32], label: &str) -> Key {
    let mut out = [0u8; 32];
    if let Ok(mut mac) = <HmacSha256 as Mac>::new_from_slice(master) {
        mac.update(label.as_bytes());
        out.copy_from_slice(&mac.finalize().into_bytes());
    }
    Key(out)
}

impl Crypto {
    pub fn from_master(master: &[u8; 32], cost: HashCost) -> Result<Crypto, CryptoError> {
        let mut c = Crypto {
            otp: derive(master, "kichhoat/otp/v1"),
            hop: derive(master, "kichhoat/hop/v1"),
            seal: derive(master, "kichhoat/seal/v1"),
            pepper: derive(master, "kichhoat/pepper/v1"),
            dlr: derive(master, "kichhoat/dlr/v1"),
            audit: derive(master, "kichhoat/audit-subject/v1"),
            key_check: derive(master, "kichhoat/key-check/v1"),
            cost,
            dummy_hash: String::new(),
        };
        // A real hash to verify against when an account does not exist, so that "no such account"
        // takes as long as "wrong password" (OWASP Authentication Cheat Sheet; ASVS 5.0 6.3.8).
        let mut seed = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut seed);
        c.dummy_hash = c.hash_secret(&hex::encode(seed), &mut rand::rngs::OsRng)?;
        Ok(c)
    }

    /// Reads the master key from `path` (64 hex characters), creating it with mode 0600 if absent.
    pub fn load_or_create(path: &Path, cost: HashCost) -> Result<Crypto, CryptoError> {
        let err = |reason: String| CryptoError::KeyFile { path: path.display().to_string(), reason };
        let master = match fs::read_to_string(path) {
            Ok(text) => {
                refuse_wide_permissions(path).map_err(err)?;
                let bytes = hex::decode(text.trim()).map_err(|_| err("not hex".into()))?;
                <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| err("not 32 bytes".into()))?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut key);
                if let Some(dir) = path.parent() {
                    fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
                }
                // Written whole beside it, then linked into place (atomic, and refused if the file exists):
                // instances started at once on one key file (several on one database) never read half a
                // key, and all end up with the one that was linked first.
                let mut tmp = path.as_os_str().to_owned();
                tmp.push(format!(".{}-{:08x}.tmp", std::process::id(), rand::rngs::OsRng.next_u32()));
                let tmp = std::path::PathBuf::from(tmp);
                let mut opts = fs::OpenOptions::new();
                opts.write(true).create(true).truncate(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
                let written = opts.open(&tmp).and_then(|mut f| {
                    f.write_all(hex::encode(key).as_bytes())?;
                    f.sync_all()
                });
                let linked = written.and_then(|()| fs::hard_link(&tmp, path));
                let _ = fs::remove_file(&tmp);
                match linked {
                    Ok(()) => key,
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        return Crypto::load_or_create(path, cost)
                    }
                    Err(e) => return Err(err(e.to_string())),
                }
            }
            Err(e) => return Err(err(e.to_string())),
        };
        Crypto::from_master(&master, cost)
    }

    /// argon2id at the current cost with the pepper; the PHC string names the pepper (`keyid`), so a hash
    /// made before the pepper (or at another cost) is recognised and upgraded at its next successful use.
    fn argon(&self) -> Result<Argon2<'_>, CryptoError> {
        let mut params = ParamsBuilder::new();
        params.m_cost(self.cost.m_kib).t_cost(self.cost.t).p_cost(self.cost.p);
        params.keyid(KeyId::new(PEPPER_KEYID).map_err(|_| CryptoError::Hash)?);
        let params = params.build().map_err(|_| CryptoError::Hash)?;
        Argon2::new_with_secret(&self.pepper.0, Algorithm::Argon2id, Version::V0x13, params)
            .map_err(|_| CryptoError::Hash)
    }

    /// Whether a stored hash should be replaced after it verified: made without the pepper, or at another
    /// cost than today's (OWASP Password Storage Cheat Sheet: upgrade hashes on log-in).
    pub fn needs_rehash(&self, phc: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(phc) else { return true };
        let Ok(params) = Params::try_from(&parsed) else { return true };
        params.keyid() != PEPPER_KEYID
            || (params.m_cost(), params.t_cost(), params.p_cost()) != (self.cost.m_kib, self.cost.t, self.cost.p)
    }

    /// argon2id with a fresh 16-byte salt; returns the PHC string (algorithm, parameters, salt, hash).
    pub fn hash_secret(&self, secret: &str, rng: &mut dyn RngCore) -> Result<String, CryptoError> {
        let mut salt = [0u8; 16];
        rng.fill_bytes(&mut salt);
        let argon = self.argon()?;
        let salt_b64 = SaltString::encode_b64(&salt).map_err(|_| CryptoError::Hash)?;
        let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
        argon_into(&argon, secret.as_bytes(), &salt, &mut out).map_err(|_| CryptoError::Hash)?;
        let hash = PasswordHash {
            algorithm: Algorithm::Argon2id.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(argon.params()).map_err(|_| CryptoError::Hash)?,
            salt: Some(salt_b64.as_salt()),
            hash: Some(Output::new(&out).map_err(|_| CryptoError::Hash)?),
        };
        Ok(hash.to_string())
    }

    /// True when `secret` matches the PHC string. The parameters are read from the string itself, so
    /// hashes made under older settings still verify.
    pub fn verify_secret(&self, secret: &str, phc: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(phc) else {
            return false;
        };
        let (Some(salt), Some(expected)) = (parsed.salt, parsed.hash) else {
            return false;
        };
        let (Ok(algorithm), Ok(params)) = (Algorithm::try_from(parsed.algorithm), Params::try_from(&parsed)) else {
            return false;
        };
        let version = match parsed.version.map(Version::try_from) {
            None => Version::default(),
            Some(Ok(v)) => v,
            Some(Err(_)) => return false,
        };
        let argon = if params.keyid() == PEPPER_KEYID {
            // The hash's own parameters are used; only the secret comes from here.
            match Argon2::new_with_secret(&self.pepper.0, algorithm, version, params) {
                Ok(a) => a,
                Err(_) => return false,
            }
        } else {
            Argon2::new(algorithm, version, params)
        };
        let mut salt_buf = [0u8; 64];
        let Ok(salt) = salt.decode_b64(&mut salt_buf) else {
            return false;
        };
        let mut out = vec![0u8; expected.len()];
        if argon_into(&argon, secret.as_bytes(), salt, &mut out).is_err() {
            return false;
        }
        // `Output`'s equality is constant-time.
        Output::new(&out).is_ok_and(|computed| computed == expected)
    }

    /// Spends the time of one verification against a hash that matches nothing.
    pub fn dummy_verify(&self, secret: &str) {
        let _ = self.verify_secret(secret, &self.dummy_hash);
    }

    /// Keyed hash of an OTP, bound to the ID number and phone it was issued for (NIST SP 800-63B
    /// §5.1.3: the code is bound to the request).
    pub fn otp_mac(&self, national_id: &str, phone: &str, code: &Secret) -> [u8; 32] {
        mac(&self.otp, &[national_id.as_bytes(), phone.as_bytes(), code.expose().as_bytes()])
    }

    /// Keyed hash of a carrier hop (phone, session id, cumulative text): lets retries be recognised
    /// without ever storing the text, which repeats typed passwords.
    pub fn hop_mac(&self, phone: &str, session_id: &str, text: &str) -> [u8; 32] {
        mac(&self.hop, &[phone.as_bytes(), session_id.as_bytes(), text.as_bytes()])
    }

    /// Keyed hash of a delivery-report address (message id, recipient in canonical form): the signature
    /// in the `dlr-url` handed to Kannel, so only Kannel, which got it from us, can report on a message.
    pub fn dlr_mac(&self, sms_id: &str, to: &str) -> [u8; 32] {
        mac(&self.dlr, &[sms_id.as_bytes(), to.as_bytes()])
    }

    /// The audit trail's pseudonym of an ID number: 16 bytes of its keyed hash, in hex. The same ID always
    /// gives the same subject (an operator can follow one citizen's events, and find them from the ID with
    /// the key), but the file alone does not give the ID back: 10^12 candidates are no obstacle to a plain
    /// hash, and are to a key kept outside the file.
    pub fn audit_subject(&self, national_id: &str) -> String {
        hex::encode(&mac(&self.audit, &[national_id.as_bytes()])[..16])
    }

    /// A fingerprint of the master key (a keyed hash of a fixed label, under a key of its own): a database
    /// shared by several instances keeps it, so an instance started with another key file is refused
    /// before it writes what the others cannot read. It gives nothing of the key back.
    pub fn key_check(&self) -> String {
        hex::encode(&mac(&self.key_check, &[b"kichhoat key check"])[..16])
    }

    /// Seals `plain` with ChaCha20-Poly1305 under a random nonce; `aad` binds it to its record.
    pub fn seal(&self, plain: &Secret, aad: &[u8], rng: &mut dyn RngCore) -> Result<Vec<u8>, CryptoError> {
        let cipher = ChaCha20Poly1305::new_from_slice(&self.seal.0).map_err(|_| CryptoError::Hash)?;
        let mut nonce = [0u8; 12];
        rng.fill_bytes(&mut nonce);
        let mut out = nonce.to_vec();
        let ct = cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain.expose().as_bytes(), aad })
            .map_err(|_| CryptoError::Hash)?;
        out.extend_from_slice(&ct);
        Ok(out)
    }

    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Secret, CryptoError> {
        let cipher = ChaCha20Poly1305::new_from_slice(&self.seal.0).map_err(|_| CryptoError::Open)?;
        if sealed.len() < 12 {
            return Err(CryptoError::Open);
        }
        let (nonce, ct) = sealed.split_at(12);
        let plain =
            cipher.decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad }).map_err(|_| CryptoError::Open)?;
        String::from_utf8(plain).map(Secret::new).map_err(|_| CryptoError::Open)
    }
}

/// Names the pepper in PHC strings (`keyid=cDE`); a new pepper scheme would take a new id.
const PEPPER_KEYID: &[u8] = b"p1";

/// A key file readable by anyone but its owner is refused: it is the one secret outside the database.
fn refuse_wide_permissions(path: &Path) -> Result<(), String> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path).map_err(|e| e.to_string())?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(format!(
                "readable by other users (mode {mode:03o}); run `chmod 600 {}` and start again",
                path.display()
            ));
        }
    }
    Ok(())
}

/// Constant-time equality of two MACs.
pub fn mac_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

/// Constant-time equality of a MAC kept as hex in a stored record and a freshly computed one. A record
/// that is not 32 bytes of hex matches nothing.
pub fn stored_mac_eq(stored_hex: &str, mac: &[u8; 32]) -> bool {
    match hex::decode(stored_hex).ok().and_then(|b| <[u8; 32]>::try_from(b).ok()) {
        Some(stored) => mac_eq(&stored, mac),
        None => false,
    }
}

fn mac(key: &Key, parts: &[&[u8]]) -> [u8; 32] {
    let mut out = [0u8; 32];
    if let Ok(mut m) = <HmacSha256 as Mac>::new_from_slice(&key.0) {
        for p in parts {
            // Length-prefix each part so ("ab","c") and ("a","bc") differ.
            m.update(&(p.len() as u64).to_be_bytes());
            m.update(p);
        }
        out.copy_from_slice(&m.finalize().into_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHasher, PasswordVerifier};
    use rand::SeedableRng;

    fn crypto() -> Crypto {
        Crypto::from_master(&[7u8; 32], HashCost::DANGER_TEST_ONLY).unwrap()
    }

    #[test]
    fn a_hashed_secret_verifies_and_a_different_one_does_not() {
        let c = crypto();
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let phc = c.hash_secret("Abc*1234x", &mut rng).unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(!phc.contains("Abc*1234x"));
        assert!(c.verify_secret("Abc*1234x", &phc));
        assert!(!c.verify_secret("Abc*1234y", &phc));
    }

    #[test]
    fn hashes_agree_with_the_argon2_crates_own_phc_hashing_and_verifying() {
        let c = crypto();
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let ours = c.hash_secret("Abc*1234x", &mut rng).unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        let theirs = c.argon().unwrap();
        assert!(theirs.verify_password(b"Abc*1234x", &parsed).is_ok());
        assert!(theirs.verify_password(b"Abc*1234y", &parsed).is_err());
        // The same salt and secret give the very same PHC string through the crate's hasher.
        assert_eq!(theirs.hash_password(b"Abc*1234x", parsed.salt.unwrap()).unwrap().to_string(), ours);
        let salt = SaltString::encode_b64(&[9u8; 16]).unwrap();
        let made_there = theirs.hash_password(b"258147", &salt).unwrap();
        assert!(c.verify_secret("258147", &made_there.to_string()));
        assert!(!c.verify_secret("258148", &made_there.to_string()));
    }

    #[test]
    fn a_hashing_thread_reuses_its_memory_across_hashes_of_any_cost() {
        std::thread::spawn(|| {
            keep_hash_memory();
            let small = crypto();
            let big = Crypto::from_master(&[7u8; 32], HashCost { m_kib: 256, t: 1, p: 1 }).unwrap();
            let mut rng = rand::rngs::StdRng::seed_from_u64(6);
            let a = small.hash_secret("Abc*1234x", &mut rng).unwrap();
            let b = big.hash_secret("Abc*1234x", &mut rng).unwrap();
            for _ in 0..2 {
                assert!(small.verify_secret("Abc*1234x", &a) && big.verify_secret("Abc*1234x", &a));
                assert!(small.verify_secret("Abc*1234x", &b) && !small.verify_secret("Abc*1234y", &b));
            }
            let kept = KEPT_BLOCKS.with(|k| k.borrow().as_ref().map(|b| b.len()));
            // Sized for the last hash (b's own cost, 256 KiB of 1 KiB blocks).
            assert_eq!(kept, Some(256));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn hashes_are_peppered_and_unpeppered_ones_still_verify_but_ask_for_an_upgrade() {
        let c = crypto();
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let peppered = c.hash_secret("258147", &mut rng).unwrap();
        assert!(peppered.contains("keyid="), "{peppered}");
        assert!(c.verify_secret("258147", &peppered));
        assert!(!c.needs_rehash(&peppered));
        // The same passcode under another master key (another pepper) does not verify: a stolen database
        // without the key file is not enough.
        let other = Crypto::from_master(&[8u8; 32], HashCost::DANGER_TEST_ONLY).unwrap();
        assert!(!other.verify_secret("258147", &peppered));
        // A hash of the first release: no pepper.
        let legacy = {
            let params = Params::new(64, 1, 1, None).unwrap();
            let salt = SaltString::encode_b64(&[5u8; 16]).unwrap();
            Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
                .hash_password(b"258147", &salt)
                .unwrap()
                .to_string()
        };
        assert!(c.verify_secret("258147", &legacy));
        assert!(c.needs_rehash(&legacy));
    }

    #[cfg(unix)]
    #[test]
    fn a_key_file_others_can_read_is_refused_with_what_to_do() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret.key");
        Crypto::load_or_create(&path, HashCost::DANGER_TEST_ONLY).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Crypto::load_or_create(&path, HashCost::DANGER_TEST_ONLY).unwrap_err().to_string();
        assert!(err.contains("mode 644") && err.contains("chmod 600"), "{err}");
    }

    #[test]
    fn production_hashes_use_owasp_parameters() {
        let c = Crypto::from_master(&[1u8; 32], HashCost::OWASP).unwrap();
        let phc = c.hash_secret("Abc*1234x", &mut rand::rngs::OsRng).unwrap();
        assert!(phc.contains("m=19456,t=2,p=1"), "{phc}");
    }

    #[test]
    fn otp_macs_are_bound_to_the_request() {
        let c = crypto();
        let code = Secret::new("123456");
        let a = c.otp_mac("001099012345", "84912345678", &code);
        assert!(mac_eq(&a, &c.otp_mac("001099012345", "84912345678", &code)));
        assert!(!mac_eq(&a, &c.otp_mac("001099012346", "84912345678", &code)));
        assert!(!mac_eq(&a, &c.otp_mac("001099012345", "84912345679", &code)));
    }

    #[test]
    fn delivery_report_signatures_are_bound_to_the_message_and_recipient_and_use_their_own_key() {
        let c = crypto();
        let sig = c.dlr_mac("3f9a1c2b7d4e5f60-7", "84912345678");
        assert!(mac_eq(&sig, &c.dlr_mac("3f9a1c2b7d4e5f60-7", "84912345678")));
        assert!(!mac_eq(&sig, &c.dlr_mac("3f9a1c2b7d4e5f60-8", "84912345678")));
        assert!(!mac_eq(&sig, &c.dlr_mac("3f9a1c2b7d4e5f60-7", "84912345679")));
        for other_key in [&c.otp, &c.hop, &c.seal] {
            assert!(!mac_eq(&sig, &mac(other_key, &[b"3f9a1c2b7d4e5f60-7", b"84912345678"])), "a key of its own");
        }
        let other = Crypto::from_master(&[8u8; 32], HashCost::DANGER_TEST_ONLY).unwrap();
        assert!(!mac_eq(&sig, &other.dlr_mac("3f9a1c2b7d4e5f60-7", "84912345678")));
    }

    #[test]
    fn audit_subjects_are_stable_per_id_keyed_and_never_hold_the_id() {
        let c = crypto();
        let s = c.audit_subject("001099012345");
        assert_eq!(s.len(), 32, "16 bytes in hex: {s}");
        assert!(s.bytes().all(|b| b.is_ascii_hexdigit()) && !s.contains("001099012345"));
        assert_eq!(s, c.audit_subject("001099012345"));
        assert_ne!(s, c.audit_subject("001099012346"));
        let other = Crypto::from_master(&[8u8; 32], HashCost::DANGER_TEST_ONLY).unwrap();
        assert_ne!(s, other.audit_subject("001099012345"), "keyed by the master key");
        for other_key in [&c.otp, &c.hop, &c.seal, &c.pepper, &c.dlr] {
            assert_ne!(s, hex::encode(&mac(other_key, &[b"001099012345"])[..16]), "a key of its own");
        }
    }

    #[test]
    fn sealed_bodies_open_only_with_their_record_binding() {
        let c = crypto();
        let sealed = c.seal(&Secret::new("Ma OTP 123456"), b"42", &mut rand::rngs::OsRng).unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"123456"));
        assert_eq!(c.open(&sealed, b"42").unwrap().expose(), "Ma OTP 123456");
        assert!(c.open(&sealed, b"43").is_err());
    }

    #[test]
    fn instances_creating_one_key_file_at_once_all_get_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shared.key");
        let macs: Vec<[u8; 32]> = std::thread::scope(|s| {
            let opened: Vec<_> = (0..8)
                .map(|_| s.spawn(|| Crypto::load_or_create(&path, HashCost::DANGER_TEST_ONLY).unwrap()))
                .collect();
            opened.into_iter().map(|h| h.join().unwrap().otp_mac("1", "2", &Secret::new("123456"))).collect()
        });
        assert!(macs.iter().all(|m| m == &macs[0]), "one key for all");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
    }

    #[test]
    fn the_key_file_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k/secret.key");
        let a = Crypto::load_or_create(&path, HashCost::DANGER_TEST_ONLY).unwrap();
        let b = Crypto::load_or_create(&path, HashCost::DANGER_TEST_ONLY).unwrap();
        assert_eq!(a.hop_mac("p", "s", "t"), b.hop_mac("p", "s", "t"));
    }
}
