//! Tenant config files: the YAML an operator keeps as `tenants/<id>/config.yaml`
//! (or `tenants/<name>.yaml`, several `---` documents allowed), read into the
//! `TenantConfig` messages that `ApplyTenants` takes.
//!
//! ```yaml
//! tenant_id: "sales"
//! model_path: "/models/qwen3-32b-finance.Q4_K_M.gguf"
//! daily_quota: 600000
//! max_concurrent: 5
//! context_window: 65536
//! ```
//!
//! This module owns the file format: unknown fields, wrong types and invalid
//! YAML are refused here with the file, the field and the reason, and so are
//! the things only the file can get wrong (a directory named after another
//! tenant, both `model` and `model_path`). It never checks what the control
//! plane decides (plans, limits that cannot work, webhook URLs): `ApplyTenants`
//! refuses those, all or nothing, with the file's name in front.

use std::fmt;
use std::path::{Path, PathBuf};

use bulkhead_proto::control as pb;

mod format;

use format::{RawTenantConfig, convert};

/// Why tenant configs could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file or directory could not be read.
    #[error("{path}: {error}")]
    Read { path: String, error: std::io::Error },
    /// The text is not YAML.
    #[error("{file}: invalid YAML: {reason}")]
    Yaml { file: String, reason: String },
    /// A field is unknown, missing, of the wrong type or not allowed.
    #[error("{file}: {field}: {reason}")]
    Invalid {
        file: String,
        field: String,
        reason: String,
    },
    /// The file or directory declares no tenant.
    #[error("{path}: no tenant configs in it ({what})")]
    Empty { path: String, what: &'static str },
}

impl ConfigError {
    fn invalid(file: &str, field: &str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            file: file.to_owned(),
            field: field.to_owned(),
            reason: reason.into(),
        }
    }
}

/// to serve. `Debug` leaves out webhook secrets.
#[derive(Clone)]
pub struct LoadedConfig {
    pub config: pb::TenantConfig,
    pub model_path: Option<PathBuf>,
    pub adapter_path: Option<PathBuf>,
}

impl fmt::Debug for LoadedConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<&str> = self
            .config
            .webhooks
            .iter()
            .map(|w| w.url.as_str())
            .collect();
        f.debug_struct("LoadedConfig")
            .field("source", &self.config.source)
            .field("tenant", &self.config.tenant)
            .field("webhooks", &urls)
            .field("model_path", &self.model_path)
            .field("adapter_path", &self.adapter_path)
            .finish()
    }
}

impl LoadedConfig {
    pub fn tenant_id(&self) -> &str {
        self.config.tenant.as_ref().map_or("", |t| t.id.as_str())
    }

    pub fn model(&self) -> &str {
        self.config.tenant.as_ref().map_or("", |t| t.model.as_str())
    }
}

/// Reads tenant configs from a file, or from a directory: every
/// `<id>/config.yaml` and every `*.yaml` directly inside it, in name order.
/// `source` of each config is its file's path.
pub fn load(path: &Path) -> Result<Vec<pb::TenantConfig>, ConfigError> {
    Ok(load_files(path)?.into_iter().map(|l| l.config).collect())
}

/// [`load`], keeping the model and adapter files the configs name.
pub fn load_files(path: &Path) -> Result<Vec<LoadedConfig>, ConfigError> {
    let read_err = |p: &Path, error: std::io::Error| ConfigError::Read {
        path: p.display().to_string(),
        error,
    };
    let meta = std::fs::metadata(path).map_err(|e| read_err(path, e))?;
    let files = if meta.is_dir() {
        let files = config_files(path).map_err(|e| read_err(path, e))?;
        if files.is_empty() {
            return Err(ConfigError::Empty {
                path: path.display().to_string(),
                what: "looked for <id>/config.yaml and *.yaml",
            });
        }
        files
    } else {
        vec![path.to_path_buf()]
    };
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|e| read_err(&file, e))?;
        let source = file.display().to_string();
        let loaded = parse_documents(&source, &text, file.parent())?;
        if loaded.is_empty() {
            return Err(ConfigError::Empty {
                path: source,
                what: "the file has no YAML document",
            });
        }
        if let Some(dir) = tenant_dir(&file) {
            for l in &loaded {
                if l.tenant_id() != dir {
                    return Err(ConfigError::invalid(
                        &source,
                        "tenant_id",
                        format!(
                            "`{}` does not match its directory `{dir}` (tenants/<id>/config.yaml declares tenant <id>)",
                            l.tenant_id()
                        ),
                    ));
                }
            }
        }
        out.extend(loaded);
    }
    Ok(out)
}

