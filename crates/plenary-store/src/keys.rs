//! Key encoding: big-endian integers so that byte order is numeric order.

use plenary_core::{ListId, MemberAddress, MessageKey};

pub fn be_u64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.get(..8)?.try_into().ok()?))
}

pub fn be_u32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?))
}

/// Dates are signed; flipping the sign bit makes their big-endian bytes sort numerically.
pub fn date_bytes(ts: i64) -> [u8; 8] {
    ((ts as u64) ^ (1 << 63)).to_be_bytes()
}

pub fn date_from_bytes(b: &[u8]) -> Option<i64> {
    Some((be_u64(b)? ^ (1 << 63)) as i64)
}

pub fn msgid(list: ListId, id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + id.len());
    k.extend_from_slice(&list.0.to_be_bytes());
    k.extend_from_slice(id.as_bytes());
    k
}

pub fn by_date(key: MessageKey, date: i64) -> [u8; 20] {
    let mut k = [0u8; 20];
    k[..4].copy_from_slice(&key.list.0.to_be_bytes());
    k[4..12].copy_from_slice(&date_bytes(date));
    k[12..].copy_from_slice(&key.seq.to_be_bytes());
    k
}

pub fn by_date_decode(k: &[u8]) -> Option<(MessageKey, i64)> {
    if k.len() != 20 {
        return None;
    }
    let list = ListId(be_u32(&k[..4])?);
    let date = date_from_bytes(&k[4..12])?;
    let seq = be_u64(&k[12..])?;
    Some((MessageKey { list, seq }, date))
}

pub fn children_prefix(list: ListId, parent: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(5 + parent.len() + 8);
    k.extend_from_slice(&list.0.to_be_bytes());
    k.extend_from_slice(parent.as_bytes());
    k.push(0);
    k
}

pub fn children(list: ListId, parent: &str, seq: u64) -> Vec<u8> {
    let mut k = children_prefix(list, parent);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

pub fn month(list: ListId, year: i32, month: u32) -> [u8; 8] {
    let mut k = [0u8; 8];
    k[..4].copy_from_slice(&list.0.to_be_bytes());
    let ym = (year.clamp(0, 9999) as u32) * 100 + month;
    k[4..].copy_from_slice(&ym.to_be_bytes());
    k
}

pub fn member(list: ListId, addr: &MemberAddress) -> Vec<u8> {
    let mut k = Vec::with_capacity(4 + addr.as_str().len());
    k.extend_from_slice(&list.0.to_be_bytes());
    k.extend_from_slice(addr.as_str().as_bytes());
    k
}

pub fn retry(job: u64, rcpt: &MemberAddress) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + rcpt.as_str().len());
    k.extend_from_slice(&job.to_be_bytes());
    k.extend_from_slice(rcpt.as_str().as_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_sort_numerically_across_sign() {
        let mut v = [-5i64, 0, 3, -1_000_000, 1_700_000_000];
        let mut b: Vec<[u8; 8]> = v.iter().map(|d| date_bytes(*d)).collect();
        v.sort();
        b.sort();
        let back: Vec<i64> = b.iter().filter_map(|x| date_from_bytes(x)).collect();
        assert_eq!(back, v.to_vec());
    }

    #[test]
    fn by_date_round_trip() {
        let key = MessageKey {
            list: ListId(7),
            seq: 42,
        };
        assert_eq!(by_date_decode(&by_date(key, -3)), Some((key, -3)));
    }
}
