// The documentation renders and its relative links lead somewhere.
//
// Over README.md, SECURITY.md, docs/**/*.md and deploy/**/*.md:
//   1. every `<!--` outside code is closed by a `-->` (an unclosed one hides the rest of the
//      file on GitHub);
//   2. every relative link, image and reference definition resolves: the file or directory
//      exists (inside the repository), and a `#anchor` matches a heading of the target markdown
//      file under GitHub's slug rules (or an `<a id>`/`<a name>` in it); `[text][label]` names a
//      defined label.
// External targets (any `scheme:`, `//host`) are not fetched. Markdown is parsed with
// pulldown-cmark, so links in code blocks and inline code are not links.
//
// Written to work both as its own test crate and as a module of a larger one: no inner
// attributes, no `mod`, paths from CARGO_MANIFEST_DIR.

use pulldown_cmark::{BrokenLink, CowStr, Event, LinkType, Options, Parser, Tag, TagEnd};
use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::path::{Component, Path, PathBuf};

#[test]
fn docs_render_and_their_relative_links_resolve() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files = doc_files(root);
    for must in ["README.md", "SECURITY.md"] {
        assert!(
            files.iter().any(|f| f == &root.join(must)),
            "{must} is missing"
        );
    }
    let problems = check_docs(root, &files);
    assert!(
        problems.is_empty(),
        "{} problem(s) in the documentation:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The checker itself must be able to fail: a scratch repository with one of each mistake.
#[test]
fn docs_checker_flags_unclosed_comments_and_dangling_links() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("docs/sub")).unwrap();
    std::fs::create_dir_all(root.join("deploy")).unwrap();
    let write = |p: &str, s: &str| std::fs::write(root.join(p), s).unwrap();
    write(
        "README.md",
        "# Title\n\
         \n\
         ## Two commands\n\
         ## Two commands\n\
         ### TLS and mTLS — `server.tls`\n\
         \n\
         [ok](docs/guide.md) [ok](docs/guide.md#first-part) [ok](#two-commands-1)\n\
         [ok](#tls-and-mtls--servertls) [ok](deploy/) [ok](https://example.com/x#y)\n\
         [ok](<docs/guide.md>) ![ok](docs/sub/pic.png) [ok](mailto:a@example.com)\n\
         [ok](docs/sub/pic.png#L3) [ok][ref-ok] [ok](#anchor-by-html) [ok](docs/sub/)\n\
         [bad](docs/missing.md)\n\
         [bad](docs/guide.md#no-such-heading)\n\
         [bad](#two-commands-2)\n\
         ![bad](img/none.png)\n\
         [bad][ref-bad] [bad][undefined-label]\n\
         [bad](#Two-Commands) [bad](docs/sub/pic.png#section) [bad](../outside.md)\n\
         `[not a link](nowhere.md)` and `<!--` in code are ignored\n\
         \n\
         ```\n\
         [not a link](nowhere.md) <!-- in a fence\n\
         ```\n\
         \n\
         <a id=\"anchor-by-html\"></a>\n\
         \n\
         [ref-ok]: docs/guide.md#second-part\n\
         [ref-bad]: docs/guide.md#third-part\n\
         \n\
         <!-- closed -->\n\
         \n\
         <!-- never closed\n\
         \n\
         ## Hidden\n",
    );
    write(
        "docs/guide.md",
        "# First part\n\nSecond part\n---\n\n[up](../README.md#title) [bad](../README.md#hidden)\n",
    );
    write("docs/sub/pic.png", "not really a png");
    write("SECURITY.md", "# Security\n");
    write("deploy/README.md", "[bad](nothere/)\n");

    let files = doc_files(root);
    let problems = check_docs(root, &files);
    let text = problems.join("\n");
    let expected = [
        "README.md:11: `docs/missing.md`: no such file or directory",
        "README.md:12: `docs/guide.md#no-such-heading`: no heading or anchor `no-such-heading` in docs/guide.md",
        "README.md:13: `#two-commands-2`: no heading or anchor `two-commands-2` in README.md",
        "README.md:14: `img/none.png`: no such file or directory",
        "README.md:26: `docs/guide.md#third-part`: no heading or anchor `third-part` in docs/guide.md",
        "README.md:15: `[bad][undefined-label]`: reference `undefined-label` is not defined",
        "README.md:16: `#Two-Commands`: no heading or anchor `Two-Commands` in README.md",
        "README.md:16: `docs/sub/pic.png#section`: anchor into docs/sub/pic.png, which is not markdown",
        "README.md:16: `../outside.md`: outside the repository",
        "README.md:30: unclosed HTML comment `<!--`: everything after it is hidden when rendered",
        "docs/guide.md:6: `../README.md#hidden`: no heading or anchor `hidden` in README.md",
        "deploy/README.md:1: `nothere/`: no such file or directory",
    ];
    for e in expected {
        assert!(
            problems.iter().any(|p| p == e),
            "expected `{e}` among:\n{text}"
        );
    }
    assert_eq!(
        problems.len(),
        expected.len(),
        "unexpected extra problems:\n{text}"
    );
}

