//! Envoy response flags (the `response.flags` property) mapped to meshtune's flag classes.
//!
//! `response.flags` is `StreamInfo::legacyResponseFlags()`: a u64 bitmask (8-byte
//! little-endian property value) with bit `n` set for `CoreResponseFlag` value `n`. The enum
//! order in Envoy 1.40 (`envoy/stream_info/stream_info.h`) is unchanged since the old
//! `ResponseFlag` bit values, so the bits are:
//!
//! | bit | value | flag | meaning |
//! | --- | --- | --- | --- |
//! | 0 | 0x1 | LH | failed local health check |
//! | 1 | 0x2 | UH | no healthy upstream |
//! | 2 | 0x4 | **UT** | upstream request timeout |
//! | 3 | 0x8 | LR | local reset |
//! | 4 | 0x10 | UR | upstream remote reset |
//! | 5 | 0x20 | **UF** | upstream connection failure |
//! | 6 | 0x40 | **UC** | upstream connection termination |
//! | 7 | 0x80 | **UO** | upstream overflow (circuit breaker) |
//! | 8 | 0x100 | NR | no route |
//! | 15 | 0x8000 | **URX** | upstream retry limit exceeded / max connect attempts |
//!
//! UT, UF and UO were checked against a real Envoy 1.40 (see filter/README.md).

/// Upstream request timeout (UT).
pub const UPSTREAM_REQUEST_TIMEOUT: u64 = 1 << 2;
/// Upstream connection failure (UF).
pub const UPSTREAM_CONNECTION_FAILURE: u64 = 1 << 5;
/// Upstream connection termination (UC).
pub const UPSTREAM_CONNECTION_TERMINATION: u64 = 1 << 6;
/// Upstream overflow, i.e. circuit breaker open (UO).
pub const UPSTREAM_OVERFLOW: u64 = 1 << 7;
/// No route found (NR); not reported, listed for tests and docs.
pub const NO_ROUTE_FOUND: u64 = 1 << 8;
/// Upstream retry limit exceeded (URX).
pub const UPSTREAM_RETRY_LIMIT_EXCEEDED: u64 = 1 << 15;

/// The flag classes meshtune reports, as booleans.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlagClasses {
    pub uo: bool,
    pub ut: bool,
    pub uf: bool,
    pub uc: bool,
    pub urx: bool,
}

impl FlagClasses {
    /// Classifies an Envoy response-flag bitmask.
    #[inline]
    pub fn from_bits(bits: u64) -> Self {
        Self {
            uo: bits & UPSTREAM_OVERFLOW != 0,
            ut: bits & UPSTREAM_REQUEST_TIMEOUT != 0,
            uf: bits & UPSTREAM_CONNECTION_FAILURE != 0,
            uc: bits & UPSTREAM_CONNECTION_TERMINATION != 0,
            urx: bits & UPSTREAM_RETRY_LIMIT_EXCEEDED != 0,
        }
    }
}

/// Whether a request with this final status can carry one of meshtune's flag classes, i.e.
/// whether `response.flags` is worth reading. UO, UT, UF, URX (and UC before the response
/// started) end in a local 5xx or in no response code; only an upstream connection
/// terminated *after* a 1xx-4xx response started (UC) is missed, a rare case traded for one
/// property read less per successful request.
#[inline]
pub fn may_carry_flags(status: u32) -> bool {
    !(100..500).contains(&status)
}

/// Decodes an integer property value (8-byte little-endian; shorter values are zero-extended).
#[inline]
pub fn le_u64(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || bytes.len() > 8 {
        return None;
    }
    let mut buf = [0u8; 8];
    buf[..bytes.len()].copy_from_slice(bytes);
    Some(u64::from_le_bytes(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_class_maps_from_its_bit() {
        assert_eq!(FlagClasses::from_bits(0), FlagClasses::default());
        assert!(FlagClasses::from_bits(0x80).uo);
        assert!(FlagClasses::from_bits(0x4).ut);
        assert!(FlagClasses::from_bits(0x20).uf);
        assert!(FlagClasses::from_bits(0x40).uc);
        assert!(FlagClasses::from_bits(0x8000).urx);
        let f = FlagClasses::from_bits(0x80 | 0x8000);
        assert!(f.uo && f.urx && !f.ut && !f.uf && !f.uc);
    }

    #[test]
    fn other_flags_are_ignored() {
        // LH, UH, LR, UR, NR, DC: none of meshtune's classes.
        let f = FlagClasses::from_bits(0x1 | 0x2 | 0x8 | 0x10 | NO_ROUTE_FOUND | (1 << 14));
        assert_eq!(f, FlagClasses::default());
    }

    #[test]
    fn flags_are_read_for_errors_and_missing_codes_only() {
        assert!(may_carry_flags(0));
        assert!(may_carry_flags(503));
        assert!(may_carry_flags(504));
        assert!(!may_carry_flags(200));
        assert!(!may_carry_flags(404));
        assert!(!may_carry_flags(101));
    }

    #[test]
    fn le_u64_decodes_property_values() {
        assert_eq!(le_u64(&200u64.to_le_bytes()), Some(200));
        assert_eq!(le_u64(&[0x20]), Some(0x20));
        assert_eq!(le_u64(&[]), None);
        assert_eq!(le_u64(&[0; 9]), None);
    }
}
