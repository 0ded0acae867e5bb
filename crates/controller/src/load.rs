//! Reading objects from a folder of YAML manifests (standalone mode, `tollgate validate`, the
//! controller's folder source).
//!
//! Every `*.yaml` / `*.yml` file below the folder is read (hidden files and folders skipped), each
//! may hold several documents. A document that cannot be parsed fails the whole load — the caller
//! keeps serving its last good configuration rather than serve a folder with a file missing.
//! Documents of kinds Tollgate does not use are skipped; unknown fields in Tollgate kinds are
//! reported as warnings (the API server would prune them silently; a typo should not be silent).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::diagnostics::{Diagnostics, reason};
use crate::inputs::{Inputs, Kind, Object};

/// Why a folder could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The folder or a file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// A document is not valid YAML.
    #[error("{path}: document {document}: invalid YAML: {message}")]
    Yaml {
        /// The file.
        path: PathBuf,
        /// 1-based document index in the file.
        document: usize,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A document is missing `apiVersion` / `kind` or is not an object.
    #[error("{path}: document {document}: {message}")]
    Shape {
        /// The file.
        path: PathBuf,
        /// 1-based document index.
        document: usize,
        /// What is wrong.
        message: String,
    },
    /// A Tollgate or core object does not match its schema.
    #[error("{path}: {kind}/{name}: {field}: {message}")]
    Schema {
        /// The file.
        path: PathBuf,
        /// The object's kind.
        kind: String,
        /// The object's name.
        name: String,
        /// The field path where decoding failed.
        field: String,
        /// The decoder's message.
        message: String,
    },
}

/// The result of reading a folder.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The objects.
    pub inputs: Inputs,
    /// The files read, sorted.
    pub files: Vec<PathBuf>,
    /// Documents skipped because Tollgate does not use their kind (`file: apiVersion/kind`).
    pub skipped: Vec<String>,
    /// Unknown fields found in Tollgate objects: (kind, key, field path), reported as warnings.
    pub unknown_fields: Vec<(Kind, tollgate_ir::ObjectKey, String)>,
    /// Objects that do not match their schema (a value of the wrong type, an unknown enum value, a
    /// required field missing): left out, and reported as rejected. The API server would refuse
    /// them at `kubectl apply`; a folder has no such gate, so one object's mistake must not keep
    /// the rest of the folder from loading.
    pub undecodable: Vec<Undecodable>,
}

/// An object left out because it does not match its schema.
#[derive(Debug, Clone)]
pub struct Undecodable {
    /// Its kind.
    pub kind: Kind,
    /// Its namespace (default `default`) and name.
    pub key: tollgate_ir::ObjectKey,
    /// The file it was read from.
    pub file: Option<PathBuf>,
    /// Where decoding failed (`spec.match.methods[0]`).
    pub field: String,
    /// The decoder's message.
    pub message: String,
}

impl Loaded {
    /// Adds what loading found to a compile's diagnostics: objects left out for not matching their
    /// schema (rejected), and unknown fields (warnings).
    pub fn report_load_findings(&self, diagnostics: &mut Diagnostics) {
        for object in &self.undecodable {
            diagnostics.track(object.kind, &object.key, object.file.as_ref(), 0);
            diagnostics.invalid(
                object.kind,
                &object.key,
                object.field.clone(),
                format!("{}: the object is left out until this is fixed", object.message),
            );
        }
        for (kind, key, field) in &self.unknown_fields {
            diagnostics.warn(
                *kind,
                key,
                reason::INVALID,
                field.clone(),
                "unknown field, ignored: check its spelling against `kubectl explain` / the API reference",
            );
        }
    }
}