/// README.md, SECURITY.md, and every `.md` under docs/ and deploy/, sorted.
fn doc_files(root: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = ["README.md", "SECURITY.md"]
        .iter()
        .map(|f| root.join(f))
        .filter(|p| p.is_file())
        .collect();
    for dir in ["docs", "deploy"] {
        collect_markdown(&root.join(dir), &mut files);
    }
    files.sort();
    files
}

fn collect_markdown(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect_markdown(&path, out);
        } else if path.extension().is_some_and(|e| e == "md") {
            out.push(path);
        }
    }
}

/// One message per problem: `file:line: what`.
fn check_docs(root: &Path, files: &[PathBuf]) -> Vec<String> {
    let mut anchors: HashMap<PathBuf, HashSet<String>> = HashMap::new();
    let mut problems = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        let scan = scan_markdown(&text);
        let name = display(root, file);
        if let Some(at) = scan.unclosed_comment {
            problems.push(format!(
                "{name}:{}: unclosed HTML comment `<!--`: everything after it is hidden when rendered",
                line_of(&text, at)
            ));
        }
        for r in &scan.undefined_references {
            problems.push(format!(
                "{name}:{}: `{}`: reference `{}` is not defined",
                line_of(&text, r.0.start),
                &text[r.0.clone()],
                r.1
            ));
        }
        for link in &scan.links {
            if let Err(why) = check_target(root, file, &link.target, &mut anchors) {
                problems.push(format!(
                    "{name}:{}: `{}`: {why}",
                    line_of(&text, link.at),
                    link.target
                ));
            }
        }
    }
    problems
}

struct Link {
    target: String,
    at: usize,
}

#[derive(Default)]
struct Scan {
    links: Vec<Link>,
    /// Heading slugs (GitHub rules, duplicates numbered) and `<a id|name>` values.
    anchors: HashSet<String>,
    unclosed_comment: Option<usize>,
    /// `[text][label]` / `[text][]` whose label has no definition: (span, label).
    undefined_references: Vec<(Range<usize>, String)>,
}

fn gfm_options() -> Options {
    Options::ENABLE_TABLES
        | Options::ENABLE_STRIKETHROUGH
        | Options::ENABLE_TASKLISTS
        | Options::ENABLE_FOOTNOTES
}

fn scan_markdown(text: &str) -> Scan {
    let mut scan = Scan::default();
    let mut undefined = Vec::new();
    let mut code: Vec<Range<usize>> = Vec::new();
    let mut heading: Option<String> = None;
    let mut slug_counts: HashMap<String, usize> = HashMap::new();
    {
        let callback = |b: BrokenLink<'_>| -> Option<(CowStr<'_>, CowStr<'_>)> {
            // `[text]` alone is ordinary prose; `[text][label]` and `[text][]` mean a link.
            if matches!(b.link_type, LinkType::Reference | LinkType::Collapsed) {
                undefined.push((b.span.clone(), b.reference.to_string()));
            }
            None
        };
        let parser = Parser::new_with_broken_link_callback(text, gfm_options(), Some(callback));
        // Definitions are checked where they are written (once, even if used many times or not
        // at all); links that use them are then skipped below.
        let mut defs: Vec<Link> = parser
            .reference_definitions()
            .iter()
            .map(|(_, d)| Link {
                target: d.dest.to_string(),
                at: d.span.start,
            })
            .collect();
        defs.sort_by_key(|l| l.at);
        scan.links.extend(defs);
        for (event, range) in parser.into_offset_iter() {
            match event {
                Event::Start(Tag::CodeBlock(_)) => code.push(range),
                Event::Code(c) => {
                    code.push(range);
                    if let Some(h) = heading.as_mut() {
                        h.push_str(&c);
                    }
                }
                Event::Start(Tag::Link {
                    link_type,
                    dest_url,
                    ..
                })
                | Event::Start(Tag::Image {
                    link_type,
                    dest_url,
                    ..
                }) => {
                    if matches!(link_type, LinkType::Inline) {
                        scan.links.push(Link {
                            target: dest_url.to_string(),
                            at: range.start,
                        });
                    }
                }
                Event::Start(Tag::Heading { .. }) => heading = Some(String::new()),
                Event::Text(t) => {
                    if let Some(h) = heading.as_mut() {
                        h.push_str(&t);
                    }
                }
                Event::End(TagEnd::Heading(_)) => {
                    if let Some(h) = heading.take() {
                        scan.anchors.insert(unique_slug(&h, &mut slug_counts));
                    }
                }
                Event::Html(h) | Event::InlineHtml(h) => {
                    scan.anchors.extend(html_anchor_ids(&h));
                }
                _ => {}
            }
        }
    }
    scan.undefined_references = undefined;
    scan.unclosed_comment = first_unclosed_comment(text, &code);
    scan
}

