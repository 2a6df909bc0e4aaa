//! Just enough of the kernel's BTF (`/sys/kernel/btf/vmlinux`) to find where fields lie in
//! its structures and what its enums' values are called. The drop program reads kernel
//! structures at offsets found here, so it fits whatever kernel it runs on.

use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
pub(crate) enum BtfError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("the kernel's BTF is malformed: {0}")]
    Malformed(&'static str),
    #[error("the kernel's BTF has no {0}")]
    Missing(String),
}

const KIND_INT: u32 = 1;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

struct Member {
    name: u32,
    ty: u32,
    /// Bits from the start of the structure.
    bit_offset: u32,
}

enum Type {
    Composite {
        name: u32,
        members: Vec<Member>,
    },
    Enum {
        name: u32,
        values: Vec<(u32, i64)>,
    },
    /// Typedefs and qualifiers: the type they stand for.
    Alias(u32),
    Other,
}

pub(crate) struct Btf {
    /// Index = type id (0 is void).
    types: Vec<Type>,
    strings: Vec<u8>,
    composites: HashMap<String, u32>,
}

fn u32_at(b: &[u8], at: usize) -> Result<u32, BtfError> {
    b.get(at..at + 4).map(|x| u32::from_le_bytes(x.try_into().expect("4 bytes"))).ok_or(BtfError::Malformed("truncated"))
}

impl Btf {
    pub(crate) fn from_sys_fs() -> Result<Btf, BtfError> {
        let path = "/sys/kernel/btf/vmlinux";
        let data = std::fs::read(path).map_err(|source| BtfError::Read { path: path.into(), source })?;
        Btf::parse(&data)
    }

    /// Parses little-endian BTF (what every kernel wgo runs on writes).
    pub fn parse(b: &[u8]) -> Result<Btf, BtfError> {
        if b.get(0..2) != Some(&[0x9f, 0xeb]) {
            return Err(BtfError::Malformed("bad magic (or a big-endian kernel)"));
        }
        let hdr_len = u32_at(b, 4)? as usize;
        let (type_off, type_len, str_off, str_len) =
            (u32_at(b, 8)? as usize, u32_at(b, 12)? as usize, u32_at(b, 16)? as usize, u32_at(b, 20)? as usize);
        let types_at = hdr_len.checked_add(type_off).ok_or(BtfError::Malformed("type offset"))?;
        let strings_at = hdr_len.checked_add(str_off).ok_or(BtfError::Malformed("string offset"))?;
        let tb = b.get(types_at..types_at.saturating_add(type_len)).ok_or(BtfError::Malformed("type section"))?;
        let strings = b.get(strings_at..strings_at.saturating_add(str_len)).ok_or(BtfError::Malformed("string section"))?.to_vec();
        let mut types = vec![Type::Other];
        let mut at = 0;
        while at < tb.len() {
            let (name, info, size_or_type) = (u32_at(tb, at)?, u32_at(tb, at + 4)?, u32_at(tb, at + 8)?);
            at += 12;
            let (vlen, kind, kind_flag) = ((info & 0xffff) as usize, (info >> 24) & 0x1f, info >> 31 == 1);
            let ty = match kind {
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for k in 0..vlen {
                        let m = at + 12 * k;
                        let off = u32_at(tb, m + 8)?;
                        members.push(Member {
                            name: u32_at(tb, m)?,
                            ty: u32_at(tb, m + 4)?,
                            bit_offset: if kind_flag { off & 0xff_ffff } else { off },
                        });
                    }
                    at += 12 * vlen;
                    Type::Composite { name, members }
                }
                KIND_ENUM => {
                    let mut values = Vec::with_capacity(vlen);
                    for k in 0..vlen {
                        values.push((u32_at(tb, at + 8 * k)?, u32_at(tb, at + 8 * k + 4)? as i32 as i64));
                    }
                    at += 8 * vlen;
                    Type::Enum { name, values }
                }
                KIND_ENUM64 => {
                    let mut values = Vec::with_capacity(vlen);
                    for k in 0..vlen {
                        let (lo, hi) = (u32_at(tb, at + 12 * k + 4)? as u64, u32_at(tb, at + 12 * k + 8)? as u64);
                        values.push((u32_at(tb, at + 12 * k)?, (hi << 32 | lo) as i64));
                    }
                    at += 12 * vlen;
                    Type::Enum { name, values }
                }
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => Type::Alias(size_or_type),
                KIND_INT | KIND_VAR | KIND_DECL_TAG => {
                    at += 4;
                    Type::Other
                }
                KIND_ARRAY => {
                    at += 12;
                    Type::Other
                }
                KIND_FUNC_PROTO => {
                    at += 8 * vlen;
                    Type::Other
                }
                KIND_DATASEC => {
                    at += 12 * vlen;
                    Type::Other
                }
                _ => Type::Other,
            };
            types.push(ty);
        }
        let mut btf = Btf { types, strings, composites: HashMap::new() };
        for (id, t) in btf.types.iter().enumerate() {
            if let Type::Composite { name, .. } = t
                && *name != 0
            {
                btf.composites.entry(btf.string(*name).to_string()).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    fn string(&self, off: u32) -> &str {
        let s = self.strings.get(off as usize..).unwrap_or(&[]);
        let end = s.iter().position(|&c| c == 0).unwrap_or(s.len());
        std::str::from_utf8(&s[..end]).unwrap_or("")
    }

    /// Follows typedefs and qualifiers.
    fn resolve(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some(Type::Alias(next)) => id = *next,
                _ => break,
            }
        }
        id
    }