/// Lists the manifest files below `dir`, sorted (hidden entries skipped).
pub fn manifest_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = std::fs::read_dir(&current)
            .map_err(|source| LoadError::Read { path: current.clone(), source })?;
        for entry in entries {
            let entry = entry.map_err(|source| LoadError::Read { path: current.clone(), source })?;
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let file_type =
                entry.file_type().map_err(|source| LoadError::Read { path: path.clone(), source })?;
            if file_type.is_dir() {
                pending.push(path);
            } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Reads every manifest below `dir`.
pub fn load_dir(dir: &Path) -> Result<Loaded, LoadError> {
    let mut loaded = Loaded::default();
    for file in manifest_files(dir)? {
        let text = std::fs::read_to_string(&file)
            .map_err(|source| LoadError::Read { path: file.clone(), source })?;
        load_text(&text, Some(&file), &mut loaded)?;
        loaded.files.push(file);
    }
    Ok(loaded)
}

/// Reads the documents of one YAML text into `loaded`.
pub fn load_text(text: &str, file: Option<&Path>, loaded: &mut Loaded) -> Result<(), LoadError> {
    let path = file.map(Path::to_path_buf).unwrap_or_default();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let number = index + 1;
        let value: Value = serde::Deserialize::deserialize(document).map_err(|error| LoadError::Yaml {
            path: path.clone(),
            document: number,
            message: error.to_string(),
        })?;
        if value.is_null() {
            continue; // an empty document (`---` at the end of a file)
        }
        let shape = |message: &str| LoadError::Shape {
            path: path.clone(),
            document: number,
            message: message.into(),
        };
        let object =
            value.as_object().ok_or_else(|| shape("not a mapping: every document must be one object"))?;
        let api_version = object
            .get("apiVersion")
            .and_then(Value::as_str)
            .ok_or_else(|| shape("apiVersion is missing: add e.g. `apiVersion: tollgate.dev/v1alpha1`"))?
            .to_string();
        let kind = object
            .get("kind")
            .and_then(Value::as_str)
            .ok_or_else(|| shape("kind is missing: add e.g. `kind: Route`"))?
            .to_string();
        if object.get("kind").and_then(Value::as_str) == Some("List") {
            let items = object.get("items").and_then(Value::as_array).cloned().unwrap_or_default();
            for item in items {
                add_object(item, &api_version, file, loaded)?;
            }
            continue;
        }
        add_object(value, &api_version, file, loaded)?;
        let _ = kind;
    }
    Ok(())
}

fn add_object(
    value: Value,
    _list_version: &str,
    file: Option<&Path>,
    loaded: &mut Loaded,
) -> Result<(), LoadError> {
    let api_version = value.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_string();
    let kind_name = value.get("kind").and_then(Value::as_str).unwrap_or_default().to_string();
    let path = file.map(Path::to_path_buf).unwrap_or_default();
    let Some(kind) = known_kind(&api_version, &kind_name) else {
        if api_version == "tollgate.dev/v1alpha1" {
            return Err(LoadError::Shape {
                path,
                document: 0,
                message: format!(
                    "kind {kind_name} does not exist in tollgate.dev/v1alpha1: use GatewayAPI, Route, \
                     Authorizer, UsagePlan or ServiceExport"
                ),
            });
        }
        loaded.skipped.push(format!("{}: {api_version}/{kind_name}", path.display()));
        return Ok(());
    };
    let file = file.map(Path::to_path_buf);
    let key = object_key(&value);
    match add_decoded(value, kind, &path, file.clone(), loaded) {
        // Left out and reported (see `Loaded::undecodable`); the rest of the folder loads.
        Err(LoadError::Schema { field, message, .. }) => {
            loaded.undecodable.push(Undecodable { kind, key, file, field, message });
            Ok(())
        }
        other => other,
    }
}

/// The kinds Tollgate reads; others are skipped.
fn known_kind(api_version: &str, kind: &str) -> Option<Kind> {
    Some(match (api_version, kind) {
        ("tollgate.dev/v1alpha1", "GatewayAPI") => Kind::GatewayAPI,
        ("tollgate.dev/v1alpha1", "Route") => Kind::Route,
        ("tollgate.dev/v1alpha1", "Authorizer") => Kind::Authorizer,
        ("tollgate.dev/v1alpha1", "UsagePlan") => Kind::UsagePlan,
        ("tollgate.dev/v1alpha1", "ServiceExport") => Kind::ServiceExport,
        ("v1", "Secret") => Kind::Secret,
        ("v1", "Service") => Kind::Service,
        ("v1", "Namespace") => Kind::Namespace,
        ("discovery.k8s.io/v1", "EndpointSlice") => Kind::EndpointSlice,
        _ => return None,
    })
}

