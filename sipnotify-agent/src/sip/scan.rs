//! Byte scanning for the SIP layers: the first occurrence of a byte (or of one of a few
//! bytes) in a short line or value, the LF and `:` masks of 64-byte blocks that the header
//! iterator walks, and the character classes (linear whitespace, RFC 3261 `token`).

/// Index of the first `needle` in `haystack`. SIP lines and values are short (tens of bytes),
/// where the `memchr` crate's runtime dispatch costs more than the search itself: this inlines
/// into the caller and tests 16 bytes per step with SSE2 (part of the x86-64 baseline), or 8
/// per step with SWAR elsewhere.
#[inline(always)]
pub fn find_byte(needle: u8, haystack: &[u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
        };
        let mut chunks = haystack.chunks_exact(16);
        let mut offset = 0;
        // SAFETY: SSE2 is always available on x86-64; `_mm_set1_epi8` reads no memory.
        let splat = unsafe { _mm_set1_epi8(needle as i8) };
        for chunk in &mut chunks {
            // SAFETY: SSE2 is always available on x86-64, and `chunks_exact(16)` makes
            // `chunk` exactly 16 readable bytes, which is what the unaligned load reads.
            let mask = unsafe {
                let bytes = _mm_loadu_si128(chunk.as_ptr().cast::<__m128i>());
                _mm_movemask_epi8(_mm_cmpeq_epi8(bytes, splat))
            };
            if mask != 0 {
                return Some(offset + mask.trailing_zeros() as usize);
            }
            offset += 16;
        }
        find_byte_swar(needle, chunks.remainder()).map(|i| offset + i)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        find_byte_swar(needle, haystack)
    }
}

/// Index of the first byte of `haystack` that is one of `needles`: [`find_byte`] for a small
/// set (the set is a constant array, so the per-needle compares unroll).
#[inline(always)]
pub fn find_any<const N: usize>(needles: [u8; N], haystack: &[u8]) -> Option<usize> {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128,
            _mm_set1_epi8, _mm_setzero_si128,
        };
        let mut chunks = haystack.chunks_exact(16);
        let mut offset = 0;
        for chunk in &mut chunks {
            // SAFETY: SSE2 is always available on x86-64, and `chunks_exact(16)` makes
            // `chunk` exactly 16 readable bytes, which is what the unaligned load reads.
            let mask = unsafe {
                let bytes = _mm_loadu_si128(chunk.as_ptr().cast::<__m128i>());
                let mut hits = _mm_setzero_si128();
                for needle in needles {
                    let eq = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(needle as i8));
                    hits = _mm_or_si128(hits, eq);
                }
                _mm_movemask_epi8(hits)
            };
            if mask != 0 {
                return Some(offset + mask.trailing_zeros() as usize);
            }
            offset += 16;
        }
        chunks
            .remainder()
            .iter()
            .position(|b| needles.contains(b))
            .map(|i| offset + i)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        haystack.iter().position(|b| needles.contains(b))
    }
}

/// [`find_byte`] without SIMD: eight bytes per step in a `u64`.
#[inline(always)]
fn find_byte_swar(needle: u8, haystack: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let splat = ONES * u64::from(needle);
    let mut chunks = haystack.chunks_exact(8);
    let mut offset = 0;
    for chunk in &mut chunks {
        // `chunks_exact(8)` yields 8-byte chunks, so the conversion cannot fail.
        let word = <[u8; 8]>::try_from(chunk).map_or(0, u64::from_le_bytes) ^ splat;
        // A zero byte in `word` is a match. Borrows only run upwards, so the lowest flagged
        // byte is always a true match (and little-endian puts the first byte lowest).
        let found = word.wrapping_sub(ONES) & !word & HIGHS;
        if found != 0 {
            return Some(offset + (found.trailing_zeros() / 8) as usize);
        }
        offset += 8;
    }
    chunks
        .remainder()
        .iter()
        .position(|&b| b == needle)
        .map(|i| offset + i)
}

/// Whitespace as it may appear inside a (possibly folded) header value.
#[inline]
pub(crate) const fn is_lws(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\r' | b'\n')
}

