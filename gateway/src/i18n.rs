//! The languages of user-facing messages: one catalogue per language
//! (Fluent files under `gateway/locales/`), chosen per request by its
//! `Accept-Language` when that names a language the catalogue has, else by
//! the tenant's `locale`, else English.
//!
//! An error carries a [`Text`] (a catalogue id and its arguments), not a
//! finished sentence, and is written out in the request's language only when
//! the answer is made. The request's language lives in a task-local set by
//! [`layer`] for the request's whole handling.

use std::cell::Cell;
use std::fmt;
use std::sync::OnceLock;

use axum::extract::Request;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;
use fluent_bundle::concurrent::FluentBundle;
use fluent_bundle::{FluentArgs, FluentResource};

/// A language the catalogue has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Locale {
    #[default]
    En,
    ZhCn,
}

impl Locale {
    /// The locale a tenant's config names (`en`, `zh-CN`), if it is one.
    pub fn from_tag(tag: &str) -> Option<Self> {
        let primary = tag.split(['-', '_']).next().unwrap_or_default();
        if primary.eq_ignore_ascii_case("zh") {
            Some(Self::ZhCn)
        } else if primary.eq_ignore_ascii_case("en") {
            Some(Self::En)
        } else {
            None
        }
    }

    /// The first language of an `Accept-Language` header (by its `q`
    /// weights) that the catalogue has.
    pub fn from_accept_language(value: &str) -> Option<Self> {
        let mut ranked: Vec<(f32, usize, Self)> = value
            .split(',')
            .enumerate()
            .filter_map(|(i, part)| {
                let mut pieces = part.split(';');
                let tag = pieces.next()?.trim();
                let q = pieces
                    .find_map(|p| p.trim().strip_prefix("q="))
                    .map_or(Some(1.0), |q| q.trim().parse::<f32>().ok())?;
                Some((q, i, Self::from_tag(tag)?)).filter(|(q, _, _)| *q > 0.0)
            })
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        ranked.first().map(|(_, _, l)| *l)
    }

    /// The BCP 47 tag (`en`, `zh-CN`).
    pub fn tag(self) -> &'static str {
        match self {
            Self::En => "en",
            Self::ZhCn => "zh-CN",
        }
    }

    fn index(self) -> usize {
        match self {
            Self::En => 0,
            Self::ZhCn => 1,
        }
    }
}

const SOURCES: [(&str, &str); 2] = [
    ("en", include_str!("../locales/en.ftl")),
    ("zh-CN", include_str!("../locales/zh-CN.ftl")),
];

fn bundles() -> &'static [FluentBundle<FluentResource>] {
    static BUNDLES: OnceLock<Vec<FluentBundle<FluentResource>>> = OnceLock::new();
    BUNDLES.get_or_init(|| {
        SOURCES
            .iter()
            .map(|(tag, source)| {
                let lang = tag.parse().unwrap_or_default();
                let mut bundle = FluentBundle::new_concurrent(vec![lang]);
                // Plain text: no Unicode isolation marks around arguments.
                bundle.set_use_isolating(false);
                match FluentResource::try_new((*source).to_owned()) {
                    Ok(resource) => {
                        if let Err(errors) = bundle.add_resource(resource) {
                            tracing::error!(
                                locale = tag,
                                ?errors,
                                "message catalogue has duplicates"
                            );
                        }
                    }
                    Err((_, errors)) => {
                        tracing::error!(locale = tag, ?errors, "message catalogue does not parse");
                    }
                }
                bundle
            })
            .collect()
    })
}

/// A user-facing message: a catalogue id and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text {
    id: &'static str,
    args: Vec<(&'static str, String)>,
}

impl Text {
    pub fn new(id: &'static str) -> Self {
        Self {
            id,
            args: Vec::new(),
        }
    }

    /// Adds the argument `{ $name }`.
    #[must_use]
    pub fn arg(mut self, name: &'static str, value: impl ToString) -> Self {
        self.args.push((name, value.to_string()));
        self
    }

    /// A text from elsewhere (the control plane, a worker), the same in
    /// every language.
    pub fn raw(text: impl Into<String>) -> Self {
        Self::new("raw").arg("text", text.into())
    }

    /// The message in `locale` (in English when the catalogue lacks it).
    pub fn render(&self, locale: Locale) -> String {
        let bundles = bundles();
        let mut args = FluentArgs::new();
        for (name, value) in &self.args {
            args.set(*name, value.as_str());
        }
        [locale.index(), Locale::En.index()]
            .into_iter()
            .filter_map(|i| bundles.get(i))
            .find_map(|bundle| {
                let pattern = bundle.get_message(self.id)?.value()?;
                let mut errors = Vec::new();
                let text = bundle.format_pattern(pattern, Some(&args), &mut errors);
                errors.is_empty().then(|| text.into_owned())
            })
            .unwrap_or_else(|| self.id.to_owned())
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render(Locale::En))
    }
}

