//! Talking to the API server: server-side apply of YAML documents, status conditions, pods.

use std::time::Duration;

use anyhow::Context;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde_json::Value;

/// Field manager of everything the suite applies.
pub const MANAGER: &str = "tollgate-e2e";

/// Connects with `KUBECONFIG` and checks that the API server answers.
pub async fn connect() -> anyhow::Result<Client> {
    let client = Client::try_default().await.context("loading KUBECONFIG")?;
    let version = tokio::time::timeout(Duration::from_secs(15), client.apiserver_version())
        .await
        .context("the API server did not answer within 15 s")?
        .context("asking the API server for its version")?;
    eprintln!("e2e: API server {}.{} ({})", version.major, version.minor, version.git_version);
    Ok(client)
}

/// The REST resource of a kind the suite uses.
fn resource(api_version: &str, kind: &str) -> anyhow::Result<(ApiResource, bool)> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let (plural, namespaced) = match kind {
        "Namespace" => ("namespaces", false),
        "CustomResourceDefinition" => ("customresourcedefinitions", false),
        "Secret" => ("secrets", true),
        "Service" => ("services", true),
        "EndpointSlice" => ("endpointslices", true),
        "Deployment" => ("deployments", true),
        "GatewayAPI" => ("gatewayapis", true),
        "Route" => ("routes", true),
        "Authorizer" => ("authorizers", true),
        "UsagePlan" => ("usageplans", true),
        "ServiceExport" => ("serviceexports", true),
        other => anyhow::bail!("the suite does not know the kind {other}"),
    };
    Ok((ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural), namespaced))
}

fn api_for(
    client: &Client,
    api_version: &str,
    kind: &str,
    namespace: Option<&str>,
) -> anyhow::Result<Api<DynamicObject>> {
    let (ar, namespaced) = resource(api_version, kind)?;
    Ok(match (namespaced, namespace) {
        (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, &ar),
        (true, None) => anyhow::bail!("{kind} is namespaced: give metadata.namespace"),
        (false, _) => Api::all_with(client.clone(), &ar),
    })
}

/// Server-side applies every document of `yaml` (multi-document). Returns the applied objects.
pub async fn apply(client: &Client, yaml: &str) -> anyhow::Result<Vec<DynamicObject>> {
    let mut applied = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
        let value = serde_json::to_value(<serde_yaml_ng::Value as serde::Deserialize>::deserialize(doc)?)?;
        if value.is_null() {
            continue;
        }
        applied.push(apply_value(client, value).await?);
    }
    Ok(applied)
}

/// Server-side applies one object given as JSON.
pub async fn apply_value(client: &Client, value: Value) -> anyhow::Result<DynamicObject> {
    let api_version = value["apiVersion"].as_str().context("apiVersion")?.to_string();
    let kind = value["kind"].as_str().context("kind")?.to_string();
    let name = value["metadata"]["name"].as_str().context("metadata.name")?.to_string();
    let namespace = value["metadata"]["namespace"].as_str().map(str::to_string);
    let api = api_for(client, &api_version, &kind, namespace.as_deref())?;
    api.patch(&name, &PatchParams::apply(MANAGER).force(), &Patch::Apply(&value))
        .await
        .with_context(|| format!("applying {kind} {}/{name}", namespace.unwrap_or_default()))
}

/// Reads one object (`None` if it does not exist).
pub async fn get(
    client: &Client,
    api_version: &str,
    kind: &str,
    namespace: Option<&str>,
    name: &str,
) -> anyhow::Result<Option<DynamicObject>> {
    Ok(api_for(client, api_version, kind, namespace)?.get_opt(name).await?)
}

/// Deletes a namespace and everything in it (not waiting for it to go).
pub async fn delete_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    let api: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// The condition `type_` of an object's status: (status, reason, observedGeneration).
pub fn condition(object: &DynamicObject, type_: &str) -> Option<(String, String, i64)> {
    let conditions = object.data.get("status")?.get("conditions")?.as_array()?;
    let c = conditions.iter().find(|c| c["type"] == type_)?;
    Some((
        c["status"].as_str()?.to_string(),
        c["reason"].as_str().unwrap_or_default().to_string(),
        c["observedGeneration"].as_i64().unwrap_or(-1),
    ))
}

/// Waits until a Tollgate object reports `type_ = True` for its current generation.
pub async fn wait_condition(
    client: &Client,
    kind: &str,
    namespace: &str,
    name: &str,
    type_: &str,
) -> anyhow::Result<DynamicObject> {
    let api_version = format!("{}/{}", tollgate_crds::GROUP, tollgate_crds::VERSION);
    let what = format!("{kind} {namespace}/{name} {type_}=True");
    let last = std::sync::Mutex::new(String::new());
    let last = &last;
    let result = crate::eventually(&what, crate::WAIT, || {
        let (api_version, client) = (api_version.clone(), client.clone());
        async move {
            let Some(object) = get(&client, &api_version, kind, Some(namespace), name).await? else {
                return Ok(None);
            };
            let generation = object.metadata.generation.unwrap_or_default();
            if let Ok(mut l) = last.lock() {
                *l = serde_json::to_string(&object.data.get("status")).unwrap_or_default();
            }
            Ok(match condition(&object, type_) {
                Some((status, _, observed)) if status == "True" && observed == generation => Some(object),
                _ => None,
            })
        }
    })
    .await;
    result.with_context(|| format!("last status: {}", last.lock().map(|l| l.clone()).unwrap_or_default()))
}

/// Names of the running, ready pods matching a label selector.
pub async fn ready_pods(client: &Client, namespace: &str, selector: &str) -> anyhow::Result<Vec<String>> {
    let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), namespace);
    let pods = api.list(&ListParams::default().labels(selector)).await?;
    Ok(pods
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .map(|p| p.name_any())
        .collect())
}

/// Waits until at least `count` pods matching `selector` are ready.
pub async fn wait_ready_pods(
    client: &Client,
    namespace: &str,
    selector: &str,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    crate::eventually(&format!("{count} ready pods {selector} in {namespace}"), crate::WAIT, || async move {
        let pods = ready_pods(client, namespace, selector).await?;
        Ok((pods.len() >= count).then_some(pods))
    })
    .await
}

/// Deletes a pod with its normal grace period (the proxy drains).
pub async fn delete_pod(client: &Client, namespace: &str, name: &str) -> anyhow::Result<()> {
    let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), namespace);
    api.delete(name, &DeleteParams::default()).await?;
    Ok(())
}

/// The field managers that own something under `spec` of an object. GitOps tools see drift when
/// anyone but the user (or their tool) owns spec fields.
pub fn spec_managers(object: &DynamicObject) -> Vec<String> {
    object
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.fields_v1.as_ref().is_some_and(|f| f.0.get("f:spec").is_some()))
        .filter_map(|m| m.manager.clone())
        .collect()
}
