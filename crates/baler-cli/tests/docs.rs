//! The README and the guides in `docs/` against the real `baler`: every flag
//! they tell a user to pass exists, the README keeps its two commands, and
//! every relative link points at a file (and heading) that exists.
//!
//! These read the repository, not the crate: a downloaded `baler-cli` has no
//! `docs/`, so there the tests say so and check nothing.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::{run, TempDir};

/// The documents whose links are checked.
const DOCUMENTS: [&str; 8] = [
    "README.md",
    "CONTRIBUTING.md",
    "docs/cli.md",
    "docs/shared-capacity.md",
    "docs/loader.md",
    "docs/processor.md",
    "docs/troubleshooting.md",
    "docs/design.md",
];

/// The repository's root, or `None` when this crate was not built from a
/// checkout of the repository.
fn repository() -> Option<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    if root.join("crates/baler-cli/Cargo.toml").is_file() {
        Some(root)
    } else {
        eprintln!("not a checkout of the baler repository: the documents are not here");
        None
    }
}

fn read(root: &Path, document: &str) -> String {
    std::fs::read_to_string(root.join(document))
        .unwrap_or_else(|e| panic!("cannot read {document}: {e}"))
}

/// The `--flags` in `text`.
fn flags(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|word| word.len() > 2 && word.starts_with("--") && !word.starts_with("---"))
        .map(str::to_owned)
}

/// A document without its code blocks, so that the backticks left pair up
/// as inline code.
fn prose(document: &str) -> String {
    let mut in_code = false;
    let mut text = String::new();
    for line in document.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if !in_code {
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

/// The flags a document gives `baler ingest`: in the command lines that run
/// it (continuation lines included), and in prose as `` `--flag ...` ``.
fn ingest_flags(document: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut command = String::new();
    for line in document.lines() {
        command.push_str(line.trim_end_matches('\\'));
        command.push(' ');
        if line.ends_with('\\') {
            continue;
        }
        for marker in ["baler ingest ", "-- ingest "] {
            if let Some(at) = command.find(marker) {
                found.extend(flags(&command[at + marker.len()..]));
            }
        }
        command.clear();
    }
    for (i, span) in prose(document).split('`').enumerate() {
        if i % 2 == 1 && span.starts_with("--") {
            found.extend(flags(span));
        }
    }
    found
}

#[test]
fn every_flag_the_cli_guide_and_the_readme_pass_to_ingest_exists() {
    let Some(root) = repository() else { return };
    let dir = TempDir::new("docs-help");
    let help = run(&dir.0, &["ingest", "--help"], "");
    assert_eq!(help.code(), 0, "{}", help.stderr);
    let known: BTreeSet<String> = flags(&help.stdout).collect();
    for document in ["docs/cli.md", "README.md"] {
        let used = ingest_flags(&read(&root, document));
        let unknown: Vec<_> = used.difference(&known).collect();
        assert!(
            unknown.is_empty(),
            "{document} passes `baler ingest` flags it does not have: {unknown:?}; \
             fix the document or the flag (`baler ingest --help` lists {known:?})"
        );
    }
    // The guide is where every flag is explained: one it never names is a
    // flag nobody can find without --help.
    let guide = ingest_flags(&read(&root, "docs/cli.md"));
    let unexplained: Vec<_> = known
        .iter()
        .filter(|flag| !guide.contains(*flag) && *flag != "--help")
        .collect();
    assert!(
        unexplained.is_empty(),
        "docs/cli.md never mentions {unexplained:?}: say what they do there"
    );
}

#[test]
fn the_readme_keeps_the_main_job_and_all_tests_as_commands() {
    let Some(root) = repository() else { return };
    let readme = read(&root, "README.md");
    for command in [
        "cargo run --release -p baler-cli -- ingest --records 100000",
        "./scripts/test",
    ] {
        let block = format!("```sh\n{command}\n```");
        assert!(
            readme.contains(&block),
            "README.md must show `{command}` as a shell block of its own"
        );
    }
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces
/// as hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_'))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown document's headings, outside code blocks.
fn anchors(document: &str) -> BTreeSet<String> {
    let mut in_code = false;
    let mut found = BTreeSet::new();
    for line in document.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            found.insert(anchor(line.trim_start_matches('#')));
        }
    }
    found
}

/// The targets of the inline links `[text](target)` of a document, outside
/// code blocks.
fn links(document: &str) -> Vec<String> {
    let mut in_code = false;
    let mut found = Vec::new();
    for line in document.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        let mut rest = line;
        while let Some(at) = rest.find("](") {
            rest = &rest[at + 2..];
            let Some(end) = rest.find(')') else { break };
            found.push(rest[..end].to_owned());
            rest = &rest[end..];
        }
    }
    found
}

#[test]
fn every_relative_link_in_the_readme_and_the_guides_points_at_something_that_exists() {
    let Some(root) = repository() else { return };
    let mut broken = Vec::new();
    let mut checked = 0;
    for document in DOCUMENTS {
        let text = read(&root, document);
        let base = root.join(document);
        let base = base.parent().expect("a document is in a directory");
        for link in links(&text) {
            if link.contains("://") || link.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, fragment) = link.split_once('#').unwrap_or((&link, ""));
            let target = if path.is_empty() {
                root.join(document)
            } else {
                base.join(path)
            };
            if !target.exists() {
                broken.push(format!("{document}: {link} (no such file)"));
                continue;
            }
            if !fragment.is_empty() && target.is_file() {
                let headings = anchors(&std::fs::read_to_string(&target).unwrap_or_default());
                if !headings.contains(fragment) {
                    broken.push(format!("{document}: {link} (no such heading)"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links: {broken:#?}");
    assert!(
        checked > 10,
        "only {checked} links found: is the parser still right?"
    );
}
