# Sourced by bench/run.sh and bench/aa.sh: the shared harness's `--project` arguments for
# Tollgate on bench/manifests.
#   tollgate_project BIN NAME PORT ADMIN_PORT [FLAG...]   # sets the array `project`
tollgate_project() {
  local bin=$1 name=$2 port=$3 admin=$4
  shift 4
  local manifests
  manifests=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/manifests
  project=(--project "$bin standalone --manifests $manifests --listen 127.0.0.1:{port} --admin 127.0.0.1:$admin${*:+ $*} --workers {workers}" "$port"
    --project-name "$name")
}
