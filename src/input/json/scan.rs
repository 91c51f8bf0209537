//! The fast path of JSON decoding: one pass over a record of the common shape, a flat object whose
//! strings hold no escapes, yielding the fields the full parser would yield.
//!
//! It never decides that a record is bad. Anything it does not recognise (an escape, a nested
//! value among the unknown fields, a repeated field, a syntax error of any kind) returns `None`,
//! and the record goes to the full parser, which gives the exact error or the unescaped text. So
//! the fast path must only ever accept a subset of what the full parser accepts, with the same
//! result; the tests in `super` check that on every single-byte change of sample records.

use crate::ledger::RawEvent;

/// The fields of an event, and which of them may be a bare number (`transaction_id` and `amount`
/// are read from the raw JSON text; the rest must be strings).
#[derive(Clone, Copy)]
enum Field {
    TransactionId,
    Timestamp,
    AccountId,
    Kind,
    Amount,
    Currency,
    Reverses,
}

impl Field {
    fn of(name: &str) -> Option<Field> {
        Some(match name {
            "transaction_id" => Field::TransactionId,
            "timestamp" => Field::Timestamp,
            "account_id" => Field::AccountId,
            "type" => Field::Kind,
            "amount" => Field::Amount,
            "currency" => Field::Currency,
            "reverses" => Field::Reverses,
            _ => return None,
        })
    }

    fn may_be_number(self) -> bool {
        matches!(self, Field::TransactionId | Field::Amount)
    }

    fn slot<'e, 'a>(self, raw: &'e mut RawEvent<'a>) -> &'e mut Option<&'a str> {
        match self {
            Field::TransactionId => &mut raw.transaction_id,
            Field::Timestamp => &mut raw.timestamp,
            Field::AccountId => &mut raw.account_id,
            Field::Kind => &mut raw.kind,
            Field::Amount => &mut raw.amount,
            Field::Currency => &mut raw.currency,
            Field::Reverses => &mut raw.reverses,
        }
    }
}

/// The event's fields if `value` is a flat JSON object the fast path recognises, else `None`.
pub(super) fn scan(value: &[u8]) -> Option<RawEvent<'_>> {
    // Validated once for the whole record (std checks ASCII a word at a time), so every string
    // slice below is UTF-8 without a check of its own.
    let text = std::str::from_utf8(value).ok()?;
    let mut cursor = Cursor { text, at: 0 };
    let mut raw = RawEvent::default();
    let mut seen = 0u8;
    cursor.skip_whitespace();
    cursor.expect(b'{')?;
    cursor.skip_whitespace();
    if cursor.peek()? == b'}' {
        cursor.at += 1;
    } else {
        loop {
            let name = cursor.string()?;
            cursor.skip_whitespace();
            cursor.expect(b':')?;
            cursor.skip_whitespace();
            match Field::of(name) {
                Some(field) => {
                    // The full parser rejects a repeated field; let it say so.
                    let bit = 1u8 << field as u8;
                    if seen & bit != 0 {
                        return None;
                    }
                    seen |= bit;
                    *field.slot(&mut raw) = match cursor.peek()? {
                        b'"' => Some(cursor.string()?),
                        b'n' => cursor.literal("null").map(|()| None)?,
                        b'-' | b'0'..=b'9' if field.may_be_number() => Some(cursor.number()?),
                        _ => return None,
                    };
                }
                None => cursor.skip_flat_value()?,
            }
            cursor.skip_whitespace();
            match cursor.next()? {
                b',' => cursor.skip_whitespace(),
                b'}' => break,
                _ => return None,
            }
        }
    }
    cursor.skip_whitespace();
    (cursor.at == text.len()).then_some(raw)
}

struct Cursor<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next()? == byte).then_some(())
    }

    /// JSON's four whitespace bytes, nothing else.
    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// A string without escapes or control characters; its contents, borrowed.
    fn string(&mut self) -> Option<&'a str> {
        self.expect(b'"')?;
        let start = self.at;
        self.at += plain_prefix(&self.text.as_bytes()[start..]);
        // What ended the run: the closing quote, or an escape or control byte (not this path's).
        self.expect(b'"')?;
        // Both ends are ASCII quote bytes, so the slice is on character boundaries.
        self.text.get(start..self.at - 1)
    }

    /// A number in JSON's grammar: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
    fn number(&mut self) -> Option<&'a str> {
        let start = self.at;
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.next()? {
            b'0' => {}
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.one_or_more_digits()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            self.one_or_more_digits()?;
        }
        self.text.get(start..self.at)
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
    }

    fn one_or_more_digits(&mut self) -> Option<()> {
        let start = self.at;
        self.digits();
        (self.at > start).then_some(())
    }

    fn literal(&mut self, word: &str) -> Option<()> {
        let end = self.at + word.len();
        (self.text.as_bytes().get(self.at..end)? == word.as_bytes()).then(|| self.at = end)
    }

    /// An unknown field's value: a string, number, `true`, `false` or `null`. Objects and arrays
    /// are left to the full parser.
    fn skip_flat_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'-' | b'0'..=b'9' => self.number().map(drop),
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'n' => self.literal("null"),
            _ => None,
        }
    }
}

/// How many leading bytes of `bytes` are neither `"`, `\` nor a control byte (below 0x20), read
/// eight at a time. Ids and timestamps are most of a record, and read a byte at a time this loop
/// took a third of decoding's instructions (docs/BENCHMARKS.md, twenty-ninth session).
fn plain_prefix(bytes: &[u8]) -> usize {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH_BITS: u64 = u64::from_ne_bytes([0x80; 8]);
    let mut at = 0;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let word = u64::from_le_bytes(chunk.try_into().expect("a chunk of eight bytes"));
        // `x - 0x01 & !x` sets a byte's high bit where x is zero (a byte equal to the one xored
        // away), `x - 0x20 & !x` where x is below 0x20. A borrow only carries upward from a byte
        // that matched, so the lowest flagged byte is always a real match.
        let quote = word ^ (ONES * u64::from(b'"'));
        let backslash = word ^ (ONES * u64::from(b'\\'));
        let flagged = (quote.wrapping_sub(ONES) & !quote
            | backslash.wrapping_sub(ONES) & !backslash
            | word.wrapping_sub(ONES * 0x20) & !word)
            & HIGH_BITS;
        if flagged != 0 {
            return at + (flagged.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    let rest = &bytes[at..];
    at + rest.iter().position(|&b| matches!(b, b'"' | b'\\' | 0..=0x1f)).unwrap_or(rest.len())
}

#[cfg(test)]
mod tests {
    use super::plain_prefix;
    use proptest::prelude::*;

    /// Bytes around every value the word-at-a-time test tells apart, at any position.
    fn text() -> impl Strategy<Value = Vec<u8>> {
        let byte = prop_oneof![
            4 => b'a'..=b'z',
            1 => Just(b'"'),
            1 => Just(b'\\'),
            1 => 0x00u8..=0x21,
            1 => proptest::sample::select(vec![0x5bu8, 0x5d, 0x7f, 0x80, 0x9f, 0xa2, 0xdc, 0xff]),
        ];
        proptest::collection::vec(byte, 0..40)
    }

    proptest! {
        #[test]
        fn plain_prefix_stops_where_a_byte_at_a_time_scan_stops(bytes in text()) {
            let expected = bytes.iter().position(|&b| b == b'"' || b == b'\\' || b < 0x20).unwrap_or(bytes.len());
            prop_assert_eq!(plain_prefix(&bytes), expected);
        }
    }
}
