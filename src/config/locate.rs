//! Finds where a key path (`policies[1].limits.per_device`) sits in the YAML text, so semantic
//! errors found after deserialising can still point at a line and column. serde_yaml 0.9 keeps no
//! spans once deserialised; this is a careful heuristic over block indentation, never a parser:
//! it must only ever be used to *place* an error, never to decide whether something is valid.

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

/// A key path from the document root, built fluently: `KeyPath::root().key("policies").index(1)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPath(pub Vec<Seg>);

impl KeyPath {
    pub fn root() -> KeyPath {
        KeyPath(Vec::new())
    }
    pub fn key(&self, k: &str) -> KeyPath {
        let mut v = self.0.clone();
        v.push(Seg::Key(k.to_string()));
        KeyPath(v)
    }
    pub fn index(&self, i: usize) -> KeyPath {
        let mut v = self.0.clone();
        v.push(Seg::Index(i));
        KeyPath(v)
    }
}

impl std::fmt::Display for KeyPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for s in &self.0 {
            match s {
                Seg::Key(k) => {
                    if !first {
                        f.write_str(".")?;
                    }
                    f.write_str(k)?;
                }
                Seg::Index(i) => write!(f, "[{i}]")?,
            }
            first = false;
        }
        Ok(())
    }
}

/// A 1-based line and column, the convention serde_yaml's `Location` uses too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// `key:`; `value_col` is the 0-based column of an inline value on the same line, if any.
    Key {
        name: String,
        value_col: Option<usize>,
    },
    /// `- `; `value_col` is where the item's content starts on the same line, if any.
    Dash { value_col: Option<usize> },
}

#[derive(Debug, Clone)]
struct Entry {
    line: usize, // 0-based
    col: usize,  // 0-based, in characters
    kind: Kind,
}

/// The block structure of a YAML text: keys and sequence dashes with their positions.
pub struct Locator<'a> {
    lines: Vec<&'a str>,
    entries: Vec<Entry>,
}