impl From<String> for Text {
    fn from(text: String) -> Self {
        Self::raw(text)
    }
}

impl From<&str> for Text {
    fn from(text: &str) -> Self {
        Self::raw(text)
    }
}

/// The request's language: what its `Accept-Language` asked for (if the
/// catalogue has it), and the tenant's once the caller is known.
#[derive(Debug, Clone, Copy, Default)]
struct Chosen {
    asked: Option<Locale>,
    tenant: Option<Locale>,
}

tokio::task_local! {
    static CHOSEN: Cell<Chosen>;
}

/// Middleware: the request is handled (and its errors written) in the
/// language its `Accept-Language` names.
pub async fn layer(request: Request, next: Next) -> Response {
    let chosen = Chosen {
        asked: asked(request.headers()),
        tenant: None,
    };
    CHOSEN.scope(Cell::new(chosen), next.run(request)).await
}

fn asked(headers: &HeaderMap) -> Option<Locale> {
    headers
        .get(axum::http::header::ACCEPT_LANGUAGE)
        .and_then(|v| v.to_str().ok())
        .and_then(Locale::from_accept_language)
}

/// Records the caller's tenant's `locale`, for a request that asked for
/// no language the catalogue has.
pub fn set_tenant_locale(tag: &str) {
    let _ = CHOSEN.try_with(|c| {
        let mut chosen = c.get();
        chosen.tenant = Locale::from_tag(tag);
        c.set(chosen);
    });
}

/// The language of the request being handled (English outside one).
pub fn current() -> Locale {
    CHOSEN
        .try_with(|c| {
            let chosen = c.get();
            chosen.asked.or(chosen.tenant).unwrap_or_default()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(source: &str) -> Vec<&str> {
        let mut ids: Vec<&str> = source
            .lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with(' '))
            .filter_map(|l| l.split_once(" = ").map(|(id, _)| id.trim()))
            .collect();
        ids.sort_unstable();
        ids
    }

    #[test]
    fn every_message_is_in_every_language() {
        let en = ids(SOURCES[0].1);
        assert!(en.len() > 10, "{en:?}");
        for (tag, source) in &SOURCES[1..] {
            assert_eq!(ids(source), en, "{tag} has other messages than en");
        }
        // And each renders without errors in each language.
        for id in &en {
            let id: &'static str = Box::leak(id.to_string().into_boxed_str());
            let mut text = Text::new(id);
            for name in [
                "text", "tenant", "claimed", "own", "other", "tool", "plan", "limit", "id", "name",
                "detail", "asked", "model", "adapter",
            ] {
                text = text.arg(name, "x");
            }
            for name in [
                "what",
                "rate",
                "burst",
                "max",
                "need",
                "remaining",
                "quota",
                "prompt",
                "max_tokens",
            ] {
                text = text.arg(name, "1");
            }
            text = text.arg("reset_in", "1h").arg("reset_at", "00:00");
            for locale in [Locale::En, Locale::ZhCn] {
                let s = text.render(locale);
                // A missing argument would fall back to English, or to the id.
                assert!(!s.is_empty() && s != id, "{id} in {locale:?}: {s}");
                assert!(!s.contains('$'), "{id} in {locale:?} left a placeable: {s}");
                if locale == Locale::ZhCn && id != "raw" {
                    assert_ne!(s, text.render(Locale::En), "{id} is not translated");
                }
            }
        }
    }

    #[test]
    fn a_429_reads_in_each_language() {
        let text = Text::new("concurrency-limit").arg("max", 5);
        assert!(
            text.render(Locale::En)
                .starts_with("concurrency limit reached")
        );
        assert!(text.render(Locale::ZhCn).starts_with("已达并发上限"));
        assert!(text.render(Locale::ZhCn).contains(" 5 "));
        assert_eq!(Text::raw("as is").render(Locale::ZhCn), "as is");
    }

    #[test]
    fn accept_language_picks_the_first_language_we_have_by_weight() {
        let pick = Locale::from_accept_language;
        assert_eq!(pick("zh-CN,zh;q=0.9,en;q=0.8"), Some(Locale::ZhCn));
        assert_eq!(pick("en-US,en;q=0.9"), Some(Locale::En));
        assert_eq!(pick("fr-FR, zh;q=0.5, en;q=0.4"), Some(Locale::ZhCn));
        assert_eq!(pick("en;q=0.2, zh-TW;q=0.8"), Some(Locale::ZhCn));
        assert_eq!(pick("de, fr"), None);
        assert_eq!(pick("zh;q=0"), None);
        assert_eq!(pick(""), None);
    }
}
