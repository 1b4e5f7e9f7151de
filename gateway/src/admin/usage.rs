//! Usage reports and the de-identified export.

use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use bulkhead_proto::control as pb;

use super::*;

/// Days of usage when `days` is not given.
pub(super) const DEFAULT_USAGE_DAYS: u32 = 7;

pub(super) async fn usage(
    admin: Admin,
    PathOf(tenant_id): PathOf<String>,
    QueryOf(q): QueryOf<UsageQuery>,
) -> Answer {
    let days = q.days.unwrap_or(DEFAULT_USAGE_DAYS);
    if !(1..=366).contains(&days) {
        return Err(GatewayError::bad_request(
            format!("days: must be 1 to 366, got {days}"),
            Some("days"),
        ));
    }
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => {
            return Err(GatewayError::bad_request(
                format!("format: {other:?} is not json or csv"),
                Some("format"),
            ));
        }
    };
    let u = match (q.from, q.to) {
        (None, None) => {
            admin
                .send(
                    pb::UsageRequest { tenant_id, days },
                    |mut c, r| async move { c.usage(r).await },
                )
                .await?
        }
        (from, to) => {
            let (from_day, to_day) = range_of(from, to);
            admin
                .send(
                    pb::UsageRangeRequest {
                        tenant_id,
                        from_day,
                        to_day,
                    },
                    |mut c, r| async move { c.usage_range(r).await },
                )
                .await
                .map_err(range_param)?
        }
    };
    if csv {
        let mut out = String::from(USAGE_CSV_HEADER);
        out.push('\n');
        for d in &u.days {
            let avg = d.total_latency_ms.checked_div(d.requests).unwrap_or(0);
            out.push_str(&format!(
                "{},{},{},{},{},{},{avg}\n",
                d.day, d.prompt_tokens, d.completion_tokens, d.cached_tokens, d.requests, d.quota
            ));
        }
        return Ok((
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            out,
        )
            .into_response());
    }
    ok(u)
}

/// Both ends of a day range; a missing one is empty, which the control
/// plane refuses (after checking the token) naming the field.
pub(super) fn range_of(from: Option<String>, to: Option<String>) -> (String, String) {
    (from.unwrap_or_default(), to.unwrap_or_default())
}

/// The control plane names the range fields `from_day`/`to_day`; over HTTP
/// they are the `from`/`to` query parameters.
pub(super) fn range_param(e: GatewayError) -> GatewayError {
    match e {
        GatewayError::BadRequest {
            message,
            param,
            code,
        } => GatewayError::BadRequest {
            param: match param.as_deref() {
                Some("from_day") => Some("from".into()),
                Some("to_day") => Some("to".into()),
                _ => param,
            },
            message,
            code,
        },
        other => other,
    }
}

/// The CSV columns of `GET .../usage/export`, one row per day and user.
pub const USAGE_EXPORT_CSV_HEADER: &str = "day,user,tokens,requests";

/// De-identified usage as CSV: users are keyed hashes, no text of any
/// prompt or answer.
pub(super) async fn export_usage(
    admin: Admin,
    PathOf(tenant_id): PathOf<String>,
    QueryOf(q): QueryOf<ExportQuery>,
) -> Answer {
    let (from_day, to_day) = range_of(q.from, q.to);
    let filename = format!("usage-{tenant_id}-{from_day}-{to_day}.csv");
    let export = admin
        .send(
            pb::UsageExportRequest {
                tenant_id,
                from_day,
                to_day,
            },
            |mut c, r| async move { c.export_usage(r).await },
        )
        .await
        .map_err(range_param)?;
    let mut out = String::from(USAGE_EXPORT_CSV_HEADER);
    out.push('\n');
    for r in &export.rows {
        out.push_str(&format!(
            "{},{},{},{}\n",
            r.day, r.user, r.tokens, r.requests
        ));
    }
    let disposition = format!("attachment; filename=\"{filename}\"");
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        out,
    )
        .into_response())
}