fn object_key(value: &Value) -> tollgate_ir::ObjectKey {
    let text = |pointer| value.pointer(pointer).and_then(Value::as_str);
    tollgate_ir::ObjectKey::new(
        text("/metadata/namespace").unwrap_or("default").to_string(),
        text("/metadata/name").unwrap_or_default().to_string(),
    )
}

fn add_decoded(
    value: Value,
    kind: Kind,
    path: &Path,
    file: Option<PathBuf>,
    loaded: &mut Loaded,
) -> Result<(), LoadError> {
    let name = kind.to_string();
    let (inputs, unknown) = (&mut loaded.inputs, &mut loaded.unknown_fields);
    match kind {
        Kind::GatewayAPI => push_checked(value, kind, path, file, unknown, &mut inputs.gateway_apis)?,
        Kind::Route => push_checked(value, kind, path, file, unknown, &mut inputs.routes)?,
        Kind::Authorizer => push_checked(value, kind, path, file, unknown, &mut inputs.authorizers)?,
        Kind::UsagePlan => push_checked(value, kind, path, file, unknown, &mut inputs.usage_plans)?,
        Kind::ServiceExport => push_checked(value, kind, path, file, unknown, &mut inputs.service_exports)?,
        Kind::Secret => {
            inputs.secrets.push(Object { object: decode(normalize_secret(value), path, &name)?, file })
        }
        Kind::Service => inputs.services.push(Object { object: decode(value, path, &name)?, file }),
        Kind::Namespace => inputs.namespaces.push(Object { object: decode(value, path, &name)?, file }),
        Kind::EndpointSlice => {
            inputs.endpoint_slices.push(Object { object: decode(value, path, &name)?, file })
        }
    }
    Ok(())
}

/// Decodes a Tollgate object into `into`, noting its unknown fields.
fn push_checked<T: DeserializeOwned + serde::Serialize + kube::Resource>(
    value: Value,
    kind: Kind,
    path: &Path,
    file: Option<PathBuf>,
    unknown_fields: &mut Vec<(Kind, tollgate_ir::ObjectKey, String)>,
    into: &mut Vec<Object<T>>,
) -> Result<(), LoadError> {
    let (object, unknown) = decode_checked(value, path, &kind.to_string())?;
    push_unknown(unknown_fields, kind, &object, unknown);
    into.push(Object { object, file });
    Ok(())
}

fn push_unknown<T: kube::Resource>(
    into: &mut Vec<(Kind, tollgate_ir::ObjectKey, String)>,
    kind: Kind,
    object: &T,
    unknown: Vec<String>,
) {
    let meta = object.meta();
    let key = tollgate_ir::ObjectKey::new(
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        meta.name.clone().unwrap_or_default(),
    );
    for field in unknown {
        into.push((kind, key.clone(), field));
    }
}

fn object_name(value: &Value) -> String {
    value.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("<unnamed>").to_string()
}

fn decode<T: DeserializeOwned>(value: Value, path: &Path, kind: &str) -> Result<T, LoadError> {
    let name = object_name(&value);
    serde_path_to_error::deserialize(value).map_err(|error| LoadError::Schema {
        path: path.to_path_buf(),
        kind: kind.to_string(),
        name,
        field: error.path().to_string(),
        message: error.inner().to_string(),
    })
}

/// Decodes a Tollgate object and lists the fields of the input the type does not know
/// (`spec.hostname` for `spec.hostnames`, ...). `status` and `metadata` are not checked.
fn decode_checked<T: DeserializeOwned + serde::Serialize>(
    value: Value,
    path: &Path,
    kind: &str,
) -> Result<(T, Vec<String>), LoadError> {
    let spec = value.get("spec").cloned();
    let object: T = decode(value, path, kind)?;
    let mut unknown = BTreeSet::new();
    if let (Some(spec), Ok(round_trip)) = (spec, serde_json::to_value(&object)) {
        let known = round_trip.get("spec").cloned().unwrap_or(Value::Null);
        unknown_fields(&spec, &known, "spec", &mut unknown);
    }
    Ok((object, unknown.into_iter().collect()))
}

