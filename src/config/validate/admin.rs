//! `[admin]`.

use crate::config::{file, AdminConfig, ENV_ADMIN_TOKEN};

pub(super) fn validate(
    f: file::AdminFile,
    env: &impl Fn(&str) -> Option<String>,
    e: &mut Vec<String>,
) -> AdminConfig {
    AdminConfig {
        token: env(ENV_ADMIN_TOKEN)
            .or_else(|| {
                let path = f.token_file?;
                match std::fs::read_to_string(&path) {
                    Ok(t) => Some(t.trim().to_string()),
                    Err(err) => {
                        e.push(format!("admin.token_file: cannot read `{path}`: {err}"));
                        None
                    }
                }
            })
            .filter(|t| !t.is_empty()),
    }
}