    /// A member's (bit offset, type) in composite `id`, looking into anonymous members too.
    fn member(&self, id: u32, name: &str) -> Option<(u32, u32)> {
        let Some(Type::Composite { members, .. }) = self.types.get(self.resolve(id) as usize) else { return None };
        for m in members {
            if m.name != 0 && self.string(m.name) == name {
                return Some((m.bit_offset, m.ty));
            }
        }
        members.iter().filter(|m| m.name == 0).find_map(|m| self.member(m.ty, name).map(|(off, ty)| (m.bit_offset + off, ty)))
    }

    /// Byte offset of `path` (e.g. `["sk_cgrp_data", "cgroup"]`) in `struct name`.
    pub fn offset(&self, name: &str, path: &[&str]) -> Result<u32, BtfError> {
        let missing = || BtfError::Missing(format!("{name}.{}", path.join(".")));
        let mut id = *self.composites.get(name).ok_or_else(missing)?;
        let mut bits = 0;
        for field in path {
            let (off, ty) = self.member(id, field).ok_or_else(missing)?;
            bits += off;
            id = ty;
        }
        if bits % 8 != 0 {
            return Err(missing());
        }
        Ok(bits / 8)
    }

    /// Names of an enum's values, by value (those below `limit`).
    pub(crate) fn enum_names(&self, name: &str, limit: usize) -> Result<Vec<Option<String>>, BtfError> {
        let values = self
            .types
            .iter()
            .find_map(|t| match t {
                Type::Enum { name: n, values } if self.string(*n) == name => Some(values),
                _ => None,
            })
            .ok_or_else(|| BtfError::Missing(format!("enum {name}")))?;
        let mut out = vec![None; limit];
        for &(n, v) in values {
            if let Some(slot) = usize::try_from(v).ok().and_then(|v| out.get_mut(v)) {
                *slot = Some(self.string(n).to_string());
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// struct s { int a; union { int b; struct t *c; }; struct t inner; }; struct t { long x; long y; };
    /// enum e { E_ZERO, E_TWO = 2 }; built by hand.
    fn sample() -> Vec<u8> {
        let mut strings = b"\0s\0a\0b\0c\0t\0x\0y\0inner\0e\0E_ZERO\0E_TWO\0int\0".to_vec();
        let at = |s: &str, strings: &[u8]| {
            let needle = format!("\0{s}\0");
            strings.windows(needle.len()).position(|w| w == needle.as_bytes()).unwrap() as u32 + 1
        };
        let mut t = Vec::new();
        let mut push = |v: &[u32]| v.iter().for_each(|x| t.extend_from_slice(&x.to_le_bytes()));
        let st = &mut strings;
        // 1: int
        push(&[at("int", st), KIND_INT << 24, 4, 32]);
        // 2: struct t { long x; long y; } (x, y typed int for brevity)
        push(&[at("t", st), KIND_STRUCT << 24 | 2, 16, at("x", st), 1, 0, at("y", st), 1, 64]);
        // 3: anonymous union { int b; int c; }
        push(&[0, KIND_UNION << 24 | 2, 8, at("b", st), 1, 0, at("c", st), 1, 0]);
        // 4: struct s { int a; union; struct t inner; }
        push(&[at("s", st), KIND_STRUCT << 24 | 3, 32, at("a", st), 1, 0, 0, 3, 64, at("inner", st), 2, 128]);
        // 5: enum e
        push(&[at("e", st), KIND_ENUM << 24 | 2, 4, at("E_ZERO", st), 0, at("E_TWO", st), 2]);
        strings.push(0);
        let mut b = vec![0x9f, 0xeb, 1, 0];
        for v in [24u32, 0, t.len() as u32, t.len() as u32, strings.len() as u32] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&t);
        b.extend_from_slice(&strings);
        b
    }

    #[test]
    fn offsets_reach_into_anonymous_members_and_nested_structs() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.offset("s", &["a"]).unwrap(), 0);
        assert_eq!(btf.offset("s", &["c"]).unwrap(), 8, "inside the anonymous union");
        assert_eq!(btf.offset("s", &["inner", "y"]).unwrap(), 24);
        assert!(matches!(btf.offset("s", &["nope"]), Err(BtfError::Missing(m)) if m == "s.nope"));
        assert_eq!(btf.enum_names("e", 4).unwrap(), vec![Some("E_ZERO".into()), None, Some("E_TWO".into()), None]);
        assert!(Btf::parse(b"\x00\x01garbage").is_err());
        assert!(Btf::parse(&sample()[..30]).is_err());
    }

    #[test]
    fn the_running_kernels_structures_are_found() {
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("skipped: this kernel has no /sys/kernel/btf/vmlinux");
            return;
        };
        assert!(btf.offset("sk_buff", &["network_header"]).is_ok());
        assert!(btf.offset("sock", &["sk_cgrp_data", "cgroup"]).is_ok());
        let names = btf.enum_names("skb_drop_reason", 512).unwrap();
        assert!(names.iter().flatten().any(|n| n == "SKB_DROP_REASON_NETFILTER_DROP"));
    }
}
