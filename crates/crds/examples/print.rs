//! temp
use kube::CustomResourceExt;
fn main() {
    println!("{}", serde_yaml_ng::to_string(&tollgate_crds::gateway_api::GatewayAPI::crd()).unwrap());
}
