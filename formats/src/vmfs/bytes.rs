//! Little-endian field access on fixed-size metadata buffers. Offsets are constants of
//! the on-disk structures and the buffers are read at their full size first, so an
//! out-of-range offset is a programming error; it still returns 0 rather than panic.

pub(crate) fn u8_at(b: &[u8], at: usize) -> u8 {
    b.get(at).copied().unwrap_or(0)
}

pub(crate) fn u16_at(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    if let Some(s) = b.get(at..at + 2) {
        a.copy_from_slice(s);
    }
    u16::from_le_bytes(a)
}

pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_le_bytes(a)
}

pub(crate) fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_le_bytes(a)
}

/// A NUL-terminated string field of `len` bytes (lossy UTF-8).
pub(crate) fn cstr_at(b: &[u8], at: usize, len: usize) -> String {
    let field = b.get(at..(at + len).min(b.len())).unwrap_or(&[]);
    let end = field.iter().position(|&c| c == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

/// A VMFS UUID: `u32 timeLo, u32 timeHi, u16 rand, u8 mac[6]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Uuid(pub [u8; 16]);

impl Uuid {
    pub(crate) fn at(b: &[u8], at: usize) -> Uuid {
        let mut u = [0u8; 16];
        if let Some(s) = b.get(at..at + 16) {
            u.copy_from_slice(s);
        }
        Uuid(u)
    }

    pub fn is_nil(&self) -> bool {
        self.0 == [0; 16]
    }

    /// The host MAC address carried in the last six bytes.
    pub fn mac(&self) -> String {
        self.0[10..]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    }
}

impl std::fmt::Display for Uuid {
    /// `%08x-%08x-%04x-%12x`, as ESXi prints volume UUIDs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:08x}-{:08x}-{:04x}-",
            u32_at(b, 0),
            u32_at(b, 4),
            u16_at(b, 8)
        )?;
        for x in &b[10..] {
            write!(f, "{x:02x}")?;
        }
        Ok(())
    }
}
