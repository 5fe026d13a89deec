//! Account counter keys: how an account's normalised identifier becomes the
//! key its counters are kept under, in memory and in Redis.
//!
//! A key must be the same on every replica that shares a Redis, must not let
//! anyone aim two accounts at one counter, and should not tell which account
//! it is: a Redis dump must not be a list of the pool's phone numbers. A hash
//! alone cannot do the last (there are only a few billion phone numbers to
//! try), so the key is a keyed hash ([`AccountKeyer::from_secret`]) wherever
//! a key can be had: a random one for the memory store, the configured
//! secret for Redis. Redis without a secret keeps the unkeyed SHA-256 it used
//! before, so an upgrade neither stops on a missing setting nor forgets every
//! account's count; the gateway warns at start until the secret is set.
//! The same secret keys clients' addresses in Redis's key names
//! ([`AccountKeyer::client`]).

use std::hash::Hasher as _;

use sha2::{Digest, Sha256};
use siphasher::sip128::{Hasher128, SipHasher24};

/// The counter key of an account, made by an [`AccountKeyer`] from its
/// normalised identifier, lowercased (accounts count case-insensitively, so
/// `Bob` and `bob` share their tries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AccountKey(u128);

impl AccountKey {
    /// A key from its number, as [`Self::get`] gives it (benches spread
    /// keys with it; the gateway always makes keys with an [`AccountKeyer`]).
    pub fn from_raw(key: u128) -> AccountKey {
        AccountKey(key)
    }

    /// The key as a number.
    pub fn get(self) -> u128 {
        self.0
    }
}

/// Makes [`AccountKey`]s: one per process, chosen at start from the store's
/// configuration ([`crate::store::Store::new`]).
#[derive(Clone, Copy)]
pub struct AccountKeyer(Kind);

#[derive(Clone, Copy)]
enum Kind {
    /// SipHash-2-4 with a 128-bit output under a secret key: a PRF, so
    /// without the key a counter key tells nothing of its account, and no
    /// two accounts can be aimed at one key. A designed keyed hash from a
    /// well-kept crate rather than a construction of our own. Clients (IP
    /// addresses, for Redis's keys) are hashed under a second key derived
    /// apart, so the two kinds of key never meet.
    Keyed {
        account: SipHasher24,
        client: SipHasher24,
    },
    /// The first 128 bits of the identifier's SHA-256: the same everywhere
    /// without a secret, collision-free, but anyone holding a key can test
    /// candidate identifiers against it.
    Unkeyed,
}

impl AccountKeyer {
    /// Keyed with a random key: for a store no other process reads.
    pub fn random() -> AccountKeyer {
        AccountKeyer(Kind::Keyed {
            account: SipHasher24::new_with_key(&rand::random()),
            client: SipHasher24::new_with_key(&rand::random()),
        })
    }

    /// Keyed with a secret every replica sharing the store is given. The
    /// hash key is derived from it (any length in, 128 bits out), labelled
    /// so the secret's other uses never meet this one.
    pub fn from_secret(secret: &str) -> AccountKeyer {
        let derive = |label: &[u8]| {
            let d = Sha256::new()
                .chain_update(label)
                .chain_update(secret.as_bytes())
                .finalize();
            let mut key = [0u8; 16];
            key.copy_from_slice(&d[..16]);
            SipHasher24::new_with_key(&key)
        };
        AccountKeyer(Kind::Keyed {
            account: derive(b"poolgate account key v1\0"),
            client: derive(b"poolgate client key v1\0"),
        })
    }

    /// Unkeyed SHA-256: Redis without a configured secret (the keys poolgate
    /// wrote before keyed ones, so counts survive the upgrade).
    pub fn unkeyed() -> AccountKeyer {
        AccountKeyer(Kind::Unkeyed)
    }

    /// Whether keys are keyed (a Redis dump does not tell accounts).
    pub fn is_keyed(&self) -> bool {
        matches!(self.0, Kind::Keyed { .. })
    }

    /// The key a client (its 128-bit client key: an IPv4 address or an
    /// IPv6 prefix) is kept under in Redis: keyed with the secret, so a
    /// dump is not a list of the pool's users' addresses; unchanged
    /// without one. (The memory store keeps client keys as they are.)
    pub fn client(&self, key: u128) -> u128 {
        match self.0 {
            Kind::Keyed { mut client, .. } => {
                client.write(&key.to_be_bytes());
                u128::from(client.finish128())
            }
            Kind::Unkeyed => key,
        }
    }

    /// Names this keyer without revealing it: 16 hex digits of the key of
    /// a fixed label (a keyed keyer's is a PRF output, which tells nothing
    /// of its secret). Replicas sharing a Redis announce it, so replicas
    /// given different secrets (which count accounts apart) are noticed.
    pub fn fingerprint(&self) -> String {
        let k = self.key("poolgate account keyer fingerprint v1").get();
        format!("{:016x}", (k >> 64) as u64)
    }

