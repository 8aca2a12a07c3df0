//! Validates Kubernetes objects of Istio kinds against the real Istio CRD schemas
//! (`crd-all.gen.yaml`, vendored in `third_party/istio-crds/`, origin and refresh in its
//! README): the `openAPIV3Schema` of every served version is converted to a JSON Schema
//! (draft 4) and checked with the `jsonschema` crate.
//!
//! OpenAPI/Kubernetes extensions are mapped as the API server would treat them (strict field
//! validation, as `kubectl apply` uses by default):
//! - objects with `properties` refuse unknown fields unless `x-kubernetes-preserve-unknown-fields`
//!   or `additionalProperties` says otherwise; the root also allows `apiVersion`, `kind`,
//!   `metadata`;
//! - `nullable: true` adds `null` to the type; `x-kubernetes-int-or-string` means integer or
//!   string; `format: int32`/`int64` become range limits;
//! - the CEL rules Istio uses most are translated: `duration(self) >= duration('1ms')` (a Go
//!   duration of at least 1 ms), `0 < self && self <= 65535` (a port), `!self.contains("*")`.
//!   Other `x-kubernetes-validations` rules are not evaluated.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::duration::parse_go_ms;

/// File name of Istio's all-in-one CRD file.
pub const CRD_FILE: &str = "crd-all.gen.yaml";
/// Folder of the vendored copy, relative to the repository root.
pub const VENDORED_DIR: &str = "third_party/istio-crds";
/// Environment variable overriding where the CRD file is (file or directory); read only by
/// [`CrdSchemas::locate_from_env`].
pub const CRD_PATH_ENV: &str = "MESHTUNE_ISTIO_CRDS";
const DURATION_FORMAT: &str = "meshtune-go-duration-min-1ms";

/// Errors loading schemas or validating objects.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error(
        "Istio CRD file {path} not found (vendored in {VENDORED_DIR}/ of the repository; \
         {CRD_PATH_ENV} overrides it with a file or its folder)"
    )]
    Missing { path: PathBuf },
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: document {doc}: {message}")]
    Parse {
        origin: String,
        doc: usize,
        message: String,
    },
    #[error("{origin}: schema of {kind} {version}: {message}")]
    Compile {
        origin: String,
        kind: String,
        version: String,
        message: String,
    },
    #[error("object has no apiVersion/kind")]
    NoKind,
    #[error("no CRD schema for {api_version} {kind}")]
    UnknownKind { api_version: String, kind: String },
    #[error("{kind} {name} does not match its CRD schema:\n  {}", errors.join("\n  "))]
    Invalid {
        kind: String,
        name: String,
        errors: Vec<String>,
    },
}

/// The vendored CRD file: `third_party/istio-crds/crd-all.gen.yaml` in the repository.
pub fn vendored_crd_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(VENDORED_DIR)
        .join(CRD_FILE)
}

/// Where the CRD file is: `override_path` (a file, or a folder holding [`CRD_FILE`]) if given,
/// else the vendored copy ([`vendored_crd_path`]).
pub fn crd_path(override_path: Option<&OsStr>) -> PathBuf {
    match override_path {
        Some(p) => {
            let p = PathBuf::from(p);
            if p.is_dir() {
                p.join(CRD_FILE)
            } else {
                p
            }
        }
        None => vendored_crd_path(),
    }
}

/// Compiled schemas of every served version of every kind in a CRD file.
pub struct CrdSchemas {
    origin: String,
    validators: HashMap<(String, String), jsonschema::Validator>,
}

impl std::fmt::Debug for CrdSchemas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrdSchemas")
            .field("origin", &self.origin)
            .field("kinds", &self.validators.len())
            .finish()
    }
}

/// Parses a multi-document YAML text into JSON values (empty documents skipped).
pub fn yaml_documents(text: &str, origin: &str) -> Result<Vec<Value>, SchemaError> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v = Value::deserialize(doc).map_err(|e| SchemaError::Parse {
            origin: origin.to_string(),
            doc: i + 1,
            message: e.to_string(),
        })?;
        if !v.is_null() {
            out.push(v);
        }
    }
    Ok(out)
}

