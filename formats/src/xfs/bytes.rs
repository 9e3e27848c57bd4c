//! Big-endian field reads from on-disk structures: `None` when the field lies outside the
//! buffer, so a short or damaged structure cannot cause an out-of-bounds index.

pub fn u8_at(b: &[u8], at: usize) -> Option<u8> {
    b.get(at).copied()
}

pub fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at.checked_add(2)?)?;
    Some(u16::from_be_bytes(s.try_into().ok()?))
}

pub fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes(s.try_into().ok()?))
}

pub fn be64(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    Some(u64::from_be_bytes(s.try_into().ok()?))
}

/// `len` bytes at `at`.
pub fn slice(b: &[u8], at: usize, len: usize) -> Option<&[u8]> {
    b.get(at..at.checked_add(len)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_past_the_end_are_none() {
        let b = [1u8, 2, 3, 4];
        assert_eq!(be16(&b, 2), Some(0x0304));
        assert_eq!(be16(&b, 3), None);
        assert_eq!(be32(&b, usize::MAX), None);
        assert_eq!(be64(&b, 0), None);
        assert_eq!(slice(&b, 4, 0), Some(&[][..]));
    }
}
