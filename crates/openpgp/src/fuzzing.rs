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
