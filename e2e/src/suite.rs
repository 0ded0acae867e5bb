//! One test's world: its own namespace, API hostname and backends, in either mode, and the way
//! to reach the gateway.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use kube::Client;
use serde_json::{Value, json};

use crate::gateway::Gateway;
use crate::local::{LocalControlPlane, LocalProxy};
use crate::netns::{self, NetnsBackend};
use crate::{Mode, k8s};

/// Namespace of the installed chart (cluster mode).
fn release_namespace() -> String {
    std::env::var("E2E_RELEASE_NAMESPACE").unwrap_or_else(|_| "tollgate-system".into())
}

/// A test's namespace, backends and gateway. Call [`Suite::finish`] at the end; if a test fails
/// before, Drop still removes local processes and network namespaces and asks kubectl to delete
/// the namespace.
pub struct Suite {
    /// API client.
    pub client: Client,
    /// Where the controller and proxies run.
    pub mode: Mode,
    /// The test's namespace (created by [`Suite::start`]).
    pub namespace: String,
    /// The fleet serving the test's API.
    pub fleet: String,
    /// The test API's hostname.
    pub host: String,
    plane: Option<LocalControlPlane>,
    /// Local proxies (local mode).
    pub proxies: Vec<LocalProxy>,
    backends: Vec<NetnsBackend>,
    gateway_base: Option<String>,
    finished: bool,
}