impl<'a> Locator<'a> {
    pub fn new(text: &'a str) -> Locator<'a> {
        let lines: Vec<&str> = text.lines().collect();
        let mut entries = Vec::new();
        // While inside a block scalar (`|` / `>`), lines indented deeper than this are content.
        let mut block_scalar_parent: Option<usize> = None;
        for (ln, raw) in lines.iter().enumerate() {
            let chars: Vec<char> = raw.chars().collect();
            let indent = chars.iter().take_while(|c| **c == ' ').count();
            let rest: String = chars[indent..].iter().collect();
            let trimmed = rest.trim_end();
            if let Some(parent) = block_scalar_parent {
                if trimmed.is_empty() || indent > parent {
                    continue;
                }
                block_scalar_parent = None;
            }
            if trimmed.is_empty() || trimmed.starts_with('#') || trimmed == "---" {
                continue;
            }
            scan_line(ln, indent, &chars, &mut entries, &mut block_scalar_parent);
        }
        Locator { lines, entries }
    }

    /// Position of the key (or sequence item) the path names. When the full path is absent (a
    /// missing key), the deepest present ancestor is returned, which is where the fix goes.
    pub fn key(&self, path: &KeyPath) -> Option<Pos> {
        self.find(path, false)
    }

    /// Like [`Locator::key`], but points at the value when it is written on the key's line.
    pub fn value(&self, path: &KeyPath) -> Option<Pos> {
        self.find(path, true)
    }

    /// The inline value written on the line of the key `path` names exactly (comment removed),
    /// or None when the key is absent or its value is not on that line.
    pub fn value_text(&self, path: &KeyPath) -> Option<String> {
        let pos = self.find(path, true)?;
        let key = self.find(path, false)?;
        if pos == key {
            return None;
        }
        // Only trust an exact hit: `find` falls back to ancestors when the key is missing.
        let last = match path.0.last()? {
            Seg::Key(k) => k,
            Seg::Index(_) => return None,
        };
        let line = self.lines.get(pos.line - 1)?;
        let chars: Vec<char> = line.chars().collect();
        let key_text: String = chars.get(key.column - 1..)?.iter().collect();
        let unquoted: String = key_text.chars().skip(1).collect();
        if !key_text.starts_with(last.as_str()) && !unquoted.starts_with(last.as_str()) {
            return None;
        }
        let value: String = chars.get(pos.column - 1..)?.iter().collect();
        let value = match value.find(" #") {
            Some(i) => &value[..i],
            None => &value[..],
        };
        Some(value.trim().to_string())
    }

    fn find(&self, path: &KeyPath, want_value: bool) -> Option<Pos> {
        // The current node: the entry that owns it (None = document root).
        let mut node: Option<usize> = None;
        let mut best: Option<Pos> = None;
        for (depth, seg) in path.0.iter().enumerate() {
            let last = depth + 1 == path.0.len();
            let children = self.children(node);
            let found = match seg {
                Seg::Key(k) => children.iter().copied().find(
                    |&i| matches!(&self.entries[i].kind, Kind::Key { name, .. } if name == k),
                ),
                Seg::Index(n) => {
                    let dashes: Vec<usize> = children
                        .iter()
                        .copied()
                        .filter(|&i| matches!(self.entries[i].kind, Kind::Dash { .. }))
                        .collect();
                    match dashes.get(*n) {
                        Some(i) => Some(*i),
                        None => {
                            // A flow sequence on the parent's line: `groups: [a, b]`.
                            if children.is_empty() {
                                if let Some(p) = node.and_then(|p| self.flow_item(p, *n)) {
                                    return Some(p);
                                }
                            }
                            None
                        }
                    }
                }
            };
            let Some(i) = found else {
                return best;
            };
            let e = &self.entries[i];
            let value_col = match &e.kind {
                Kind::Key { value_col, .. } | Kind::Dash { value_col } => *value_col,
            };
            let col = match (&e.kind, want_value && last, value_col) {
                (_, true, Some(v)) => v,
                // A sequence item is located at its content, not at the dash.
                (Kind::Dash { .. }, _, Some(v)) => v,
                _ => e.col,
            };
            best = Some(Pos {
                line: e.line + 1,
                column: col + 1,
            });
            node = Some(i);
        }
        best
    }

    /// Entries directly under `node` (or the root).
    fn children(&self, node: Option<usize>) -> Vec<usize> {
        let (start, parent_col, parent_is_key) = match node {
            None => (0, None, false),
            Some(i) => (
                i + 1,
                Some(self.entries[i].col),
                matches!(self.entries[i].kind, Kind::Key { .. }),
            ),
        };
        // The node's subtree: following entries indented deeper. A key's block sequence may sit
        // at the key's own column (`key:\n- a`), so dashes at that column belong to it too.
        let mut sub = Vec::new();
        for j in start..self.entries.len() {
            let e = &self.entries[j];
            if let Some(pc) = parent_col {
                let inside = e.col > pc
                    || (parent_is_key && e.col == pc && matches!(e.kind, Kind::Dash { .. }));
                if !inside {
                    break;
                }
            }
            sub.push(j);
        }
        let Some(&first) = sub.first() else {
            return Vec::new();
        };
        let child_col = self.entries[first].col;
        sub.into_iter()
            .filter(|&j| self.entries[j].col == child_col)
            .collect()
    }

    /// The n-th item of a one-line flow sequence written as the value of entry `owner`.
    fn flow_item(&self, owner: usize, n: usize) -> Option<Pos> {
        let e = &self.entries[owner];
        let start = match &e.kind {
            Kind::Key { value_col, .. } | Kind::Dash { value_col } => (*value_col)?,
        };
        let chars: Vec<char> = self.lines.get(e.line)?.chars().collect();
        if chars.get(start) != Some(&'[') {
            return None;
        }
        let mut idx = 0;
        let mut col = start + 1;
        let mut quote: Option<char> = None;
        let mut item_start: Option<usize> = None;
        while col < chars.len() {
            let c = chars[col];
            match quote {
                Some(q) => {
                    if c == q {
                        quote = None;
                    }
                }
                None => match c {
                    '\'' | '"' => {
                        quote = Some(c);
                        item_start.get_or_insert(col);
                    }
                    ',' | ']' => {
                        if let Some(s) = item_start {
                            if idx == n {
                                return Some(Pos {
                                    line: e.line + 1,
                                    column: s + 1,
                                });
                            }
                        }
                        idx += 1;
                        item_start = None;
                        if c == ']' {
                            return None;
                        }
                    }
                    ' ' => {}
                    _ => {
                        item_start.get_or_insert(col);
                    }
                },
            }
            col += 1;
        }
        None
    }
}

/// Records the keys and dashes found on one line (a line may hold `- - key: value`).
fn scan_line(
    ln: usize,
    indent: usize,
    chars: &[char],
    entries: &mut Vec<Entry>,
    block_scalar_parent: &mut Option<usize>,
) {
    let mut col = indent;
    loop {
        if chars.get(col) == Some(&'-') && matches!(chars.get(col + 1), None | Some(' ')) {
            let mut next = col + 1;
            while chars.get(next) == Some(&' ') {
                next += 1;
            }
            let has_content = next < chars.len() && chars[next] != '#';
            entries.push(Entry {
                line: ln,
                col,
                kind: Kind::Dash {
                    value_col: has_content.then_some(next),
                },
            });
            if !has_content {
                return;
            }
            col = next;
            continue;
        }
        break;
    }
    if let Some((name, colon)) = key_at(chars, col) {
        let mut v = colon + 1;
        while chars.get(v) == Some(&' ') {
            v += 1;
        }
        let has_value = v < chars.len() && chars[v] != '#';
        if has_value && matches!(chars[v], '|' | '>') {
            *block_scalar_parent = Some(col);
        }
        entries.push(Entry {
            line: ln,
            col,
            kind: Kind::Key {
                name,
                value_col: has_value.then_some(v),
            },
        });
    }
}

/// A mapping key starting at `col`: `name:` followed by a space or end of line, optionally quoted.
fn key_at(chars: &[char], col: usize) -> Option<(String, usize)> {
    let first = *chars.get(col)?;
    if first == '"' || first == '\'' {
        let close = (col + 1..chars.len()).find(|&i| chars[i] == first)?;
        if chars.get(close + 1) == Some(&':') && matches!(chars.get(close + 2), None | Some(' ')) {
            return Some((chars[col + 1..close].iter().collect(), close + 1));
        }
        return None;
    }
    if matches!(first, '[' | '{' | '#' | '&' | '*' | '!' | '|' | '>') {
        return None;
    }
    let mut i = col;
    while i < chars.len() {
        if chars[i] == ':' && matches!(chars.get(i + 1), None | Some(' ')) {
            let name: String = chars[col..i].iter().collect();
            return Some((name.trim_end().to_string(), i));
        }
        if chars[i] == '#' && i > col && chars[i - 1] == ' ' {
            return None;
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "\
# comment: not a key
server:
  listen: 0.0.0.0:8443
tenant_id: \"abc\"
policies:
  - name: first
    description: |
      text with key: inside
      more: text
    operators:
      users: [a, 'b', c]
    devices:
      groups:
        - g1
        - g2
  - name: second
    limits:
      per_device: 1 per 10m
    devices: {any_device: true}
list_at_key_column:
- x
- y
after: 1
";

    fn p(s: &[Seg]) -> KeyPath {
        KeyPath(s.to_vec())
    }
    fn k(s: &str) -> Seg {
        Seg::Key(s.into())
    }
    fn pos(line: usize, column: usize) -> Option<Pos> {
        Some(Pos { line, column })
    }

    #[test]
    fn finds_top_level_and_nested_keys() {
        let l = Locator::new(DOC);
        assert_eq!(l.key(&p(&[k("server")])), pos(2, 1));
        assert_eq!(l.key(&p(&[k("server"), k("listen")])), pos(3, 3));
        assert_eq!(l.value(&p(&[k("server"), k("listen")])), pos(3, 11));
        assert_eq!(l.value(&p(&[k("tenant_id")])), pos(4, 12));
    }

    #[test]
    fn finds_sequence_items_and_their_keys() {
        let l = Locator::new(DOC);
        let pol = KeyPath::root().key("policies");
        assert_eq!(l.key(&pol.index(0)), pos(6, 5));
        assert_eq!(l.key(&pol.index(0).key("name")), pos(6, 5));
        assert_eq!(l.key(&pol.index(1).key("name")), pos(16, 5));
        assert_eq!(l.value(&pol.index(1).key("name")), pos(16, 11));
        assert_eq!(
            l.value(&pol.index(1).key("limits").key("per_device")),
            pos(18, 19)
        );
        assert_eq!(
            l.key(&pol.index(0).key("devices").key("groups").index(1)),
            pos(15, 11)
        );
    }

    #[test]
    fn finds_flow_sequence_items() {
        let l = Locator::new(DOC);
        let users = KeyPath::root()
            .key("policies")
            .index(0)
            .key("operators")
            .key("users");
        assert_eq!(l.key(&users.index(0)), pos(11, 15));
        assert_eq!(l.key(&users.index(1)), pos(11, 18));
        assert_eq!(l.key(&users.index(2)), pos(11, 23));
    }

    #[test]
    fn block_scalars_and_comments_are_not_keys() {
        let l = Locator::new(DOC);
        let pol0 = KeyPath::root().key("policies").index(0);
        // `more:` lives inside the description's block scalar.
        assert_eq!(l.key(&pol0.key("more")), pos(6, 5));
        assert_eq!(l.key(&pol0.key("operators")), pos(10, 5));
        assert_eq!(l.key(&KeyPath::root().key("comment")), None);
    }

    #[test]
    fn missing_keys_fall_back_to_the_deepest_ancestor() {
        let l = Locator::new(DOC);
        let pol1 = KeyPath::root().key("policies").index(1);
        assert_eq!(l.key(&pol1.key("operators").key("users")), pos(16, 5));
        assert_eq!(l.key(&KeyPath::root().key("policies").index(7)), pos(5, 1));
        assert_eq!(l.key(&KeyPath::root().key("nope")), None);
    }

    #[test]
    fn sequence_at_the_key_column_belongs_to_the_key() {
        let l = Locator::new(DOC);
        let list = KeyPath::root().key("list_at_key_column");
        assert_eq!(l.key(&list.index(1)), pos(22, 3));
        assert_eq!(l.key(&KeyPath::root().key("after")), pos(23, 1));
    }

    #[test]
    fn value_text_is_the_inline_value_of_an_exact_key() {
        let l = Locator::new(DOC);
        let listen = KeyPath::root().key("server").key("listen");
        assert_eq!(l.value_text(&listen).as_deref(), Some("0.0.0.0:8443"));
        assert_eq!(
            l.value_text(&KeyPath::root().key("tenant_id")).as_deref(),
            Some("\"abc\"")
        );
        assert_eq!(l.value_text(&KeyPath::root().key("server")), None);
        assert_eq!(
            l.value_text(&KeyPath::root().key("server").key("nope")),
            None
        );
    }

    #[test]
    fn path_display_reads_like_yaml() {
        let path = KeyPath::root()
            .key("policies")
            .index(1)
            .key("limits")
            .key("per_device");
        assert_eq!(path.to_string(), "policies[1].limits.per_device");
    }
}
