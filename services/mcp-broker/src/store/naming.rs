//! Names of discovered tools: `<prefix><remote name>`, made acceptable to every LLM
//! provider (`^[a-zA-Z0-9_-]{1,64}$`) and unique in the catalogue.
//!
//! Both backends name tools with these functions, so a server's tools get the same names
//! whichever store holds them.

/// Longest tool name the LLM providers accept.
pub const MAX_TOOL_NAME: usize = 64;

/// The prefix of a server's discovered tools: its `tool_prefix` when set (possibly empty),
/// else `<server name>_`, sanitised.
pub fn prefix(server_name: &str, tool_prefix: Option<&str>) -> String {
    match tool_prefix {
        Some(prefix) => sanitize(prefix),
        None => format!("{}_", sanitize(server_name)),
    }
}

/// `text` with every character outside `[a-zA-Z0-9_-]` replaced by `_`.
pub fn sanitize(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect()
}

/// The name a tool called `remote` on a server with `prefix` should have, before
/// uniqueness: sanitised, at most [`MAX_TOOL_NAME`] characters, never empty.
pub fn desired(prefix: &str, remote: &str) -> String {
    let name: String = sanitize(&format!("{prefix}{remote}")).chars().take(MAX_TOOL_NAME).collect();
    if name.is_empty() { "tool".to_owned() } else { name }
}

/// `desired` if `taken` says it is free, else the first free `<desired>_2`, `<desired>_3`,
/// ... (the base shortened so the whole stays within [`MAX_TOOL_NAME`]). A tool being
/// renamed must not count its own name as taken: then a tool that already holds its
/// name, or the suffixed name it got earlier, keeps it.
pub fn unique(desired: &str, taken: impl Fn(&str) -> bool) -> String {
    if !taken(desired) {
        return desired.to_owned();
    }
    (2u64..)
        .map(|n| {
            let suffix = format!("_{n}");
            let base: String = desired.chars().take(MAX_TOOL_NAME - suffix.len()).collect();
            format!("{base}{suffix}")
        })
        .find(|candidate| !taken(candidate))
        .unwrap_or_else(|| desired.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_prefixed_sanitised_bounded_and_unique() {
        assert_eq!(prefix("everything", None), "everything_");
        assert_eq!(prefix("my server.v2", None), "my_server_v2_");
        assert_eq!(prefix("x", Some("")), "");
        assert_eq!(desired("everything_", "get-sum"), "everything_get-sum");
        assert_eq!(desired("", "a.b/c d"), "a_b_c_d");
        assert_eq!(desired("", ""), "tool");
        assert_eq!(desired(&"p".repeat(60), "search").len(), MAX_TOOL_NAME);
        assert_eq!(desired("", "héllo"), "h_llo");

        let taken = ["echo", "echo_2"];
        assert_eq!(unique("echo", |n| taken.contains(&n)), "echo_3");
        assert_eq!(unique("other", |n| taken.contains(&n)), "other");
        let long = "x".repeat(64);
        let renamed = unique(&long, |n| n == long);
        assert_eq!(renamed.len(), MAX_TOOL_NAME);
        assert!(renamed.ends_with("_2"));
    }
}