impl CrdSchemas {
    /// Loads the CRD file at `path`.
    pub fn load(path: &Path) -> Result<Self, SchemaError> {
        if !path.exists() {
            return Err(SchemaError::Missing {
                path: path.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| SchemaError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&text, &path.display().to_string())
    }

    /// Finds ([`crd_path`]) and loads the CRD file. A missing file is
    /// [`SchemaError::Missing`] naming the path tried: callers fail, they do not skip.
    pub fn locate(override_path: Option<&OsStr>) -> Result<Self, SchemaError> {
        Self::load(&crd_path(override_path))
    }

    /// [`locate`](Self::locate) with the override taken from [`CRD_PATH_ENV`]: what tests and
    /// tools use.
    pub fn locate_from_env() -> Result<Self, SchemaError> {
        Self::locate(std::env::var_os(CRD_PATH_ENV).as_deref())
    }

    /// Compiles the schemas of all `CustomResourceDefinition` documents in `text`.
    pub fn from_yaml(text: &str, origin: &str) -> Result<Self, SchemaError> {
        let mut validators = HashMap::new();
        for (i, doc) in yaml_documents(text, origin)?.into_iter().enumerate() {
            if doc["kind"] != "CustomResourceDefinition" {
                continue;
            }
            let group = doc["spec"]["group"].as_str().unwrap_or_default();
            let kind = doc["spec"]["names"]["kind"].as_str().unwrap_or_default();
            let Some(versions) = doc["spec"]["versions"].as_array() else {
                return Err(SchemaError::Parse {
                    origin: origin.to_string(),
                    doc: i + 1,
                    message: format!("CRD {kind} has no spec.versions"),
                });
            };
            for v in versions {
                let name = v["name"].as_str().unwrap_or_default();
                if v["served"] != true {
                    continue;
                }
                let schema = &v["schema"]["openAPIV3Schema"];
                if !schema.is_object() {
                    continue;
                }
                let json_schema = openapi_to_json_schema(schema);
                let validator = jsonschema::options()
                    .with_draft(jsonschema::Draft::Draft4)
                    .should_validate_formats(true)
                    .with_format(DURATION_FORMAT, |s: &str| {
                        parse_go_ms(s).is_some_and(|ms| ms >= 1.0)
                    })
                    .build(&json_schema)
                    .map_err(|e| SchemaError::Compile {
                        origin: origin.to_string(),
                        kind: kind.to_string(),
                        version: name.to_string(),
                        message: e.to_string(),
                    })?;
                validators.insert((format!("{group}/{name}"), kind.to_string()), validator);
            }
        }
        Ok(Self {
            origin: origin.to_string(),
            validators,
        })
    }

    /// Whether a schema exists for `api_version` (`group/version`) and `kind`.
    pub fn knows(&self, api_version: &str, kind: &str) -> bool {
        self.validators
            .contains_key(&(api_version.to_string(), kind.to_string()))
    }

    /// Whether `group` (e.g. `networking.istio.io`) is one this file defines kinds for.
    pub fn knows_group(&self, group: &str) -> bool {
        self.validators
            .keys()
            .any(|(av, _)| av.split('/').next() == Some(group))
    }

    /// Number of (apiVersion, kind) schemas loaded.
    pub fn len(&self) -> usize {
        self.validators.len()
    }

    /// True if no schema was loaded.
    pub fn is_empty(&self) -> bool {
        self.validators.is_empty()
    }

    /// Validates `obj` against the schema of its `apiVersion`/`kind`; the error lists every
    /// violation with its JSON pointer.
    pub fn validate(&self, obj: &Value) -> Result<(), SchemaError> {
        let (Some(api_version), Some(kind)) = (obj["apiVersion"].as_str(), obj["kind"].as_str())
        else {
            return Err(SchemaError::NoKind);
        };
        let validator = self
            .validators
            .get(&(api_version.to_string(), kind.to_string()))
            .ok_or_else(|| SchemaError::UnknownKind {
                api_version: api_version.to_string(),
                kind: kind.to_string(),
            })?;
        let errors: Vec<String> = validator
            .iter_errors(obj)
            .map(|e| format!("at {}: {}", pointer(&e.instance_path().to_string()), e))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(SchemaError::Invalid {
                kind: kind.to_string(),
                name: obj["metadata"]["name"]
                    .as_str()
                    .unwrap_or("<unnamed>")
                    .to_string(),
                errors,
            })
        }
    }
}

fn pointer(p: &str) -> &str {
    if p.is_empty() {
        "/"
    } else {
        p
    }
}

/// Converts a Kubernetes `openAPIV3Schema` (the root of a CRD version) to a JSON Schema
/// (draft 4) with the rules described in the module docs.
pub fn openapi_to_json_schema(schema: &Value) -> Value {
    let mut root = convert(schema);
    if let Some(props) = root.as_object_mut().and_then(|o| {
        o.entry("properties")
            .or_insert_with(|| json!({}))
            .as_object_mut()
    }) {
        props
            .entry("apiVersion")
            .or_insert(json!({"type": "string"}));
        props.entry("kind").or_insert(json!({"type": "string"}));
        props.entry("metadata").or_insert(json!({"type": "object"}));
    }
    if let Some(o) = root.as_object_mut() {
        if !o.contains_key("additionalProperties")
            && o.get("x-kubernetes-preserve-unknown-fields") != Some(&Value::Bool(true))
        {
            o.insert("additionalProperties".into(), Value::Bool(false));
        }
    }
    root
}

fn convert_map(m: &Value) -> Value {
    match m.as_object() {
        Some(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), convert(v))).collect()),
        None => m.clone(),
    }
}