/// GitHub's heading ids (github-slugger): lower-case; drop everything but letters, digits,
/// `-`, `_` and spaces; each space becomes `-`; the n-th repeat of a slug gets `-n`.
fn unique_slug(heading: &str, counts: &mut HashMap<String, usize>) -> String {
    let base: String = heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect();
    let mut slug = base.clone();
    while counts.contains_key(&slug) {
        let n = counts.get_mut(&base).unwrap();
        *n += 1;
        slug = format!("{base}-{n}");
    }
    counts.insert(slug.clone(), 0);
    slug
}

/// `id` / `name` attributes of `<a …>` tags: explicit anchors GitHub keeps.
fn html_anchor_ids(html: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let lower = html.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find("<a ") {
        let start = from + i;
        let end = lower[start..].find('>').map_or(lower.len(), |e| start + e);
        let tag = &html[start..end];
        for attr in ["id=", "name="] {
            let tl = tag.to_ascii_lowercase();
            let mut at = 0;
            while let Some(p) = tl[at..].find(attr) {
                let p = at + p;
                at = p + attr.len();
                let before = tl[..p].chars().last();
                if !before.is_some_and(char::is_whitespace) {
                    continue;
                }
                let rest = &tag[p + attr.len()..];
                let value = match rest.chars().next() {
                    Some(q @ ('"' | '\'')) => rest[1..].split(q).next().unwrap_or(""),
                    _ => rest
                        .split(|c: char| c.is_whitespace() || c == '/')
                        .next()
                        .unwrap_or(""),
                };
                if !value.is_empty() {
                    ids.push(value.to_string());
                }
            }
        }
        from = end;
    }
    ids
}

/// Offset of the first `<!--` outside code that has no `-->` after it.
fn first_unclosed_comment(text: &str, code: &[Range<usize>]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = text[from..].find("<!--") {
        let open = from + i;
        if let Some(c) = code.iter().find(|c| c.contains(&open)) {
            from = c.end.max(open + 4);
            continue;
        }
        match text[open + 4..].find("-->") {
            Some(j) => from = open + 4 + j + 3,
            None => return Some(open),
        }
    }
    None
}

fn check_target(
    root: &Path,
    file: &Path,
    target: &str,
    anchors: &mut HashMap<PathBuf, HashSet<String>>,
) -> Result<(), String> {
    if is_external(target) {
        return Ok(());
    }
    let (path_part, anchor) = match target.split_once('#') {
        Some((p, a)) => (p, Some(percent_decode(a))),
        None => (target, None),
    };
    let path_part = path_part.split('?').next().unwrap_or("");
    let resolved = if path_part.is_empty() {
        file.to_path_buf()
    } else {
        let decoded = percent_decode(path_part);
        let base = if let Some(abs) = decoded.strip_prefix('/') {
            root.join(abs) // GitHub resolves `/x` from the repository root
        } else {
            file.parent().unwrap().join(&decoded)
        };
        normalize(&base)
    };
    if !resolved.starts_with(normalize(root)) {
        return Err("outside the repository".into());
    }
    if !resolved.exists() {
        return Err("no such file or directory".into());
    }
    let Some(anchor) = anchor else {
        return Ok(());
    };
    let md = if resolved.is_dir() {
        resolved.join("README.md")
    } else {
        resolved.clone()
    };
    if md.extension().is_none_or(|e| e != "md") || !md.is_file() {
        if !md.is_dir() && is_line_anchor(&anchor) {
            return Ok(()); // GitHub's `#L10` / `#L10-L20` into a source file
        }
        return Err(format!(
            "anchor into {}, which is not markdown",
            display(root, &resolved)
        ));
    }
    if !anchors.contains_key(&md) {
        let text = std::fs::read_to_string(&md).map_err(|e| format!("cannot read: {e}"))?;
        anchors.insert(md.clone(), scan_markdown(&text).anchors);
    }
    if anchors[&md].contains(&anchor) {
        Ok(())
    } else {
        Err(format!(
            "no heading or anchor `{anchor}` in {}",
            display(root, &md)
        ))
    }
}

fn is_external(target: &str) -> bool {
    if target.starts_with("//") {
        return true;
    }
    // A URI scheme: a letter, then letters, digits, `+`, `-`, `.`, then `:`.
    match target.split_once(':') {
        Some((scheme, _)) => {
            scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        }
        None => false,
    }
}

fn is_line_anchor(anchor: &str) -> bool {
    let line = |s: &str| {
        s.strip_prefix('L')
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    match anchor.split_once('-') {
        Some((a, b)) => line(a) && line(b),
        None => line(anchor),
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Lexically resolves `.` and `..` (no symlinks followed), so a missing file still gets a path.
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

fn display(root: &Path, p: &Path) -> String {
    let p = normalize(p);
    p.strip_prefix(normalize(root))
        .unwrap_or(&p)
        .to_string_lossy()
        .into_owned()
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}
