//! Whether a DNS name or an IP address may appear in a publicly trusted
//! TLS certificate (CA/Browser Forum Baseline Requirements 7.1.2.7.12:
//! no internal names, no reserved IP addresses).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// True when `name` (a wildcard's `*.` ignored) does not end in a suffix
/// of the Public Suffix List's ICANN section, or is itself such a suffix:
/// an internal name (`intranet`, `host.local`, `printer.corp`) or a
/// reserved one (`.test`, `.example`, `.invalid`, `.localhost`, `.onion`).
pub fn internal_domain(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    // Special-use names (RFC 6761, 6762, 7686, 8375, 9476; ICANN's
    // .internal): never public, whatever a list says of them.
    const SPECIAL: [&str; 9] = [
        "test",
        "example",
        "invalid",
        "localhost",
        "local",
        "onion",
        "alt",
        "internal",
        "home.arpa",
    ];
    if SPECIAL
        .iter()
        .any(|s| name == *s || name.ends_with(&format!(".{s}")))
    {
        return true;
    }
    match psl::suffix(name.as_bytes()) {
        Some(suffix) => {
            !suffix.is_known()
                || suffix.typ() != Some(psl::Type::Icann)
                || suffix.as_bytes().len() == name.len()
        }
        None => true,
    }
}

/// True when `ip` is globally reachable: not in any range of the IANA
/// IPv4 and IPv6 Special-Purpose Address Registries that is not globally
/// reachable, and not multicast.
pub fn public_ip(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => public_v4(*v4),
        IpAddr::V6(v6) => public_v6(*v6),
    }
}

fn in_v4(ip: Ipv4Addr, net: [u8; 4], len: u32) -> bool {
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(net)) & mask
}

fn public_v4(ip: Ipv4Addr) -> bool {
    const RESERVED: [([u8; 4], u32); 16] = [
        ([0, 0, 0, 0], 8),       // "this network"
        ([10, 0, 0, 0], 8),      // private
        ([100, 64, 0, 0], 10),   // shared address space (CGN)
        ([127, 0, 0, 0], 8),     // loopback
        ([169, 254, 0, 0], 16),  // link local
        ([172, 16, 0, 0], 12),   // private
        ([192, 0, 0, 0], 24),    // IETF protocol assignments
        ([192, 0, 2, 0], 24),    // TEST-NET-1
        ([192, 88, 99, 0], 24),  // 6to4 relay anycast (deprecated)
        ([192, 168, 0, 0], 16),  // private
        ([198, 18, 0, 0], 15),   // benchmarking
        ([198, 51, 100, 0], 24), // TEST-NET-2
        ([203, 0, 113, 0], 24),  // TEST-NET-3
        ([224, 0, 0, 0], 4),     // multicast
        ([240, 0, 0, 0], 4),     // reserved, and the limited broadcast address
        ([255, 255, 255, 255], 32),
    ];
    !RESERVED.iter().any(|(net, len)| in_v4(ip, *net, *len))
}

fn in_v6(ip: Ipv6Addr, net: [u16; 8], len: u32) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - len)
    };
    u128::from(ip) & mask == u128::from(Ipv6Addr::from(net)) & mask
}

fn public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return public_v4(v4);
    }
    const RESERVED: [([u16; 8], u32); 12] = [
        ([0, 0, 0, 0, 0, 0, 0, 0], 127),         // unspecified and loopback
        ([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),  // local-use IPv4/IPv6 translation
        ([0x100, 0, 0, 0, 0, 0, 0, 0], 64),      // discard-only
        ([0x2001, 0, 0, 0, 0, 0, 0, 0], 23),     // IETF protocol assignments
        ([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), // documentation
        ([0x2002, 0, 0, 0, 0, 0, 0, 0], 16),     // 6to4
        ([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20),     // documentation
        ([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16),     // segment routing SIDs
        ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),      // unique local
        ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),     // link local
        ([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10),     // site local (deprecated)
        ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),      // multicast
    ];
    !RESERVED.iter().any(|(net, len)| in_v6(ip, *net, *len))
}

/// Why a DNS name's labels break BR 7.1.2.7.12 beyond their LDH syntax: a
/// label with `--` in its third and fourth characters is reserved unless
/// it is an A-label (`xn--`), and an A-label's rest must be valid
/// Punycode. `None` when the name passes.
pub fn reserved_label(name: &str) -> Option<String> {
    let name = name.strip_prefix("*.").unwrap_or(name);
    for label in name.split('.') {
        let bytes = label.as_bytes();
        if bytes.len() > 4 && &bytes[2..4] == b"--" {
            if !label[..2].eq_ignore_ascii_case("xn") {
                return Some(format!("{name}: the label {label} is reserved (only xn-- labels may have -- in the third and fourth characters)"));
            }
            if idna::punycode::decode_to_string(&label[4..]).is_none() {
                return Some(format!("{name}: {label} is not valid Punycode"));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_labels_and_invalid_a_labels_are_named() {
        for ok in [
            "www.cacert.org",
            "xn--bcher-kva.example",
            "*.xn--mnchen-3ya.de",
            "a-b.example",
        ] {
            assert_eq!(reserved_label(ok), None, "{ok}");
        }
        for bad in [
            "ab--cd.example.org",
            "www.XY--z.example",
            "xn--zz9999zz.example",
        ] {
            assert!(reserved_label(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn public_names_pass_and_internal_or_reserved_ones_do_not() {
        for ok in [
            "www.cacert.org",
            "*.example.org",
            "a.b.example.co.uk",
            "EXAMPLE.COM.",
        ] {
            assert!(!internal_domain(ok), "{ok}");
        }
        for bad in [
            "intranet",
            "host.local",
            "printer.corp",
            "x.test",
            "www.example",
            "a.invalid",
            "localhost",
            "db.localhost",
            "hidden.onion",
            "com",
            "co.uk",
            "*.com",
            "github.io",
        ] {
            assert!(internal_domain(bad), "{bad}");
        }
    }

    #[test]
    fn reserved_addresses_are_not_public() {
        for ok in [
            "8.8.8.8",
            "1.1.1.1",
            "2a00:1450:4001:82b::200e",
            "::ffff:8.8.8.8",
        ] {
            assert!(public_ip(&ok.parse().unwrap()), "{ok}");
        }
        for bad in [
            "192.0.2.7",
            "10.1.2.3",
            "172.20.0.1",
            "192.168.1.1",
            "127.0.0.1",
            "169.254.1.1",
            "100.64.0.1",
            "198.51.100.1",
            "203.0.113.9",
            "224.0.0.1",
            "255.255.255.255",
            "0.0.0.0",
            "::1",
            "::",
            "2001:db8::1",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:10.0.0.1",
        ] {
            assert!(!public_ip(&bad.parse().unwrap()), "{bad}");
        }
    }
}