fn unknown_fields(input: &Value, known: &Value, at: &str, out: &mut BTreeSet<String>) {
    match (input, known) {
        (Value::Object(input), Value::Object(known)) => {
            for (key, value) in input {
                let here = format!("{at}.{key}");
                match known.get(key) {
                    Some(known_value) => unknown_fields(value, known_value, &here, out),
                    // A field the user wrote as null or empty is dropped on serialization: not unknown.
                    None if value.is_null() || is_empty(value) => {}
                    None => {
                        out.insert(here);
                    }
                }
            }
        }
        (Value::Array(input), Value::Array(known)) => {
            for (index, (value, known_value)) in input.iter().zip(known).enumerate() {
                unknown_fields(value, known_value, &format!("{at}[{index}]"), out);
            }
        }
        _ => {}
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Bool(false) => true,
        _ => false,
    }
}

/// Folds `stringData` into base64 `data`, as the API server does on write, so manifests written
/// with `stringData` work the same in standalone mode.
fn normalize_secret(mut value: Value) -> Value {
    use base64::Engine;
    let Some(string_data) = value.get("stringData").and_then(Value::as_object).cloned() else {
        return value;
    };
    if let Some(object) = value.as_object_mut() {
        let data = object.entry("data").or_insert_with(|| Value::Object(Default::default()));
        if let Some(data) = data.as_object_mut() {
            for (key, text) in string_data {
                let encoded =
                    base64::engine::general_purpose::STANDARD.encode(text.as_str().unwrap_or_default());
                data.insert(key, Value::String(encoded));
            }
        }
        object.remove("stringData");
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_yaml_names_file_and_document() {
        let mut loaded = Loaded::default();
        let error = load_text("kind: Service\n---\nfoo: [unclosed\n", Some(Path::new("x.yaml")), &mut loaded)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.starts_with("x.yaml: document"), "{error}");
    }

    #[test]
    fn other_kinds_are_skipped_and_secrets_take_string_data() {
        let mut loaded = Loaded::default();
        let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n---\n\
                    apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData: {key: hello}\n";
        let result = load_text(text, Some(Path::new("a.yaml")), &mut loaded);
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(loaded.skipped, vec!["a.yaml: apps/v1/Deployment".to_string()]);
        let data = loaded.inputs.secrets.first().and_then(|s| s.object.data.clone()).unwrap_or_default();
        assert_eq!(data.get("key").map(|b| b.0.as_slice()), Some(&b"hello"[..]));
    }

    #[test]
    fn an_object_that_does_not_match_its_schema_is_left_out_and_rejected() {
        let mut loaded = Loaded::default();
        let route = |name: &str, methods: &str| {
            format!(
                "apiVersion: tollgate.dev/v1alpha1\nkind: Route\nmetadata: {{name: {name}, namespace: shop}}\n\
                 spec:\n  apiRef: {{name: shop}}\n  match: {{methods: [{methods}], path: /{name}}}\n  \
                 integration: {{mock: {{status: 200}}}}\n"
            )
        };
        let text = format!(
            "{}---\n{}---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc}}\nspec: {{ports: oops}}\n",
            route("bad", "GETT"),
            route("good", "GET")
        );
        let result = load_text(&text, Some(Path::new("r.yaml")), &mut loaded);
        assert!(result.is_ok(), "{result:?}");
        let names: Vec<String> = loaded.inputs.routes.iter().map(|r| r.key().to_string()).collect();
        assert_eq!(names, ["shop/good"]);
        assert!(loaded.inputs.services.is_empty());
        let left_out: Vec<(Kind, String, String)> =
            loaded.undecodable.iter().map(|u| (u.kind, u.key.to_string(), u.field.clone())).collect();
        assert_eq!(
            left_out,
            [
                (Kind::Route, "shop/bad".to_string(), "spec.match.methods[0]".to_string()),
                (Kind::Service, "default/svc".to_string(), "spec.ports".to_string()),
            ]
        );

        let reports = crate::compile::compile_loaded(&loaded).reports;
        let bad = reports
            .iter()
            .find(|r| r.key.to_string() == "shop/bad")
            .expect("a report for the left-out Route");
        assert!(bad.rejected());
        assert_eq!(bad.file.as_deref(), Some(Path::new("r.yaml")));
        let finding = &bad.diagnostics[0];
        assert_eq!(finding.field, "spec.match.methods[0]");
        assert!(finding.message.contains("unknown variant `GETT`"), "{}", finding.message);
        assert!(
            finding.message.ends_with("the object is left out until this is fixed"),
            "{}",
            finding.message
        );
    }
}