    /// The key of a normalised identifier (made once per request, beside
    /// body extraction: [`crate::extract::Identifier::account_key`]).
    pub fn key(&self, normalised: &str) -> AccountKey {
        AccountKey(match self.0 {
            Kind::Keyed { account: mut h, .. } => {
                lowercased(normalised, |b| h.write(b));
                u128::from(h.finish128())
            }
            Kind::Unkeyed => sha256_lowercased(normalised),
        })
    }
}

impl std::fmt::Debug for AccountKeyer {
    /// Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Kind::Keyed { .. } => "AccountKeyer(keyed)",
            Kind::Unkeyed => "AccountKeyer(unkeyed)",
        })
    }
}

/// Hands `s` lowercased to `write`, in pieces, without an allocation when
/// it is ASCII (the usual identifier).
fn lowercased(s: &str, mut write: impl FnMut(&[u8])) {
    if s.is_ascii() {
        let mut buf = [0u8; 64];
        for chunk in s.as_bytes().chunks(buf.len()) {
            let b = &mut buf[..chunk.len()];
            b.copy_from_slice(chunk);
            b.make_ascii_lowercase();
            write(b);
        }
    } else {
        write(s.to_lowercase().as_bytes());
    }
}

/// The first 128 bits of the SHA-256 of `s` lowercased.
fn sha256_lowercased(s: &str) -> u128 {
    // The common case: one block, no streaming hasher.
    if s.is_ascii() && s.len() <= ONE_BLOCK {
        return sha256_one_block_lowercased(s.as_bytes());
    }
    let mut h = Sha256::new();
    lowercased(s, |b| h.update(b));
    let d = h.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&d[..16]);
    u128::from_be_bytes(first)
}

/// The longest message SHA-256 pads into one 64-byte block (then a 0x80
/// byte and the 8-byte bit length).
const ONE_BLOCK: usize = 55;

/// SHA-256's initial state (FIPS 180-4, 5.3.3).
const SHA256_INIT: [u32; 8] = [
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
];

