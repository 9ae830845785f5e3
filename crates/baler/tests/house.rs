//! The crate's house rule: no module of `src` imports one that imports it
//! back, directly or through others. A cycle means two modules that cannot
//! be understood, tested or changed one without the other; the shared piece
//! belongs in a module of its own that both import.
//!
//! One pair is allowed: a builder and its product (`config::Builder` builds a
//! `batcher::Batcher`, and `Batcher::builder()` hands back a `Builder`).
//!
//! The graph is read from the source: every `crate::<module>` path outside a
//! comment, per top-level module (`src/<module>.rs` or `src/<module>/**`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The cycles the house allows: a builder and its product.
const ALLOWED: &[&[&str]] = &[&["batcher", "config"]];

fn rust_files(dir: &Path, into: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {dir:?}: {e}"));
    for entry in entries {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

/// The top-level module a file belongs to (`None` for `lib.rs`).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).expect("a file under src");
    let first = rel.components().next()?.as_os_str().to_str()?;
    match first.strip_suffix(".rs") {
        Some("lib") => None,
        Some(name) => Some(name.to_owned()),
        None => Some(first.to_owned()),
    }
}

/// The modules named by `crate::<name>` paths in `code`, comments left out.
/// A group (`crate::{a, b::c}`) names each of its members.
fn imports(code: &str, modules: &BTreeSet<String>) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in code.lines() {
        let line = match line.find("//") {
            Some(at) => &line[..at],
            None => line,
        };
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let names: Vec<&str> = match rest.strip_prefix('{') {
                Some(group) => group
                    .split('}')
                    .next()
                    .unwrap_or("")
                    .split(',')
                    .map(str::trim)
                    .collect(),
                None => vec![rest],
            };
            for name in names {
                let ident: String = name
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if modules.contains(&ident) {
                    found.insert(ident);
                }
            }
        }
    }
    found
}

fn graph_of(src: &Path) -> Graph {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| module_of(src, f)).collect();
    let mut graph = Graph::new();
    for file in &files {
        let Some(module) = module_of(src, file) else {
            continue;
        };
        let code = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{file:?}: {e}"));
        let edges = graph.entry(module.clone()).or_default();
        edges.extend(
            imports(&code, &modules)
                .into_iter()
                .filter(|m| *m != module),
        );
    }
    graph
}

/// The strongly connected components of more than one module (Tarjan's).
fn cycles(graph: &Graph) -> Vec<BTreeSet<String>> {
    struct Walk<'a> {
        graph: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        found: Vec<BTreeSet<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a str) {
            let i = self.index.len();
            self.index.insert(v, i);
            self.low.insert(v, i);
            self.stack.push(v);
            for w in self.graph.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.stack.contains(&w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = BTreeSet::new();
                while let Some(w) = self.stack.pop() {
                    component.insert(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    self.found.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in graph.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.found
}

/// One cycle through the component, as `a -> b -> ... -> a`, to say what
/// imports what.
fn describe(graph: &Graph, component: &BTreeSet<String>) -> String {
    let start = component.iter().next().expect("a non-empty component");
    // Breadth-first from `start` back to itself, inside the component.
    let mut from: BTreeMap<&str, &str> = BTreeMap::new();
    let mut frontier = vec![start.as_str()];
    while !frontier.is_empty() {
        let mut next = Vec::new();
        for v in frontier {
            for w in graph.get(v).into_iter().flatten() {
                if !component.contains(w) || from.contains_key(w.as_str()) {
                    continue;
                }
                from.insert(w, v);
                if w == start {
                    let mut path = vec![start.as_str()];
                    let mut at = from[start.as_str()];
                    while at != start {
                        path.push(at);
                        at = from[at];
                    }
                    path.push(start);
                    path.reverse();
                    return path.join(" -> ");
                }
                next.push(w.as_str());
            }
        }
        frontier = next;
    }
    format!("{component:?}")
}

fn forbidden(graph: &Graph) -> Vec<String> {
    cycles(graph)
        .into_iter()
        .filter(|c| {
            !ALLOWED
                .iter()
                .any(|allowed| c.iter().map(String::as_str).eq(allowed.iter().copied()))
        })
        .map(|c| {
            let members: Vec<&str> = c.iter().map(String::as_str).collect();
            format!(
                "{} (one cycle: {})",
                members.join(", "),
                describe(graph, &c)
            )
        })
        .collect()
}

#[test]
fn no_module_imports_one_that_imports_it_back() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let graph = graph_of(&src);
    assert!(
        graph.len() > 10 && graph.values().any(|edges| !edges.is_empty()),
        "the graph was read: {graph:?}"
    );
    let found = forbidden(&graph);
    assert!(
        found.is_empty(),
        "modules that import each other (move what they share into a module of its own):\n  {}",
        found.join("\n  ")
    );
}

/// The check itself: it sees a cycle through three modules, a direct one,
/// and lets the builder/product pair through.
#[test]
fn the_check_finds_cycles_and_allows_the_builder_pair() {
    let modules: BTreeSet<String> = ["a", "b", "c", "batcher", "config"]
        .map(String::from)
        .into();
    let code = "use crate::b::X;\n// crate::c in a comment\nuse crate::{c, a::Y};\n";
    assert_eq!(
        imports(code, &modules),
        ["a", "b", "c"].map(String::from).into()
    );

    let graph = |edges: &[(&str, &str)]| {
        let mut g = Graph::new();
        for (from, to) in edges {
            g.entry(from.to_string())
                .or_default()
                .insert(to.to_string());
            g.entry(to.to_string()).or_default();
        }
        g
    };
    let three = graph(&[("a", "b"), ("b", "c"), ("c", "a"), ("c", "batcher")]);
    assert_eq!(
        forbidden(&three),
        vec!["a, b, c (one cycle: a -> b -> c -> a)".to_owned()]
    );
    let pair = graph(&[("batcher", "config"), ("config", "batcher"), ("a", "b")]);
    assert!(forbidden(&pair).is_empty());
    let through_pair = graph(&[
        ("batcher", "config"),
        ("config", "batcher"),
        ("batcher", "a"),
        ("a", "config"),
    ]);
    assert_eq!(
        forbidden(&through_pair).len(),
        1,
        "a third module in the pair's cycle"
    );
}
