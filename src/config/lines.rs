//! Where a key is in its file: the line an issue's dotted key path (`sites[1].pools.blue.servers`,
//! `routes[3].edge_ttl`) names, for `crossfade check`'s `file:line: key: message`. A key that is
//! missing (a required one, a setting that needs another) points at the nearest table or key
//! above it that exists, so the operator lands where it must be added.

use toml_edit::{ImDocument, TableLike, Value};

/// The 1-based line of `key` (or of its nearest existing parent) in the TOML `text`; `None`
/// when the text does not parse or not even the first part of the key is there.
pub fn line_of(text: &str, key: &str) -> Option<usize> {
    let doc = ImDocument::parse(text).ok()?;
    // Keys may carry a note after a space: `admin.listen (from $CROSSFADE_ADMIN_LISTEN)`.
    let path = key.split(' ').next()?;
    let mut best = None;
    let mut table: Option<&dyn TableLike> = Some(doc.as_table());
    'parts: for part in path.split('.') {
        let (name, indexes) = match part.find('[') {
            Some(at) => (&part[..at], &part[at..]),
            None => (part, ""),
        };
        let Some((k, item)) = table.and_then(|t| t.get_key_value(name)) else {
            break;
        };
        best = k.span().or_else(|| item.span()).or(best);
        table = item.as_table_like();
        let mut value: Option<&Value> = item.as_value();
        let mut tables = item.as_array_of_tables();
        for index in indexes.split(['[', ']']).filter(|s| !s.is_empty()) {
            let Ok(i) = index.parse::<usize>() else {
                break 'parts;
            };
            if let Some(t) = tables.and_then(|a| a.get(i)) {
                best = t.span().or(best);
                table = Some(t);
                (value, tables) = (None, None);
            } else if let Some(v) = value.and_then(Value::as_array).and_then(|a| a.get(i)) {
                best = v.span().or(best);
                table = v.as_inline_table().map(|t| t as &dyn TableLike);
                (value, tables) = (Some(v), None);
            } else {
                break 'parts;
            }
        }
    }
    let start = best?.start.min(text.len());
    Some(text[..start].matches('\n').count() + 1)
}

#[cfg(test)]
mod tests {
    use super::line_of;

    const TEXT: &str = "\
[server]
thredas = 2
[proxy]
listen = [
  \"127.0.0.1:8080\",
  \"nowhere\",
]
[[sites]]
name = \"a\"
[sites.pools.blue]
servers = [\"127.0.0.1:9000\"]
[[sites]]
name = \"b\"
tls = { certs = [{ cert = \"x\" }] }
[sites.pools.blue]
health_interval = \"soon\"
";

    #[test]
    fn keys_arrays_and_tables_are_found_and_missing_keys_point_above() {
        assert_eq!(line_of(TEXT, "server.thredas"), Some(2));
        assert_eq!(line_of(TEXT, "proxy.listen[1]"), Some(6));
        assert_eq!(line_of(TEXT, "sites[0].pools.blue.servers[0]"), Some(11));
        assert_eq!(
            line_of(TEXT, "sites[1].pools.blue.health_interval"),
            Some(16)
        );
        assert_eq!(line_of(TEXT, "sites[1].tls.certs[0].cert"), Some(14));
        // Missing: where it belongs.
        assert_eq!(line_of(TEXT, "sites[1].pools.blue.health_path"), Some(15));
        assert_eq!(line_of(TEXT, "sites[1].hosts"), Some(12));
        assert_eq!(line_of(TEXT, "cache.capacity"), None);
        assert_eq!(line_of(TEXT, "admin.listen (from $X)"), None);
        assert_eq!(line_of("not [ toml", "a"), None);
    }
}