/// The first 128 bits of the SHA-256 of `msg` lowercased (ASCII, at most
/// [`ONE_BLOCK`] bytes): the usual account, padded by hand and compressed
/// once, without the streaming hasher's buffering and finalisation (about
/// a third of the unkeyed key's time). The digest is the same: tested
/// against [`Sha256`] on every length.
fn sha256_one_block_lowercased(msg: &[u8]) -> u128 {
    let n = msg.len().min(ONE_BLOCK);
    let mut block = [0u8; 64];
    block[..n].copy_from_slice(&msg[..n]);
    block[..n].make_ascii_lowercase();
    block[n] = 0x80;
    block[56..].copy_from_slice(&((n as u64) * 8).to_be_bytes());
    let mut state = SHA256_INIT;
    sha2::compress256(&mut state, &[block.into()]);
    // The digest is the state's words, big-endian: its first 16 bytes are
    // the first four words.
    state[..4]
        .iter()
        .fold(0u128, |k, &w| (k << 32) | u128::from(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every keyer: two secrets, a random key, unkeyed.
    fn keyers() -> [AccountKeyer; 4] {
        [
            AccountKeyer::from_secret("a secret of thirty-two bytes....."),
            AccountKeyer::from_secret("another secret of 32 bytes......"),
            AccountKeyer::random(),
            AccountKeyer::unkeyed(),
        ]
    }

    #[test]
    fn keys_ignore_case_whatever_the_keyer() {
        let long = "X".repeat(200);
        for k in keyers() {
            assert_eq!(k.key("Bob"), k.key("bob"), "{k:?}");
            assert_ne!(k.key("bob"), k.key("alice"), "{k:?}");
            assert_eq!(k.key("ÉLODIE"), k.key("élodie"), "{k:?}");
            assert_eq!(k.key(&long), k.key(&long.to_lowercase()), "{k:?}");
            // Across the 64-byte pieces the ASCII path feeds.
            for n in [63, 64, 65, 128, 129] {
                let s = "aB".repeat(n)[..n].to_string();
                assert_eq!(k.key(&s), k.key(&s.to_lowercase()), "{k:?} {n}");
            }
        }
    }

    /// No two keyers agree: a keyed key is not the unkeyed one (so a dump
    /// cannot be searched with SHA-256), and two secrets count apart.
    #[test]
    fn keyers_disagree() {
        let ks = keyers();
        for (i, a) in ks.iter().enumerate() {
            for b in &ks[i + 1..] {
                assert_ne!(a.key("+8613800000000"), b.key("+8613800000000"));
            }
        }
        let s = "the same secret, on two replicas";
        assert_eq!(
            AccountKeyer::from_secret(s).key("bob"),
            AccountKeyer::from_secret(s).key("bob")
        );
        assert!(ks[0].is_keyed() && ks[2].is_keyed() && !ks[3].is_keyed());
        assert_eq!(format!("{:?}", ks[0]), "AccountKeyer(keyed)");
    }

    /// The keyed hash is SipHash-2-4-128 as its authors define it (their
    /// reference vectors: key 00..0f, message 00..n-1, output bytes in
    /// order), so replicas built by other compilers or crate versions agree.
    #[test]
    fn the_keyed_hash_is_siphash_2_4_128() {
        let key: [u8; 16] = std::array::from_fn(|i| i as u8);
        let expected: [[u8; 16]; 3] = [
            [
                0xa3, 0x81, 0x7f, 0x04, 0xba, 0x25, 0xa8, 0xe6, 0x6d, 0xf6, 0x72, 0x14, 0xc7, 0x55,
                0x02, 0x93,
            ],
            [
                0xda, 0x87, 0xc1, 0xd8, 0x6b, 0x99, 0xaf, 0x44, 0x34, 0x76, 0x59, 0x11, 0x9b, 0x22,
                0xfc, 0x45,
            ],
            [
                0x81, 0x77, 0x22, 0x8d, 0xa4, 0xa4, 0x5d, 0xc7, 0xfc, 0xa3, 0x8b, 0xde, 0xf6, 0x0a,
                0xff, 0xe4,
            ],
        ];
        for (n, want) in expected.iter().enumerate() {
            let mut h = SipHasher24::new_with_key(&key);
            h.write(&(0..n as u8).collect::<Vec<_>>());
            let got = h.finish128();
            let mut bytes = [0u8; 16];
            bytes[..8].copy_from_slice(&got.h1.to_le_bytes());
            bytes[8..].copy_from_slice(&got.h2.to_le_bytes());
            assert_eq!(&bytes, want, "length {n}");
        }
        // And the keyer feeds it the lowercased identifier, nothing else.
        let k = AccountKeyer(Kind::Keyed {
            account: SipHasher24::new_with_key(&key),
            client: SipHasher24::new_with_key(&[0; 16]),
        });
        let mut h = SipHasher24::new_with_key(&key);
        h.write(b"bob@example.com");
        assert_eq!(k.key("Bob@Example.COM").get(), u128::from(h.finish128()));
    }

    #[test]
    fn client_keys_are_keyed_apart_from_accounts_with_a_secret_only() {
        let ip = 0xffff_c633_6407u128;
        let a = AccountKeyer::from_secret("a secret of at least 16 bytes");
        let b = AccountKeyer::from_secret("another secret of 16 bytes +");
        assert_eq!(
            a.client(ip),
            AccountKeyer::from_secret("a secret of at least 16 bytes").client(ip)
        );
        assert_ne!(a.client(ip), ip);
        assert_ne!(a.client(ip), b.client(ip));
        assert_ne!(a.client(ip), a.client(ip + 1));
        assert_eq!(AccountKeyer::unkeyed().client(ip), ip, "unkeyed: as before");
    }

    #[test]
    fn fingerprints_tell_keyers_apart_and_agree_for_one_secret() {
        let a = AccountKeyer::from_secret("a secret of at least 16 bytes");
        let b = AccountKeyer::from_secret("another secret of 16 bytes +");
        assert_eq!(
            a.fingerprint(),
            AccountKeyer::from_secret("a secret of at least 16 bytes").fingerprint()
        );
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), AccountKeyer::unkeyed().fingerprint());
        assert_eq!(a.fingerprint().len(), 16);
        assert!(a.fingerprint().bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn unkeyed_keys_are_the_sha256_they_always_were() {
        // The Redis key part: the first 16 bytes of the SHA-256, in hex.
        let d = Sha256::digest(b"bob@example.com");
        let hex: String = d[..16].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            format!(
                "{:032x}",
                AccountKeyer::unkeyed().key("Bob@Example.com").get()
            ),
            hex
        );
    }

    #[test]
    fn the_one_block_path_is_sha256() {
        let streamed = |s: &str| {
            let d = Sha256::digest(s.to_lowercase().as_bytes());
            let mut first = [0u8; 16];
            first.copy_from_slice(&d[..16]);
            u128::from_be_bytes(first)
        };
        let unkeyed = AccountKeyer::unkeyed();
        // Every length around the one-block limit, mixed case and the bytes
        // the padding writes.
        let alphabet = "aB@.0_-+~\x7f\u{1}Zz";
        for n in 0..=ONE_BLOCK + 70 {
            let s: String = alphabet.chars().cycle().skip(n).take(n).collect();
            assert_eq!(unkeyed.key(&s).get(), streamed(&s), "length {n}");
            if s.len() <= ONE_BLOCK {
                assert_eq!(sha256_one_block_lowercased(s.as_bytes()), streamed(&s));
            }
        }
        for s in ["", "Bob@Example.com", "ÉLODIE", "+8613800000000", "x"] {
            assert_eq!(unkeyed.key(s).get(), streamed(s), "{s:?}");
        }
    }
}