/// Parses YAML text (one document, or several separated by `---`) into
/// configs whose `source` is `source`. Paths in it stay as written.
pub fn parse(source: &str, text: &str) -> Result<Vec<pb::TenantConfig>, ConfigError> {
    let loaded = parse_documents(source, text, None)?;
    if loaded.is_empty() {
        return Err(ConfigError::Empty {
            path: source.to_owned(),
            what: "the text has no YAML document",
        });
    }
    Ok(loaded.into_iter().map(|l| l.config).collect())
}

/// The config files of a directory, sorted by path.
fn config_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            for name in ["config.yaml", "config.yml"] {
                let file = path.join(name);
                if file.is_file() {
                    files.push(file);
                }
            }
        } else if path.is_file() && path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The tenant id a `<id>/config.yaml` file's directory names.
fn tenant_dir(file: &Path) -> Option<String> {
    let name = file.file_name()?.to_str()?;
    if name != "config.yaml" && name != "config.yml" {
        return None;
    }
    let dir = file.parent()?.file_name()?.to_str()?;
    Some(dir.to_owned())
}

fn parse_documents(
    source: &str,
    text: &str,
    base: Option<&Path>,
) -> Result<Vec<LoadedConfig>, ConfigError> {
    let mut out = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        // An empty document (a lone `---`, or only comments) declares nothing.
        let raw: Option<RawTenantConfig> =
            serde_path_to_error::deserialize(document).map_err(|e| yaml_error(source, &e))?;
        if let Some(raw) = raw {
            out.push(convert(source, raw, base)?);
        }
    }
    Ok(out)
}

