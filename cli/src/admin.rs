//! Admin commands: `cluster`, `tenant`, `key`, `plan`. Each talks to
//! the control plane through the leader-following client with the admin token
//! (the business records have their own files: `apply`, `burst`, `webhook`,
//! `share`, `audit`, `usage`).

use std::path::PathBuf;

use anyhow::bail;
use bulkhead_control_plane::ControlPlaneClient;
use bulkhead_proto::control as pb;
use clap::{Args, Subcommand};

use crate::connect::{Connect, status};

impl TenantFields {
    fn features(&self) -> pb::FeatureOverrides {
        pb::FeatureOverrides {
            burst: self.burst,
            burst_percent: self.burst_percent,
            knowledge_sharing: self.knowledge_sharing,
            max_keys: self.max_keys,
            retention_days: self.retention_days,
            tools: self.tools.clone().map(|t| pb::ToolNames {
                names: t
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .map(str::to_owned)
                    .collect(),
            }),
            kv_share_across_users: self.kv_share_across_users,
            storage_mb: self.storage_mb,
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum ClusterCommand {
    /// Show members, leader, term and log positions.
    Status,
    /// Add a node (started with --node-id and no --init) as a voter.
    AddNode {
        #[arg(long)]
        id: u64,
        #[arg(long)]
        addr: String,
    },
    /// Remove a node from the voters.
    RemoveNode {
        #[arg(long)]
        id: u64,
    },
}

#[derive(Args, Debug, Default)]
pub struct TenantFields {
    /// Display name.
    #[arg(long)]
    name: Option<String>,
    /// Plan: basic, pro or enterprise (gives default limits).
    #[arg(long)]
    plan: Option<String>,
    /// Tokens (prompt + completion) per day.
    #[arg(long)]
    daily_tokens: Option<u64>,
    /// Requests generating at once.
    #[arg(long)]
    max_concurrent: Option<u32>,
    /// Most tokens (prompt + max_tokens) of one request.
    #[arg(long)]
    max_request_tokens: Option<u32>,
    /// Context window in tokens.
    #[arg(long)]
    context_window: Option<u32>,
    /// Turns of a session put in front of a new message.
    #[arg(long)]
    context_turns: Option<u32>,
    /// Model name (as a worker's --model NAME).
    #[arg(long)]
    model: Option<String>,
    /// LoRA adapter name (as a worker's --lora MODEL:NAME).
    #[arg(long)]
    adapter: Option<String>,
    #[arg(long)]
    adapter_scale: Option<f32>,
    #[arg(long)]
    system_prompt: Option<String>,
    #[arg(long)]
    welcome_message: Option<String>,
    /// A quick prompt; repeat for more (replaces the list).
    #[arg(long = "quick-prompt")]
    quick_prompts: Vec<String>,
    /// IANA time zone the daily quota resets in (default UTC).
    #[arg(long)]
    time_zone: Option<String>,
    #[arg(long)]
    knowledge_share: Option<bool>,
    /// Language of the tenant's error messages and console when a request
    /// names none (Accept-Language): `en` (default) or `zh-CN`.
    #[arg(long)]
    locale: Option<String>,
    /// Override the plan: may ask for burst quota.
    #[arg(long)]
    burst: Option<bool>,
    /// Override the plan: how much an approved burst adds to the day's quota, in percent.
    #[arg(long)]
    burst_percent: Option<u32>,
    /// Override the plan: may publish snippets for other tenants.
    #[arg(long)]
    knowledge_sharing: Option<bool>,
    /// Override the plan: most active API keys.
    #[arg(long)]
    max_keys: Option<u32>,
    /// Override the plan: days of session turns kept.
    #[arg(long)]
    retention_days: Option<u32>,
    /// Override the plan: server-side tools, comma-separated (`code_run`; "" for none).
    #[arg(long)]
    tools: Option<String>,
    /// Override the plan: users of the tenant reuse each other's KV prefixes
    /// (and see them as cached_tokens). Off by default: each user only their own.
    #[arg(long)]
    kv_share_across_users: Option<bool>,
    /// Override the plan: MiB of uploaded files (`/v1/files`) the tenant keeps.
    #[arg(long)]
    storage_mb: Option<u32>,
}

#[derive(Subcommand, Debug)]
pub enum TenantCommand {
    /// Create a tenant; unset limits come from its plan.
    Create {
        id: String,
        #[command(flatten)]
        fields: TenantFields,
    },
    List,
    Show {
        id: String,
    },
    /// Change the given fields of a tenant.
    Update {
        id: String,
        #[command(flatten)]
        fields: TenantFields,
    },
    Delete {
        id: String,
    },
    /// Create or update tenants from config files (a file, or a directory of
    /// <id>/config.yaml and *.yaml), all or nothing.
    Apply {
        path: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum PlanCommand {
    /// The plans with their default limits and features.
    List,
}

#[derive(Subcommand, Debug)]
pub enum AdminTokenCommand {
    /// Replace the admin token with a fresh one, printed once as the last line; the old one is
    /// refused from then on.
    Rotate {
        /// Also write the new token to this file (readable by the owner only), such as
        /// `bulkhead-data/admin.token` of `bulkhead up`.
        #[arg(long)]
        write: Option<std::path::PathBuf>,
    },
}

pub async fn admin_token(connect: Connect, command: AdminTokenCommand) -> anyhow::Result<()> {
    let client = connect.client();
    match command {
        AdminTokenCommand::Rotate { write } => {
            let new = client
                .admin()
                .send(pb::RotateAdminTokenRequest {}, |mut c, req| async move {
                    c.rotate_admin_token(req).await
                })
                .await
                .map_err(crate::connect::status)?;
            if let Some(path) = write {
                crate::up::write_private(&path, &new.token)?;
                println!("written to {}", path.display());
            }
            println!("the old admin token is refused from now on; the new one (shown once):");
            println!("{}", new.token);
        }
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum KeyCommand {
    /// Create an API key for a tenant; the key is printed once, as the last line.
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value = "")]
        name: String,
        /// A user's key: it acts as this user only (its requests' user is
        /// this one) and reaches only this user's sessions. Without it the
        /// key is tenant-wide.
        #[arg(long, default_value = "")]
        user: String,
    },
    /// Revoke a key by its id.
    Revoke { key_id: String },
    /// List a tenant's keys (ids and prefixes, never the keys).
    List {
        #[arg(long)]
        tenant: String,
    },
}

pub(crate) fn ms_to_text(ms: i64) -> String {
    if ms == 0 {
        return "-".into();
    }
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms).map_or_else(
        || "-".into(),
        |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    )
}

fn print_status(s: &pb::ClusterState) {
    println!("node:        {} ({})", s.node_id, s.state);
    if s.leader_id == 0 {
        println!("leader:      none known");
    } else {
        println!("leader:      {} at {}", s.leader_id, s.leader_addr);
    }
    println!("term:        {}", s.term);
    println!(
        "log:         last {} applied {} snapshot {} purged {}",
        s.last_log_index, s.last_applied, s.snapshot_index, s.purged_index
    );
    for n in &s.nodes {
        println!(
            "member:      {} {} {}",
            n.id,
            n.addr,
            if n.voter { "voter" } else { "learner" }
        );
    }
}

/// Prints [`crate::apply::warnings`] for `t` against the workers registered now.
async fn print_warnings(client: &ControlPlaneClient, t: &pb::Tenant) -> anyhow::Result<()> {
    for line in crate::apply::warnings(t, &crate::apply::workers(client).await?) {
        println!("{line}");
    }
    Ok(())
}

fn print_tenant(t: &pb::Tenant) {
    let l = t.limits.unwrap_or_default();
    let f = t.features.clone().unwrap_or_default();
    // A value set for this tenant rather than taken from its plan.
    let mark = |name: &str| {
        if t.overridden.iter().any(|o| o == name) {
            " (overridden)"
        } else {
            ""
        }
    };
    println!("id:                 {}", t.id);
    println!("name:               {}", t.display_name);
    println!("plan:               {}", t.plan);
    println!(
        "daily_tokens:       {}{}",
        l.daily_tokens,
        mark("daily_tokens")
    );
    println!(
        "max_concurrent:     {}{}",
        l.max_concurrent,
        mark("max_concurrent")
    );
    println!(
        "max_request_tokens: {}{}",
        l.max_request_tokens,
        mark("max_request_tokens")
    );
    println!(
        "context_window:     {}{}",
        l.context_window,
        mark("context_window")
    );
    println!(
        "context_turns:      {}{}",
        l.context_turns,
        mark("context_turns")
    );
    println!("model:              {}", t.model);
    if !t.adapter.is_empty() {
        println!(
            "adapter:            {} (scale {})",
            t.adapter, t.adapter_scale
        );
    }
    println!(
        "time_zone:          {}",
        if t.time_zone.is_empty() {
            "UTC"
        } else {
            &t.time_zone
        }
    );
    println!("knowledge_share:    {}", t.knowledge_share);
    println!(
        "locale:             {}",
        if t.locale.is_empty() { "en" } else { &t.locale }
    );
    if !t.system_prompt.is_empty() {
        println!("system_prompt:      {}", t.system_prompt);
    }
    if !t.welcome_message.is_empty() {
        println!("welcome_message:    {}", t.welcome_message);
    }
    for p in &t.quick_prompts {
        println!("quick_prompt:       {p}");
    }
    println!("features:");
    println!("  burst:             {}{}", f.burst, mark("burst"));
    println!(
        "  burst_percent:     {}{}",
        f.burst_percent,
        mark("burst_percent")
    );
    println!(
        "  knowledge_sharing: {}{}",
        f.knowledge_sharing,
        mark("knowledge_sharing")
    );
    println!("  max_keys:          {}{}", f.max_keys, mark("max_keys"));
    println!(
        "  retention_days:    {}{}",
        f.retention_days,
        mark("retention_days")
    );
    println!(
        "  tools:             {}{}",
        if f.tools.is_empty() {
            "none".to_owned()
        } else {
            f.tools.join(", ")
        },
        mark("tools")
    );
    println!(
        "  kv_share_across_users: {}{}",
        f.kv_share_across_users,
        mark("kv_share_across_users")
    );
    println!("  storage_mb:       {}{}", f.storage_mb, mark("storage_mb"));
    println!(
        "overridden:         {}",
        if t.overridden.is_empty() {
            "none (everything follows the plan)".to_owned()
        } else {
            t.overridden.join(", ")
        }
    );
    println!("version:            {}", t.version);
}

pub async fn cluster(connect: Connect, command: ClusterCommand) -> anyhow::Result<()> {
    let client = connect.client();
    let state = match command {
        ClusterCommand::Status => {
            client
                .cluster()
                .send(pb::ClusterStatusRequest {}, |mut c, req| async move {
                    c.cluster_status(req).await
                })
                .await
        }
        ClusterCommand::AddNode { id, addr } => {
            client
                .admin()
                .send(
                    pb::AddNodeRequest {
                        id,
                        addr: addr.clone(),
                    },
                    |mut c, req| async move { c.add_node(req).await },
                )
                .await
        }
        ClusterCommand::RemoveNode { id } => {
            client
                .admin()
                .send(pb::RemoveNodeRequest { id }, |mut c, req| async move {
                    c.remove_node(req).await
                })
                .await
        }
    }
    .map_err(status)?;
    print_status(&state);
    Ok(())
}

pub async fn tenant(connect: Connect, command: TenantCommand) -> anyhow::Result<()> {
    let client = connect.client();
    match command {
        TenantCommand::Create { id, fields } => {
            // On create, 0 means "the plan's default" on the wire; an explicit 0 is a mistake.
            for (name, value) in [
                ("daily_tokens", fields.daily_tokens.map(|v| v.min(1))),
                (
                    "max_concurrent",
                    fields.max_concurrent.map(|v| v.min(1).into()),
                ),
                (
                    "max_request_tokens",
                    fields.max_request_tokens.map(|v| v.min(1).into()),
                ),
                (
                    "context_window",
                    fields.context_window.map(|v| v.min(1).into()),
                ),
            ] {
                if value == Some(0) {
                    bail!("invalid limit: {name} must be at least 1");
                }
            }
            let feature_overrides = Some(fields.features());
            let tenant = pb::Tenant {
                id,
                display_name: fields.name.unwrap_or_default(),
                plan: fields.plan.unwrap_or_default(),
                limits: Some(pb::Limits {
                    daily_tokens: fields.daily_tokens.unwrap_or_default(),
                    max_concurrent: fields.max_concurrent.unwrap_or_default(),
                    max_request_tokens: fields.max_request_tokens.unwrap_or_default(),
                    context_window: fields.context_window.unwrap_or_default(),
                    context_turns: fields.context_turns.unwrap_or_default(),
                }),
                model: fields.model.unwrap_or_default(),
                adapter: fields.adapter.unwrap_or_default(),
                adapter_scale: fields.adapter_scale.unwrap_or_default(),
                system_prompt: fields.system_prompt.unwrap_or_default(),
                welcome_message: fields.welcome_message.unwrap_or_default(),
                quick_prompts: fields.quick_prompts,
                time_zone: fields.time_zone.unwrap_or_default(),
                knowledge_share: fields.knowledge_share.unwrap_or_default(),
                locale: fields.locale.unwrap_or_default(),
                feature_overrides,
                ..Default::default()
            };
            let created = client
                .admin()
                .send(
                    tenant,
                    |mut c, req| async move { c.create_tenant(req).await },
                )
                .await
                .map_err(status)?;
            print_tenant(&created);
            print_warnings(&client, &created).await?;
        }
        TenantCommand::List => {
            let list = client
                .admin()
                .send(pb::ListTenantsRequest {}, |mut c, req| async move {
                    c.list_tenants(req).await
                })
                .await
                .map_err(status)?;
            println!(
                "{:<24} {:<11} {:>12} {:>5} {:<16}",
                "ID", "PLAN", "DAILY", "CONC", "MODEL"
            );
            for t in list.tenants {
                let l = t.limits.unwrap_or_default();
                println!(
                    "{:<24} {:<11} {:>12} {:>5} {:<16}",
                    t.id, t.plan, l.daily_tokens, l.max_concurrent, t.model
                );
            }
        }
        TenantCommand::Show { id } => {
            let t = client
                .admin()
                .send(pb::TenantRef { id: id.clone() }, |mut c, req| async move {
                    c.get_tenant(req).await
                })
                .await
                .map_err(status)?;
            print_tenant(&t);
            print_warnings(&client, &t).await?;
        }
        TenantCommand::Update { id, fields } => {
            let set_quick_prompts = !fields.quick_prompts.is_empty();
            let features = Some(fields.features());
            let patch = pb::TenantPatch {
                id,
                display_name: fields.name,
                plan: fields.plan,
                daily_tokens: fields.daily_tokens,
                max_concurrent: fields.max_concurrent,
                max_request_tokens: fields.max_request_tokens,
                context_window: fields.context_window,
                context_turns: fields.context_turns,
                model: fields.model,
                adapter: fields.adapter,
                adapter_scale: fields.adapter_scale,
                system_prompt: fields.system_prompt,
                welcome_message: fields.welcome_message,
                quick_prompts: fields.quick_prompts,
                set_quick_prompts,
                time_zone: fields.time_zone,
                knowledge_share: fields.knowledge_share,
                locale: fields.locale,
                features,
            };
            let t = client
                .admin()
                .send(
                    patch,
                    |mut c, req| async move { c.update_tenant(req).await },
                )
                .await
                .map_err(status)?;
            print_tenant(&t);
            print_warnings(&client, &t).await?;
        }
        TenantCommand::Apply { path } => {
            let loaded = crate::apply::load(&path)?;
            crate::apply::apply(&client, loaded).await?;
        }
        TenantCommand::Delete { id } => {
            let t = client
                .admin()
                .send(pb::TenantRef { id: id.clone() }, |mut c, req| async move {
                    c.delete_tenant(req).await
                })
                .await
                .map_err(status)?;
            println!(
                "deleted tenant {} (archived to {})",
                t.tenant.map(|t| t.id).unwrap_or(id),
                t.archive_path
            );
        }
    }
    Ok(())
}

pub async fn key(connect: Connect, command: KeyCommand) -> anyhow::Result<()> {
    let client = connect.client();
    match command {
        KeyCommand::Create { tenant, name, user } => {
            let created = client
                .admin()
                .send(
                    pb::CreateKeyRequest {
                        tenant_id: tenant.clone(),
                        name: name.clone(),
                        user_id: user.clone(),
                    },
                    |mut c, req| async move { c.create_key(req).await },
                )
                .await
                .map_err(status)?;
            let key = created.key.unwrap_or_default();
            if key.user_id.is_empty() {
                println!("key id: {} (tenant {})", key.key_id, key.tenant_id);
            } else {
                println!(
                    "key id: {} (tenant {}, user {})",
                    key.key_id, key.tenant_id, key.user_id
                );
            }
            println!("shown once; only its hash is stored:");
            println!("{}", created.plaintext);
        }
        KeyCommand::Revoke { key_id } => {
            let key = client
                .admin()
                .send(
                    pb::RevokeKeyRequest {
                        key_id: key_id.clone(),
                    },
                    |mut c, req| async move { c.revoke_key(req).await },
                )
                .await
                .map_err(status)?;
            println!(
                "revoked {} (tenant {}) at {}",
                key.key_id,
                key.tenant_id,
                ms_to_text(key.revoked_at_ms)
            );
        }
        KeyCommand::List { tenant } => {
            let keys = client
                .admin()
                .send(
                    pb::TenantRef { id: tenant.clone() },
                    |mut c, req| async move { c.list_keys(req).await },
                )
                .await
                .map_err(status)?;
            println!(
                "{:<22} {:<12} {:<16} {:<16} {:<21} {:<21} {:<21}",
                "KEY ID", "PREFIX", "NAME", "USER", "CREATED", "LAST USED", "REVOKED"
            );
            for k in keys.keys {
                println!(
                    "{:<22} {:<12} {:<16} {:<16} {:<21} {:<21} {:<21}",
                    k.key_id,
                    k.prefix,
                    k.name,
                    if k.user_id.is_empty() {
                        "(all)"
                    } else {
                        &k.user_id
                    },
                    ms_to_text(k.created_at_ms),
                    ms_to_text(k.last_used_at_ms),
                    ms_to_text(k.revoked_at_ms)
                );
            }
        }
    }
    Ok(())
}

pub async fn plan(connect: Connect, command: PlanCommand) -> anyhow::Result<()> {
    let client = connect.client();
    match command {
        PlanCommand::List => {
            let list = client
                .admin()
                .send(pb::ListPlansRequest {}, |mut c, req| async move {
                    c.list_plans(req).await
                })
                .await
                .map_err(status)?;
            println!(
                "{:<11} {:>12} {:>5} {:>8} {:>8} {:>6} {:<6} {:>7} {:<8} {:>5} {:>9} {:<5}",
                "PLAN",
                "DAILY",
                "CONC",
                "REQUEST",
                "CONTEXT",
                "TURNS",
                "BURST",
                "BURST %",
                "SHARING",
                "KEYS",
                "RETENTION",
                "TOOLS"
            );
            for p in list.plans {
                let l = p.limits.unwrap_or_default();
                let f = p.features.unwrap_or_default();
                println!(
                    "{:<11} {:>12} {:>5} {:>8} {:>8} {:>6} {:<6} {:>7} {:<8} {:>5} {:>9} {:<5}",
                    p.name,
                    l.daily_tokens,
                    l.max_concurrent,
                    l.max_request_tokens,
                    l.context_window,
                    l.context_turns,
                    if f.burst { "yes" } else { "no" },
                    f.burst_percent,
                    if f.knowledge_sharing { "yes" } else { "no" },
                    f.max_keys,
                    format!("{}d", f.retention_days),
                    if f.tools.is_empty() {
                        "-".to_owned()
                    } else {
                        f.tools.join(",")
                    }
                );
            }
        }
    }
    Ok(())
}
