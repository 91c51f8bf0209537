//! Strings kept end to end in one `String` (an arena) and found again by position: tables of many
//! short ids (the overlay's accounts and transactions, the balance cache's entries) then hold one
//! growing buffer instead of an allocation per id.

/// Where a string lies in an arena.
#[derive(Clone, Copy)]
pub(crate) struct Span {
    start: u32,
    len: u32,
}

impl Span {
    /// Appends `text` to `arena` and returns where it went.
    pub(crate) fn push(arena: &mut String, text: &str) -> Span {
        let start = u32::try_from(arena.len()).expect("an arena holds less than 4 GiB");
        let len = u32::try_from(text.len()).expect("an arena holds less than 4 GiB");
        arena.push_str(text);
        Span { start, len }
    }

    pub(crate) fn of(self, arena: &str) -> &str {
        &arena[self.start as usize..(self.start + self.len) as usize]
    }
}
