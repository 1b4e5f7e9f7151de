//! How the generated messages' derived `Serialize` writes the fields that
//! need more than serde's default (`build.rs` names them).

use serde::{Serialize, Serializer};

/// An absent message as its default (an object), not `null`.
pub fn or_default<T, S>(value: &Option<T>, serializer: S) -> Result<S::Ok, S::Error>
where
    T: Serialize + Default,
    S: Serializer,
{
    match value {
        Some(v) => v.serialize(serializer),
        None => T::default().serialize(serializer),
    }
}

/// An `f32` as the decimal it was written as (0.8, not 0.800000011920929).
pub fn f32_decimal<S: Serializer>(value: &f32, serializer: S) -> Result<S::Ok, S::Error> {
    match value.to_string().parse::<f64>() {
        Ok(v) if v.is_finite() => serializer.serialize_f64(v),
        _ => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use crate::control as pb;

    #[test]
    fn messages_read_as_their_fields_were_written() {
        let t = pb::Tenant {
            id: "sales".into(),
            adapter_scale: 0.8,
            feature_overrides: Some(pb::FeatureOverrides {
                burst: Some(false),
                ..Default::default()
            }),
            ..Default::default()
        };
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(v["adapter_scale"], serde_json::json!(0.8));
        // Absent limits are an object of zeros; only set overrides appear.
        assert_eq!(v["limits"]["daily_tokens"], 0);
        assert_eq!(v["feature_overrides"], serde_json::json!({"burst": false}));
        assert_eq!(v["features"]["burst"], false);
        // Bodies read back, and an unknown field is refused by name.
        let l: pb::Limits = serde_json::from_str(r#"{"daily_tokens": 5}"#).unwrap();
        assert_eq!(l.daily_tokens, 5);
        let e = serde_json::from_str::<pb::Limits>(r#"{"colour": 1}"#).unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
    }
}