/// Names the field of a deserialization error: its path (which serde_yaml
/// also puts in front of its message), or for a missing field, that field.
fn yaml_error(source: &str, e: &serde_path_to_error::Error<serde_yaml::Error>) -> ConfigError {
    let message = e.inner().to_string();
    let path = e.path().to_string();
    let file = source.to_owned();
    if path != "." && path != "?" {
        // serde_yaml names the path too (or the mapping's, for an unknown key).
        let mut reason = message.as_str();
        let mut at = path.as_str();
        loop {
            if let Some(rest) = message.strip_prefix(&format!("{at}: ")) {
                reason = rest;
                break;
            }
            match at.rfind(['.', '[']) {
                Some(i) if i > 0 => at = &at[..i],
                _ => break,
            }
        }
        let reason = reason.to_owned();
        return ConfigError::Invalid {
            file,
            field: path,
            reason,
        };
    }
    let missing = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next());
    match missing {
        Some(name) => ConfigError::Invalid {
            file,
            field: name.to_owned(),
            reason: message.clone(),
        },
        None if message.starts_with("invalid type") => ConfigError::Invalid {
            file,
            field: "document".to_owned(),
            reason: message,
        },
        None => ConfigError::Yaml {
            file,
            reason: message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SALES: &str = r#"
tenant_id: "sales"
model_path: "/models/qwen3-32b-finance.Q4_K_M.gguf"
daily_quota: 600000
max_concurrent: 5
context_window: 65536
"#;

    fn tenant(c: &pb::TenantConfig) -> &pb::Tenant {
        c.tenant.as_ref().expect("a parsed config has a tenant")
    }

    fn err(text: &str) -> String {
        match parse("t.yaml", text) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn the_articles_plan_tier_names_the_plan() {
        let c = parse("t.yaml", "tenant_id: hr\nplan_tier: enterprise\n").unwrap();
        assert_eq!(tenant(&c[0]).plan, "enterprise");
        // Both names at once is one field given twice.
        let e = err("tenant_id: hr\nplan: pro\nplan_tier: enterprise\n");
        assert!(e.contains("plan"), "{e}");
    }

    #[test]
    fn the_operators_format_is_read_with_the_model_named_by_its_stem() {
        let configs = parse("sales.yaml", SALES).unwrap();
        assert_eq!(configs.len(), 1);
        let c = &configs[0];
        assert_eq!(c.source, "sales.yaml");
        let t = tenant(c);
        assert_eq!(t.id, "sales");
        assert_eq!(t.model, "qwen3-32b-finance.Q4_K_M");
        let l = t.limits.unwrap_or_default();
        assert_eq!(
            (
                l.daily_tokens,
                l.max_concurrent,
                l.context_window,
                l.max_request_tokens
            ),
            (600_000, 5, 65_536, 0),
            "what the file leaves out stays 0: the plan's default"
        );
        let f = t.feature_overrides.clone().unwrap_or_default();
        assert_eq!(f, pb::FeatureOverrides::default(), "no overrides given");
    }

    #[test]
    fn every_field_is_read() {
        let text = r#"
tenant_id: acme
display_name: Acme Corp
plan: enterprise
daily_tokens: 5000
max_concurrent: 3
max_request_tokens: 1000
context_window: 4096
context_turns: 7
model: smollm2
adapter: legal
adapter_scale: 0.5
system_prompt: Be brief.
welcome_message: Hi
quick_prompts: [one, two]
time_zone: Europe/Berlin
knowledge_share: true
burst: false
burst_percent: 25
knowledge_sharing: true
max_keys: 4
retention_days: 9
webhooks:
  - url: https://example.com/hook
    events: [tenant.created]
    secret: whsec_abc
  - url: http://localhost:9/x
"#;
        let c = parse("acme.yaml", text).unwrap().remove(0);
        let t = tenant(&c);
        assert_eq!(t.display_name, "Acme Corp");
        assert_eq!(t.plan, "enterprise");
        let l = t.limits.unwrap_or_default();
        assert_eq!(
            (
                l.daily_tokens,
                l.max_concurrent,
                l.max_request_tokens,
                l.context_window,
                l.context_turns
            ),
            (5000, 3, 1000, 4096, 7)
        );
        assert_eq!((t.model.as_str(), t.adapter.as_str()), ("smollm2", "legal"));
        assert!((t.adapter_scale - 0.5).abs() < f32::EPSILON);
        assert_eq!(t.system_prompt, "Be brief.");
        assert_eq!(t.welcome_message, "Hi");
        assert_eq!(t.quick_prompts, ["one", "two"]);
        assert_eq!(t.time_zone, "Europe/Berlin");
        assert!(t.knowledge_share);
        let f = t.feature_overrides.clone().unwrap_or_default();
        assert_eq!(f.burst, Some(false));
        assert_eq!(f.burst_percent, Some(25));
        assert_eq!(f.knowledge_sharing, Some(true));
        assert_eq!(f.max_keys, Some(4));
        assert_eq!(f.retention_days, Some(9));
        assert_eq!(c.webhooks.len(), 2);
        assert_eq!(c.webhooks[0].url, "https://example.com/hook");
        assert_eq!(c.webhooks[0].events, ["tenant.created"]);
        assert_eq!(c.webhooks[0].secret, "whsec_abc");
        assert!(c.webhooks[1].events.is_empty() && c.webhooks[1].secret.is_empty());
    }

    #[test]
    fn several_documents_give_several_configs_and_empty_ones_none() {
        let text = "tenant_id: a\n---\n# nothing here\n---\ntenant_id: b\nplan: pro\n";
        let configs = parse("admin-api", text).unwrap();
        let ids: Vec<&str> = configs.iter().map(|c| tenant(c).id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        assert!(configs.iter().all(|c| c.source == "admin-api"));
        let e = err("# only a comment\n");
        assert!(e.contains("no tenant configs"), "{e}");
    }

    #[test]
    fn an_unknown_field_is_named_with_its_place() {
        let e = err("tenant_id: a\ndaily_quotas: 5\n");
        assert!(e.starts_with("t.yaml: daily_quotas: unknown field"), "{e}");
        assert!(e.contains("line 2"), "{e}");
        let e = err("tenant_id: a\nwebhooks:\n  - url: http://x\n    evnts: []\n");
        assert!(
            e.starts_with("t.yaml: webhooks[0].evnts: unknown field"),
            "{e}"
        );
    }

    #[test]
    fn a_wrong_type_names_the_field_and_the_line() {
        let e = err("tenant_id: a\ndaily_quota: lots\n");
        assert!(e.starts_with("t.yaml: daily_quota: invalid type"), "{e}");
        assert!(e.contains("\"lots\"") && e.contains("line 2"), "{e}");
        let e = err("tenant_id: a\nmax_concurrent: -1\n");
        assert!(e.starts_with("t.yaml: max_concurrent: invalid type"), "{e}");
        let e = err("tenant_id: a\nquick_prompts: hello\n");
        assert!(e.starts_with("t.yaml: quick_prompts: invalid type"), "{e}");
        let e = err("tenant_id: a\nwebhooks:\n  - url: [1]\n");
        assert!(
            e.starts_with("t.yaml: webhooks[0].url: invalid type"),
            "{e}"
        );
    }

    #[test]
    fn invalid_yaml_and_missing_ids_are_refused() {
        let e = err("tenant_id: a\n  daily_quota: 5\n: :\n");
        assert!(e.starts_with("t.yaml: invalid YAML:"), "{e}");
        assert!(e.contains("line"), "{e}");
        let e = err("- just\n- a list\n");
        assert!(
            e.starts_with("t.yaml: document: invalid type: sequence"),
            "{e}"
        );
        let e = err("plan: pro\n");
        assert!(e.starts_with("t.yaml: tenant_id: missing field"), "{e}");
        let e = err("tenant_id: ''\n");
        assert!(e.starts_with("t.yaml: tenant_id: must not be empty"), "{e}");
    }

    #[test]
    fn a_name_and_a_path_for_the_same_thing_is_an_error() {
        let e = err("tenant_id: a\nmodel: m\nmodel_path: /m/x.gguf\n");
        assert!(e.starts_with("t.yaml: model_path: give model"), "{e}");
        let e = err("tenant_id: a\nadapter: m\nadapter_path: /m/x.gguf\n");
        assert!(e.starts_with("t.yaml: adapter_path: give adapter"), "{e}");
        let c = parse("t.yaml", "tenant_id: a\nadapter_path: /l/legal-v2.gguf\n").unwrap();
        assert_eq!(tenant(&c[0]).adapter, "legal-v2");
    }

    #[test]
    fn an_explicit_zero_limit_is_refused_not_taken_as_the_default() {
        let e = err("tenant_id: a\ndaily_quota: 0\n");
        assert!(e.starts_with("t.yaml: daily_quota: invalid limit"), "{e}");
        let e = err("tenant_id: a\ncontext_window: 0\n");
        assert!(
            e.starts_with("t.yaml: context_window: invalid limit"),
            "{e}"
        );
        // No history is a real setting, sent as set rather than as "the plan's".
        let c = parse("t.yaml", "tenant_id: a\ncontext_turns: 0\n").unwrap();
        assert_eq!(tenant(&c[0]).overridden, ["context_turns"]);
    }

    #[test]
    fn a_directory_is_read_in_order_with_paths_resolved_and_ids_checked() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("sales")).unwrap();
        std::fs::write(root.join("sales/config.yaml"), SALES).unwrap();
        std::fs::write(
            root.join("extra.yaml"),
            "tenant_id: zeta\nmodel_path: models/tiny.gguf\n---\ntenant_id: alpha\n",
        )
        .unwrap();
        std::fs::write(root.join("README.md"), "not a config").unwrap();
        std::fs::create_dir_all(root.join("empty")).unwrap();

        let loaded = load_files(root).unwrap();
        let ids: Vec<&str> = loaded.iter().map(LoadedConfig::tenant_id).collect();
        assert_eq!(ids, ["zeta", "alpha", "sales"], "files in path order");
        assert_eq!(
            loaded[0].config.source,
            root.join("extra.yaml").display().to_string()
        );
        assert_eq!(loaded[0].model(), "tiny");
        assert_eq!(
            loaded[0].model_path.as_deref(),
            Some(root.join("models/tiny.gguf").as_path()),
            "a relative model_path is relative to its file"
        );
        assert_eq!(
            loaded[2].model_path.as_deref(),
            Some(Path::new("/models/qwen3-32b-finance.Q4_K_M.gguf"))
        );
        // A single file is read the same way.
        let one = load(&root.join("sales/config.yaml")).unwrap();
        assert_eq!(tenant(&one[0]).id, "sales");

        // A directory named after another tenant.
        std::fs::create_dir_all(root.join("support")).unwrap();
        std::fs::write(root.join("support/config.yaml"), "tenant_id: sales\n").unwrap();
        let e = load(root).unwrap_err().to_string();
        let file = root.join("support/config.yaml").display().to_string();
        assert!(
            e.starts_with(&format!("{file}: tenant_id: `sales` does not match")),
            "{e}"
        );
    }

    #[test]
    fn debug_output_keeps_webhook_secrets_out() {
        let text = "tenant_id: a\nwebhooks:\n  - url: http://x/h\n    secret: whsec_topsecret\n";
        let loaded = parse_documents("t.yaml", text, None).unwrap();
        let shown = format!("{loaded:?}");
        assert!(
            shown.contains("http://x/h") && !shown.contains("topsecret"),
            "{shown}"
        );
    }

    #[test]
    fn an_empty_or_missing_place_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("no tenant configs"), "{e}");
        let e = load(&dir.path().join("nope")).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
        std::fs::write(dir.path().join("blank.yaml"), "").unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("blank.yaml: no tenant configs"), "{e}");
    }
}