fn convert(v: &Value) -> Value {
    let Some(m) = v.as_object() else {
        return v.clone();
    };
    let mut out = Map::new();
    for (k, val) in m {
        let converted = match k.as_str() {
            "properties" | "patternProperties" | "definitions" => convert_map(val),
            "items" => match val {
                Value::Array(a) => Value::Array(a.iter().map(convert).collect()),
                other => convert(other),
            },
            "additionalProperties" | "not" => convert(val),
            "allOf" | "anyOf" | "oneOf" => match val {
                Value::Array(a) => Value::Array(a.iter().map(convert).collect()),
                other => other.clone(),
            },
            "description" | "nullable" => continue,
            k if k.starts_with("x-kubernetes-") => continue,
            _ => val.clone(),
        };
        out.insert(k.clone(), converted);
    }
    let flag = |name: &str| m.get(name) == Some(&Value::Bool(true));
    if flag("x-kubernetes-int-or-string") {
        out.insert("type".into(), json!(["integer", "string"]));
    }
    if flag("nullable") {
        match out.get("type").cloned() {
            Some(Value::String(t)) => {
                out.insert("type".into(), json!([t, "null"]));
            }
            Some(Value::Array(mut ts)) => {
                ts.push(json!("null"));
                out.insert("type".into(), Value::Array(ts));
            }
            _ => {}
        }
    }
    let range = match out.get("format").and_then(Value::as_str) {
        Some("int32") => Some((i32::MIN as i64, i32::MAX as i64)),
        Some("int64") => Some((i64::MIN, i64::MAX)),
        _ => None,
    };
    if let Some((lo, hi)) = range {
        out.entry("minimum").or_insert(json!(lo));
        out.entry("maximum").or_insert(json!(hi));
        out.remove("format");
    }
    if let Some(Value::Array(rules)) = m.get("x-kubernetes-validations") {
        let mut not_patterns = Vec::new();
        for rule in rules.iter().filter_map(|r| r["rule"].as_str()) {
            match rule.trim() {
                "duration(self) >= duration('1ms')" => {
                    out.insert("format".into(), json!(DURATION_FORMAT));
                }
                "0 < self && self <= 65535" => {
                    out.insert("minimum".into(), json!(1));
                    out.insert("maximum".into(), json!(65535));
                }
                "!self.contains(\"*\")" => not_patterns.push(json!({"pattern": "\\*"})),
                _ => {}
            }
        }
        if let Some(p) = not_patterns.pop() {
            out.insert("not".into(), p);
        }
    }
    let has_props = out.contains_key("properties");
    if has_props
        && !out.contains_key("additionalProperties")
        && !flag("x-kubernetes-preserve-unknown-fields")
    {
        out.insert("additionalProperties".into(), Value::Bool(false));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(openapi: Value) -> jsonschema::Validator {
        jsonschema::options()
            .with_draft(jsonschema::Draft::Draft4)
            .should_validate_formats(true)
            .with_format(DURATION_FORMAT, |s: &str| {
                parse_go_ms(s).is_some_and(|ms| ms >= 1.0)
            })
            .build(&openapi_to_json_schema(&openapi))
            .unwrap()
    }

    #[test]
    fn kubernetes_extensions_are_mapped() {
        let v = compile(json!({
            "type": "object",
            "properties": {"spec": {"type": "object", "properties": {
                "n": {"type": "integer", "format": "int32"},
                "ios": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]},
                "opt": {"type": "string", "nullable": true},
                "d": {"type": "string", "x-kubernetes-validations": [{"rule": "duration(self) >= duration('1ms')", "message": "m"}]},
                "port": {"type": "integer", "x-kubernetes-validations": [{"rule": "0 < self && self <= 65535"}]},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            }}},
        }));
        let ok = json!({"apiVersion": "a/v1", "kind": "K", "metadata": {"name": "x"}, "spec": {
            "n": 5, "ios": "5%", "opt": null, "d": "1.5s", "port": 80,
            "free": {"anything": [1, 2]}, "labels": {"a": "b"}}});
        assert!(v.is_valid(&ok));
        for bad in [
            json!({"spec": {"n": 3_000_000_000u64}}),
            json!({"spec": {"n": "5"}}),
            json!({"spec": {"ios": 1.5}}),
            json!({"spec": {"d": "0s"}}),
            json!({"spec": {"d": "10"}}),
            json!({"spec": {"port": 0}}),
            json!({"spec": {"unknown": 1}}),
            json!({"spec": {"labels": {"a": 1}}}),
            json!({"status": {}}),
        ] {
            assert!(!v.is_valid(&bad), "{bad}");
        }
    }
}
