//! Entry points for the fuzz targets and their property-test twins: the
//! whole path from untrusted bytes to a checked key, without the HSM.

use crate::{inspect, Policy};

/// Runs [`inspect`] and, for a key that passes, the user-ID checks of every
/// user ID on it (as a request naming them would). Must never panic.
pub fn inspect_input(data: &[u8]) {
    let policy = Policy::default();
    if let Ok(user) = inspect(data, &policy) {
        for u in &user.key.details.users {
            let _ = crate::certify::check_user_id(&user.key, u, &policy, 0);
        }
    }
}

#[cfg(test)]
mod tests {
    /// A gpg-made key (RSA-2048, two user IDs, one revoked), from the fuzz corpus.
    const SEED: &[u8] = include_bytes!("../../../fuzz/corpus/openpgp_input/rsa-revoked-uid.pgp");

    proptest::proptest! {
        #[test]
        fn arbitrary_input_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            super::inspect_input(&data);
        }

        #[test]
        fn mutated_keys_never_panic(at in 0..SEED.len(), value in proptest::num::u8::ANY, cut in 0..SEED.len()) {
            let mut key = SEED.to_vec();
            key[at] = value;
            super::inspect_input(&key);
            super::inspect_input(&key[..cut]);
        }
    }

    #[test]
    fn the_seed_is_a_key_that_passes() {
        assert!(crate::inspect(SEED, &crate::Policy::default()).is_ok());
    }
}