impl Suite {
    /// Sets up a test, or returns `None` (after printing why) when no cluster is configured.
    pub async fn start(test: &str) -> anyhow::Result<Option<Suite>> {
        if !crate::cluster_configured() {
            return Ok(None);
        }
        let mode = Mode::from_env()?;
        if mode == Mode::Local && !netns::available() {
            anyhow::bail!("E2E_MODE=local runs backends in network namespaces: it needs root and iproute2");
        }
        let client = k8s::connect().await?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let namespace = format!("e2e-{test}-{}", &id[..6]);
        let host = format!("{namespace}.e2e.tollgate.test");
        k8s::apply_value(
            &client,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}),
        )
        .await?;
        let mut suite = Suite {
            client,
            mode,
            fleet: match mode {
                Mode::Cluster => std::env::var("E2E_FLEET").unwrap_or_else(|_| "default".into()),
                // A fleet of its own: only this test's proxies serve this test's API.
                Mode::Local => namespace.clone(),
            },
            namespace,
            host,
            plane: None,
            proxies: Vec::new(),
            backends: Vec::new(),
            gateway_base: None,
            finished: false,
        };
        match mode {
            Mode::Local => {
                suite.install_crds().await?;
                let binary = crate::binary::tollgate()?;
                let plane = LocalControlPlane::start(&binary, &suite.namespace, &suite.fleet).await?;
                for index in 0..2 {
                    suite.proxies.push(plane.start_proxy(index).await?);
                }
                suite.plane = Some(plane);
            }
            Mode::Cluster => {
                k8s::get(
                    &suite.client,
                    "apiextensions.k8s.io/v1",
                    "CustomResourceDefinition",
                    None,
                    "routes.tollgate.dev",
                )
                .await?
                .context("the tollgate CRDs are not installed: install the chart first (e2e/kind.sh does)")?;
                suite.gateway_base = Some(suite.cluster_gateway().await?);
            }
        }
        Ok(Some(suite))
    }

    /// Applies the CRDs generated from the types (local mode; the chart installs them otherwise).
    async fn install_crds(&self) -> anyhow::Result<()> {
        for crd in tollgate_crds::crds() {
            let mut value = serde_json::to_value(&crd)?;
            value["apiVersion"] = json!("apiextensions.k8s.io/v1");
            value["kind"] = json!("CustomResourceDefinition");
            let name = crd.metadata.name.clone().unwrap_or_default();
            k8s::apply_value(&self.client, value).await?;
            let client = self.client.clone();
            crate::eventually(&format!("CRD {name} Established"), crate::WAIT, || {
                let (client, name) = (client.clone(), name.clone());
                async move {
                    let crd =
                        k8s::get(&client, "apiextensions.k8s.io/v1", "CustomResourceDefinition", None, &name)
                            .await?;
                    Ok(crd
                        .filter(|c| k8s::condition(c, "Established").is_some_and(|(s, _, _)| s == "True"))
                        .map(drop))
                }
            })
            .await?;
        }
        Ok(())
    }

    /// The proxy Service's address: `E2E_GATEWAY_URL`, else its load-balancer address, else a
    /// node's address and the node port.
    async fn cluster_gateway(&self) -> anyhow::Result<String> {
        if let Ok(url) = std::env::var("E2E_GATEWAY_URL") {
            return Ok(url);
        }
        let name =
            std::env::var("E2E_PROXY_SERVICE").unwrap_or_else(|_| format!("tollgate-proxy-{}", self.fleet));
        let svc =
            k8s::get(&self.client, "v1", "Service", Some(&release_namespace()), &name).await?.with_context(
                || format!("Service {}/{name} not found (set E2E_GATEWAY_URL)", release_namespace()),
            )?;
        let data = serde_json::to_value(&svc)?;
        let port = |field: &str| {
            data["spec"]["ports"]
                .as_array()
                .and_then(|ports| ports.iter().find(|p| p["name"] == "http").and_then(|p| p[field].as_u64()))
        };
        if let Some(ingress) = data["status"]["loadBalancer"]["ingress"].get(0) {
            let address = ingress["ip"].as_str().or(ingress["hostname"].as_str()).unwrap_or_default();
            return Ok(format!("http://{address}:{}", port("port").unwrap_or(80)));
        }
        let node_port = port("nodePort")
            .context("the proxy Service has no load balancer and no node port; set E2E_GATEWAY_URL")?;
        let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(self.client.clone());
        let node = nodes.list(&Default::default()).await?.items.into_iter().next().context("no nodes")?;
        let address = node
            .status
            .and_then(|s| s.addresses)
            .and_then(|a| a.into_iter().find(|a| a.type_ == "InternalIP"))
            .context("the node has no InternalIP")?
            .address;
        Ok(format!("http://{address}:{node_port}"))
    }

    /// The gateway, as the test API's clients see it (the first local proxy in local mode).
    pub fn gateway(&self) -> anyhow::Result<Gateway> {
        let base = match (&self.gateway_base, self.proxies.first()) {
            (Some(base), _) => base.clone(),
            (None, Some(proxy)) => format!("http://{}", proxy.listen),
            (None, None) => anyhow::bail!("no gateway"),
        };
        Gateway::new(&base, &self.host)
    }

    /// Every way into the gateway: each local proxy, or the one Service.
    pub fn gateways(&self) -> anyhow::Result<Vec<Gateway>> {
        match &self.gateway_base {
            Some(base) => Ok(vec![Gateway::new(base, &self.host)?]),
            None => self
                .proxies
                .iter()
                .map(|p| Gateway::new(&format!("http://{}", p.listen), &self.host))
                .collect(),
        }
    }

    /// Deploys an echo backend reachable as Service `name`, port 8080, and waits until it is up.
    pub async fn backend(&mut self, name: &str) -> anyhow::Result<()> {
        let ns = self.namespace.clone();
        match self.mode {
            Mode::Cluster => {
                let image = std::env::var("E2E_IMAGE").unwrap_or_else(|_| "tollgate:e2e".into());
                self.apply(&format!(
                    r#"
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      automountServiceAccountToken: false
      containers:
      - name: echo
        image: {image}
        imagePullPolicy: IfNotPresent
        args: [echo, --listen=0.0.0.0:9090, --name={name}]
        ports: [{{name: http, containerPort: 9090}}]
        readinessProbe: {{tcpSocket: {{port: http}}, periodSeconds: 1}}
        securityContext: {{runAsNonRoot: true, readOnlyRootFilesystem: true, allowPrivilegeEscalation: false}}
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec:
  selector: {{app: {name}}}
  ports: [{{name: http, port: 8080, targetPort: http}}]
"#
                ))
                .await?;
                k8s::wait_ready_pods(&self.client, &ns, &format!("app={name}"), 1).await?;
            }
            Mode::Local => {
                let binary = crate::binary::tollgate()?;
                let backend = NetnsBackend::start(&binary, name).await?;
                let address = backend.address;
                self.backends.push(backend);
                // No selector: the EndpointSlice is ours, pointing into the network namespace.
                self.apply(&format!(
                    r#"
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec:
  ports: [{{name: http, port: 8080, targetPort: 9090}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-netns
  namespace: {ns}
  labels: {{kubernetes.io/service-name: {name}, endpointslice.kubernetes.io/managed-by: tollgate-e2e}}
addressType: IPv4
ports: [{{name: http, port: {port}, protocol: TCP}}]
endpoints:
- addresses: ["{address}"]
  conditions: {{ready: true}}
"#,
                    port = netns::ECHO_PORT
                ))
                .await?;
            }
        }
        Ok(())
    }

    /// Applies YAML documents; namespaced objects without a namespace go into the test's.
    pub async fn apply(&self, yaml: &str) -> anyhow::Result<()> {
        for doc in serde_yaml_ng::Deserializer::from_str(yaml) {
            let mut value: Value =
                serde_json::to_value(<serde_yaml_ng::Value as serde::Deserialize>::deserialize(doc)?)?;
            if value.is_null() {
                continue;
            }
            if value["kind"] != "Namespace" && value["metadata"]["namespace"].is_null() {
                value["metadata"]["namespace"] = json!(self.namespace);
            }
            k8s::apply_value(&self.client, value).await?;
        }
        Ok(())
    }

    /// A GatewayAPI named `shop` on the test's host and fleet, stage `prod`, plus `stage_extra`
    /// (YAML lines indented for the stage, e.g. `    cache: {enabled: true}\n`).
    pub fn api_yaml(&self, stage_extra: &str) -> String {
        format!(
            "apiVersion: tollgate.dev/v1alpha1\nkind: GatewayAPI\nmetadata: {{name: shop}}\nspec:\n  fleet: {fleet}\n  \
             hostnames: [{host}]\n  stages:\n  - name: prod\n{stage_extra}",
            fleet = self.fleet,
            host = self.host
        )
    }

    /// The local control plane (local mode).
    pub fn plane(&self) -> Option<&LocalControlPlane> {
        self.plane.as_ref()
    }

    /// Removes what the test created: processes, network namespaces, its namespace (unless
    /// `E2E_KEEP=1`).
    pub async fn finish(mut self) -> anyhow::Result<()> {
        self.finished = true;
        self.proxies.clear();
        self.plane = None;
        self.backends.clear();
        if std::env::var("E2E_KEEP").as_deref() != Ok("1") {
            k8s::delete_namespace(&self.client, &self.namespace).await?;
        }
        Ok(())
    }

    /// How long a drain may take (local proxies are started with `--drain-timeout=10s`).
    pub fn drain_limit(&self) -> Duration {
        Duration::from_secs(20)
    }

    /// The local-mode binary (for starting replacement proxies).
    pub fn binary(&self) -> anyhow::Result<PathBuf> {
        crate::binary::tollgate()
    }
}

impl Drop for Suite {
    fn drop(&mut self) {
        if !self.finished && std::env::var("E2E_KEEP").as_deref() != Ok("1") {
            eprintln!("e2e: test failed; deleting namespace {} (E2E_KEEP=1 keeps it)", self.namespace);
            let _ = std::process::Command::new("kubectl")
                .args(["delete", "namespace", &self.namespace, "--wait=false"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}