#[cfg(test)]
mod fuzz {
    use bulkhead_proto::fuzz;
    use proptest::prelude::*;

    const FIELDS: &[&str] = &[
        "tenant_id",
        "display_name",
        "plan",
        "plan_tier",
        "daily_quota",
        "max_concurrent",
        "max_request_tokens",
        "context_window",
        "context_turns",
        "model",
        "model_path",
        "adapter",
        "adapter_path",
        "adapter_scale",
        "system_prompt",
        "welcome_message",
        "quick_prompts",
        "time_zone",
        "knowledge_share",
        "locale",
        "burst",
        "burst_percent",
        "knowledge_sharing",
        "max_keys",
        "retention_days",
        "tools",
        "kv_share_across_users",
        "storage_mb",
        "webhooks",
    ];

    proptest! {
        #![proptest_config(fuzz::config())]

        /// Any text: configs, or an error that names the file; never a panic.
        /// (JSON is YAML, so the shaped inputs are near-misses of a config.)
        #[test]
        fn fuzz_tenant_config_loader(text in prop_oneof![
            ".{0,200}",
            fuzz::object_with(FIELDS).prop_map(|v| v.to_string()),
            prop::collection::vec(fuzz::object_with(FIELDS), 1..3)
                .prop_map(|docs| docs.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n---\n")),
        ]) {
            match super::parse("fuzz.yaml", &text) {
                Ok(configs) => prop_assert!(!configs.is_empty()),
                Err(e) => prop_assert!(e.to_string().contains("fuzz.yaml"), "{e}"),
            }
        }
    }
}