/// `value` without leading and trailing linear whitespace (CR and LF included, for folding).
#[inline(always)]
pub(crate) fn trim_lws(value: &[u8]) -> &[u8] {
    let start = value
        .iter()
        .position(|&b| !is_lws(b))
        .unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|&b| !is_lws(b))
        .map_or(start, |i| i + 1);
    &value[start..end]
}

/// RFC 3261 `token` characters: alphanum and `-.!%*_+`'~`.
static TOKEN: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'!' | b'%' | b'*' | b'_' | b'+' | b'`' | b'\'' | b'~'
            );
        i += 1;
    }
    table
};

/// Whether `byte` may appear in an RFC 3261 `token`.
#[inline(always)]
pub(crate) fn is_token_byte(byte: u8) -> bool {
    TOKEN[usize::from(byte)]
}

/// Whether `bytes` is a non-empty RFC 3261 `token`.
#[inline(always)]
pub fn is_token(bytes: &[u8]) -> bool {
    !bytes.is_empty() && bytes.iter().all(|&b| is_token_byte(b))
}

/// Bit masks of the LF and `:` bytes of one 64-byte block.
#[inline(always)]
pub fn block_masks(block: &[u8; 64]) -> (u64, u64) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_set1_epi8,
        };
        let mut newlines = 0u64;
        let mut colons = 0u64;
        // SAFETY: SSE2 is always available on x86-64; each load reads 16 bytes at offset
        // 0, 16, 32 or 48 of a 64-byte array.
        unsafe {
            let lf = _mm_set1_epi8(b'\n' as i8);
            let colon = _mm_set1_epi8(b':' as i8);
            for i in 0..4 {
                let bytes = _mm_loadu_si128(block.as_ptr().add(16 * i).cast::<__m128i>());
                let lf_bits = _mm_movemask_epi8(_mm_cmpeq_epi8(bytes, lf)) as u16;
                let colon_bits = _mm_movemask_epi8(_mm_cmpeq_epi8(bytes, colon)) as u16;
                newlines |= u64::from(lf_bits) << (16 * i);
                colons |= u64::from(colon_bits) << (16 * i);
            }
        }
        (newlines, colons)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let mut newlines = 0u64;
        let mut colons = 0u64;
        for (i, &b) in block.iter().enumerate() {
            newlines |= u64::from(b == b'\n') << i;
            colons |= u64::from(b == b':') << i;
        }
        (newlines, colons)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_any_agrees_with_position() {
        let haystack: Vec<u8> = (0u8..=255).rev().chain(0u8..40).collect();
        let needles = [b';', b',', b'\n', 0x80];
        for start in 0..20 {
            for end in start..haystack.len().min(start + 300) {
                let slice = &haystack[start..end];
                assert_eq!(
                    find_any(needles, slice),
                    slice.iter().position(|b| needles.contains(b)),
                    "{start}..{end}"
                );
            }
        }
    }

    #[test]
    fn find_byte_agrees_with_position() {
        let haystack: Vec<u8> = (0u8..=255).chain(0u8..40).collect();
        type Search = fn(u8, &[u8]) -> Option<usize>;
        let searchers: [(&str, Search); 2] = [("swar", find_byte_swar), ("dispatch", find_byte)];
        for (name, search) in searchers {
            for needle in [0u8, 1, 0x0a, 0x80, 0xff, 0x7f, 39] {
                for start in 0..20 {
                    for end in start..haystack.len().min(start + 70) {
                        let slice = &haystack[start..end];
                        assert_eq!(
                            search(needle, slice),
                            slice.iter().position(|&b| b == needle),
                            "{name} {needle} {start}..{end}"
                        );
                    }
                }
            }
        }
        // Bytes whose subtraction borrows must not produce false matches.
        assert_eq!(
            find_byte(b'\n', b"\x0b\x0b\x01\x0a\x0b\x0b\x0b\x0b"),
            Some(3)
        );
        assert_eq!(
            find_byte(0x01, b"\x02\x00\x01\x00\x00\x00\x00\x00"),
            Some(2)
        );
        assert_eq!(find_byte(0x00, b"\x01\x01\x01\x01\x01\x01\x01\x01"), None);
    }

    #[test]
    fn trim_lws_handles_folding_whitespace() {
        assert_eq!(trim_lws(b" \r\n\t a b \r\n "), b"a b");
        assert_eq!(trim_lws(b" \r\n "), b"");
        assert_eq!(trim_lws(b""), b"");
    }
}
